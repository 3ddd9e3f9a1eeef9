"""Evaluation of (fine-tuned) models per client: before/after, worst clients, seen/unseen, seeds.

Follows the personalisation benchmark of Motley (Wu et al. 2022): every number is computed per
client first, then summarised (mean, median, worst 10%, fraction of clients made worse), because
a federated model that helps the average client can still hurt many of them. ``personalize``
fine-tunes the global (or each client's personal) model on each client (0, 1, 5, ... SGD steps);
``best_steps`` picks the step count on validation clients and ``personalization_report`` reports it
on test clients; ``protocol`` does both for several methods in one long table. ``episodes`` is the
N-way K-shot meta-test on novel classes (Vinyals et al. 2016, Snell et al. 2017) with a fresh head
(Chen et al. 2019). Every public function
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
from ..data.fewshot import episode
from ..models.finetune import prepare
from ..models.nets import head_prefix
from .._core.random import BATCH, FEWSHOT, mix, seed_value, stream

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


STARTS = ("global", "personal")


def _personal_rows(hist_or_model, start: str, fed: Federation, model: nn.Module) -> dict | None:
    """For ``start="personal"``: ``hist.personal_params`` checked against the model and the federation."""
    if start == "global":
        return None
    if not isinstance(hist_or_model, History):
        chk.fail("start", "'global' for a plain module ('personal' needs an flu.History with personal_params)",
                 start)
    personal = hist_or_model.personal_params
    if personal is None:
        chk.fail("start", "'global' for a run without personal models (hist.personal_params is None)", start)
    if not isinstance(personal, dict) or not personal:
        chk.fail("hist_or_model", "a History whose personal_params is a non-empty dict name -> (N, ...) tensor",
                 type(personal).__name__)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    lead = set()
    for name, value in personal.items():
        if name not in shapes:
            chk.fail("hist_or_model", f"a History whose personal_params name parameters of hist.model "
                     f"({sorted(shapes)})", name)
        if not isinstance(value, torch.Tensor) or value.ndim == 0 or tuple(value.shape[1:]) != shapes[name]:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            chk.fail("hist_or_model", f"personal_params[{name!r}] of shape (N, *{shapes[name]})", got)
        lead.add(int(value.shape[0]))
    if len(lead) != 1:
        chk.fail("hist_or_model", "personal_params with one leading (client) axis length", sorted(lead))
    (n,) = lead
    if n != fed.num_clients:
        chk.fail("federation", f"the run's {n} clients (the leading axis of hist.personal_params)",
                 f"a federation of {fed.num_clients} clients")
    return personal


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
                split: str = "test", seed: int = 0, start: str = "global") -> pd.DataFrame:
    """Fine-tune the global model on each client and evaluate it before and after (Motley, Wu et al. 2022).

    For every client i, start from w_i: the global model w (``hist.model`` or the given module)
    with ``start="global"``; with ``start="personal"`` client i's personal model, w with every
    parameter named in ``hist.personal_params`` (name -> (N, ...) tensor, N the federation's
    clients, filled by personalisation methods) replaced by its row i. Take ``max(steps)`` SGD
    steps ``w_i <- w_i - lr * grad L_i(w_i; B_t)`` on client i's training split, only on the
    parameters ``flu.finetune.prepare(model, finetune).trainable`` names ("full": all; LoRA modes
    add adapters seeded by ``seed``), with B_t client i's full training set (``batch_size=None``)
    or the ``batch_size`` examples with the smallest keys of a uniform draw from the stream
    (seed, client, step, BATCH). After each step count in ``steps`` the model is evaluated on
    client i's ``split`` ("train"/"test", or the federation's own split names).

    Returns a long table ``client, steps, split, model, metric, value``: model "global" at
    steps=0 with ``start="global"``, "personal" otherwise; metrics ``loss`` and (for class labels)
    ``accuracy``. Clients with an empty evaluation split are left out; a client without training
    data keeps w_i. ``start="personal"`` without personal models (a plain module, or
    ``hist.personal_params`` None) is a ValueError naming ``start``; a federation of another size
    than the run's, one naming ``federation``.
    """
    model = _start_model(hist_or_model)
    fed = _federation("federation", federation)
    start = chk.option("start", start, STARTS)
    personal = _personal_rows(hist_or_model, start, fed, model)
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
        if personal is not None:
            named = dict(net.named_parameters())
            with torch.no_grad():
                for n, v in personal.items():
                    named[n].copy_(v[i].to(named[n].dtype))
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
                    _sgd_step(net, params, xb, yb, loss, lr)
                done += 1
            with torch.no_grad():
                out = net(Xe)
            tag = "global" if target == 0 and personal is None else "personal"
            vals = {"loss": float(sample_losses(out, ye, loss).mean())}
            if not ye.is_floating_point():
                vals["accuracy"] = float(predictions_correct(out, ye).mean())
            rows += [(i, target, split_name, tag, k, v) for k, v in vals.items()]
    df = pd.DataFrame(rows, columns=PERSONAL_COLUMNS)
    df["client"] = df["client"].astype("int64")
    df["steps"] = df["steps"].astype("int64")
    df["value"] = df["value"].astype("float64")
    return df


def _sgd_step(net: nn.Module, params: list, X, y, loss: str, lr: float) -> None:
    """One SGD step ``w <- w - lr grad mean_j loss(net(x_j), y_j)`` on ``params``, in place."""
    grads = torch.autograd.grad(sample_losses(net(X), y, loss).mean(), params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)


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


# ---------------------------------------------------------------------- protocol over methods
PROTOCOL_COLUMNS = ["method", "group", "steps", "statistic", "value"]
STATISTICS = ("mean", "median", "worst_10pct", "fraction_hurt", "clients")


def protocol(tables, validation_clients, test_clients, metric: str = "accuracy", *,
             group: str = "seen") -> pd.DataFrame:
    """Motley's personalisation protocol (Wu et al. 2022) over several methods, as one long table.

    ``tables`` maps a method label to its :func:`personalize` table (one split). For each method
    the step count s* = argmax_s mean_{i in V} m_i(s) is chosen on ``validation_clients`` V
    (:func:`best_steps`; argmin for the loss, ties to the fewest steps) and reported on the
    disjoint ``test_clients`` T (:func:`personalization_report`): mean, median, worst_10pct (mean
    of the worst ceil(|T|/10) clients), fraction_hurt = |{i in T: m_i(s*) worse than m_i(0)}| / |T|
    and clients = |T|. A table with only steps=0 reports s* = 0, fraction_hurt 0.

    Returns long form ``method, group, steps, statistic, value`` (``group`` tags every row, e.g.
    "seen" / "unseen" clients), one row per method and statistic.
    """
    from collections.abc import Mapping

    if not isinstance(tables, Mapping):
        raise TypeError(f"tables must be a mapping method label -> personalize table, got {type(tables).__name__}")
    if not tables:
        chk.fail("tables", "a non-empty mapping method label -> personalize table", "an empty mapping")
    if not isinstance(group, str):
        raise TypeError(f"group must be a str, got {type(group).__name__}")
    chk.option("metric", metric, tuple(_HIGHER_IS_BETTER))
    val = _clients("validation_clients", validation_clients)
    test = _clients("test_clients", test_clients)
    shared = sorted(set(val) & set(test))
    if shared:
        chk.fail("test_clients", "clients disjoint from validation_clients", f"clients {shared} in both")
    rows = []
    for method, table in tables.items():
        try:
            s = best_steps(table, val, metric)
            report = personalization_report(table, test, s, metric)
        except (TypeError, ValueError) as err:
            raise type(err)(f"tables[{method!r}]: {err}") from err
        rows += [(str(method), group, s, k, float(report[k])) for k in STATISTICS]
    df = pd.DataFrame(rows, columns=PROTOCOL_COLUMNS)
    df["steps"] = df["steps"].astype("int64")
    return df


# ---------------------------------------------------------------------- N-way K-shot episodes
EPISODE_COLUMNS = ["episode", "steps", "metric", "value"]


def _fresh_head(net: nn.Module, n_way: int) -> nn.Module:
    """``net`` with its head (``flu.models.nets.head_prefix``) replaced by a zero nn.Linear of
    ``n_way`` outputs (drawn from no generator: ``skip_init`` then zeros)."""
    prefix = head_prefix(net).rstrip(".")
    old = net.get_submodule(prefix) if prefix else net
    if not isinstance(old, nn.Linear):
        chk.fail("model", "a model whose head (flu.models.head_prefix) is an nn.Linear",
                 f"a {type(old).__name__} head {prefix!r}")
    head = nn.utils.skip_init(nn.Linear, old.in_features, n_way, bias=old.bias is not None,
                              dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
    if not prefix:
        return head
    parent, _, leaf = prefix.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, head)
    return net


def episodes(model: nn.Module, X, y, classes, *, n_way: int = 5, shots: int = 5, query: int = 15,
             num_episodes: int = 20, steps=(0, 5, 20), lr: float = 0.1, finetune: str = "linear_probe",
             seed: int = 0) -> pd.DataFrame:
    """N-way K-shot meta-testing on novel ``classes`` (Vinyals et al. 2016; Snell et al. 2017).

    Episode e draws ``n_way`` of ``classes`` with ``shots`` support and ``query`` query examples
    each (``flu.fewshot.episode`` on the examples whose label is in ``classes``, seed
    ``mix(seed, e, FEWSHOT)``). As in Chen et al. 2019 ("A closer look at few-shot
    classification"), the head is replaced by a fresh zero-initialised Linear with ``n_way``
    outputs (so step 0 predicts class 0 everywhere: accuracy 1/n_way, loss log n_way) and the
    parameters ``flu.finetune.prepare(model, finetune).trainable`` names take full-batch SGD
    steps w <- w - lr grad L_support(w) (cross-entropy); after each count in ``steps`` the model is
    evaluated on the query set. ``model`` is left unchanged.

    Returns long form ``episode, steps, metric, value`` with metrics ``accuracy`` and ``loss``.
    """
    _module("model", model)
    y_np = chk.labels("y", y)
    try:
        X = torch.as_tensor(X)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"X must be a tensor or an array of features, got {type(X).__name__}") from None
    if X.ndim == 0 or len(X) != len(y_np):
        chk.fail("X", f"one row per label ({len(y_np)})", f"shape {tuple(X.shape)}")
    want = "a non-empty sequence of class labels (ints) present in y"
    try:
        cls = np.asarray(classes).ravel()
    except (TypeError, ValueError):
        chk.fail("classes", want, classes)
    if cls.size == 0 or not np.issubdtype(cls.dtype, np.integer):
        chk.fail("classes", want, classes)
    cls = np.unique(cls)
    missing = sorted(set(cls.tolist()) - set(np.unique(y_np).tolist()))
    if missing:
        chk.fail("classes", "labels present in y", f"labels {missing} absent")
    n_way = chk.integer("n_way", n_way, low=2)
    if n_way > len(cls):
        chk.fail("n_way", f"at most the {len(cls)} given classes", n_way)
    shots = chk.integer("shots", shots, low=1)
    query = chk.integer("query", query, low=1)
    num_episodes = chk.integer("num_episodes", num_episodes, low=1)
    steps = _steps(steps)
    lr = chk.real("lr", lr, low=0, low_open=True)
    seed = seed_value("seed", seed)
    keep = np.isin(y_np, cls)
    Xn, yn = X[torch.from_numpy(keep)], torch.from_numpy(y_np[keep])
    plan = prepare(_fresh_head(copy.deepcopy(model), n_way), finetune, seed=seed)
    trainable = set(plan.trainable)
    dtype = _dtype(plan.model)
    rows = []
    for e in range(num_episodes):
        Xs, ys, Xq, yq, _ = episode(Xn, yn, n_way, shots, query, seed=mix(seed, e, FEWSHOT))
        Xs, Xq = Xs.to(dtype), Xq.to(dtype)
        net = copy.deepcopy(plan.model)
        for n, p in net.named_parameters():
            p.requires_grad_(n in trainable)
        params = [p for n, p in net.named_parameters() if n in trainable]
        done = 0
        for target in steps:
            while done < target:
                _sgd_step(net, params, Xs, ys, "cross_entropy", lr)
                done += 1
            with torch.no_grad():
                out = net(Xq)
            rows.append((e, target, "accuracy", float(predictions_correct(out, yq).mean())))
            rows.append((e, target, "loss", float(sample_losses(out, yq, "cross_entropy").mean())))
    df = pd.DataFrame(rows, columns=EPISODE_COLUMNS)
    df["episode"] = df["episode"].astype("int64")
    df["steps"] = df["steps"].astype("int64")
    return df
