"""The README's first command, `.venv/bin/jupyter lab notebooks/`, serves the workbook, as root too
(containers often run as root, and Jupyter refuses root unless allow_root is configured)."""
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JUPYTER = ROOT / ".venv" / "bin" / "jupyter"

pytestmark = pytest.mark.slow


def test_readme_quickstart_commands_are_the_ones_tested():
    readme = (ROOT / "README.md").read_text()
    assert "bash .ci/install && .venv/bin/jupyter lab notebooks/" in readme
    assert "bash .ci/install && bash .ci/test" in readme


@pytest.mark.skipif(not JUPYTER.exists(), reason="no .venv: run bash .ci/install first")
def test_jupyter_lab_starts_with_the_readme_command(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(8)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    # the README's command, plus what a test needs: no browser, a free port on loopback, a known token
    cmd = [str(JUPYTER), "lab", "notebooks/", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}"]
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode} (uid {os.getuid()}):\n{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=2) as r:
                    listing = r.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("jupyter lab did not answer within 90 s:\n" + log.read_text()[-2000:])
        assert "00_welcome.ipynb" in listing
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
