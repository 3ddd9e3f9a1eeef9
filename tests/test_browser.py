"""A real JupyterLab in headless Chromium: open a notebook, Run All, move a slider, see the plot change.

One JupyterLab server (from this venv, own process group, random token, free port, throw-away
config/settings/workspace dirs) serves a temporary copy of notebooks/ plus the fixture
tests/fixtures/widget_demo.ipynb. Chromium is Debian's /usr/bin/chromium driven by Playwright
(never `playwright install`). Screenshots go to test-artifacts/.

To drive another notebook in the browser, add its file name to BROWSER_NOTEBOOKS. Its first
slider (``.widget-hslider``) whose cell also shows a plot (``.widget-output img``) is moved.

Without /usr/bin/chromium these tests skip, except under CI (env CI set), where they fail.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
FIXTURE = ROOT / "tests" / "fixtures" / "widget_demo.ipynb"
FIXTURE_NAME = "_fixture_widget_demo.ipynb"  # its name inside the served folder
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Notebooks of notebooks/ to drive in a real browser: adding a name here is all it takes.
BROWSER_NOTEBOOKS = [
    "01_data_heterogeneity.ipynb",
    "02_client_drift.ipynb",
    "04_convergence_in_practice.ipynb",
    "06_meta_learning_and_personalisation.ipynb",
    "07_system_heterogeneity.ipynb",
    "08_heterogeneity_aware_finetuning.ipynb",
    "09_convergence_of_finetuning.ipynb",
    "10_privacy.ipynb",
    "11_scaling_out_with_flower.ipynb",
    "12_research_playground.ipynb",
]

SERVER_START_TIMEOUT_S = 90
RUN_ALL_TIMEOUT_S = 240
REDRAW_TIMEOUT_S = 120

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _require_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    msg = f"{CHROMIUM} is missing: install Debian's chromium (bash .ci/install, or apt-get install -y chromium)"
    if _in_ci():
        pytest.fail(msg + " -- required under CI", pytrace=False)
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


class LabServer:
    def __init__(self, base: Path):
        self.base = base
        self.root = base / "notebooks"
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "jupyter-lab.log"
        self.proc: subprocess.Popen | None = None

    def _env(self) -> dict[str, str]:
        config = self.base / "config"
        settings = self.base / "lab-settings"
        # Throw-away config: no news/update toast covering the page, every cell kept in the DOM.
        _write_json(
            config / "labconfig" / "page_config.json",
            {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}},
        )
        _write_json(
            settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings",
            {"fetchNews": "false", "checkForUpdates": False},
        )
        _write_json(
            settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings",
            {"windowingMode": "none"},
        )
        env = dict(os.environ)
        env.pop("MPLBACKEND", None)  # tests/conftest.py sets Agg; kernels must draw inline
        env.update(
            FEDLAB_FAST="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYDEVD_DISABLE_FILE_VALIDATION="1",
            JUPYTER_CONFIG_DIR=str(config),
            JUPYTER_RUNTIME_DIR=str(self.base / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(settings),
            JUPYTERLAB_WORKSPACES_DIR=str(self.base / "workspaces"),
        )
        return env

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            "--allow-root",
            "--LabApp.extension_manager=readonly",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            f"--ServerApp.root_dir={self.root}",
        ]
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"jupyter lab not ready after {SERVER_START_TIMEOUT_S} s:\n{self.log_tail()}")

    def api(self, method: str, path: str):
        req = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        try:
            for kernel in self.api("GET", "/api/kernels"):
                self.api("DELETE", f"/api/kernels/{kernel['id']}")
        except Exception:
            pass

    def stop(self) -> None:
        if self.proc is None:
            return
        self.shutdown_kernels()
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return "(no log)"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _require_chromium()
    base = tmp_path_factory.mktemp("jupyterlab")
    served = base / "notebooks"
    served.mkdir()
    # A copy, so JupyterLab never writes to the committed notebooks; ../data as in the repo.
    for nb in NOTEBOOK_DIR.glob("*.ipynb") if NOTEBOOK_DIR.is_dir() else []:
        shutil.copy2(nb, served / nb.name)
    shutil.copy2(FIXTURE, served / FIXTURE_NAME)
    if (ROOT / "data").is_dir():
        (base / "data").symlink_to(ROOT / "data", target_is_directory=True)
    server = LabServer(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if server.log_path.exists():
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy2(server.log_path, ARTIFACTS / "jupyter-lab.log")


@pytest.fixture(scope="module")
def browser_context(lab, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


# --- the user's path through JupyterLab -------------------------------------------------------

# Every query is scoped to the notebook panel on show (other tabs keep their own cells).
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"

_RUN_STATE_JS = """
() => {
  const panel = document.querySelector('%(panel)s');
  if (!panel) return {cells: 0, queued: 0, numbered: 0, pending: [], status: null};
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  let queued = 0, numbered = 0, pending = [];
  cells.forEach((cell, i) => {
    const prompt = (cell.querySelector('.jp-InputPrompt')?.textContent || '').trim();
    const src = (cell.querySelector('.cm-content')?.textContent || '').trim();
    if (prompt.includes('*')) queued++;
    else if (/\\[\\d+\\]/.test(prompt)) numbered++;
    else if (src) pending.push(i);
  });
  const ind = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  return {cells: cells.length, queued, numbered, pending,
          status: ind ? ind.getAttribute('data-status') : null};
}
""" % {"panel": PANEL}


_KERNEL_READY_JS = """
() => {
  const panel = document.querySelector('%(panel)s');
  const name = panel && panel.querySelector('.jp-Toolbar-kernelName');
  const ind = panel && panel.querySelector('.jp-Notebook-ExecutionIndicator');
  return !!name && !/no kernel/i.test(name.textContent) && !!ind
         && ind.getAttribute('data-status') === 'idle';
}
""" % {"panel": PANEL}


def _wait_kernel_ready(page, timeout_s: float = 90) -> None:
    """Idle *with a kernel*: before the session exists the indicator already says idle."""
    deadline = time.monotonic() + timeout_s
    stable_since = None
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog .jp-mod-accept")
        if dialog.count():  # "Select Kernel" (a notebook naming no kernel): take the default
            dialog.first.click()
        if page.evaluate(_KERNEL_READY_JS):
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= 0.5:
                return
        else:
            stable_since = None
        time.sleep(0.1)
    raise AssertionError(f"the notebook's kernel was not ready (idle) within {timeout_s} s")


def _open_notebook(page, lab: LabServer, name: str) -> None:
    # A workspace of its own: no tab of an earlier test is restored beside this one.
    workspace = f"t{secrets.token_hex(4)}"
    page.goto(
        f"{lab.url}/lab/workspaces/{workspace}/tree/{name}?token={lab.token}",
        wait_until="domcontentloaded",
    )
    page.wait_for_selector(f"{PANEL} .jp-Notebook .jp-Cell", timeout=60_000)
    _wait_kernel_ready(page)


def _run_all(page) -> dict:
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
    page.wait_for_function(
        f"() => {{ const s = ({_RUN_STATE_JS})(); "
        "return s.status === 'idle' && s.queued === 0 && s.numbered > 0; }",
        timeout=RUN_ALL_TIMEOUT_S * 1000,
        polling=250,
    )
    state = page.evaluate(_RUN_STATE_JS)
    # An error output renders as stderr text holding the traceback (warnings have none).
    errors = page.locator(
        f"{PANEL} .jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']",
        has_text="Traceback",
    )
    if state["pending"] or errors.count():
        text = errors.first.inner_text()[:2000] if errors.count() else ""
        raise AssertionError(
            f"Run All: code cells not run: {state['pending'] or 'none'}; first error:\n{text}"
        )
    return state


_PLOT_SRCS_JS = """
(handle) => {
  const cell = handle.closest('.jp-Cell');
  return [...cell.querySelectorAll('.widget-output img')].map(img => img.getAttribute('src') || '');
}
"""


_USABLE_SLIDER_JS = """
(el) => {
  const track = el.querySelector('.noUi-target');
  const disabled = !track || track.hasAttribute('disabled') || el.classList.contains('mod-disabled');
  return !disabled && el.closest('.jp-Cell').querySelectorAll('.widget-output img').length > 0;
}
"""


def _move_first_plotting_slider(page) -> tuple[str, str]:
    """Move the first enabled slider whose cell shows a widget plot; return readout before/after."""
    sliders = page.locator(f"{PANEL} .jp-Cell .widget-hslider")
    page.wait_for_selector(f"{PANEL} .widget-hslider .noUi-handle", timeout=30_000)
    target = None
    for i in range(sliders.count()):
        slider = sliders.nth(i)
        if slider.evaluate(_USABLE_SLIDER_JS):
            target = slider
            break
    assert target is not None, "no enabled .widget-hslider in a cell that shows a plot (.widget-output img)"
    target.scroll_into_view_if_needed()
    handle = target.locator(".noUi-handle").first
    readout = target.locator(".widget-readout").first
    before_value = readout.inner_text().strip()
    before_srcs = handle.evaluate(_PLOT_SRCS_JS)

    # The keyboard moves a focused noUiSlider handle one step and fires its change event.
    handle.focus()
    handle.press("ArrowRight")
    if readout.inner_text().strip() == before_value:  # at the maximum already
        handle.press("ArrowLeft")
        handle.press("ArrowLeft")
    after_value = readout.inner_text().strip()
    if after_value == before_value:  # fall back to dragging the handle
        box = handle.bounding_box()
        track = target.locator(".noUi-target").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(track["x"] + track["width"] * 0.75, box["y"] + box["height"] / 2, steps=8)
        page.mouse.up()
        after_value = readout.inner_text().strip()
    assert after_value != before_value, f"slider did not move (readout stayed {before_value!r})"

    handle_el = handle.element_handle()
    page.wait_for_function(
        f"([h, before]) => {{ const now = ({_PLOT_SRCS_JS})(h); "
        "return now.length > 0 && now.every(s => s.length > 0) && "
        "JSON.stringify(now) !== JSON.stringify(before); }",
        arg=[handle_el, before_srcs],
        timeout=REDRAW_TIMEOUT_S * 1000,
        polling=200,
    )
    after_srcs = handle.evaluate(_PLOT_SRCS_JS)
    assert after_srcs and after_srcs != before_srcs, "the plot did not change after moving the slider"
    # Let the redraw settle (the kernel goes idle once the callback has finished).
    page.wait_for_selector(
        f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000
    )
    return before_value, after_value


def _drive(lab: LabServer, context, name: str, shot: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{shot}-failure.png").unlink(missing_ok=True)
    page = context.new_page()
    started = time.perf_counter()
    try:
        _open_notebook(page, lab, name)
        _run_all(page)
        before, after = _move_first_plotting_slider(page)
        page.screenshot(path=str(ARTIFACTS / f"{shot}.png"))
        print(f"{name}: slider {before} -> {after}, plot redrawn, {time.perf_counter() - started:.1f} s")
    except BaseException:
        try:
            page.screenshot(path=str(ARTIFACTS / f"{shot}-failure.png"))
        except Exception:
            pass
        print(lab.log_tail())
        raise
    finally:
        page.close()
        lab.shutdown_kernels()


def test_fixture_slider_redraws_plot_in_jupyterlab(lab, browser_context):
    _drive(lab, browser_context, FIXTURE_NAME, "browser_widget_demo")


@pytest.mark.parametrize("name", BROWSER_NOTEBOOKS, ids=[n.removesuffix(".ipynb") for n in BROWSER_NOTEBOOKS])
def test_notebook_slider_redraws_plot_in_jupyterlab(name, lab, browser_context):
    if not (NOTEBOOK_DIR / name).exists():
        pytest.skip(f"notebooks/{name} does not exist yet (listed in BROWSER_NOTEBOOKS)")
    _drive(lab, browser_context, name, f"browser_{Path(name).stem}")
