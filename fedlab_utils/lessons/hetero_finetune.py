"""Heterogeneity-aware fine-tuning (notebook 08): one fine-tuning mode per client, chosen from its
device, on the virtual clock. Returns DataFrames (and the Histories they come from); draws nothing.

- :func:`mode_table` and :func:`assignment_table`: what each mode trains, sends, costs and needs in
  memory, and which mode ``flu.systems.assign_modes`` gives each device (its speed target, and
  whether memory capped it), before anything trains; :func:`speed_thresholds`.
- :func:`trained_by`: for every layer, how many of the clients train it and their share of the
  aggregation weight (what the mixture costs: the body is trained by fewer clients).
- :func:`local_update` and :func:`mixed_reference`: mixed aggregation from scratch in plain PyTorch
  (full-batch SGD on each client's own mask, then each parameter averaged over the clients that
  trained it, weights renormalised among them), the reference ``flu.run(..., finetune=modes)`` must
  match.
- :func:`image_task`, :func:`run_schemes`, :func:`curves`, :func:`summary`: the comparison of
  uniform modes against assigned ones on the few-shot image task (accuracy against virtual time,
  bytes, energy), every run ``flu.run(..., systems=flu.systems.Simulation(...))``.
- :func:`cached_probe`: the all-linear-probe scheme on cached body features, on the clock of the
  probe with the body in the loop (:func:`scale_speed`).
- :func:`asynchronous`: FedAsync / FedBuff runs spending as many client updates as a synchronous run.
- :func:`text_task`, :func:`fit_head`, :func:`head_model`, :data:`TEXT`, :func:`load_minilm_modes`:
  the MiniLM text task (movies as clients) on the cached embeddings, the settings
  ``scripts/minilm_modes.py`` shares, and its committed result.
- :func:`scenario`: the interactive panel's one computation (speed quantiles and memory share in,
  assignment and curves out).

The rule of ``assign_modes`` (docs/systems.md): the speed tier (quantiles of ``samples_per_s``)
picks a target mode, the memory cap moves it towards cheaper modes; the idea of HeteroFL (Diao et
al. 2021) and FjORD (Horvath et al. 2021) with ``flu.finetune`` masks as the sub-models. With mixed
modes the server keeps the dense model and averages each parameter k over S_k, the clients whose
mode trained it:

    x_k <- sum_{i in S_k} (w_i / sum_{j in S_k} w_j) y_{i,k}        (x_k kept when S_k is empty)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._core import checks as chk
from ..data import datasets as fdata
from ..engine.runner import run
from ..models import finetune as ft
from ..models import nets, pretrained
from ..systems.modes import assign_modes, check_modes, mode_memory_mb, speed_targets
from ..systems.profiles import check_profiles
from ..systems.simulation import Simulation
from . import fewshot as lf

__all__ = ["CURVE_COLUMNS", "IMAGE_MODES", "MINILM_CSV", "SUMMARY_COLUMNS", "TEXT", "TextTask", "assignment_table",
           "asynchronous", "cached_probe", "curves", "fit_head", "head_model", "image_task", "load_minilm_modes",
           "local_update", "mixed_reference", "mode_table", "run_schemes", "scale_speed", "scenario", "scheme_label",
           "speed_thresholds", "summary", "text_task", "trained_by"]

IMAGE_MODES = ("full", "last_layers", "linear_probe")
CURVE_COLUMNS = ["scheme", "round", "virtual_time", "accuracy", "f1_macro", "bytes_up", "bytes_down", "bytes",
                 "energy_j", "clients_completed"]
SUMMARY_COLUMNS = ["scheme", "accuracy", "f1_macro", "virtual_time", "time_to_target", "bytes", "energy_j",
                   "rounds"]


def scheme_label(finetune) -> str:
    """``"full"`` -> ``"Full (all clients)"``; a list of modes -> ``"Assigned (full / last layers / linear probe)"``
    (its distinct modes, most expressive first)."""
    if isinstance(finetune, str):
        return f"{ft_label(finetune)} (all clients)"
    order = ("full", "last_layers", "lora", "ffa_lora", "bitfit", "linear_probe")
    distinct = sorted(set(finetune), key=lambda m: order.index(m) if m in order else len(order))
    names = [m.replace("_", " ") if m != "lora" else "LoRA" for m in distinct]
    return "Assigned (" + " / ".join(names) + ")"


def ft_label(mode: str) -> str:
    return {"full": "Full", "linear_probe": "Linear probe", "last_layers": "Last layers", "lora": "LoRA",
            "bitfit": "BitFit"}.get(mode, mode)


# ============================================================================ modes and devices

def _opts(mode, options):
    return {k: v for k, v in options.items() if k in ft.OPTIONS.get(mode, {})}


def mode_table(model: nn.Module, modes=IMAGE_MODES, *, input_shape, batch_size: int = 16, **options) -> pd.DataFrame:
    """``mode, trainable_params, bytes_up, memory_mb, cost_vs_full``: what one client of each mode
    trains and uploads (bytes at the model's dtype), the memory of one local step
    (``flu.systems.mode_memory_mb``) and its training FLOPs per example over full fine-tuning's
    (the factor the virtual clock multiplies compute time by)."""
    full = ft.cost(model, "full", input_shape=input_shape, batch_size=batch_size)
    size = next(model.parameters()).element_size()
    rows = []
    for m in modes:
        c = ft.cost(model, m, input_shape=input_shape, batch_size=batch_size, **_opts(m, options))
        rows.append(dict(mode=m, trainable_params=int(c["trainable_params"]),
                         bytes_up=int(c["trainable_params"]) * size, memory_mb=c["memory_bytes"] / 2 ** 20,
                         cost_vs_full=c["flops_step"] / full["flops_step"]))
    return pd.DataFrame(rows)


def speed_thresholds(profiles: pd.DataFrame, speed_quantiles=(0.66, 0.33)) -> np.ndarray:
    """t_k = the q_k-quantile of the clients' ``samples_per_s`` (numpy's linear interpolation): the
    speed tier boundaries of ``assign_modes``."""
    prof = check_profiles(profiles, len(profiles))
    s = prof["samples_per_s"].to_numpy(dtype=np.float64)
    s = np.where(np.isinf(s), np.finfo(np.float64).max, s)
    return np.quantile(s, np.asarray(speed_quantiles, dtype=np.float64))


def assignment_table(profiles: pd.DataFrame, model: nn.Module, *, input_shape, batch_size: int = 16,
                     modes=IMAGE_MODES, speed_quantiles=(0.66, 0.33), **options) -> pd.DataFrame:
    """Each client's profile with ``tier`` (low / mid / high by ``memory_mb``), ``speed_target``
    (the mode its speed tier picks), ``mode`` (``flu.systems.assign_modes``: the target, capped by
    memory), ``capped`` (memory moved it) and ``memory_need_mb`` (its mode's memory)."""
    prof = check_profiles(profiles, len(profiles))
    modes = tuple(modes)
    assigned = assign_modes(prof, model, input_shape=input_shape, batch_size=batch_size, modes=modes,
                            speed_quantiles=tuple(speed_quantiles), **options)
    need = {m: mode_memory_mb(model, m, input_shape=input_shape, batch_size=batch_size, **_opts(m, options))
            for m in modes}
    k = speed_targets(prof["samples_per_s"].to_numpy(), speed_quantiles)
    out = prof.copy()
    levels = np.sort(prof["memory_mb"].unique())
    names = {1: ["mid"], 2: ["low", "high"], 3: ["low", "mid", "high"]}.get(len(levels))
    tier = np.searchsorted(levels, prof["memory_mb"].to_numpy())
    out["tier"] = [names[t] for t in tier] if names else [f"tier {t}" for t in tier]
    out["speed_target"] = [modes[j] for j in k]
    out["mode"] = assigned
    out["capped"] = out["mode"] != out["speed_target"]
    out["memory_need_mb"] = out["mode"].map(need)
    return out


def trained_by(model: nn.Module, modes, weights=None, **options) -> pd.DataFrame:
    """``layer, name, mode, clients, weight_share``: for every module owning parameters (forward
    order, readable ``name`` as in notebook 05) and every mode, how many clients of that mode train
    it, and their share of the total aggregation weight (``weights``: one per client, default equal).
    A layer's ``clients`` summed over the modes is |S_k|, the clients its average runs over."""
    modes = list(modes)
    w = np.ones(len(modes)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(modes),):
        chk.fail("weights", f"one weight per client ({len(modes)})", list(np.ravel(w)))
    w = w / w.sum()
    layers = [p.rstrip(".") for p in nets.layer_prefixes(model)]
    readable = lf.layer_names(model, layers)
    rows = []
    for mode in dict.fromkeys(modes):
        plan = ft.prepare(model, mode, **_opts(mode, options))
        changed = set(plan.trainable) | {p + "weight" for p in plan.adapters}
        who = np.array([m == mode for m in modes])
        for layer in layers:
            trains = any(n.startswith(layer + ".") for n in changed)
            rows.append(dict(layer=layer, name=readable[layer], mode=mode, clients=int(who.sum()) if trains else 0,
                             weight_share=float(w[who].sum()) if trains else 0.0))
    return pd.DataFrame(rows, columns=["layer", "name", "mode", "clients", "weight_share"])


# ============================================================================ from scratch

def local_update(model: nn.Module, X, y, trainable, *, steps: int, lr: float) -> dict:
    """Plain PyTorch: ``steps`` of full-batch SGD on the mean cross-entropy, only on the parameters
    named in ``trainable``, from a copy of ``model``; returns the copy's parameters (detached)."""
    net = copy.deepcopy(model)
    params = [p for k, p in net.named_parameters() if k in trainable]
    opt = torch.optim.SGD(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return {k: v.detach() for k, v in net.named_parameters()}


def mixed_reference(model: nn.Module, fed: fdata.Federation, modes, *, num_rounds: int = 3, local_steps: int = 2,
                    client_lr: float = 0.1, **options) -> dict:
    """Mixed aggregation from scratch: every round, each client trains its mode's parameters
    (:func:`local_update`; the mask is ``flu.finetune.prepare(model, mode).trainable``), then each
    parameter k becomes the n_i-weighted mean over S_k, the clients that trained it (weights
    renormalised among them); a parameter no client trained keeps its value. Modes that change the
    dense parameters directly only (not LoRA, whose update lives in its adapters). Returns the final
    parameters: ``flu.run(model, fed, finetune=modes, batch_size=None, ...)`` gives the same."""
    modes = list(modes)
    if len(modes) != fed.num_clients:
        chk.fail("modes", f"one mode per client ({fed.num_clients})", modes)
    for m in modes:
        chk.option("modes", m, ("full", "linear_probe", "last_layers", "bitfit"))
    masks = {m: set(ft.prepare(model, m, **_opts(m, options)).trainable) for m in set(modes)}
    n = torch.tensor(fed.sizes, dtype=torch.float64)
    net = copy.deepcopy(model)
    for _ in range(chk.integer("num_rounds", num_rounds, low=1)):
        locals_ = [local_update(net, X, y, masks[m], steps=local_steps, lr=client_lr)
                   for (X, y), m in zip(fed.train, modes)]
        with torch.no_grad():
            for k, p in net.named_parameters():
                who = [i for i, m in enumerate(modes) if k in masks[m]]          # S_k
                if who:
                    w = n[who] / n[who].sum()                                    # renormalised among S_k
                    p.copy_(sum(wi * locals_[i][k] for wi, i in zip(w.to(p.dtype), who)))
    return {k: v.detach().clone() for k, v in net.named_parameters()}


# ============================================================================ the image task

def image_task(*, shots: int = 5, alpha: float = 0.5, num_clients: int = 10, query: int | None = 15,
               seed: int = 0):
    """``(model, fed)``: the MNIST-pretrained CNN (``flu.pretrained.pretrained_cnn``, 10 classes) and
    notebook 05's few-shot federation of digits28 (Dirichlet(alpha) clients, ``shots`` support
    examples per class and client, at most ``query`` query examples per class)."""
    ds = pretrained.load_digits28()
    model = pretrained.pretrained_cnn(num_classes=10)
    few = lf.few_shot_federation(ds.X, ds.y, shots=shots, alpha=alpha, num_clients=num_clients, seed=seed,
                                 partition_seed=seed, shape=ds.shape, query=query)
    return model, few.federation


def run_schemes(model: nn.Module, fed: fdata.Federation, schemes: dict, profiles: pd.DataFrame, *,
                num_rounds: int = 10, local_steps: int = 5, batch_size: int | None = 16, client_lr: float = 0.05,
                seed: int = 0, simulation: dict | None = None, **options) -> dict:
    """``{label: History}``: one ``flu.run(model, fed, finetune=schemes[label], systems=sim, ...)`` per
    scheme (a mode for every client, or one mode per client), all on the same
    ``Simulation(profiles, seed=seed, **simulation)``, with the same learning rate, minibatch
    streams and evaluation after every round. ``options`` go to ``flu.run`` (``backend``, ...); the
    modes' own (``lora_rank``, ``num_layers``) only to the schemes with a mode that takes them."""
    if not isinstance(schemes, dict) or not schemes:
        chk.fail("schemes", "a non-empty dict {label: mode or list of modes}", schemes)
    sim = Simulation(profiles=profiles, seed=seed, **(simulation or {}))
    out = {}
    for label, modes in schemes.items():
        modes = modes if isinstance(modes, str) else list(modes)
        names = [modes] if isinstance(modes, str) else modes
        # mode options (lora_rank, num_layers) only to schemes with a mode that takes them
        opts = {k: v for k, v in options.items()
                if k not in ft.ALL_OPTIONS or any(k in ft.OPTIONS.get(m, {}) for m in names)}
        out[label] = run(model, fed, finetune=modes, systems=sim, num_rounds=num_rounds, local_steps=local_steps,
                         batch_size=batch_size, client_lr=client_lr, seed=seed, eval_every=1, progress=False, **opts)
    return out


def cached_probe(model: nn.Module, fed: fdata.Federation, profiles: pd.DataFrame, *, label: str | None = None,
                 input_shape=None, batch_size: int | None = 16, **train) -> dict:
    """``{label: History}`` of the all-linear-probe scheme run on the body's features, computed once
    (notebook 05's cached-embedding speed-up, ``flu.lessons.fewshot.cache_body``), on the clock of
    the probe with the body in the loop: the head alone is "full" fine-tuning of the head model (cost
    1), so the profiles' speeds are divided by the probe's ``cost_vs_full`` (:func:`scale_speed`).
    Bytes (the head, both ways) and drop-out draws are the same; accuracy equals the run with the
    body in the loop up to float rounding. ``train``: :func:`run_schemes`' arguments."""
    input_shape = input_shape or tuple(fed.train[0][0].shape[1:])
    factor = mode_table(model, ("linear_probe",), input_shape=input_shape,
                        batch_size=batch_size or 16)["cost_vs_full"].iloc[0]
    head, _ = lf.cache_body(model, fed.train[0][0][:1])          # the head alone, body = identity
    with torch.no_grad():
        features = fed.map(lambda i, X: model.body(X))
    return run_schemes(head, features, {label or scheme_label("linear_probe"): "linear_probe"},
                       scale_speed(profiles, 1.0 / factor), batch_size=batch_size, **train)


def curves(histories: dict, *, split: str | None = None) -> pd.DataFrame:
    """One row per (scheme, round), round 0 = before training: the pooled ``accuracy`` and
    ``f1_macro`` on the held-out ``split`` (default: the federation's second split, e.g. "query"),
    the virtual clock, and cumulative ``bytes_up``, ``bytes_down``, ``bytes`` (both) and
    ``energy_j`` (:data:`CURVE_COLUMNS`)."""
    frames = []
    for label, hist in histories.items():
        m = hist.metrics
        held = split or next((s for s in ("query", "test") if s in set(m["split"])), None)
        m = m[m.client.isna() & (m.split == held) & (m.model == "global") & m.metric.isin(["accuracy", "f1_macro"])]
        acc = m.pivot_table(index="round", columns="metric", values="value")
        r = hist.rounds.set_index("round")
        zero = pd.DataFrame({c: [0.0] for c in ("virtual_time", "bytes_up", "bytes_down", "energy_j")}, index=[0])
        cum = pd.concat([zero, r[["bytes_up", "bytes_down", "energy_j"]].cumsum().assign(
            virtual_time=r["virtual_time"] if "virtual_time" in r else np.nan)])
        cum["clients_completed"] = pd.concat([pd.Series([0], index=[0]), r.get("clients_completed",
                                                                                r["clients_selected"])])
        table = acc.join(cum, how="inner").reset_index(names="round")
        table["bytes"] = table["bytes_up"] + table["bytes_down"]
        table["scheme"] = label
        if "f1_macro" not in table:
            table["f1_macro"] = np.nan
        frames.append(table[CURVE_COLUMNS])
    out = pd.concat(frames, ignore_index=True)
    out["round"] = out["round"].astype(int)
    return out


def summary(curve: pd.DataFrame, *, target: float | None = None, metric: str = "accuracy") -> pd.DataFrame:
    """One row per scheme at its last round (:data:`SUMMARY_COLUMNS`): ``metric`` values, the virtual
    seconds, bytes and joules spent, and ``time_to_target``: the virtual time of the first round
    whose ``metric`` reached ``target`` (``inf`` when never; NaN without a target)."""
    rows = []
    for label, g in curve.groupby("scheme", sort=False):
        g = g.sort_values("round")
        last = g.iloc[-1]
        if target is None:
            ttt = np.nan
        else:
            hit = g[g[metric] >= target]
            ttt = float(hit["virtual_time"].iloc[0]) if len(hit) else np.inf
        rows.append(dict(scheme=label, accuracy=last["accuracy"], f1_macro=last["f1_macro"],
                         virtual_time=last["virtual_time"], time_to_target=ttt, bytes=last["bytes"],
                         energy_j=last["energy_j"], rounds=int(last["round"])))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# ============================================================================ asynchronous

def asynchronous(model: nn.Module, fed: fdata.Federation, profiles: pd.DataFrame, *, aggregation: str,
                 jobs: int, mode: str = "full", buffer_size: int | None = None, server_lr: float = 1.0,
                 staleness: float = 0.5, evaluations: int = 6, label: str | None = None, local_steps: int = 5,
                 batch_size: int | None = 16, client_lr: float = 0.05, seed: int = 0, **options) -> dict:
    """``{label: History}`` of one asynchronous run (``Simulation(aggregation="fedasync"`` or
    ``"fedbuff")``) spending ``jobs`` client updates, as a synchronous run of ``jobs / N`` rounds
    does: FedAsync applies every arrival (``jobs`` server updates), FedBuff every ``buffer_size``
    arrivals (``jobs / buffer_size`` updates). A History round is one server update; the model is
    evaluated ``evaluations`` times (and before training). Mixed modes are synchronous only in
    ``flu.run``, so every client trains ``mode``."""
    chk.option("aggregation", aggregation, ("fedasync", "fedbuff"))
    jobs = chk.integer("jobs", jobs, low=1)
    size = 1 if aggregation == "fedasync" else (buffer_size or fed.num_clients)
    updates = max(1, jobs // size)
    every = max(1, updates // chk.integer("evaluations", evaluations, low=1))
    sim = Simulation(profiles=profiles, aggregation=aggregation, seed=seed, staleness=staleness,
                     buffer_size=buffer_size if aggregation == "fedbuff" else None)
    label = label or (f"FedAsync ({ft_label(mode).lower()}, server_lr {server_lr:g})" if aggregation == "fedasync"
                      else f"FedBuff ({ft_label(mode).lower()}, buffer {size})")
    return {label: run(model, fed, finetune=mode, systems=sim, num_rounds=updates, local_steps=local_steps,
                       batch_size=batch_size, client_lr=client_lr, server_lr=server_lr, seed=seed, eval_every=every,
                       progress=False, **options)}


# ============================================================================ the text task

#: the MiniLM task's settings, shared by notebook 08 and ``scripts/minilm_modes.py``
TEXT = dict(num_clients=6, shots=4, local_steps=5, batch_size=8, client_lr=0.01, lora_rank=4, max_length=48,
            modes=("full", "lora", "linear_probe"))
MINILM_CSV = "minilm_modes.csv"


def load_minilm_modes(path=None) -> pd.DataFrame:
    """The committed result of ``python scripts/minilm_modes.py`` (``data/minilm_modes.csv``): the
    :func:`curves` of the uniform and assigned schemes with MiniLM in the loop, plus ``modes``,
    ``compute_cost`` and ``wall_s``."""
    path = pretrained.data_dir() / MINILM_CSV if path is None else path
    table = pd.read_csv(path)
    missing = [c for c in [*CURVE_COLUMNS, "modes", "compute_cost", "wall_s"] if c not in table.columns]
    if missing:
        chk.fail("path", f"a CSV written by scripts/minilm_modes.py (columns {missing} missing)", str(path))
    return table


@dataclass(frozen=True)
class TextTask:
    """The MiniLM text task: ``fed`` (K-shot support / query embeddings of the client movies),
    ``rows`` (the same draw on row numbers of the snippet table, to tokenise the same snippets),
    ``movies`` (their movie ids) and ``head`` (``{"head.weight", "head.bias"}`` fitted on the other
    movies: the server's starting classifier)."""

    fed: fdata.Federation
    rows: fdata.Federation
    movies: np.ndarray
    head: dict


def fit_head(X, y, *, num_classes: int = 2, steps: int = 300, lr: float = 2.0) -> dict:
    """Logistic regression by full-batch gradient descent in float64 from zero (deterministic):
    ``{"head.weight", "head.bias"}`` as float32."""
    X = torch.as_tensor(X, dtype=torch.float64)
    y = torch.as_tensor(y)
    W = torch.zeros(num_classes, X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    for _ in range(chk.integer("steps", steps, low=1)):
        loss = nn.functional.cross_entropy(X @ W.T + b, y)
        gW, gb = torch.autograd.grad(loss, (W, b))
        with torch.no_grad():
            W -= lr * gW
            b -= lr * gb
    return {"head.weight": W.detach().float(), "head.bias": b.detach().float()}


def text_task(*, num_clients: int = 6, shots: int = 4, seed: int = 0) -> TextTask:
    """The ``num_clients`` movies with the most snippets of the committed FAST subset
    (``flu.pretrained.load_text_embeddings``) are the clients: ``shots`` support snippets per label
    and movie, the rest their query (``flu.lessons.fewshot.few_shot_federation`` with the movies as
    natural groups). The starting head (:func:`fit_head`) is fitted on every snippet of the other
    movies: the server's own labelled data, never a client's."""
    num_clients = chk.integer("num_clients", num_clients, low=2)
    text = pretrained.load_text_embeddings(fast=True)
    groups = np.asarray(text.groups)
    counts = pd.Series(groups).value_counts()
    order = sorted(counts.index, key=lambda g: (-counts[g], g))
    movies = np.array(sorted(order[:num_clients]))
    inside = np.isin(groups, movies)
    idx = np.flatnonzero(inside)
    args = dict(shots=shots, groups=groups[idx], seed=seed)
    fed = lf.few_shot_federation(text.X[idx], text.y[idx], **args).federation
    rows = lf.few_shot_federation(torch.as_tensor(idx).unsqueeze(1), text.y[idx], **args).federation
    head = fit_head(text.X[~torch.as_tensor(inside)], text.y[~torch.as_tensor(inside)])
    return TextTask(fed, rows, movies, head)


def tokenised_federation(task: TextTask, tokenize, snippets, *, max_length: int) -> fdata.Federation:
    """``task``'s clients with their snippets as token tensors ``(n, 2, max_length)``: the same
    support / query draw (``task.rows`` holds row numbers of ``snippets``), read by ``tokenize``
    (from ``flu.lessons.study.text_classifier``). Used by the scripts that fine-tune MiniLM in the loop."""
    def tokenised(pairs):
        return tuple((tokenize([snippets.X[int(j)] for j in X.ravel()]) if len(y)
                      else torch.zeros(0, 2, max_length, dtype=torch.long), y) for X, y in pairs)

    return fdata.Federation(tokenised(task.rows.train), tokenised(task.rows.test),
                            f"{len(task.movies)} movies, tokens", None, {}, task.rows.splits)


def head_model(head: dict) -> nn.Module:
    """A linear model (``flu.models.logistic``) on the 384-d embeddings with ``head``'s weights."""
    out, d = head["head.weight"].shape
    model = nets.logistic(d, out)
    with torch.no_grad():
        model.head.weight.copy_(head["head.weight"])
        model.head.bias.copy_(head["head.bias"])
    return model


def scale_speed(profiles: pd.DataFrame, factor: float) -> pd.DataFrame:
    """``profiles`` with ``samples_per_s`` multiplied by ``factor``. Compute time is
    steps b cost / samples_per_s, so a linear probe run on cached embeddings (cost 1 of the head
    alone) with ``factor = 1 / cost_vs_full`` of the encoder's linear probe is on the clock of the
    probe with the encoder in the loop (same bytes, same drop-out draws)."""
    factor = chk.real("factor", factor, low=0.0, low_open=True)
    prof = check_profiles(profiles, len(profiles))
    return prof.assign(samples_per_s=prof["samples_per_s"] * factor)


# ============================================================================ the panel

def scenario(model: nn.Module, fed: fdata.Federation, profiles: pd.DataFrame, *, speed_high: float = 0.66,
             speed_low: float = 0.33, memory_share: float = 1.0, modes=IMAGE_MODES, input_shape=None,
             batch_size: int = 16, reference: pd.DataFrame | None = None, known: dict | None = None,
             **train):
    """The panel's one computation: devices whose memory is ``memory_share`` x ``memory_mb``, modes
    assigned with ``speed_quantiles=(speed_high, speed_low)``, and the assigned run on the clock.

    Returns ``(assignment, curve, feasible)``: :func:`assignment_table`'s table, :func:`curves` of
    the assigned run stacked under ``reference`` (curves of uniform runs, kept only for schemes
    every device can hold at this memory), and ``{scheme: fits}`` for the uniform schemes found in
    ``reference``. ``known`` (read only): ``{tuple(modes): curve}`` of runs already made, reused
    when the assignment is one of them. ``train``: :func:`run_schemes`' arguments.
    """
    speed_high = chk.real("speed_high", speed_high, low=0.0, high=1.0, low_open=True, high_open=True)
    speed_low = chk.real("speed_low", speed_low, low=0.0, high=1.0, low_open=True, high_open=True)
    if speed_low >= speed_high:
        chk.fail("speed_low", f"below speed_high ({speed_high:g})", speed_low)
    share = chk.real("memory_share", memory_share, low=0.0, high=1.0, low_open=True)
    prof = check_profiles(profiles, len(profiles))
    prof = prof.assign(memory_mb=prof["memory_mb"] * share)
    input_shape = input_shape or tuple(fed.train[0][0].shape[1:])
    table = assignment_table(prof, model, input_shape=input_shape, batch_size=batch_size, modes=modes,
                             speed_quantiles=(speed_high, speed_low), **_opts_all(modes, train))
    assigned = table["mode"].tolist()
    key = tuple(assigned)
    if known is not None and key in known:
        curve = known[key]
    else:
        curve = curves(run_schemes(model, fed, {scheme_label(assigned): assigned}, prof, batch_size=batch_size,
                                   **train))
    feasible = {}
    if reference is not None:
        keep = []
        for label, g in reference.groupby("scheme", sort=False):
            mode = next((m for m in ft.MODES if scheme_label(m) == label), None)
            if mode is None:
                continue
            try:
                check_modes(mode, prof, model, input_shape, batch_size, **_opts(mode, train))
                feasible[label] = True
                keep.append(g)
            except ValueError:
                feasible[label] = False
        curve = pd.concat([*keep, curve], ignore_index=True)
    return table, curve, feasible


def _opts_all(modes, train):
    return {k: v for k, v in train.items() if any(k in ft.OPTIONS.get(m, {}) for m in modes)}
