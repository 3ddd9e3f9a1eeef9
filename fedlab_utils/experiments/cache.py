"""The on-disk cache of :func:`~.sweep.sweep`: one result file and one JSON manifest per run.

A run is keyed by the SHA-256 of its canonical JSON ``{"config": ..., "seed": ...}`` (sorted keys),
so the same configuration and seed always land on the same file pair inside ``<cache_dir>/<name>/``:

* ``<key>.history.pt`` (``History.save``'s file) or ``<key>.frame.json`` (a DataFrame,
  ``to_json(orient="table")``, dtypes kept), written first;
* ``<key>.json``, the manifest (configuration, seed, package versions, git commit, wall seconds,
  the result file's SHA-256), written last, so its presence marks a finished run.

Every write goes to a temporary file in the same folder and is renamed over the target
(``os.replace``), so a crash or an interruption never leaves a half-written file under a final
name. Reading checks everything before a result is used: a manifest that is not valid JSON or
lacks a field, a result whose SHA-256 differs from the manifest's (truncated, garbled), one that
does not parse, or one written by another version (``match``) is reported with a
:class:`CacheWarning` naming the file, and the run is recomputed, never used.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import numbers
import os
import pathlib
import secrets
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd

FORMAT = "fedlab_utils.experiments/1"
MANIFEST_FIELDS = ("format", "name", "key", "config", "seed", "fn", "result", "versions", "git_commit", "wall_s")
MATCHABLE = ("fedlab_utils", "torch", "numpy", "pandas", "python", "git")


class CacheWarning(UserWarning):
    """A cache entry was not used (corrupted, foreign or from another version) and is recomputed."""


def default_dir() -> pathlib.Path:
    """``$FEDLAB_CACHE_DIR`` if set, else ``data/cache/experiments`` of the source checkout (git-ignored),
    else ``~/.cache/fedlab_utils/experiments``."""
    env = os.environ.get("FEDLAB_CACHE_DIR")
    if env:
        return pathlib.Path(env)
    root = pathlib.Path(__file__).resolve().parents[2]
    if (root / ".git").exists() and (root / "data").is_dir():
        return root / "data" / "cache" / "experiments"
    return pathlib.Path.home() / ".cache" / "fedlab_utils" / "experiments"


# ---------------------------------------------------------------- canonical JSON and keys
def canonical(value, where: str):
    """``value`` as plain JSON values (numpy scalars -> numbers, tuples -> lists); anything else
    (objects, tensors, NaN/inf, non-str dict keys) raises TypeError naming ``where``."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        v = float(value)
        if not math.isfinite(v):
            raise TypeError(f"{where} must be JSON-able (finite numbers only), got {v!r}")
        return v
    if isinstance(value, (list, tuple)):
        return [canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{where} must be JSON-able (dicts with str keys), got key {bad[0]!r}")
        return {k: canonical(v, f"{where}[{k!r}]") for k, v in value.items()}
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    raise TypeError(f"{where} must be JSON-able (str, number, bool, None, or lists/dicts of them) so that it "
                    f"can be hashed and stored, got {text} of type {type(value).__name__}; pass a name or "
                    "a number and build the object inside the function")


def dumps(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def run_key(config: dict, seed: int) -> str:
    """First 20 hex digits of SHA-256 over the canonical JSON of ``{"config": config, "seed": seed}``."""
    return hashlib.sha256(dumps({"config": config, "seed": seed}).encode()).hexdigest()[:20]


# ---------------------------------------------------------------- environment
@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's ``git rev-parse HEAD`` (the source tree of this package), or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=pathlib.Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def versions() -> dict:
    """Versions of fedlab_utils, torch, numpy, pandas and Python."""
    import platform

    import torch

    package = sys.modules[__name__.partition(".")[0]]  # loaded before any of its sub-packages
    return {"fedlab_utils": package.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "pandas": pd.__version__, "python": platform.python_version()}


# ---------------------------------------------------------------- atomic files
def atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it over ``path``."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- one entry
def manifest_path(folder: pathlib.Path, key: str) -> pathlib.Path:
    return folder / f"{key}.json"


def store(folder: pathlib.Path, key: str, *, name: str, config: dict, seed: int, fn: str, result,
          wall_s: float) -> dict:
    """Write ``result`` (a History or a DataFrame) then its manifest; return the manifest."""
    from ..engine import History

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(result, History):
        target, kind = folder / f"{key}.history.pt", "history"
        result.save(target, overwrite=True)  # atomic: temporary file + rename
    else:
        target, kind = folder / f"{key}.frame.json", "frame"
        atomic_write(target, result.to_json(orient="table", index=False).encode())
    manifest = {"format": FORMAT, "name": name, "key": key, "config": config, "seed": seed, "fn": fn,
                "result": {"file": target.name, "kind": kind, "sha256": sha256(target),
                           "bytes": target.stat().st_size},
                "versions": versions(), "git_commit": git_commit(), "wall_s": float(wall_s)}
    atomic_write(manifest_path(folder, key), (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return manifest


def _warn(message: str) -> None:
    warnings.warn(message, CacheWarning, stacklevel=4)


def read_manifest(path: pathlib.Path) -> dict:
    """The manifest at ``path``; ValueError naming the file if it is not one."""
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cache manifest {str(path)!r} is corrupted (not valid JSON: {e})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"cache manifest {str(path)!r} is corrupted (a {type(manifest).__name__}, not an object)")
    missing = [k for k in MANIFEST_FIELDS if k not in manifest]
    if missing:
        raise ValueError(f"cache manifest {str(path)!r} is corrupted (fields {missing} missing)")
    if manifest["format"] != FORMAT:
        raise ValueError(f"cache manifest {str(path)!r} has format {manifest['format']!r}, not {FORMAT!r}")
    result = manifest["result"]
    if not (isinstance(result, dict) and {"file", "kind", "sha256"} <= set(result)
            and result["kind"] in ("history", "frame") and isinstance(result["file"], str)
            and os.path.basename(result["file"]) == result["file"]):
        raise ValueError(f"cache manifest {str(path)!r} is corrupted (malformed 'result' field)")
    return manifest


def mismatch(manifest: dict, match) -> str | None:
    """What differs between the entry's recorded environment and this one, among ``match``."""
    here, there = versions(), manifest.get("versions") or {}
    for item in match:
        if item == "git":
            now, then = git_commit(), manifest.get("git_commit")
            if now != then:
                return f"git commit {then} (this checkout is at {now})"
        elif there.get(item) != here[item]:
            return f"{item} {there.get(item)} (this is {here[item]})"
    return None


def load_result(folder: pathlib.Path, manifest: dict):
    """The result file the manifest names, checked against its SHA-256; ValueError naming the file."""
    from ..engine import History

    path = folder / manifest["result"]["file"]
    if not path.is_file():
        raise ValueError(f"cache result {str(path)!r} is missing")
    if sha256(path) != manifest["result"]["sha256"]:
        raise ValueError(f"cache result {str(path)!r} is corrupted (its SHA-256 differs from the manifest's: "
                         "truncated or edited)")
    if manifest["result"]["kind"] == "history":
        return History.load(path)  # validated: a malformed file raises ValueError naming it
    try:
        return pd.read_json(io.StringIO(path.read_text()), orient="table")
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupted entry
        raise ValueError(f"cache result {str(path)!r} is corrupted ({type(e).__name__}: {e})") from None


def fetch(folder: pathlib.Path, key: str, *, config: dict, seed: int, match=("fedlab_utils",)):
    """``(manifest, result)`` of a finished, valid entry, else None (with a CacheWarning naming the
    file when an entry exists but cannot be used)."""
    path = manifest_path(folder, key)
    if not path.is_file():
        return None
    try:
        manifest = read_manifest(path)
        if manifest["config"] != config or manifest["seed"] != seed:
            raise ValueError(f"cache manifest {str(path)!r} is corrupted (it records another configuration "
                             "or seed than its key)")
        why = mismatch(manifest, match)
        if why is not None:
            _warn(f"cache entry {str(path)!r} was written by {why}; recomputing it")
            return None
        result = load_result(folder, manifest)
    except (ValueError, OSError) as e:
        _warn(f"{e}; recomputing it")
        return None
    return manifest, result


def entries(folder: pathlib.Path):
    """Every readable manifest in ``folder`` (unreadable ones are reported and skipped)."""
    out = []
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        if path.name.endswith(".frame.json"):
            continue
        try:
            out.append(read_manifest(path))
        except (ValueError, OSError) as e:
            _warn(f"{e}; skipped")
    return out


def is_cache_file(path: pathlib.Path) -> bool:
    n = path.name
    return path.is_file() and (n.endswith((".history.pt", ".frame.json", ".json")) or
                               (n.startswith(".") and n.endswith(".tmp")))
