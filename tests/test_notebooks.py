"""Every notebook in notebooks/: committed clean (static checks) and runs in FAST mode in time.

The execution tests start a fresh ``python3`` kernel from the interpreter running pytest (the
project's venv), with ``FEDLAB_FAST=1``, ``MPLBACKEND`` unset (so the kernel's inline backend
draws), the working directory ``notebooks/`` and a 600 s limit per cell. Each notebook must
finish within ``FEDLAB_NB_BUDGET`` seconds (default 60 s: the budget on a 2-core CI machine, docs/contracts.md).
Measured times go to ``test-artifacts/notebook_times.json`` and the executed notebooks to
``test-artifacts/executed/`` (the folder is git-ignored).

Adding a notebook to notebooks/ is all it takes for it to be tested. With no notebook at all the
tests fail (they never skip): the workbook is its notebooks.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
# FEDLAB_NOTEBOOK_DIR points the tests at another folder (to try the harness itself).
NOTEBOOK_DIR = Path(os.environ.get("FEDLAB_NOTEBOOK_DIR") or ROOT / "notebooks").resolve()
ARTIFACTS = ROOT / "test-artifacts"
TIMES_FILE = ARTIFACTS / "notebook_times.json"
CELL_TIMEOUT_S = 240  # a FAST notebook's whole budget is 60 s: a longer cell is a stall
DEFAULT_BUDGET_S = 60.0

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb")) if NOTEBOOK_DIR.is_dir() else []
# Never an empty parameter set (pytest would skip it): with no notebook, one failing case says so.
PARAMS = [pytest.param(p, id=p.stem) for p in NOTEBOOKS] or [pytest.param(None, id="no-notebooks")]


def _require(path: Path | None) -> Path:
    if path is None:
        pytest.fail(f"no notebook found: expected at least one *.ipynb in {NOTEBOOK_DIR}")
    return path


def _budget() -> float:
    raw = os.environ.get("FEDLAB_NB_BUDGET", "")
    if not raw.strip():
        return DEFAULT_BUDGET_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"FEDLAB_NB_BUDGET must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"FEDLAB_NB_BUDGET must be > 0, got {value}")
    return value


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # tests/conftest.py sets Agg; the kernel must use inline
    env["FEDLAB_FAST"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing can be downloaded at run time
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet debugpy warning on stderr
    return env


def _check_kernel_is_this_python() -> None:
    """The kernelspec ``python3`` must start this interpreter (the venv), not another Python."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    argv0 = spec.argv[0]
    substituted = {"python", f"python{sys.version_info[0]}", "python%i.%i" % sys.version_info[:2]}
    # jupyter_client replaces a bare "python"/"python3"/"python3.X" with sys.executable.
    if argv0 not in substituted and os.path.abspath(argv0) != os.path.abspath(sys.executable):
        pytest.fail(
            f"kernelspec 'python3' in {spec.resource_dir} starts {argv0!r}, not this "
            f"interpreter {sys.executable!r}; remove it or run "
            f"'{sys.executable} -m ipykernel install --sys-prefix'"
        )


def _record_time(name: str, record: dict) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        times = json.loads(TIMES_FILE.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        times = {}
    times[name] = record
    tmp = TIMES_FILE.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
    tmp.replace(TIMES_FILE)


def _error_outputs(nb) -> list[str]:
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if "raises-exception" in cell.get("metadata", {}).get("tags", []):
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
    # an exception inside an interactive_output callback lands in the Output widget's saved state
    state = nb.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    for model_id, model in state.get("state", {}).items():
        for out in model.get("state", {}).get("outputs", []) or []:
            text = str(out.get("text", "")) if out.get("output_type") == "stream" else ""
            if out.get("output_type") == "error" or "Traceback (most recent call last)" in text:
                found.append(f"widget {model_id}: {out.get('ename', 'traceback')}: {out.get('evalue', '')}")
    return found


def test_notebooks_folder_has_notebooks():
    assert NOTEBOOK_DIR.is_dir(), f"missing folder {NOTEBOOK_DIR}"
    assert NOTEBOOKS, f"no *.ipynb in {NOTEBOOK_DIR}"


def _cell_seconds(nb) -> float:
    """Seconds spent inside the cells (nbclient's per-cell timestamps), kernel start excluded."""
    from datetime import datetime as dt

    total = 0.0
    for cell in nb.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if start and end:
            total += (dt.fromisoformat(end.replace("Z", "+00:00")) - dt.fromisoformat(start.replace("Z", "+00:00"))
                      ).total_seconds()
    return total


def _execute(path):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=False,
                            record_timing=True, resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    error = None
    try:
        client.execute(env=_kernel_env(), cwd=str(NOTEBOOK_DIR))
    except Exception as exc:  # CellExecutionError, DeadKernelError, CellTimeoutError
        error = exc
    seconds = time.perf_counter() - start
    # A lost kernel message (seen on heavily loaded machines) stalls the harness, not the notebook:
    # the cells' own time stays small, or a cell times out waiting for a reply.
    stalled = isinstance(error, CellTimeoutError) or (error is None and seconds > _budget() >= _cell_seconds(nb))
    return nb, seconds, error, stalled


@pytest.mark.slow
@pytest.mark.parametrize("path", PARAMS)
def test_notebook_runs_in_fast_mode_within_budget(path):
    path = _require(path)
    _check_kernel_is_this_python()
    budget = _budget()
    nb, seconds, error, stalled = _execute(path)
    first = None
    if stalled:  # one fresh retry; both attempts are recorded
        first = round(seconds, 2)
        nb, seconds, error, stalled = _execute(path)

    (ARTIFACTS / "executed").mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, ARTIFACTS / "executed" / path.name)
    _record_time(
        path.name,
        {
            "seconds": round(seconds, 2),
            "cell_seconds": round(_cell_seconds(nb), 2),
            "stalled_first_attempt_s": first,
            "budget_s": budget,
            "ok": error is None,
            "code_cells": sum(c.cell_type == "code" for c in nb.cells),
            "fast": True,
            "cpu_count": os.cpu_count(),
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )

    if error is not None:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # drop the traceback's colours
        pytest.fail(f"{path.name} failed after {seconds:.1f} s:\n{message}", pytrace=False)
    errors = _error_outputs(nb)
    assert not errors, f"{path.name} has error outputs: {errors}"
    assert seconds <= budget, (
        f"{path.name} took {seconds:.1f} s in FAST mode, over the {budget:.0f} s budget "
        f"(FEDLAB_NB_BUDGET)"
    )


def _markdown_lines(nb):
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            yield from cell.source.splitlines()


def _has_heading(nb, word: str) -> bool:
    pattern = re.compile(rf"^\s*#+\s*(\d+[.)]?\s*)?{word}\b", re.IGNORECASE)
    return any(pattern.match(line) for line in _markdown_lines(nb))


WIDGET_PATTERN = re.compile(r"\bipywidgets\b|\binteractive_output\b|\binteract\(|\bflu\.widgets\b")
SYS_PATH_PATTERN = re.compile(r"\bsys\.path\b|PYTHONPATH")


@pytest.mark.parametrize("path", PARAMS)
def test_notebook_is_committed_clean_and_complete(path):
    path = _require(path)
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    problems = []

    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    if dirty:
        problems.append(f"code cells {dirty} have outputs or an execution_count (clear them)")
    if "widgets" in nb.metadata:
        problems.append("notebook metadata holds saved widget state ('widgets'): clear it")

    first = next((c for c in nb.cells if c.source.strip()), None)
    if first is None or first.cell_type != "markdown" or not first.source.lstrip().startswith("# "):
        problems.append("the first cell must be a markdown title ('# Title')")

    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    if not WIDGET_PATTERN.search(code):
        problems.append("no widget controls (ipywidgets / interactive_output) in the code")
    if SYS_PATH_PATTERN.search(code):
        problems.append("uses sys.path / PYTHONPATH: import the installed package instead")
    for word in ("Summary", "Exercises"):
        if not _has_heading(nb, word):
            problems.append(f"no '{word}' heading")

    assert not problems, f"{path.name}: " + "; ".join(problems)
