"""Evaluation of (fine-tuned) models per client: before/after, worst clients, seen/unseen, seeds.

Follows the personalisation benchmark of Motley (Wu et al. 2022): every number is computed per
client first, then summarised (mean, median, worst 10%, fraction of clients made worse), because
a federated model that helps the average client can still hurt many of them. ``personalize``
fine-tunes the global model on each client (0, 1, 5, ... SGD steps); ``best_steps`` picks the step
count on validation clients and ``personalization_report`` reports it on test clients. Every public function
checks its arguments: an unknown ``loss``, ``split`` or ``metric``, a table without the columns
it needs or an out-of-range ``confidence`` is a ValueError naming it.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._core import checks as chk
from ..data.datasets import Federation
from .._core.losses import LOSSES, f1_macro, predictions_correct, sample_losses
from ..engine.history import History
from ..engine.runner import run
from ..models.finetune import prepare
from .._core.random import BATCH, seed_value, stream

COLUMNS = ["client", "split", "model", "metric", "value"]
METRICS = ("loss", "accuracy", "f1_macro")  # what evaluate reports (regression: loss only)


def _federation(name: str, fed) -> Federation:
    if not isinstance(fed, Federation):
        raise TypeError(f"{name} must be an flu.data.Federation, got {type(fed).__name__}")
    return fed


def _module(name: str, model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _loss(loss) -> str:
    return chk.option("loss", loss, LOSSES)


def _table(name: str, table, required=("client", "metric", "value")) -> pd.DataFrame:
    """``table`` checked as a DataFrame holding the ``required`` columns."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame (an evaluate table), got {type(table).__name__}")
    missing = [c for c in required if c not in table.columns]
    if missing:
        chk.fail(name, f"a table with columns {list(required)} (missing {missing})", list(table.columns))
    return table


def _per_client(name: str, table: pd.DataFrame, metric: str) -> pd.Series:
    """The per-client values of ``metric`` in ``table``, indexed by client (one row each)."""
    sel = table[(table.metric == metric) & table.client.notna()]
    if sel.empty:
        present = sorted(table.loc[table.client.notna(), "metric"].dropna().unique().tolist())
        chk.fail("metric", f"a per-client metric of {name} (it has {present})", metric)
    dup = sel.client[sel.client.duplicated()]
    if len(dup):
        chk.fail(name, f"one {metric!r} value per client (select one split and model first)",
                 f"several for clients {sorted(set(int(c) for c in dup))}")
    return sel.set_index("client")["value"]


@torch.no_grad()
def evaluate(model: nn.Module, fed: Federation, split: str | None = None, *, model_name: str = "global",
             loss: str = "cross_entropy") -> pd.DataFrame:
    """Loss, accuracy and macro-F1 of ``model`` on every client's ``split`` and pooled.

    ``split`` is one of ``fed.splits`` (default: the held-out one, "test" or "query"); ``loss`` one
    of ``cross_entropy``, ``mse``. Long form ``client, split, model, metric, value`` with client
    ``<NA>`` for the pooled value; clients with an empty split are left out.
    """
    _module("model", model)
    _federation("fed", fed)
    loss = _loss(loss)
    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a str, got {type(model_name).__name__}")
    split = fed.splits[1] if split is None else chk.option("split", split, fed.splits)
    pairs = fed.train if split == fed.splits[0] else fed.test
    rows, outs, ys = [], [], []
    for i, (X, y) in enumerate(pairs):
        if len(y) == 0:
            continue
        out = model(X.to(_dtype(model)))
        outs.append(out)
        ys.append(y)
        rows += _metrics(i, split, model_name, out, y, loss)
    if not outs:
        chk.fail("split", "a split with at least one example", split)
    rows += _metrics(None, split, model_name, torch.cat(outs), torch.cat(ys), loss)
    return _frame(rows)


def _dtype(model):
    return next(model.parameters()).dtype


def _metrics(client, split, name, out, y, loss):
    vals = {"loss": float(sample_losses(out, y, loss).mean())}
    if not y.is_floating_point():
        vals["accuracy"] = float(predictions_correct(out, y).mean())
        vals["f1_macro"] = f1_macro(out, y)
    return [(client, split, name, k, v) for k, v in vals.items()]


def _frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["client"] = pd.array([None if c is None or (isinstance(c, float) and math.isnan(c)) else int(c)
                             for c in df["client"]], dtype="Int64")
    df["value"] = df["value"].astype("float64")
    return df


def before_after(before: pd.DataFrame, after: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Per-client ``before``, ``after`` and ``change`` of ``metric`` (two :func:`evaluate` tables,
    each with columns ``client, metric, value`` and one value per client; clients in both only)."""
    b = _per_client("before", _table("before", before), metric)
    a = _per_client("after", _table("after", after), metric)
    out = pd.DataFrame({"before": b, "after": a}).dropna()
    out["change"] = out["after"] - out["before"]
    return out.reset_index()


def summarize(table: pd.DataFrame, metric: str = "accuracy", *, baseline: pd.DataFrame | None = None) -> dict:
    """Mean, median and worst-10% (mean of the lowest decile of clients, at least one) of the
    per-client ``metric``; with a ``baseline`` table, the fraction of clients made worse (both
    tables need columns ``client, metric, value``, one value per client)."""
    v = _per_client("table", _table("table", table), metric)
    base = None if baseline is None else _per_client("baseline", _table("baseline", baseline), metric)
    k = max(1, int(math.ceil(0.1 * len(v))))
    out = {"mean": float(v.mean()), "median": float(v.median()), "worst_10pct": float(np.sort(v.values)[:k].mean()),
           "clients": int(len(v))}
    pooled = table[(table.metric == metric) & table.client.isna()]["value"]
    if len(pooled):
        out["pooled"] = float(pooled.iloc[0])
    if base is not None:
        change = (v - base).dropna()  # clients in both tables
        out["fraction_hurt"] = float((change < 0).mean())
    return out


def interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and a Student-t ``confidence`` interval over independent repeats (e.g. support draws):
    mean -+ t_{(1+c)/2, n-1} s / sqrt(n), s the sample standard deviation. Returns (mean, low, high).

    ``values``: a 1-D sequence of at least two finite numbers; ``confidence`` in (0, 1).
    """
    from scipy import stats

    confidence = chk.real("confidence", confidence, low=0, high=1, low_open=True, high_open=True)
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        chk.fail("values", "a 1-D sequence of numbers", values)
    if v.ndim != 1:
        chk.fail("values", "a 1-D sequence of numbers", f"an array of shape {v.shape}")
    if v.size == 0:
        chk.fail("values", "non-empty (at least two repeats)", "an empty sequence")
    if v.size < 2:
        chk.fail("values", "at least two repeats", f"{v.size} value")
    if not np.all(np.isfinite(v)):
        chk.fail("values", "finite numbers", values)
    half = stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def local_only(model: nn.Module, fed: Federation, **run_kwargs) -> pd.DataFrame:
    """Each client fine-tunes alone on its own training split (no communication) and is evaluated
    on its own held-out split: the no-collaboration baseline. Returns an :func:`evaluate` table
    with ``model="personal"``. ``run_kwargs`` go to ``flu.run`` (``loss`` one of ``cross_entropy``,
    ``mse``)."""
    _module("model", model)
    _federation("fed", fed)
    loss = _loss(run_kwargs.get("loss", "cross_entropy"))
    run_kwargs.setdefault("progress", False)
    rows = []
    for i, (pair, test) in enumerate(zip(fed.train, fed.test)):
        solo = Federation((pair,), (test,), fed.name, fed.shape, dict(fed.meta), fed.splits)
        hist = run(model, solo, **run_kwargs)
        if len(test[1]):
            with torch.no_grad():
                out = hist.model(test[0].to(_dtype(hist.model)))
            rows += _metrics(i, fed.splits[1], "personal", out, test[1], loss)
    return _frame(rows)


def centralised(model: nn.Module, fed: Federation, **run_kwargs) -> nn.Module:
    """The pooled-data upper reference: one client holding every client's training split.
    ``run_kwargs`` go to ``flu.run`` (``loss`` one of ``cross_entropy``, ``mse``)."""
    _module("model", model)
    _federation("fed", fed)
    _loss(run_kwargs.get("loss", "cross_entropy"))
    run_kwargs.setdefault("progress", False)
    X, y = fed.pooled("train")
    pooled = Federation(((X, y),), ((X[:0], y[:0]),), fed.name + " (pooled)", fed.shape, {}, fed.splits)
    return run(model, pooled, **run_kwargs).model


def seen_unseen(model: nn.Module, seen: Federation, unseen: Federation, *, before: nn.Module | None = None,
                metric: str = "accuracy") -> pd.DataFrame:
    """Summaries of ``model`` on the clients that trained (``seen``) and on held-out clients that
    never took part (``unseen``, from ``flu.fewshot.split_clients``): one row per group with
    :func:`summarize`'s columns (``fraction_hurt`` against ``before`` when given). ``metric`` is
    one of ``loss``, ``accuracy``, ``f1_macro``."""
    _module("model", model)
    _federation("seen", seen)
    _federation("unseen", unseen)
    if before is not None:
        _module("before", before)
    chk.option("metric", metric, METRICS)
    rows = []
    for group, fed in (("seen", seen), ("unseen", unseen)):
        base = None if before is None else evaluate(before, fed)
        rows.append({"group": group, **summarize(evaluate(model, fed), metric, baseline=base)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- personalisation
PERSONAL_COLUMNS = ["client", "steps", "split", "model", "metric", "value"]
_HIGHER_IS_BETTER = {"loss": False, "accuracy": True, "f1_macro": True}


def _steps(steps) -> tuple:
    """``steps`` checked as a non-empty, strictly increasing sequence of non-negative ints."""
    want = "a non-empty, sorted, duplicate-free sequence of non-negative ints"
    if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
        chk.fail("steps", want, steps)
    vals = list(steps)
    if not vals or any(isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 0 for s in vals):
        chk.fail("steps", want, steps)
    vals = [int(s) for s in vals]
    if any(b <= a for a, b in zip(vals, vals[1:])):
        chk.fail("steps", want, steps)
    return tuple(vals)


def _start_model(hist_or_model) -> nn.Module:
    if isinstance(hist_or_model, History):
        if hist_or_model.model is None:
            chk.fail("hist_or_model", "a History holding its final model (hist.model)", "hist.model=None")
        return hist_or_model.model
    if isinstance(hist_or_model, nn.Module):
        return hist_or_model
    raise TypeError(f"hist_or_model must be an flu.History or a torch.nn.Module, got {type(hist_or_model).__name__}")


def personalize(hist_or_model, federation: Federation, steps=(0, 1, 5), lr: float = 0.05, *,
                batch_size: int | None = None, finetune: str = "full", loss: str = "cross_entropy",
                split: str = "test", seed: int = 0) -> pd.DataFrame:
    """Fine-tune the global model on each client and evaluate it before and after (Motley, Wu et al. 2022).

    For every client i, starting from the global model w (``hist.model`` or the given module),
    take ``max(steps)`` SGD steps ``w <- w - lr * grad L_i(w; B_t)`` on client i's training split,
    only on the parameters ``flu.finetune.prepare(model, finetune).trainable`` names ("full": all;
    LoRA modes add adapters seeded by ``seed``), with B_t client i's full training set
    (``batch_size=None``) or the ``batch_size`` examples with the smallest keys of a uniform draw
    from the stream (seed, client, step, BATCH). After each step count in ``steps`` the model is
    evaluated on client i's ``split`` ("train"/"test", or the federation's own split names).

    Returns a long table ``client, steps, split, model, metric, value``: model "global" at
    steps=0, "personal" otherwise; metrics ``loss`` and (for class labels) ``accuracy``. Clients
    with an empty evaluation split are left out; a client without training data keeps w.
    """
    model = _start_model(hist_or_model)
    fed = _federation("federation", federation)
    steps = _steps(steps)
    lr = chk.real("lr", lr, low=0, low_open=True)
    if batch_size is not None:
        batch_size = chk.integer("batch_size", batch_size, low=1)
    loss = _loss(loss)
    names = {"train": 0, "test": 1, fed.splits[0]: 0, fed.splits[1]: 1}
    which = names[chk.option("split", split, tuple(names))]
    seed = seed_value("seed", seed)
    plan = prepare(model, finetune, seed=seed)  # ValueError naming finetune for an unknown mode
    held = fed.test if which == 1 else fed.train
    if all(len(y) == 0 for _, y in held):
        chk.fail("split", f"a split with at least one example (every client's {fed.splits[which]!r} is empty)", split)
    trainable = set(plan.trainable)
    dtype = _dtype(plan.model)
    split_name = fed.splits[which]
    rows = []
    for i, ((X, y), (Xe, ye)) in enumerate(zip(fed.train, held)):
        if len(ye) == 0:
            continue
        net = copy.deepcopy(plan.model)
        params = [p for n, p in net.named_parameters() if n in trainable]
        for n, p in net.named_parameters():
            p.requires_grad_(n in trainable)
        X, Xe = X.to(dtype), Xe.to(dtype)
        done = 0
        for target in steps:
            while done < target:
                if len(y):
                    if batch_size is None or batch_size >= len(y):
                        xb, yb = X, y
                    else:
                        keys = torch.rand(len(y), generator=stream(seed, i, done, BATCH))
                        idx = keys.argsort()[:batch_size]
                        xb, yb = X[idx], y[idx]
                    obj = sample_losses(net(xb), yb, loss).mean()
                    grads = torch.autograd.grad(obj, params)
                    with torch.no_grad():
                        for p, g in zip(params, grads):
                            p.sub_(lr * g)
                done += 1
            with torch.no_grad():
                out = net(Xe)
            tag = "global" if target == 0 else "personal"
            vals = {"loss": float(sample_losses(out, ye, loss).mean())}
            if not ye.is_floating_point():
                vals["accuracy"] = float(predictions_correct(out, ye).mean())
            rows += [(i, target, split_name, tag, k, v) for k, v in vals.items()]
    df = pd.DataFrame(rows, columns=PERSONAL_COLUMNS)
    df["client"] = df["client"].astype("int64")
    df["steps"] = df["steps"].astype("int64")
    df["value"] = df["value"].astype("float64")
    return df


def _clients(name: str, clients) -> list:
    want = "a non-empty sequence of client ids (ints)"
    if isinstance(clients, (str, bytes)) or not hasattr(clients, "__iter__"):
        chk.fail(name, want, clients)
    vals = list(clients)
    if not vals or any(isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)) for c in vals):
        chk.fail(name, want, clients)
    return sorted(set(int(c) for c in vals))


def _step_table(name: str, table, clients_name: str, clients, metric: str) -> pd.DataFrame:
    """Rows of a :func:`personalize` table for ``clients`` and ``metric``, pivoted client x steps."""
    table = _table("table", table, ("client", "steps", "metric", "value"))
    chk.option("metric", metric, tuple(_HIGHER_IS_BETTER))
    clients = _clients(clients_name, clients)
    sel = table[table.metric == metric]
    if sel.empty:
        chk.fail("metric", f"a metric of table (it has {sorted(table.metric.unique().tolist())})", metric)
    missing = sorted(set(clients) - set(int(c) for c in sel.client.dropna()))
    if missing:
        chk.fail(clients_name, "clients present in table", f"clients {missing} missing")
    sel = sel[sel.client.isin(clients)]
    if sel.duplicated(["client", "steps"]).any():
        chk.fail("table", f"one {metric!r} value per client and step count (select one split first)",
                 "several")
    wide = sel.pivot(index="client", columns="steps", values="value")
    if wide.isna().any().any():
        chk.fail("table", f"every step count evaluated on every one of the {clients_name}", "gaps")
    return wide


def best_steps(table: pd.DataFrame, validation_clients, metric: str = "accuracy") -> int:
    """The step count of a :func:`personalize` table with the best mean ``metric`` over
    ``validation_clients`` (highest accuracy/F1, lowest loss; ties go to the fewest steps)."""
    wide = _step_table("table", table, "validation_clients", validation_clients, metric)
    mean = wide.mean(axis=0)
    best = mean.max() if _HIGHER_IS_BETTER[metric] else mean.min()
    return int(min(s for s, v in mean.items() if v == best))


def personalization_report(table: pd.DataFrame, test_clients, steps: int, metric: str = "accuracy") -> dict:
    """Motley's report of a :func:`personalize` table at ``steps`` (chosen with :func:`best_steps`
    on validation clients) over ``test_clients``: ``mean``, ``median``, ``worst_10pct`` (mean of
    the worst ceil(10%) of clients, at least one: lowest accuracy, highest loss), ``clients`` and
    ``fraction_hurt``, the fraction of test clients worse than at steps=0 (the table needs steps=0)."""
    steps = chk.integer("steps", steps, low=0)
    wide = _step_table("table", table, "test_clients", test_clients, metric)
    for s in (steps, 0):
        if s not in wide.columns:
            chk.fail("steps", f"a step count of table {sorted(int(c) for c in wide.columns)} (and 0 in table)", s)
    v, base = wide[steps].to_numpy(), wide[0].to_numpy()
    up = _HIGHER_IS_BETTER[metric]
    k = max(1, int(math.ceil(0.1 * len(v))))
    worst = np.sort(v)[:k] if up else np.sort(v)[::-1][:k]
    hurt = (v < base) if up else (v > base)
    return {"steps": steps, "mean": float(v.mean()), "median": float(np.median(v)),
            "worst_10pct": float(worst.mean()), "clients": int(len(v)), "fraction_hurt": float(hurt.mean())}
