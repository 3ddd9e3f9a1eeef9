"""``History``: the tables a federated run produces, and their save/load.

One file per run (:meth:`History.save`), written atomically and readable with
``torch.load(path, weights_only=True)``: tables as column lists with their dtypes, the config as
plain JSON values, every tensor detached on the CPU. :meth:`History.load` reads it back (format
``fedlab_utils.History/2``, and the older ``/1``) and turns any damaged or foreign file into a
``ValueError`` naming the file.
"""
from __future__ import annotations

import copy
import errno
import json
import math
import numbers
import os
import pathlib
import secrets
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._core import checks as chk

METRIC_COLUMNS = ["round", "client", "split", "model", "metric", "value"]
FORMAT = "fedlab_utils.History/2"
_FORMAT_PREFIX = "fedlab_utils.History/"
_KEYS = {
    "fedlab_utils.History/1": ("metrics", "rounds", "timing", "config", "params", "trajectory", "client_state"),
    "fedlab_utils.History/2": ("metrics", "rounds", "timing", "config", "params", "trajectory", "client_state",
                               "server_state", "personal_params"),
}


def metrics_frame(rows: dict) -> pd.DataFrame:
    """The pinned ``metrics`` table from column lists (client None/-1 -> <NA>)."""
    df = pd.DataFrame({c: rows.get(c, []) for c in METRIC_COLUMNS})
    df["round"] = df["round"].astype("int64")
    client = pd.to_numeric(df["client"], errors="raise")  # None -> NaN, one pass over the column
    df["client"] = client.where(client >= 0).astype("Int64")
    df["split"] = df["split"].astype(str)
    df["model"] = df["model"].astype(str)
    df["metric"] = df["metric"].astype(str)
    df["value"] = df["value"].astype("float64")
    return df


# ---------------------------------------------------------------------- plain values
_PLAIN = "tensors, numbers, strings, bools, None and lists/tuples/dicts of them"


def _portable(value, where: str):
    """``value`` as what ``torch.load(weights_only=True)`` reads: detached CPU tensors, exact
    Python scalars (numpy scalars converted), plain dict/list/tuple; anything else -> ValueError."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            key = _portable(k, f"{where} key {k!r}")
            if isinstance(key, (torch.Tensor, dict, list)):
                raise ValueError(f"{where} keys must be numbers, strings or tuples, got {type(k).__name__}")
            out[key] = _portable(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, list):
        return [_portable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_portable(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise ValueError(f"{where} must hold only {_PLAIN} (what torch.load(weights_only=True) reads), "
                     f"got a value of type {type(value).__name__}")


def _json_value(value, where: str):
    """``value`` as plain JSON data (numpy scalars/arrays, tuples, paths, scalar tensors converted)."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fsdecode(os.fspath(value))
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return _json_value(value.item(), where)
    if isinstance(value, np.ndarray):
        return _json_value(value.tolist(), where)
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            key = str(_json_value(k, f"{where} key {k!r}") if isinstance(k, (np.generic, torch.Tensor)) else k)
            if key in out:
                raise ValueError(f"{where} must have keys that stay distinct as strings, got two keys "
                                 f"written {key!r}")
            out[key] = _json_value(v, f"{where}[{k!r}]")
        return out
    raise ValueError(f"{where} must be JSON-able (numbers, strings, bools, None, lists and dicts of them), "
                     f"got a value of type {type(value).__name__}")


def _json_config(config) -> dict:
    """The config as plain JSON values; a value that is not -> ValueError naming its key."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    out = _json_value(dict(config), "config")
    for k, v in out.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError) as e:  # pragma: no cover - _json_value only emits JSON types
            raise ValueError(f"config[{k!r}] must be JSON-able, got a value of type {type(v).__name__} "
                             f"({e})") from None
    return out


def _table(df, name: str) -> dict:
    """A DataFrame as column lists plus dtypes (and the index when it is not 0..n-1)."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")

    def cell(v, where):
        if v is pd.NA or v is pd.NaT:  # missing values of Int64/boolean/string columns
            return None
        return _portable(v.item() if isinstance(v, np.generic) else v, where)

    default = isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1
    return {
        "columns": [_portable(c, f"{name} column name") for c in df.columns],
        "dtypes": [str(t) for t in df.dtypes],
        "data": [[cell(v, f"{name}[{c!r}]") for v in df.iloc[:, j]] for j, c in enumerate(df.columns)],
        "index": None if default else [cell(v, f"{name} index") for v in df.index],
        "index_name": _portable(df.index.name, f"{name} index name"),
    }


def _frame(blob) -> pd.DataFrame:
    columns, dtypes, data = blob["columns"], blob["dtypes"], blob["data"]
    if not (len(columns) == len(dtypes) == len(data)):
        raise ValueError("columns, dtypes and data differ in length")
    series = []
    for values, dtype in zip(data, dtypes):
        try:
            series.append(pd.Series(values, dtype=dtype))
        except (TypeError, ValueError):
            series.append(pd.Series(values))
    df = pd.concat(series, axis=1) if series else pd.DataFrame(index=range(len(blob["index"] or [])))
    df.columns = pd.Index(columns) if columns else df.columns
    if blob["index"] is not None:
        df.index = pd.Index(blob["index"], name=blob["index_name"])
    else:
        df.index = pd.RangeIndex(len(df), name=blob["index_name"])
    return df


# ---------------------------------------------------------------------- equality
def _equal(a, b) -> bool:
    """Deep equality that never raises: tensors/arrays elementwise (NaN equal to NaN), frames by
    ``DataFrame.equals``, dicts/lists recursively."""
    if a is b:
        return True
    try:
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
                return False
            if a.shape != b.shape or a.dtype != b.dtype:
                return False
            a, b = a.detach().cpu(), b.detach().cpu()
            if torch.equal(a, b):
                return True
            if not (a.is_floating_point() or a.is_complex()):
                return False
            na, nb = torch.isnan(a), torch.isnan(b)
            return torch.equal(na, nb) and torch.equal(a[~na], b[~nb])
        if isinstance(a, (pd.DataFrame, pd.Series)) or isinstance(b, (pd.DataFrame, pd.Series)):
            return type(a) is type(b) and a.equals(b)
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
                return False
            try:
                return bool(np.array_equal(a, b, equal_nan=True))
            except TypeError:
                return bool(np.array_equal(a, b))
        if isinstance(a, Mapping) or isinstance(b, Mapping):
            if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or set(a) != set(b):
                return False
            return all(_equal(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            if isinstance(a, list) != isinstance(b, list) or isinstance(a, tuple) != isinstance(b, tuple):
                return False
            return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return bool(a == b)
    except Exception:  # noqa: BLE001 - equality must answer, not raise
        return False


def _config_equal(a, b) -> bool:
    try:
        a, b = _json_config(a), _json_config(b)
    except Exception:  # noqa: BLE001 - not JSON-able: compare as given
        pass
    return _equal(a, b)


# ---------------------------------------------------------------------- the class
@dataclass(eq=False, repr=False)
class History:
    """Everything a federated run (``flu.run``) produced; save/load it with :meth:`save`/:meth:`load`.

    Attributes
    ----------
    metrics : DataFrame
        Long form with exactly the columns ``round, client, split, model, metric, value``:
        ``round`` int64 (0 = before training, then the evaluated rounds); ``client`` pandas
        ``Int64``, ``<NA>`` for the value pooled over all clients; ``split`` one of ``train``,
        ``test``, ``val``, ``support``, ``query``; ``model`` ``global`` (the server's model) or
        ``personal`` (each client's own); ``metric`` e.g. ``loss``, ``accuracy``; ``value`` float64.
    rounds : DataFrame
        One row per round of deterministic quantities: ``round, clients_selected,
        clients_completed, bytes_up, bytes_down, trainable_params``, plus the diagnostics columns
        when the run had ``diagnostics=True``.
    timing : DataFrame
        Measured wall-clock seconds per round. Measured, hence never part of a replay comparison
        (``==`` ignores it).
    config : dict
        Every value the run used, defaults included, as JSON-able values.
    params : dict
        The final global parameters, name -> tensor.
    model : nn.Module or None
        A copy of the model holding ``params`` (``None`` after :meth:`load` without ``model=``).
    trajectory : list or None
        With ``record_params=True``, the global parameters (name -> tensor) after every round,
        round 0 first; else ``None``.
    client_state : dict
        Per-client persistent state of the algorithm (e.g. SCAFFOLD's c_i), name -> tensor
        stacked over the N clients, shape ``(N, ...)``.
    server_state : dict
        What resuming the run needs: ``{"round": last completed round, "params": global
        parameters in the server's coordinates, "algorithm": the server optimiser's moments /
        SCAFFOLD's c / FedDyn's h}``; empty when the run did not record it.
    personal_params : dict or None
        Name -> ``(N, ...)`` tensor of per-client personal parameters, filled by
        personalisation methods; ``None`` otherwise.
    timeline : DataFrame or None
        With ``systems=``, long form ``round, client, phase, start, end, outcome`` on the virtual
        clock: ``phase`` in download / compute / upload, ``outcome`` in completed / dropped / late
        / partial, times in seconds since the run's start; ``None`` without a simulation.

    Two Histories are ``==`` when ``metrics``, ``rounds``, ``config``, ``params``,
    ``client_state``, ``server_state``, ``personal_params``, ``timeline`` and ``trajectory`` are equal (tables
    by ``DataFrame.equals``, tensors by ``torch.equal``, recursively through dicts and lists);
    ``timing`` (measured, not deterministic) and ``model`` (a copy of ``params``) are left out,
    so a replay with the same seed compares equal. Histories are mutable, hence unhashable.
    """

    metrics: pd.DataFrame
    rounds: pd.DataFrame
    timing: pd.DataFrame
    config: dict
    params: dict
    model: nn.Module | None = None
    trajectory: list | None = None
    client_state: dict = field(default_factory=dict)
    server_state: dict = field(default_factory=dict)
    personal_params: dict | None = None
    timeline: pd.DataFrame | None = None

    # ------------------------------------------------------------------ views
    def _pooled(self, metric, split, model) -> pd.DataFrame:
        m = self.metrics

        def recorded(col, rows):
            return sorted(str(v) for v in pd.unique(rows[col].dropna()))

        splits = recorded("split", m)
        if split not in splits:
            chk.fail("split", f"one of the recorded splits {splits}", split)
        m = m[m["split"] == split]
        models = recorded("model", m)
        if model not in models:
            chk.fail("model", f"one of the models recorded for split={split!r}: {models}", model)
        m = m[m["model"] == model]
        names = recorded("metric", m)
        if metric not in names:
            chk.fail("metric", f"one of the metrics recorded for split={split!r}, model={model!r}: {names}",
                     metric)
        sel = m[(m["metric"] == metric) & m["client"].isna()]
        if sel.empty:
            chk.fail("metric", f"recorded pooled over clients (client <NA>) for split={split!r}, "
                     f"model={model!r}; only per-client values are", metric)
        return sel

    def final(self, metric: str = "accuracy", split: str = "test", model: str = "global") -> float:
        """The pooled ``metric`` at the last evaluated round. An unrecorded ``split``, ``model`` or
        ``metric`` raises ValueError naming it and listing what is recorded."""
        sel = self._pooled(metric, split, model)
        return float(sel.loc[sel["round"].idxmax(), "value"])

    def curve(self, metric: str = "accuracy", split: str = "test", model: str = "global") -> pd.Series:
        """Pooled ``metric`` per evaluated round as a Series indexed by round (errors as :meth:`final`)."""
        return self._pooled(metric, split, model).set_index("round")["value"]

    def to_frame(self, keys=None) -> pd.DataFrame:
        """``metrics`` with one column per scalar config value, for sweeps over runs (``pd.concat``).

        ``keys`` (a name or a list) picks config keys; absent or non-scalar ones are skipped. A key
        that collides with a metrics column (e.g. the config's ``model`` description) is added as
        ``config_<key>``, so the metrics' own columns are kept.
        """
        if isinstance(keys, str):
            keys = [keys]
        wanted = None if keys is None else set(keys)
        df = self.metrics.copy()
        used = set(df.columns)
        for k, v in self.config.items():
            if wanted is not None and k not in wanted:
                continue
            if not (v is None or isinstance(v, (str, bool, np.bool_, numbers.Number))):
                continue
            name = k
            while name in used:
                name = f"config_{name}"
            used.add(name)
            df[name] = _json_value(v, f"config[{k!r}]") if isinstance(v, (np.generic,)) else v
        return df

    def __repr__(self):
        try:
            cfg = self.config if isinstance(self.config, Mapping) else {}
            r = self.rounds
            if isinstance(r, pd.DataFrame) and "round" in r.columns and len(r):
                rounds = int(r["round"].max())
            else:
                rounds = len(r) if r is not None else 0
            rows = len(self.metrics) if self.metrics is not None else 0
            return f"History({cfg.get('algorithm')!r}, rounds={rounds}, metrics={rows} rows)"
        except Exception:  # noqa: BLE001 - repr must not raise
            return "History(<unreadable>)"

    # ------------------------------------------------------------------ equality
    def __eq__(self, other):
        if not isinstance(other, History):
            return NotImplemented
        if self is other:
            return True
        return (_equal(self.metrics, other.metrics) and _equal(self.rounds, other.rounds)
                and _config_equal(self.config, other.config) and _equal(self.params, other.params)
                and _equal(self.client_state, other.client_state)
                and _equal(self.server_state, other.server_state)
                and _equal(self.personal_params, other.personal_params)
                and _equal(self.timeline, other.timeline)
                and _equal(self.trajectory, other.trajectory))

    __hash__ = None

    # ------------------------------------------------------------------ persistence
    def save(self, path, *, overwrite: bool = False) -> pathlib.Path:
        """Write one file, loadable with ``torch.load(path, weights_only=True)`` and :meth:`load`.

        Atomic: written to a temporary file beside ``path``, fsynced, then renamed over it, so a
        failure leaves any existing file untouched (and no temporary file behind). An existing
        ``path`` is refused unless ``overwrite=True``. The config is stored as plain JSON values
        (numpy scalars -> numbers/bools, arrays and tuples -> lists, paths -> str, scalar tensors
        -> numbers); one that cannot be raises ValueError naming its key. Tensors are stored
        detached on the CPU. Returns the path written.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        path = pathlib.Path(path)
        if not isinstance(overwrite, bool):
            raise TypeError(f"overwrite must be a bool, got {overwrite!r}")
        if path.exists() and not overwrite:
            raise ValueError(f"path {str(path)!r} already exists; pass overwrite=True to replace it")
        blob = {
            "format": FORMAT,
            "metrics": _table(self.metrics, "metrics"),
            "rounds": _table(self.rounds, "rounds"),
            "timing": _table(self.timing, "timing"),
            "config": _json_config(self.config),
            "params": _portable(self.params, "params"),
            "trajectory": _portable(self.trajectory, "trajectory"),
            "client_state": _portable(self.client_state, "client_state"),
            "server_state": _portable(self.server_state, "server_state"),
            "personal_params": _portable(self.personal_params, "personal_params"),
            "timeline": None if self.timeline is None else _table(self.timeline, "timeline"),
        }
        parent = path.parent
        if not parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, "path's directory does not exist", str(parent))
        tmp = parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            with os.fdopen(fd, "wb") as f:
                torch.save(blob, f)
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                try:  # link refuses to clobber a file that appeared meanwhile
                    os.link(tmp, path)
                except FileExistsError:
                    raise ValueError(f"path {str(path)!r} already exists; pass overwrite=True to replace "
                                     "it") from None
                except OSError:  # no hard links on this file system
                    if path.exists():
                        raise ValueError(f"path {str(path)!r} already exists; pass overwrite=True to "
                                         "replace it") from None
                    os.replace(tmp, path)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        _fsync_dir(parent)
        return path

    @classmethod
    def load(cls, path, model: nn.Module | None = None) -> "History":
        """Read :meth:`save`'s file (format ``/2`` or ``/1``); pass ``model`` (same architecture)
        to get ``.model`` back. A missing file raises FileNotFoundError; a truncated, corrupted or
        foreign one raises ValueError naming the file and what is wrong."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        name = os.fsdecode(os.fspath(path))
        blob = _read(name)

        def bad(what):
            return ValueError(f"{name!r} {what}")

        if not isinstance(blob, dict):
            raise bad(f"is not a History file (it holds a {type(blob).__name__}, not History.save's dict)")
        tag = blob.get("format")
        if tag is None:
            raise bad("is not a History file (format tag missing)")
        if tag not in _KEYS:
            if isinstance(tag, str) and tag.startswith(_FORMAT_PREFIX):
                raise bad(f"has format {tag!r}, which this version does not read (it reads "
                          f"{sorted(_KEYS)}); update fedlab_utils")
            raise bad(f"is not a History file (format tag {tag!r})")
        for key in _KEYS[tag]:
            if key not in blob:
                raise bad(f"is missing the {key!r} entry that a {tag} file holds (truncated or edited?)")

        def part(key, build):
            try:
                return build(blob[key])
            except Exception as e:  # noqa: BLE001 - a malformed entry names its key
                raise bad(f"has a malformed {key!r} entry ({type(e).__name__}: {e})") from e

        if tag == "fedlab_utils.History/1":
            metrics = part("metrics", metrics_frame)
            rounds = part("rounds", pd.DataFrame)
            timing = part("timing", pd.DataFrame)
            server_state, personal, timeline = {}, None, None
        else:
            metrics, rounds, timing = (part(k, _frame) for k in ("metrics", "rounds", "timing"))
            server_state, personal = blob["server_state"], blob["personal_params"]
            timeline = None if blob.get("timeline") is None else part("timeline", _frame)
        config, params = blob["config"], blob["params"]
        if not isinstance(config, dict):
            raise bad(f"has a malformed 'config' entry (a {type(config).__name__}, not a dict)")
        if not isinstance(params, dict):
            raise bad(f"has a malformed 'params' entry (a {type(params).__name__}, not a dict)")
        loaded = None
        if model is not None:
            if not isinstance(model, nn.Module):
                raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
            loaded = copy.deepcopy(model)
            try:
                loaded.load_state_dict({**loaded.state_dict(), **params})
            except RuntimeError as e:
                raise ValueError(f"model must have the architecture of the run saved in {name!r}: {e}") from None
        return cls(metrics, rounds, timing, config, params, loaded, blob["trajectory"], blob["client_state"],
                   server_state=server_state, personal_params=personal, timeline=timeline)


def _fsync_dir(directory) -> None:
    """Make the rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read(name: str):
    """``torch.load(name, weights_only=True)`` with every failure named: FileNotFoundError for a
    missing file, ValueError for an empty, foreign, truncated or corrupted one."""
    if not os.path.exists(name):
        raise FileNotFoundError(errno.ENOENT, "no History file at this path", name)
    if os.path.isdir(name):
        raise ValueError(f"{name!r} is a directory, not a History file")
    with open(name, "rb") as f:
        head = f.read(4)
    if not head:
        raise ValueError(f"{name!r} is empty (0 bytes), not a History file")
    if head.startswith(b"PK"):
        if zipfile.is_zipfile(name):
            try:
                with zipfile.ZipFile(name) as z:
                    names = z.namelist()
            except (zipfile.BadZipFile, OSError, ValueError) as e:
                raise ValueError(f"{name!r} is truncated or corrupted ({type(e).__name__}: {e})") from None
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                raise ValueError(f"{name!r} is not a History file (a zip archive that torch.save did not write)")
    elif not head.startswith(b"\x80"):  # neither torch's zip format nor its legacy pickle format
        raise ValueError(f"{name!r} is not a History file (not a file written by torch.save)")
    try:
        return torch.load(name, weights_only=True)
    except (PermissionError, FileNotFoundError, IsADirectoryError):
        raise
    except Exception as e:  # noqa: BLE001 - EOFError, pickle and zip errors all mean a damaged file
        first = (str(e).strip().splitlines() or [""])[0]
        first = first if len(first) <= 160 else first[:157] + "..."
        raise ValueError(f"{name!r} is truncated or corrupted ({type(e).__name__}: {first})") from None
