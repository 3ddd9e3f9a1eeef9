"""Evaluation of (fine-tuned) models per client: before/after, worst clients, seen/unseen, seeds.

Follows the personalisation benchmark of Motley (Wu et al. 2022): every number is computed per
client first, then summarised (mean, median, worst 10%, fraction of clients made worse), because
a federated model that helps the average client can still hurt many of them. Every public function
checks its arguments: an unknown ``loss``, ``split`` or ``metric``, a table without the columns
it needs or an out-of-range ``confidence`` is a ValueError naming it.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._core import checks as chk
from ..data.datasets import Federation
from .._core.losses import LOSSES, f1_macro, predictions_correct, sample_losses
from ..engine.runner import run

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
