"""Sweeps of a pure function over configurations x seeds, cached run by run on disk.

``sweep(fn, grid, seeds)`` calls ``fn(**config, seed=seed)`` once per configuration and seed,
unless the cache (:mod:`.cache`) already holds a valid result for that pair; every finished run
is stored at once, so a re-run is instant and an interrupted sweep resumes where it stopped.
Results are gathered in one long-form table: ``fn``'s rows (a History's ``metrics``, a DataFrame,
or ``metric, value`` rows from a dict or a number) with one column per configuration key and a
``seed`` column. :func:`summary` averages over seeds with a Student-t confidence interval

    mean +- t_{1-(1-c)/2, n-1} * s / sqrt(n),   s the sample standard deviation over n seeds,

the band that multi-seed plots draw (Henderson et al. 2018, "Deep RL that matters", AAAI, on
why one seed is not a result).
"""
from __future__ import annotations

import inspect
import itertools
import numbers
import os
import pathlib
import re
import time

import numpy as np
import pandas as pd

from .._core import checks as chk
from .._core.random import seed_value
from . import cache as _cache

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


# ---------------------------------------------------------------- inputs
def grid(**lists) -> list:
    """The Cartesian product of ``lists``: ``grid(a=[1, 2], b=["x"])`` ->
    ``[{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]`` (first key slowest)."""
    return _expand(lists)


def _expand(lists: dict) -> list:
    if not lists:
        chk.fail("grid", "a non-empty dict of lists (or a list of configuration dicts)", lists)
    for k, v in lists.items():
        if not isinstance(k, str):
            raise TypeError(f"grid keys must be str, got {k!r}")
        if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__iter__"):
            raise TypeError(f"grid[{k!r}] must be a list of values, got {v!r}")
        if len(list(v)) == 0:
            chk.fail(f"grid[{k!r}]", "a non-empty list of values (an empty one makes the grid empty)", list(v))
    keys = list(lists)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(list(lists[k]) for k in keys))]


def _configs(grid_, fn) -> list:
    if isinstance(grid_, dict):
        configs = _expand(grid_)
    elif isinstance(grid_, (list, tuple)):
        if not grid_:
            chk.fail("grid", "a non-empty dict of lists (or a list of configuration dicts)", grid_)
        for i, c in enumerate(grid_):
            if not isinstance(c, dict) or not all(isinstance(k, str) for k in c):
                raise TypeError(f"grid[{i}] must be a dict with str keys, got {c!r}")
        configs = [dict(c) for c in grid_]
    else:
        raise TypeError(f"grid must be a dict of lists or a list of dicts, got {type(grid_).__name__}")
    configs = [_cache.canonical(c, "grid configuration") for c in configs]
    for c in configs:
        if "seed" in c:
            chk.fail("grid", "free of a 'seed' key (seeds go in seeds=)", sorted(c))
    seen = set()
    for c in configs:
        text = _cache.dumps(c)
        if text in seen:
            chk.fail("grid", "free of duplicate configurations", c)
        seen.add(text)
    _check_signature(fn, configs)
    return configs


def _check_signature(fn, configs) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and some C callables: nothing to check
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        named = None
    else:
        named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if "seed" not in named:
            raise TypeError(f"fn must accept a seed= keyword argument; {_qualname(fn)} takes {sorted(named)}")
    keys = set().union(*configs)
    if named is not None:
        unknown = sorted(keys - named)
        if unknown:
            raise ValueError(f"grid has configuration keys {unknown} that {_qualname(fn)} does not take "
                             f"(its arguments: {sorted(named - {'seed'})})")
    required = {n for n, p in params.items() if p.default is p.empty and n != "seed"
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for c in configs:
        lacking = sorted(required - set(c))
        if lacking:
            chk.fail("grid", f"a value for every required argument of {_qualname(fn)} (missing {lacking})", c)


def _seeds(seeds) -> list:
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        seeds = [seeds]
    try:
        seeds = list(seeds)
    except TypeError:
        raise TypeError(f"seeds must be an int or a list of ints, got {seeds!r}") from None
    if not seeds:
        chk.fail("seeds", "a non-empty list of ints", seeds)
    seeds = [seed_value("seeds", s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        chk.fail("seeds", "a list of distinct ints", seeds)
    return seeds


def _qualname(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _folder(name, cache_dir) -> pathlib.Path:
    if not isinstance(name, str) or not _NAME.match(name):
        chk.fail("name", "1-100 letters, digits, '_', '.', '-' (a folder name, starting with a letter or digit)",
                 name)
    if cache_dir is None:
        return _cache.default_dir() / name
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a str or os.PathLike, got {type(cache_dir).__name__}")
    return pathlib.Path(cache_dir) / name


def _match(match) -> tuple:
    match = (match,) if isinstance(match, str) else tuple(match)
    for m in match:
        chk.option("match", m, _cache.MATCHABLE)
    return match


# ---------------------------------------------------------------- results -> rows
def _normalize(result, fn):
    """A History or DataFrame as is; a dict of numbers or a number as ``metric, value`` rows."""
    from ..engine import History

    if isinstance(result, (History, pd.DataFrame)):
        return result
    if isinstance(result, dict) and result and all(isinstance(k, str) for k in result):
        try:
            values = [float(v) for v in result.values()]
        except (TypeError, ValueError):
            values = None
        if values is not None:
            return pd.DataFrame({"metric": list(result), "value": values})
    if isinstance(result, numbers.Real) and not isinstance(result, bool):
        return pd.DataFrame({"metric": ["value"], "value": [float(result)]})
    raise TypeError(f"fn must return a History, a DataFrame, a dict of numbers or a number; {_qualname(fn)} "
                    f"returned a {type(result).__name__}")


def _rows(result, config: dict, seed: int) -> tuple[pd.DataFrame, dict]:
    """``result``'s table with the configuration columns (``config_<key>`` where a key collides with a
    column of the result) and ``seed`` in front; returns it and key -> column name."""
    from ..engine import History

    df = result.metrics if isinstance(result, History) else result
    df = df.reset_index(drop=True).copy()
    used, names, front = set(df.columns), {}, {}
    for k, v in list(config.items()) + [("seed", seed)]:
        col = k
        while col in used:
            col = f"config_{col}"
        used.add(col)
        names[k] = col
        front[col] = [_hashable(v)] * len(df)
    out = pd.concat([pd.DataFrame(front, index=df.index), df], axis=1)
    return out, names


def _hashable(v):
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def _table(parts, names, meta) -> pd.DataFrame:
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    table.attrs["sweep"] = meta
    table.attrs["config_columns"] = [names[k] for k in names if k != "seed"]
    return table


# ---------------------------------------------------------------- the sweep
def sweep(fn, grid, seeds=(0,), *, name: str | None = None, cache_dir=None, match=("fedlab_utils",),
          recompute: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run ``fn(**config, seed=seed)`` for every configuration of ``grid`` and every seed, cached on disk.

    Args:
        fn: a pure function (same arguments, same result) returning an ``flu.History``, a DataFrame,
            a dict of numbers or a number, e.g. a wrapper that builds a federation and calls ``flu.run``.
        grid: a dict of lists (their Cartesian product, :func:`grid`) or a list of configuration
            dicts. Values must be JSON-able (str, numbers, bools, None, lists/dicts of them): they
            are hashed and stored. Keys must be arguments of ``fn``.
        seeds: an int or a list of distinct ints in [0, 2**63).
        name: the sweep's folder in the cache (default ``fn.__name__``). The key of a run is its
            configuration and seed only: change ``name`` when you change what ``fn`` computes.
        cache_dir: the cache's root (default :func:`~.cache.default_dir`, ``data/cache/experiments``).
        match: what a cached run must share with this environment to be used: among
            ``"fedlab_utils"`` (the version; default), ``"torch"``, ``"numpy"``, ``"pandas"``,
            ``"python"``, ``"git"`` (the commit). Others are reported (CacheWarning) and recomputed.
        recompute: ignore (and overwrite) cached runs.
        progress: a ``tqdm.auto`` bar over the runs.

    Returns:
        The long-form table: configuration columns, ``seed``, then ``fn``'s columns, one block per
        (configuration, seed) in grid order. ``table.attrs["sweep"]`` holds ``name``, ``folder``,
        ``runs``, ``computed``, ``reused``, ``recomputed`` (entries that were rejected) and
        ``seconds``; ``table.attrs["config_columns"]`` the configuration columns.

    An exception or KeyboardInterrupt in ``fn`` propagates, with a note saying how many runs are
    cached; running the same sweep again resumes without repeating them. Corrupted cache entries
    are reported with a :class:`~.cache.CacheWarning` naming the file, and recomputed.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    configs = _configs(grid, fn)
    seeds = _seeds(seeds)
    name = getattr(fn, "__name__", None) if name is None else name
    folder = _folder(name, cache_dir)
    match = _match(match)
    if not isinstance(recompute, bool):
        raise TypeError(f"recompute must be a bool, got {recompute!r}")
    tasks = [(c, s) for c in configs for s in seeds]
    meta = {"name": name, "folder": str(folder), "runs": len(tasks), "computed": 0, "reused": 0,
            "recomputed": [], "seconds": 0.0}
    t_start = time.perf_counter()
    parts, names = [], {}
    from tqdm.auto import tqdm

    bar = tqdm(tasks, desc=f"sweep {name}", disable=not progress, leave=False)
    try:
        for config, seed in bar:
            key = _cache.run_key(config, seed)
            hit = None
            if not recompute:
                import warnings
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", _cache.CacheWarning)
                    hit = _cache.fetch(folder, key, config=config, seed=seed, match=match)
                for w in caught:  # re-issue at the caller, and remember which entries were rejected
                    if issubclass(w.category, _cache.CacheWarning):
                        meta["recomputed"].append(str(_cache.manifest_path(folder, key)))
                    warnings.warn(w.message, w.category, stacklevel=2)
            if hit is not None:
                result = hit[1]
                meta["reused"] += 1
            else:
                t0 = time.perf_counter()
                result = _normalize(fn(**config, seed=seed), fn)
                wall = time.perf_counter() - t0
                _cache.store(folder, key, name=name, config=config, seed=seed, fn=_qualname(fn), result=result,
                             wall_s=wall)
                meta["computed"] += 1
            rows, names_ = _rows(result, config, seed)
            names.update(names_)
            parts.append(rows)
    except BaseException as err:
        done = meta["computed"] + meta["reused"]
        if hasattr(err, "add_note"):
            err.add_note(f"sweep {name!r}: {done} of {len(tasks)} runs are cached in {str(folder)!r}; run the "
                         "same sweep again to resume without repeating them")
        raise
    finally:
        bar.close()
    meta["seconds"] = time.perf_counter() - t_start
    return _table(parts, names, meta)


# ---------------------------------------------------------------- reading the cache
def manifests(name: str, cache_dir=None) -> pd.DataFrame:
    """One row per cached run of sweep ``name`` (by configuration, then seed): ``key``, the configuration (one column per key),
    ``seed``, ``wall_s``, the versions (``version_<package>``), ``git_commit``, ``fn``, ``file``."""
    folder = _folder(name, cache_dir)
    rows = []
    for m in sorted(_cache.entries(folder), key=lambda m: (_cache.dumps(m["config"]), m["seed"])):
        row = {"key": m["key"], **{k: _hashable(v) for k, v in m["config"].items()}, "seed": m["seed"],
               "wall_s": m["wall_s"]}
        row.update({f"version_{k}": v for k, v in (m["versions"] or {}).items()})
        row.update({"git_commit": m["git_commit"], "fn": m["fn"], "file": m["result"]["file"]})
        rows.append(row)
    return pd.DataFrame(rows)


def load(name: str, cache_dir=None, *, match=("fedlab_utils",)) -> pd.DataFrame:
    """The table of every valid cached run of sweep ``name`` (as :func:`sweep` returns it, ordered by
    configuration then seed), without calling anything. Rejected entries are reported and left out."""
    folder = _folder(name, cache_dir)
    match = _match(match)
    parts, names, found = [], {}, []
    for m in _cache.entries(folder):
        hit = _cache.fetch(folder, m["key"], config=m["config"], seed=m["seed"], match=match)
        if hit is not None:
            found.append((_cache.dumps(m["config"]), m["seed"], m, hit[1]))
    for _, seed, m, result in sorted(found, key=lambda t: (t[0], t[1])):
        rows, names_ = _rows(result, m["config"], seed)
        names.update(names_)
        parts.append(rows)
    meta = {"name": name, "folder": str(folder), "runs": len(parts), "computed": 0, "reused": len(parts),
            "recomputed": [], "seconds": 0.0}
    return _table(parts, names, meta)


def result(name: str, config: dict, seed: int = 0, cache_dir=None, *, match=("fedlab_utils",)):
    """The cached result (History or DataFrame) of one run; KeyError if it is not (validly) cached."""
    folder = _folder(name, cache_dir)
    config = _cache.canonical(config, "config")
    seed = seed_value("seed", seed)
    hit = _cache.fetch(folder, _cache.run_key(config, seed), config=config, seed=seed, match=_match(match))
    if hit is None:
        raise KeyError(f"no valid cached run of {name!r} for config={config}, seed={seed} in {str(folder)!r}")
    return hit[1]


def clear(name: str | None = None, cache_dir=None) -> int:
    """Delete the cache files of sweep ``name`` (every sweep's with None) under ``cache_dir``;
    returns how many files were removed. Files the cache did not write are left alone."""
    root = _cache.default_dir() if cache_dir is None else pathlib.Path(cache_dir)
    if name is not None:
        folders = [_folder(name, root)]
    else:
        folders = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    removed = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if _cache.is_cache_file(path):
                path.unlink()
                removed += 1
        try:
            folder.rmdir()
        except OSError:  # not empty: something else lives there
            pass
    return removed


# ---------------------------------------------------------------- summaries
def summary(table: pd.DataFrame, by=None, metric: str | None = None, *, value: str = "value", where=None,
            confidence: float = 0.95) -> pd.DataFrame:
    """Mean over seeds with a Student-t confidence interval, one row per group.

    ``by`` (a column or a list) defaults to every column except ``seed`` and ``value``, i.e. the
    mean of each row of the sweep over its seeds. ``metric`` keeps the rows whose ``metric`` column
    equals it; ``where`` ({column: value}, None meaning missing) keeps the matching rows. Columns
    out: ``by``, ``n`` (seeds), ``mean``, ``std`` (ddof=1), ``sem`` = std / sqrt(n),
    ``ci_low``/``ci_high`` = mean -/+ t_{(1+confidence)/2, n-1} * sem (the mean itself when n = 1).
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    if value not in table.columns:
        chk.fail("value", f"a column of table {list(table.columns)}", value)
    confidence = chk.real("confidence", confidence, low=0, high=1, low_open=True, high_open=True)
    df = table
    if metric is not None:
        if "metric" not in df.columns:
            chk.fail("metric", "None for a table without a 'metric' column", metric)
        known = sorted(str(m) for m in pd.unique(df["metric"].dropna()))
        if metric not in known:
            chk.fail("metric", f"one of the table's metrics {known}", metric)
        df = df[df["metric"] == metric]
    for col, want in (where or {}).items():
        if col not in df.columns:
            chk.fail("where", f"a dict over the table's columns {list(df.columns)}", col)
        df = df[df[col].isna()] if want is None else df[df[col] == want]
    if by is None:
        by = [c for c in df.columns if c not in ("seed", value)]
    elif isinstance(by, str):
        by = [by]
    else:
        by = list(by)
    missing = [c for c in by if c not in df.columns]
    if missing:
        chk.fail("by", f"columns of the table {list(df.columns)}", missing)
    if not by:
        chk.fail("by", "at least one column to group by", by)
    grouped = df.groupby(by, dropna=False, sort=False)[value]
    out = grouped.agg(n="count", mean="mean", std="std").reset_index()
    out["sem"] = out["std"] / np.sqrt(out["n"])
    from scipy import stats

    t = np.array([stats.t.ppf((1 + confidence) / 2, n - 1) if n > 1 else 0.0 for n in out["n"]])
    half = np.where(out["n"] > 1, t * out["sem"].fillna(0.0), 0.0)
    out["ci_low"] = out["mean"] - half
    out["ci_high"] = out["mean"] + half
    return out


def export(table: pd.DataFrame, path) -> pathlib.Path:
    """Write ``table`` as CSV to ``path`` atomically (temporary file + rename); returns the path."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        chk.fail("path", "a file in an existing folder", str(path))
    _cache.atomic_write(path, table.to_csv(index=False).encode())
    return path
