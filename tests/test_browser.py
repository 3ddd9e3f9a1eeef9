"""Every notebook in a real JupyterLab, and two as Voila dashboards, in headless Chromium.

For each notebook of ``notebooks/``: open it in JupyterLab, Run All, then, in every cell that
shows widget controls, move every enabled and visible control once (slider one step, next
dropdown option, next toggle button, checkbox, number box + 1) and wait until the cell's output
(its images, tables and text) changes. A control that is enabled but changes nothing fails the
test (a control that does not apply to the current setting must be disabled or hidden). The
same check runs on the two Voila dashboards of :data:`DASHBOARDS`, served by ``voila`` exactly as
the README's command serves them. Screenshots of every moved cell go to test-artifacts/browser/.

One server per module (own process group, random token, free port, throw-away config/settings/
workspace dirs) serves a temporary copy of notebooks/ (with ``../data`` linked) plus the fixture
tests/fixtures/widget_demo.ipynb. Chromium is Debian's /usr/bin/chromium driven by Playwright
(never ``playwright install``). Without /usr/bin/chromium these tests skip, except under CI (env
CI set), where they fail with what to install.
"""
from __future__ import annotations

import json
import os
import re
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
SHOTS = ARTIFACTS / "browser"
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

NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
# The dashboards the README documents (served with `voila notebooks/<name>`) and tests here.
DASHBOARDS = ["07_system_heterogeneity.ipynb", "10_privacy.ipynb"]

SERVER_START_TIMEOUT_S = 90
RUN_ALL_TIMEOUT_S = 240
VOILA_FIRST_RENDER_S = 150  # a FAST dashboard renders in under a minute; past this Voila is stuck
REDRAW_TIMEOUT_S = 90  # per control: the slowest FAST recompute takes well under a minute

browser = pytest.mark.browser  # every test that starts a server or Chromium carries both marks
slow = pytest.mark.slow


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _require_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    msg = (f"{CHROMIUM} is missing: install Debian's chromium with `bash .ci/install` "
           "(or `sudo apt-get install -y chromium`)")
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


def _served_copy(base: Path) -> Path:
    """A copy of notebooks/ (servers never write to the committed files), ../data as in the repo."""
    served = base / "notebooks"
    served.mkdir()
    for nb in NOTEBOOK_DIR.glob("*.ipynb"):
        shutil.copy2(nb, served / nb.name)
    shutil.copy2(FIXTURE, served / FIXTURE_NAME)
    if (ROOT / "data").is_dir():
        (base / "data").symlink_to(ROOT / "data", target_is_directory=True)
    return served


class Server:
    """A Jupyter server process (JupyterLab or Voila) in its own process group."""

    name = "server"

    def __init__(self, base: Path):
        self.base = base
        self.root = base / "notebooks"
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready_url(self) -> str:
        return f"{self.url}/api/status?token={self.token}"

    def env(self) -> dict[str, str]:
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
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command(), cwd=self.root, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.ready_url(), timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {SERVER_START_TIMEOUT_S} s:\n{self.log_tail()}")

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


class LabServer(Server):
    name = "jupyter-lab"

    def command(self) -> list[str]:
        return [
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


class VoilaServer(Server):
    """``voila <folder>``: the README's dashboard command on the served copy (code hidden)."""

    name = "voila"

    def command(self) -> list[str]:
        return [
            str(Path(sys.executable).with_name("voila")), str(self.root),
            "--no-browser",
            f"--port={self.port}",
            "--Voila.ip=127.0.0.1",
            "--Voila.port_retries=0",
        ]

    def ready_url(self) -> str:
        return f"{self.url}/"


def _serve(kind, tmp_path_factory):
    _require_chromium()
    base = tmp_path_factory.mktemp(kind.name)
    _served_copy(base)
    server = kind(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if server.log_path.exists():
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy2(server.log_path, ARTIFACTS / server.log_path.name)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from _serve(LabServer, tmp_path_factory)


@pytest.fixture(scope="module")
def voila(tmp_path_factory):
    if not Path(sys.executable).with_name("voila").exists():
        pytest.fail("voila is not installed in this environment: run `bash .ci/install`", pytrace=False)
    yield from _serve(VoilaServer, tmp_path_factory)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    _require_chromium()
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


# --- JupyterLab: open a notebook, Run All ------------------------------------------------------

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


def _errors(page, scope: str) -> list[str]:
    # An error output renders as stderr text holding the traceback (warnings have none).
    errors = page.locator(
        f"{scope} .jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']",
        has_text="Traceback",
    )
    return [errors.nth(i).inner_text()[:2000] for i in range(errors.count())]


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
    errors = _errors(page, PANEL)
    if state["pending"] or errors:
        raise AssertionError(
            f"Run All: code cells not run: {state['pending'] or 'none'}; first error:\n"
            f"{errors[0] if errors else ''}"
        )
    return state


def _lab_idle(page) -> bool:
    return page.evaluate(
        f"() => document.querySelector(\"{PANEL} .jp-Notebook-ExecutionIndicator\")"
        "?.getAttribute('data-status') === 'idle'"
    )


# --- every control of every widget cell ---------------------------------------------------------

# One entry per control, in page order: what a person can move. A slider readout, a dropdown's
# options, the toggle buttons, a checkbox, a number box; buttons are left alone (none of the
# notebooks' panels needs one to redraw).
CONTROL = (".widget-hslider, .widget-dropdown, .widget-toggle-buttons, .widget-checkbox, "
           ".widget-text, .widget-radio")

CHOICES = ("widget-dropdown", "widget-toggle-buttons", "widget-radio")

_CELL_SIGNATURE_JS = """
(cell) => {
  // What the cell's widget outputs show: every image, table and text, minus timings.
  return [...cell.querySelectorAll('.widget-output')].map(out => {
    const imgs = [...out.querySelectorAll('img')].map(i => i.getAttribute('src') || '');
    const text = (out.innerText || '').replace(/\\d+(\\.\\d+)?\\s*(ms|s)\\b/g, '#');
    return JSON.stringify([imgs, text]);
  }).join('|');
}
"""

_DRAWN_JS = """
(cell) => {
  // Every output drawn: no image still without its data, something shown.
  const outs = [...cell.querySelectorAll('.widget-output')];
  return outs.some(o => o.querySelector('img') || (o.innerText || '').trim())
      && [...cell.querySelectorAll('.widget-output img')].every(i => (i.getAttribute('src') || '').length > 0);
}
"""

_CONTROL_STATE_JS = """
(el) => {
  const style = getComputedStyle(el);
  const hidden = el.offsetParent === null || style.visibility === 'hidden';
  const disabled = !!el.querySelector('.noUi-target[disabled], select:disabled, input:disabled')
      || el.classList.contains('mod-disabled')
      || (el.classList.contains('widget-toggle-buttons')
          && [...el.querySelectorAll('button')].every(b => b.disabled));
  const label = (el.querySelector('.widget-label-basic span, .widget-label, label')?.textContent || '')
      .replace('\u200b', '').trim();
  const kind = ['widget-hslider', 'widget-dropdown', 'widget-toggle-buttons', 'widget-checkbox',
                'widget-text', 'widget-radio'].find(c => el.classList.contains(c)) || '?';
  return {hidden, disabled, label, kind};
}
"""


def _value(control, kind: str) -> str:
    if kind == "widget-hslider":
        return control.locator(".widget-readout").first.inner_text().strip()
    if kind == "widget-dropdown":
        return control.locator("select").first.input_value()
    if kind == "widget-toggle-buttons":
        return control.locator("button.mod-active").first.inner_text().strip()
    if kind == "widget-checkbox":
        return str(control.locator("input").first.is_checked())
    if kind == "widget-text":
        return control.locator("input").first.input_value()
    if kind == "widget-radio":
        return str([b.is_checked() for b in control.locator("input").all()])
    return ""


def _options(control, kind: str) -> int:
    """How many values a choice offers."""
    if kind == "widget-dropdown":
        return control.locator("select option").count()
    return control.locator("button, input").count()


def _move(page, control, kind: str) -> tuple[str, str]:
    """Change ``control`` once the way a person would; return its value before and after."""
    control.scroll_into_view_if_needed()
    before = _value(control, kind)
    if kind == "widget-hslider":
        handle = control.locator(".noUi-handle").first
        handle.focus()
        handle.press("ArrowRight")  # moves a focused noUiSlider one step, fires its change event
        if _value(control, kind) == before:  # at the maximum already
            handle.press("ArrowLeft")
            handle.press("ArrowLeft")
    elif kind == "widget-dropdown":
        select = control.locator("select").first
        options = select.locator("option").all()
        values = [o.get_attribute("value") for o in options]
        labels = [o.inner_text() for o in options]
        i = values.index(before) if before in values else 0
        if len(labels) > 1:
            select.select_option(label=labels[(i + 1) % len(labels)])
    elif kind == "widget-toggle-buttons":
        buttons = control.locator("button").all()
        active = next((i for i, b in enumerate(buttons) if "mod-active" in (b.get_attribute("class") or "")), 0)
        for j in range(1, len(buttons)):
            candidate = buttons[(active + j) % len(buttons)]
            if candidate.is_enabled():
                candidate.click()
                break
    elif kind == "widget-checkbox":
        control.locator("input").first.click()
    elif kind == "widget-text":
        box = control.locator("input").first
        try:
            new = str(int(before) + 1)
        except ValueError:
            new = f"{float(before) * 1.5:g}" if before else "1"
        box.fill(new)
        box.press("Enter")
    elif kind == "widget-radio":
        inputs = control.locator("input").all()
        checked = next((i for i, b in enumerate(inputs) if b.is_checked()), 0)
        if len(inputs) > 1:
            inputs[(checked + 1) % len(inputs)].check()
    return before, _value(control, kind)


def _wait_redraw(page, cell, before: str, idle) -> str:
    """Wait until the cell's outputs differ from ``before`` and have settled; return them."""
    handle = cell.element_handle()
    page.wait_for_function(
        f"([c, b]) => {{ const s = ({_CELL_SIGNATURE_JS})(c); return s !== b && ({_DRAWN_JS})(c); }}",
        arg=[handle, before], timeout=REDRAW_TIMEOUT_S * 1000, polling=200,
    )
    deadline = time.monotonic() + REDRAW_TIMEOUT_S
    last, stable_since = None, time.monotonic()
    while time.monotonic() < deadline:  # settled: idle, and the same for 0.75 s
        now = cell.evaluate(_CELL_SIGNATURE_JS)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif idle(page) and time.monotonic() - stable_since >= 0.75:
            break
        time.sleep(0.15)
    return last


def _move_and_check(page, cell, control, kind: str, idle) -> tuple[str, str, str | None]:
    """Move ``control`` once and wait for ``cell``'s output to change: (before, after, problem)."""
    signature = cell.evaluate(_CELL_SIGNATURE_JS)
    before, after = _move(page, control, kind)
    if before == after:
        return before, after, f"could not be moved (value stayed {before!r})"
    try:
        _wait_redraw(page, cell, signature, idle)
    except Exception:
        return before, after, f"{before} -> {after} changed nothing within {REDRAW_TIMEOUT_S} s"
    return before, after, None


def _move_every_control(page, scope: str, shot: str, idle) -> list[str]:
    """Move every enabled, visible control of every widget cell in ``scope``; return a log line
    per control; raise listing every control that changed nothing (or broke the cell).

    Choices (dropdowns, toggle buttons) go last: a choice may disable the controls it makes
    irrelevant, which are moved first, in the setting where they apply. Controls disabled at
    first (K under full participation, say) get a second visit after the choices."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    cells = page.locator(f"{scope} .jp-CodeCell").filter(has=page.locator(CONTROL))
    assert cells.count() > 0, "no cell with widget controls"
    log, failures, panels, redraws = [], [], 0, []
    for c in range(cells.count()):
        cell = cells.nth(c)
        controls = cell.locator(CONTROL)
        if not cell.locator(".widget-output").count():
            failures.append(f"cell {c}: controls without a widget output to redraw")
            continue
        panels += 1
        moved = 0
        kinds = [controls.nth(k).evaluate(_CONTROL_STATE_JS)["kind"] for k in range(controls.count())]
        pending = sorted(range(len(kinds)), key=lambda k: kinds[k] in CHOICES)

        def visit(k) -> bool:
            """Move control k if it is enabled and visible (record the outcome); False if not."""
            nonlocal moved
            control = controls.nth(k)
            state = control.evaluate(_CONTROL_STATE_JS)
            name = f"cell {c} {state['kind'].removeprefix('widget-')} {state['label']!r}"
            if state["hidden"] or state["disabled"]:
                return False
            t0 = time.perf_counter()
            before, after, problem = _move_and_check(page, cell, control, state["kind"], idle)
            if problem:
                failures.append(f"{name}: {problem}")
                return True
            moved += 1
            seconds = time.perf_counter() - t0
            log.append(f"{name}: {before} -> {after}, redrawn in {seconds:.1f} s")
            redraws.append({"cell": c, "control": state["label"], "kind": state["kind"],
                            "before": before, "after": after, "seconds": round(seconds, 2)})
            return True

        for _ in range(2):
            pending = [k for k in pending if not visit(k)]
        # Still disabled: step a choice through its options until the control applies.
        choices = [j for j, kind in enumerate(kinds) if kind in CHOICES]
        for k in pending:
            tries = [j for j in choices for _ in range(max(1, _options(controls.nth(j), kinds[j]) - 1))]
            if not any(visit(j) and visit(k) for j in tries):
                state = controls.nth(k).evaluate(_CONTROL_STATE_JS)
                log.append(f"cell {c} {state['label']!r}: never enabled by any choice (skipped)")
        if moved == 0:
            failures.append(f"cell {c}: no control could be moved")
        cell.screenshot(path=str(SHOTS / f"{shot}-cell{c}.png"))
    tracebacks = _errors(page, scope)
    if tracebacks:
        failures.append(f"a traceback after moving controls:\n{tracebacks[0]}")
    print("\n".join(log))
    # Seconds from the move to a settled redraw (browser round trip included), per control.
    (SHOTS / f"{shot}-redraws.json").write_text(json.dumps(redraws, indent=1))
    assert not failures, f"{panels} widget cells; problems:\n" + "\n".join(failures)
    return log


# --- the tests ------------------------------------------------------------------------------

def _open_in_lab(page, lab: LabServer, name: str):
    """JupyterLab: open the notebook, Run All; return the scope and the idle test to move in."""
    _open_notebook(page, lab, name)
    _run_all(page)
    return PANEL, _lab_idle


def _open_in_voila(page, voila: VoilaServer, name: str):
    """Voila: render the dashboard (it runs every cell itself); no code, no traceback shown.

    Voila 0.5 now and then stops executing a notebook part-way with nothing logged
    (voila-dashboards/voila#1428, open upstream); a user reloads the page, which starts a
    fresh kernel. So does this test, once, printing what the stuck page showed; a second
    stuck render fails the test with that text and the server log.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    url = f"{voila.url}/voila/render/{name}"
    for attempt, wait_s in enumerate((VOILA_FIRST_RENDER_S, RUN_ALL_TIMEOUT_S), start=1):
        page.goto(url, wait_until="commit", timeout=RUN_ALL_TIMEOUT_S * 1000)
        try:
            page.wait_for_selector(".jp-CodeCell .widget-output", timeout=wait_s * 1000)
            break
        except PlaywrightTimeout:
            shown = page.evaluate("() => (document.body ? document.body.innerText : '').slice(-400)")
            if attempt == 2:
                raise AssertionError(
                    f"{name}: no widget rendered after two loads ({VOILA_FIRST_RENDER_S} s, then "
                    f"{wait_s} s); the page shows "
                    f"{shown!r}\nserver log:\n{voila.log_tail()}") from None
            print(f"voila {name}: no widget after {wait_s} s (page shows {shown!r}); reloading once")
    page.wait_for_function("() => !document.querySelector('#loading, .voila-spinner')",
                           timeout=RUN_ALL_TIMEOUT_S * 1000, polling=500)
    assert page.locator(".jp-CodeCell .jp-InputArea:visible").count() == 0, "the dashboard shows code"
    errors = _errors(page, "body")
    assert not errors, f"the dashboard shows a traceback:\n{errors[0]}"
    return "body", lambda p: True   # a dashboard has no execution indicator: stable output suffices


def _drive(server: Server, context, name: str, shot: str, open_) -> None:
    """Open ``name`` with ``open_``, move every control, keep screenshots (also of a failure)."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{shot}-failure.png").unlink(missing_ok=True)
    page = context.new_page()
    started = time.perf_counter()
    try:
        scope, idle = open_(page, server, name)
        log = _move_every_control(page, scope, shot, idle)
        page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        print(f"{server.name} {name}: {len(log)} controls, {time.perf_counter() - started:.1f} s")
    except BaseException:
        try:
            page.screenshot(path=str(ARTIFACTS / f"{shot}-failure.png"), full_page=True)
        except Exception:
            pass
        print(server.log_tail())
        raise
    finally:
        page.close()
        server.shutdown_kernels()


@browser
@slow
def test_fixture_slider_redraws_plot_in_jupyterlab(lab, browser_context):
    _drive(lab, browser_context, FIXTURE_NAME, "browser_widget_demo", _open_in_lab)


@browser
@slow
@pytest.mark.parametrize("name", NOTEBOOKS, ids=[n.removesuffix(".ipynb") for n in NOTEBOOKS])
def test_every_control_redraws_in_jupyterlab(name, lab, browser_context):
    _drive(lab, browser_context, name, f"browser_{Path(name).stem}", _open_in_lab)


@browser
@slow
@pytest.mark.parametrize("name", DASHBOARDS, ids=[n.removesuffix(".ipynb") for n in DASHBOARDS])
def test_every_control_redraws_in_voila_dashboard(name, voila, browser_context):
    _drive(voila, browser_context, name, f"voila_{Path(name).stem}", _open_in_voila)


# --- without a browser: the harness's own promises --------------------------------------------

@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_chromium_says_what_to_install(monkeypatch, ci):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match=r"apt-get install -y chromium"):
        _require_chromium()


def test_every_notebook_and_the_documented_dashboards_are_driven():
    on_disk = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert NOTEBOOKS == on_disk and len(NOTEBOOKS) >= 13
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/voila notebooks/" in readme
    assert re.search(r"^voila==", (ROOT / "requirements.txt").read_text(), re.M)
    assert set(DASHBOARDS) <= set(NOTEBOOKS)
