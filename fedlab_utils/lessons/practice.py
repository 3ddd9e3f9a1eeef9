"""Convergence in practice (notebook 04, ``benchmarks/algorithms.py``): sweeps of federated
algorithms over Dirichlet heterogeneity and seeds, as one long table, and time to accuracy.

Nothing here draws, reads globals or seeds global state.

- :func:`sweep`: every (algorithm, alpha, seed) trained with ``flu.run`` on a Dirichlet(alpha)
  split of a data set, returned as ONE long table with one row per
  ``(algorithm, alpha, seed, round, metric)`` (columns :data:`COLUMNS`).
- :func:`federation` and :func:`run_history`: the federation and the ``History`` of one run of
  the sweep (cached, so a notebook can look inside a run and then sweep without training it twice).
- :func:`time_to_accuracy`: from such a table, the first round at which each run reaches a
  target accuracy, with the bytes and seconds spent until then.
- :func:`time_to_accuracy_table`: that result as a printable algorithm x alpha table of
  strings (``"-"`` where no seed reached the target).

The metrics of a sweep (``metric`` column):

========================== ================================================================
``test_accuracy`` ...       pooled ``History.metrics`` of the global model, as ``<split>_<metric>``
                           (``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``),
                           from round 0 (before training)
``global_loss`` ...         ``History.rounds`` diagnostics (``diagnostics=True``), from round 1:
                           ``global_loss``, ``grad_norm``, ``grad_dissimilarity``,
                           ``b_dissimilarity``, ``client_drift``, ``update_norm``
``bytes``                  cumulative bytes up + down until the end of the round (0 at round 0)
``seconds``                cumulative measured wall-clock seconds (training and evaluation);
                           not deterministic, unlike every other metric
========================== ================================================================
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import torch

from .._core import checks as chk
from .. import algorithms as algs
from ..data import datasets as fdata
from ..models import nets as models
from ..data import partition as fpart
from ..engine.runner import run
from .._core.runtime import torch_threads
from .._core.labels import canonical_label, method_label

COLUMNS = ["algorithm", "label", "alpha", "seed", "round", "metric", "value"]
DIAGNOSTICS = ("global_loss", "grad_norm", "grad_dissimilarity", "b_dissimilarity", "client_drift", "update_norm")
EVAL_METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
ALGORITHMS = tuple(algs.REGISTRY)

# Options the notebook and the benchmark use unless told otherwise: FedProx's package default
# mu = 0.01 is indistinguishable from FedAvg on digits; mu = 1 shows the trade-off it makes.
DEFAULT_OPTIONS = {"fedprox": {"mu": 1.0}}


def label(algorithm: str, options: dict | None = None) -> str:
    """The plot label of an algorithm with its options: ``label("fedprox", {"mu": 1.0})`` is
    ``"FedProx (mu=1)"``; no options give the canonical label (``"FedAvg"``)."""
    return method_label(algorithm, options)


def _options_for(algorithms, options) -> dict:
    if options is None:
        options = DEFAULT_OPTIONS
    if not isinstance(options, dict):
        chk.fail("options", "a dict {algorithm: {option: value}} or None", options)
    for name in options:
        chk.option("options key", name, ALGORITHMS)
    return {a: dict(options.get(a, {})) for a in algorithms}


def _hashable(value):
    if isinstance(value, (list, tuple, np.ndarray, torch.Tensor)):
        return tuple(int(v) for v in (value.tolist() if hasattr(value, "tolist") else value))
    return value


@functools.lru_cache(maxsize=8)
def _dataset(name: str) -> fdata.Dataset:
    return fdata.load_dataset(name)


def federation(alpha: float, seed: int, *, dataset="digits", num_clients: int = 20,
               test_fraction: float = 0.2) -> fdata.Federation:
    """The federation of one sweep run: ``flu.partition.dirichlet(y, num_clients, alpha, seed=seed)``
    of ``dataset`` (a name or an ``flu.data.Dataset``), with ``test_fraction`` of each client held out
    (``flu.data.federate(..., seed=seed)``)."""
    ds = _dataset(dataset) if isinstance(dataset, str) else dataset
    if not isinstance(ds, fdata.Dataset):
        raise TypeError(f"dataset must be a name or an flu.data.Dataset, got {type(dataset).__name__}")
    alpha = chk.real("alpha", alpha, low=0, low_open=True)
    chk.integer("num_clients", num_clients, low=2)
    part = fpart.dirichlet(ds.y, num_clients, alpha, seed=seed)
    return fdata.federate(ds.X, ds.y, part, test_fraction=test_fraction, seed=seed, shape=ds.shape)


def run_history(algorithm: str, alpha: float, seed: int, *, dataset="digits", num_clients: int = 20,
                num_rounds: int = 30, local_steps=10, client_lr: float = 0.05, batch_size: int | None = 16,
                hidden: int = 32, clients_per_round: int | None = None, server_lr: float | None = None,
                diagnostics: bool = True, backend: str = "vectorized", test_fraction: float = 0.2,
                dtype=torch.float32, num_threads: int | None = 1, options: dict | None = None,
                cache: bool = True):
    """The ``History`` of one run of :func:`sweep`:

        flu.run(flu.models.mlp(d, hidden, classes, seed=seed), federation(alpha, seed, ...), algorithm,
                diagnostics=diagnostics, seed=seed, progress=False, **options, **the other arguments)

    so ``seed`` drives the Dirichlet split, the train/test cut, the model initialisation and the
    run. ``options`` are this algorithm's options (e.g. ``{"mu": 1.0}``). With ``cache`` (and a
    data set given by name) identical arguments return the same History object, to be treated
    as read-only (runs replay bit for bit, so only its measured ``timing`` would differ on a rerun).
    ``num_threads``: torch threads during the run (the previous count is restored).
    """
    chk.option("algorithm", algorithm, ALGORITHMS)
    alpha = chk.real("alpha", alpha, low=0, low_open=True)
    seed = chk.integer("seed", seed, low=0)
    args = dict(num_clients=num_clients, num_rounds=num_rounds, local_steps=_hashable(local_steps),
                client_lr=client_lr, batch_size=batch_size, hidden=hidden, clients_per_round=clients_per_round,
                server_lr=server_lr, diagnostics=diagnostics, backend=backend, test_fraction=test_fraction,
                dtype=dtype, num_threads=num_threads)
    opts = tuple(sorted((options or {}).items()))
    if cache and isinstance(dataset, str):
        try:
            return _cached_run(algorithm, alpha, seed, dataset, opts, tuple(sorted(args.items())))
        except TypeError as err:  # an unhashable argument: run without the cache
            if "unhashable" not in str(err):
                raise
    return _run(algorithm, alpha, seed, dataset, dict(opts), **args)


# A History of the notebook's runs is about 0.3 MB (mostly per-client metrics); 160 covers the full sweep.
@functools.lru_cache(maxsize=160)
def _cached_run(algorithm, alpha, seed, dataset, opts, args):
    return _run(algorithm, alpha, seed, dataset, dict(opts), **dict(args))


def _run(algorithm, alpha, seed, dataset, options, *, num_clients, num_rounds, local_steps, client_lr, batch_size,
         hidden, clients_per_round, server_lr, diagnostics, backend, test_fraction, dtype, num_threads):
    ds = _dataset(dataset) if isinstance(dataset, str) else dataset
    fed = federation(alpha, seed, dataset=ds, num_clients=num_clients, test_fraction=test_fraction)
    chk.integer("hidden", hidden, low=1)
    if isinstance(local_steps, tuple):
        local_steps = list(local_steps)
    model = models.mlp(int(ds.X.shape[1]), hidden, len(ds.classes), dtype=dtype, seed=seed)
    with torch_threads(num_threads):
        return run(model, fed, algorithm, num_rounds=num_rounds, local_steps=local_steps, client_lr=client_lr,
                   batch_size=batch_size, clients_per_round=clients_per_round, server_lr=server_lr,
                   diagnostics=diagnostics, backend=backend, progress=False, seed=seed, **options)


def run_frame(algorithm: str, alpha: float, seed: int, *, options: dict | None = None, **kwargs) -> pd.DataFrame:
    """The long table (:data:`COLUMNS`) of one run of :func:`sweep`: :func:`history_frame` of
    :func:`run_history` (same arguments)."""
    hist = run_history(algorithm, alpha, seed, options=options, **kwargs)
    return history_frame(hist, algorithm, alpha, seed, options)


def history_frame(hist, algorithm: str, alpha: float, seed: int, options: dict | None = None) -> pd.DataFrame:
    """The long table (:data:`COLUMNS`) of one ``History``: pooled global-model metrics, the
    diagnostics in ``hist.rounds`` if recorded, cumulative ``bytes`` and ``seconds``."""
    m = hist.metrics
    pooled = m[m["client"].isna() & (m["model"] == "global") & m["metric"].isin(("loss", "accuracy"))]
    frames = [pd.DataFrame({"round": pooled["round"].to_numpy(),
                            "metric": (pooled["split"] + "_" + pooled["metric"]).to_numpy(),
                            "value": pooled["value"].to_numpy()})]
    r = hist.rounds
    diag = [c for c in DIAGNOSTICS if c in r.columns]
    if diag:
        frames.append(r.melt(id_vars="round", value_vars=diag, var_name="metric", value_name="value"))
    spent = pd.DataFrame({"round": np.concatenate([[0], r["round"].to_numpy()]),
                          "bytes": np.concatenate([[0], np.cumsum((r["bytes_up"] + r["bytes_down"]).to_numpy())]),
                          "seconds": np.concatenate([[0.0], np.cumsum(hist.timing["seconds"].to_numpy())])})
    frames.append(spent.melt(id_vars="round", var_name="metric", value_name="value"))
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "algorithm", algorithm)
    out.insert(1, "label", label(algorithm, options))
    out.insert(2, "alpha", float(alpha))
    out.insert(3, "seed", int(seed))
    out["round"] = out["round"].astype("int64")
    out["value"] = out["value"].astype("float64")
    return out[COLUMNS]


def sweep(algorithms=("fedavg", "fedprox", "scaffold"), alphas=(0.1, 1.0), seeds=(0, 1), *, dataset="digits",
          num_clients: int = 20, num_rounds: int = 30, local_steps=10, client_lr: float = 0.05,
          batch_size: int | None = 16, hidden: int = 32, clients_per_round: int | None = None,
          server_lr: float | None = None, options: dict | None = None, diagnostics: bool = True,
          backend: str = "vectorized", test_fraction: float = 0.2, dtype=torch.float32,
          num_threads: int | None = 1, cache: bool = True, progress: bool = False) -> pd.DataFrame:
    """Train every algorithm on a Dirichlet(alpha) split of ``dataset`` for every alpha and seed.

    Each run: ``flu.partition.dirichlet(y, num_clients, alpha, seed=seed)``, a ``test_fraction``
    of each client held out, an MLP ``d -> hidden -> classes`` initialised from ``seed``, then
    ``flu.run(..., diagnostics=diagnostics, seed=seed)`` with the other arguments as given (all
    clients every round unless ``clients_per_round``). ``options`` maps an algorithm name to its
    options (``{"fedprox": {"mu": 1.0}}``); None uses :data:`DEFAULT_OPTIONS`; ``server_lr`` None
    is each algorithm's own default.

    Returns the long table with columns :data:`COLUMNS`, one row per
    ``(algorithm, alpha, seed, round, metric)`` (metrics in the module docstring); ``label`` is
    the plot label with the options (``"FedProx (mu=1)"``). ``num_threads``: torch threads
    during the runs (one is fastest for these tiny models, and the previous count is restored).
    ``cache``: reuse identical runs (see :func:`run_history`).
    """
    algorithms = [algorithms] if isinstance(algorithms, str) else list(algorithms)
    if not algorithms:
        chk.fail("algorithms", f"a non-empty list of names among {list(ALGORITHMS)}", algorithms)
    for a in algorithms:
        chk.option("algorithms", a, ALGORITHMS)
    alphas = [chk.real("alphas", a, low=0, low_open=True) for a in np.atleast_1d(alphas).tolist()]
    seeds = [chk.integer("seeds", s, low=0) for s in np.atleast_1d(seeds).tolist()]
    if not alphas or not seeds:
        chk.fail("alphas and seeds", "non-empty", (alphas, seeds))
    if len(set(algorithms)) != len(algorithms) or len(set(alphas)) != len(alphas) or len(set(seeds)) != len(seeds):
        chk.fail("algorithms, alphas, seeds", "lists without repeats", (algorithms, alphas, seeds))
    opts = _options_for(algorithms, options)
    jobs = [(a, alpha, s) for a in algorithms for alpha in alphas for s in seeds]
    if progress:
        from tqdm.auto import tqdm
        jobs = tqdm(jobs, desc="sweep", leave=False)
    frames = [run_frame(a, alpha, s, dataset=dataset, num_clients=num_clients, num_rounds=num_rounds,
                        local_steps=local_steps, client_lr=client_lr, batch_size=batch_size, hidden=hidden,
                        clients_per_round=clients_per_round, server_lr=server_lr, diagnostics=diagnostics,
                        backend=backend, test_fraction=test_fraction, dtype=dtype, num_threads=num_threads,
                        options=opts[a], cache=cache)
              for a, alpha, s in jobs]
    return pd.concat(frames, ignore_index=True)


def _check_long(df, name="df"):
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in ("algorithm", "alpha", "seed", "round", "metric", "value") if c not in df.columns]
    if missing:
        chk.fail(name, f"a long table with columns {COLUMNS} (from flu.practice.sweep)", f"columns {list(df.columns)}")


RUN_KEYS = ["algorithm", "label", "alpha", "seed"]


def time_to_accuracy(df: pd.DataFrame, target: float, *, metric: str = "test_accuracy") -> pd.DataFrame:
    """First round at which each run's ``metric`` reaches ``target`` (``value >= target``).

    ``df`` is a :func:`sweep` table (a ``label`` column is optional). Returns one row per run
    (``algorithm, label, alpha, seed``) with ``target``, ``reached`` (bool), ``rounds`` (the
    first round t with metric >= target; NaN if never), ``bytes`` and ``seconds`` (cumulative
    at that round, NaN when not reached or not recorded), ``max_round``, ``max_bytes``,
    ``max_seconds`` (what the whole run spent: the budget a run that never got there used) and
    ``final`` (the metric at the last round). Round 0 counts: a model that starts above the
    target takes 0 rounds.
    """
    _check_long(df)
    target = chk.real("target", target)
    df = df if "label" in df.columns else df.assign(label=df["algorithm"].map(canonical_label))
    sel = df[df["metric"] == metric]
    if sel.empty:
        chk.fail("metric", f"one of the metrics in df ({sorted(df['metric'].unique())})", metric)
    empty = pd.Series(dtype="float64")
    costs = {m: {k: g.sort_values("round").set_index("round")["value"]
                 for k, g in df[df["metric"] == m].groupby(RUN_KEYS, sort=False)}
             for m in ("bytes", "seconds")}
    rows = []
    for key, g in sel.groupby(RUN_KEYS, sort=False):
        g = g.sort_values("round")
        hit = g[g["value"] >= target]
        spent = {m: costs[m].get(key, empty) for m in costs}
        t = int(hit["round"].iloc[0]) if len(hit) else None
        row = dict(zip(RUN_KEYS, key), target=target, reached=t is not None,
                   rounds=float(t) if t is not None else math.nan)
        for m, s in spent.items():
            row[m] = float(s.get(t, math.nan)) if t is not None else math.nan
        row["max_round"] = int(g["round"].max())
        for m, s in spent.items():
            row[f"max_{m}"] = float(s.iloc[-1]) if len(s) else math.nan
        row["final"] = float(g["value"].iloc[-1])
        rows.append(row)
    out = pd.DataFrame(rows)
    out["reached"] = out["reached"].astype(bool)
    return out


def time_to_accuracy_table(tta: pd.DataFrame, value: str = "rounds", *, fmt: str = "{:.0f}",
                           scale: float = 1.0) -> pd.DataFrame:
    """A printable ``label x alpha`` table of strings from :func:`time_to_accuracy`.

    Each cell is the mean of ``value`` (``rounds``, ``bytes``, ``seconds``) over the seeds that
    reached the target, times ``scale`` (``1e-6``: bytes as megabytes), formatted with ``fmt``;
    ``"(k/n)"`` is appended when only k of the n seeds got there, and the cell is ``"-"`` when
    none did.
    """
    if not isinstance(tta, pd.DataFrame):
        raise TypeError(f"tta must be a pandas DataFrame, got {type(tta).__name__}")
    chk.option("value", value, ("rounds", "bytes", "seconds"))
    scale = chk.real("scale", scale, low=0, low_open=True)
    need = ["label", "alpha", "reached", value]
    if any(c not in tta.columns for c in need):
        chk.fail("tta", f"a table from flu.practice.time_to_accuracy (columns {need})", f"columns {list(tta.columns)}")

    def cell(g):
        ok = g[g["reached"]]
        if ok.empty:
            return "-"
        text = fmt.format(ok[value].mean() * scale)
        return text if len(ok) == len(g) else f"{text} ({len(ok)}/{len(g)})"

    table = tta.groupby(["label", "alpha"], sort=False).apply(cell, include_groups=False).unstack("alpha")
    table = table.reindex(columns=sorted(table.columns))
    table.columns = [f"alpha={a:g}" for a in table.columns]
    table.index.name = None
    return table.fillna("-")


def final_values(df: pd.DataFrame, metrics=("test_accuracy", "client_drift", "grad_dissimilarity")) -> pd.DataFrame:
    """One row per run (``algorithm, label, alpha, seed``) with the last-round value of each metric."""
    _check_long(df)
    df = df if "label" in df.columns else df.assign(label=df["algorithm"].map(canonical_label))
    sel = df[df["metric"].isin(list(metrics))]
    last = sel.loc[sel.groupby(RUN_KEYS + ["metric"], sort=False)["round"].idxmax()]
    out = last.pivot_table(index=RUN_KEYS, columns="metric", values="value", sort=False).reset_index()
    out.columns.name = None
    return out[RUN_KEYS + [m for m in metrics if m in out.columns]]
