"""Notebook 05's few-shot compute (pure: tables in, tables out; nothing drawn, no global state).

Each function only composes ``flu.partition``, ``flu.data``, ``flu.fewshot``,
``flu.lessons.study`` and ``flu.run``:

- :func:`few_shot_federation`: Dirichlet(alpha) clients (or natural ``groups``), then K-shot support / query.
- :func:`support_gallery`: a few clients' support and query images as a long table (for the picture).
- :func:`trainable_table`: how many parameters of each layer every mode trains (:func:`layer_names`: readable names).
- :func:`frozen_prefix`, :func:`top_model`, :class:`Prefixes`, :func:`cache_body`: the body modules a
  mode leaves frozen, applied once. A mode never changes what lies below its lowest trainable
  layer, so training on those outputs trains the same parameters on the same minibatches, at a
  fraction of the cost: the linear probe and the prototype head on the body's features (the
  *cached-embedding* speed-up), LoRA and last layers on a CNN's conv outputs.
- :func:`compare`: ``flu.lessons.study.compare_modes``, each mode on its cheapest exact representation.
- :func:`sweep`: :func:`compare` over values of shots (K), alpha or rounds, and over seeds.
- :func:`rounds_curve`: pooled query accuracy and macro-F1 after every round, one run per mode.
- :func:`before_after_table`: each client's query accuracy before and after each mode.

The panel that wires these to controls is ``flu.widgets.fewshot``.
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._core import checks as chk
from ..analysis.evaluation import before_after, evaluate
from ..data import datasets as fdata
from ..data import fewshot as fshot
from ..data import partition as fpart
from ..engine.runner import run
from ..models import finetune
from ..models.nets import FedModel, layer_prefixes
from . import study

CACHED = ("none", "linear_probe")


def few_shot_federation(X, y, *, shots: int = 20, alpha: float = 0.5, num_clients: int = 10, seed: int = 0,
                        partition_seed: int = 0, groups=None, shape=None, query: int | None = None,
                        test_fraction: float = 0.2) -> fshot.FewShot:
    """Clients from ``flu.partition.dirichlet(y, num_clients, alpha, seed=partition_seed)`` (or
    ``flu.partition.natural(groups)`` when ``groups`` is given: ``alpha`` and ``num_clients`` unused),
    ``flu.data.federate``, then ``flu.fshot.k_shot(shots, seed=seed)``. Indices depend on ``y`` and the
    seeds only, so images and their cached features give the same clients, supports and queries."""
    part = fpart.natural(groups) if groups is not None else fpart.dirichlet(y, num_clients, alpha,
                                                                           seed=partition_seed)
    fed = fdata.federate(X, y, part, test_fraction=test_fraction, seed=partition_seed, shape=shape)
    return fshot.k_shot(fed, shots, query=query, seed=seed)


def support_gallery(fed: fdata.Federation, clients=None, per_split: int = 8, shape=None) -> pd.DataFrame:
    """Long table ``client, split, slot, label, image`` of the first ``per_split`` examples of each
    client's two splits (support, query), with ``image`` an ``(H, W)`` array (channel 0 of ``shape``)."""
    shape = shape or fed.shape
    if shape is None or len(shape) != 3:
        chk.fail("shape", "an image shape (C, H, W)", shape)
    per_split = chk.integer("per_split", per_split, low=1)
    clients = range(min(4, fed.num_clients)) if clients is None else clients
    rows = []
    for c in clients:
        c = chk.integer("clients", c, low=0, high=fed.num_clients - 1)
        for split, (X, y) in zip(fed.splits, (fed.train[c], fed.test[c])):
            img = X[:per_split].reshape(-1, *shape)[:, 0].detach().cpu().numpy()
            rows += [dict(client=c, split=split, slot=k, label=int(y[k]), image=img[k]) for k in range(len(img))]
    return pd.DataFrame(rows, columns=["client", "split", "slot", "label", "image"])


_KINDS = {nn.Conv1d: "conv", nn.Conv2d: "conv", nn.Conv3d: "conv", nn.Linear: "dense", nn.Embedding: "embedding",
          nn.LayerNorm: "norm", nn.BatchNorm1d: "norm", nn.BatchNorm2d: "norm"}


def layer_names(model: nn.Module, layers) -> dict:
    """Readable names of ``layers`` (module paths of ``model``, in forward order): the head is
    ``"head"``; any other module is named by its type and its rank among the listed modules of that
    type, with its path, e.g. ``"conv1 (body.1)"``, ``"conv2 (body.4)"``, ``"dense (body.8)"`` (no
    rank when the type occurs once). Types: Conv -> conv, Linear -> dense, Embedding, norms; other
    types by their class name in lower case."""
    layers = [str(layer).rstrip(".") for layer in layers]
    kinds = {}
    for layer in layers:
        if layer != "head":
            try:
                mod = model.get_submodule(layer)
            except AttributeError:
                chk.fail("layers", f"module paths of {type(model).__name__}", layer)
            kinds[layer] = next((k for t, k in _KINDS.items() if isinstance(mod, t)), type(mod).__name__.lower())
    total = pd.Series(list(kinds.values()), dtype=object).value_counts().to_dict()
    seen, names = {}, {}
    for layer in layers:
        if layer == "head":
            names[layer] = "head"
            continue
        kind = kinds[layer]
        seen[kind] = seen.get(kind, 0) + 1
        names[layer] = f"{kind}{seen[kind] if total[kind] > 1 else ''} ({layer})"
    return names


def trainable_table(model: nn.Module, modes=finetune.MODES, **options) -> pd.DataFrame:
    """``mode, layer, name, params, trainable``: for every mode (``flu.finetune.prepare``) and every
    module owning parameters, in forward order, its path, its readable name (:func:`layer_names`,
    from the module types of ``model``), its parameter count (adapters included) and how many
    train. Options (``lora_rank``, ``num_layers``) go to the modes that take them."""
    rows = []
    for mode in modes:
        opts = {k: v for k, v in options.items() if k in finetune.OPTIONS.get(mode, {})}
        plan = finetune.prepare(model, mode, **opts)
        trained = set(plan.trainable)
        for prefix in layer_prefixes(plan.model):
            mod = plan.model.get_submodule(prefix.rstrip("."))
            names = [(prefix + n, p) for n, p in mod.named_parameters(recurse=False)]
            rows.append(dict(mode=mode, layer=prefix.rstrip("."), params=sum(p.numel() for _, p in names),
                             trainable=sum(p.numel() for n, p in names if n in trained)))
    table = pd.DataFrame(rows, columns=["mode", "layer", "params", "trainable"])
    readable = layer_names(model, dict.fromkeys(table["layer"]))
    table.insert(2, "name", table["layer"].map(readable))
    return table


def _modules(model: nn.Module) -> list:
    body = getattr(model, "body", None)
    if not (isinstance(body, nn.Module) and isinstance(getattr(model, "head", None), nn.Module)):
        chk.fail("model", "a model with .body and .head (flu.models)", type(model).__name__)
    return list(body) if isinstance(body, nn.Sequential) else [body]


def frozen_prefix(model: nn.Module, mode: str, **options) -> int:
    """How many leading modules of ``model.body`` (its children if an ``nn.Sequential``, else the
    body as one module) ``mode`` leaves untouched: everything below the lowest module holding a
    trainable parameter (or an adapter). ``"none"`` and ``"linear_probe"`` leave the whole body.
    A prefix without parameters counts as 0 (nothing worth caching)."""
    modules = _modules(model)
    if mode == "none":
        k = len(modules)
    else:
        opts = {key: v for key, v in options.items() if key in finetune.OPTIONS.get(mode, {})}
        plan = finetune.prepare(model, mode, **opts)
        trained = set(plan.trainable)
        names = [[n for n, _ in m.named_parameters()] for m in _modules(plan.model)]
        if isinstance(plan.model.body, nn.Sequential):
            keys = list(plan.model.body._modules)
            owners = [{f"body.{keys[j]}.{n}" for n in names[j]} for j in range(len(keys))]
        else:
            owners = [{f"body.{n}" for n in names[0]}]
        k = next((j for j, own in enumerate(owners) if own & trained), len(owners))
    has_params = any(True for m in modules[:k] for _ in m.parameters())
    return k if has_params else 0


def top_model(model: nn.Module, k: int) -> nn.Module:
    """``model`` without the first ``k`` body modules: ``top_model(model, k)(body[:k](X)) == model(X)``.
    Module names are kept (``body.8...``), so masks, adapters and their seeds are the same."""
    if k == 0:
        return model
    body = model.body[k:] if isinstance(model.body, nn.Sequential) else nn.Identity()
    return FedModel(body, model.head, name=f"{getattr(model, 'name', 'model')} above body[:{k}]")


class Prefixes:
    """Outputs of the first ``k`` body modules of ``model`` on ``X``, each computed once (no
    gradients, in chunks) and chained from the longest prefix already computed: ``prefixes(k)``.
    The frozen part of a mode never changes, so training on these outputs is training the mode."""

    def __init__(self, model: nn.Module, X, chunk: int = 2048):
        self.model, self.chunk = model, chk.integer("chunk", chunk, low=1)
        self._out = {0: torch.as_tensor(X)}

    @torch.no_grad()
    def __call__(self, k: int) -> torch.Tensor:
        modules = _modules(self.model)
        k = chk.integer("k", k, low=0, high=len(modules))
        if k not in self._out:
            j = max(i for i in self._out if i < k)
            X = self._out[j]
            block = nn.Sequential(*modules[j:k])
            self._out[k] = torch.cat([block(X[i:i + self.chunk]) for i in range(0, len(X), self.chunk)])
        return self._out[k]


def cache_body(model: nn.Module, X):
    """``(head_model, Z)``: ``Z = model.body(X)`` computed once and a model whose body is the
    identity and whose head is ``model.head``: ``head_model(Z) == model(X)``."""
    k = len(_modules(model))
    return top_model(model, k), Prefixes(model, X)(k)


def _fed_inputs(model, fed):
    """``k -> fed`` with every input replaced by ``body[:k]`` of it (memoised)."""
    cache = {}

    @torch.no_grad()
    def inputs(k):
        if k == 0:
            return fed
        if k not in cache:
            block = nn.Sequential(*_modules(model)[:k])
            cache[k] = fed.map(lambda i, X: block(X))
        return cache[k]
    return inputs


def _describe(model, k, fed_k):
    if k == 0:
        return "in the loop"
    return f"body[:{k}] cached ({int(np.prod(fed_k.train[0][0].shape[1:]))}-d)"


def compare(model: nn.Module, fed: fdata.Federation, modes=study.MODES, *, cache: bool = True, inputs=None,
            baselines: bool = False, lora_rank: int = 4, num_layers: int = 2, **kwargs):
    """``flu.lessons.study.compare_modes``, each mode run on the cheapest exact representation.

    With ``cache=True`` a mode runs on the outputs of the body modules it leaves frozen
    (:func:`frozen_prefix`): the prototype head, the linear probe and the linear-probe ``baselines``
    on the body's features; LoRA, FFA-LoRA and last layers on the CNN's conv outputs; BitFit and
    full fine-tuning on the inputs. The same parameters train on the same minibatches, so accuracy
    and bytes are those of the model in the loop (up to float rounding), at a fraction of the time.
    ``inputs``: a function ``k -> federation of body[:k] outputs`` (e.g. from :class:`Prefixes`);
    default: computed from ``fed`` once per ``k``. ``kwargs`` go to ``compare_modes``.

    Returns ``(summary, per_client, histories)`` as ``compare_modes``, rows in ``modes`` order (the
    pretrained row once), with ``flops_step`` and ``memory_bytes`` estimated for the *whole* model
    (``flu.finetune.cost``) and a column ``features`` saying what ran (``"in the loop"`` or the
    cached prefix). ``seconds_per_step`` is the engine's time on what ran.
    """
    modes = tuple(modes)
    for m in modes:
        chk.option("modes", m, study.MODES)
    if not modes and not baselines:
        chk.fail("modes", "at least one mode (or baselines=True)", modes)
    inputs = inputs or _fed_inputs(model, fed)
    opts = dict(lora_rank=lora_rank, num_layers=num_layers)
    groups = {}
    for m in modes:
        groups.setdefault(frozen_prefix(model, m, **opts) if cache else 0, []).append(m)
    if baselines:
        k_lp = frozen_prefix(model, "linear_probe") if cache else 0
        groups.setdefault(k_lp, [])
    parts = []
    for k, group in sorted(groups.items(), reverse=True):
        fed_k = inputs(k)
        net = top_model(model, k)
        s, p, h = study.compare_modes(net, fed_k, group, baselines=baselines and k == k_lp, lora_rank=lora_rank,
                                      num_layers=num_layers, input_shape=tuple(fed_k.train[0][0].shape[1:]),
                                      **kwargs)
        parts.append((_describe(model, k, fed_k), s, p, h))
    summary = pd.concat([s.assign(features=tag) for tag, s, _, _ in parts], ignore_index=True)
    summary = summary.drop_duplicates("mode", keep="first")
    input_shape = tuple(fed.train[0][0].shape[1:])
    for i, m in summary["mode"].items():
        if m in finetune.MODES:
            c = finetune.cost(model, m, input_shape=input_shape, batch_size=kwargs.get("batch_size") or 16,
                              **{key: v for key, v in opts.items() if key in finetune.OPTIONS.get(m, {})})
            summary.loc[i, ["flops_step", "memory_bytes"]] = [c["flops_step"], c["memory_bytes"]]
    pre = study.LABELS["pretrained"]
    per_client = pd.concat([p.assign(features=tag) for tag, _, p, _ in parts], ignore_index=True)
    per_client = per_client[(per_client.method != pre) | (per_client.features == parts[0][0])]
    order = {m: i for i, m in enumerate(("pretrained", *modes, "local_only", "centralised"))}
    summary = summary.sort_values("mode", key=lambda col: col.map(order)).reset_index(drop=True)
    histories = {key: v for _, _, _, h in parts for key, v in h.items()}
    return summary, per_client.reset_index(drop=True), histories


SWEEPABLE = ("shots", "alpha", "num_rounds")


def sweep(model: nn.Module, X, y, param: str, values, *, modes=CACHED, seeds=(0,), shots: int = 20,
          alpha: float = 0.5, num_rounds: int = 10, num_clients: int = 10, partition_seed: int = 0, shape=None,
          cache: bool = True, prefixes: Prefixes | None = None, **kwargs) -> pd.DataFrame:
    """One :func:`compare` per value of ``param`` (``"shots"``, ``"alpha"`` or ``"num_rounds"``) and
    per seed (the support draw and the training streams; the partition stays ``partition_seed``).

    Frozen prefixes are computed once for all of ``X`` (:class:`Prefixes`; pass yours as
    ``prefixes``), not once per point. Returns the stacked summary rows with the columns ``shots,
    alpha, num_rounds, seed``.
    """
    chk.option("param", param, SWEEPABLE)
    X = torch.as_tensor(X)
    prefixes = prefixes or Prefixes(model, X)
    rows = []
    for value in list(values):
        settings = {**dict(shots=shots, alpha=alpha, num_rounds=num_rounds), param: value}
        for seed in seeds:
            args = dict(shots=settings["shots"], alpha=settings["alpha"], num_clients=num_clients, seed=seed,
                        partition_seed=partition_seed)
            few = few_shot_federation(X, y, shape=shape, **args)
            inputs = functools.partial(_prefix_federation, prefixes, y, args, few.federation)
            summary, _, _ = compare(model, few.federation, modes, cache=cache, inputs=inputs,
                                    num_rounds=settings["num_rounds"], seed=seed, **kwargs)
            rows.append(summary.assign(seed=seed, **settings))
    return pd.concat(rows, ignore_index=True)


def _prefix_federation(prefixes, y, args, fed, k):
    return fed if k == 0 else few_shot_federation(prefixes(k), y, **args).federation


def prefix_inputs(prefixes: Prefixes, y, fed: fdata.Federation, **few_shot_args):
    """``k -> federation`` for :func:`compare`: ``few_shot_federation(prefixes(k), y, **few_shot_args)``
    (``fed`` itself for ``k = 0``); ``few_shot_args`` must be those that built ``fed`` from the inputs."""
    return functools.partial(_prefix_federation, prefixes, y, few_shot_args, fed)


def rounds_curve(model: nn.Module, fed: fdata.Federation, modes=CACHED, *, num_rounds: int = 10,
                 local_steps: int = 5, batch_size: int | None = 16, client_lr=None, lora_rank: int = 4,
                 num_layers: int = 2, seed: int = 0, cache: bool = True, inputs=None) -> pd.DataFrame:
    """Pooled query ``accuracy`` and ``f1_macro`` after every round (0 = before training) of
    ``flu.run(..., finetune=mode, eval_every=1)`` for each mode, with ``compare_modes``' learning
    rates (:data:`flu.lessons.study.CLIENT_LR`; ``client_lr`` a number or dict overrides) and the caching
    of :func:`compare`. ``"none"`` is the prototype head, the same at every round.
    Long table ``method, mode, round, metric, value``."""
    num_rounds = chk.integer("num_rounds", num_rounds, low=1)
    lrs = study.client_lrs(client_lr)
    inputs = inputs or _fed_inputs(model, fed)
    held_out = fed.splits[1]
    frames = []
    for mode in modes:
        chk.option("modes", mode, study.MODES)
        opts = {"lora_rank": lora_rank} if "lora" in mode else {"num_layers": num_layers} \
            if mode == "last_layers" else {}
        k = frozen_prefix(model, mode, **opts) if cache else 0
        net, data = top_model(model, k), inputs(k)
        if mode == "none":
            head, _ = fshot.prototype_classifier(net.body, data, num_classes=net.head.weight.shape[0])
            table = evaluate(FedModel(net.body, head), data)
            pooled = table[table.client.isna() & table.metric.isin(["accuracy", "f1_macro"])]
            rows = [dict(round=r, metric=m, value=v) for r in range(num_rounds + 1)
                    for m, v in zip(pooled.metric, pooled.value)]
            frames.append(pd.DataFrame(rows).assign(method=study.LABELS[mode], mode=mode))
            continue
        hist = run(net, data, num_rounds=num_rounds, local_steps=local_steps, client_lr=lrs[mode],
                   batch_size=batch_size, finetune=mode, seed=seed, eval_every=1, progress=False, **opts)
        m = hist.metrics
        m = m[m.client.isna() & (m.split == held_out) & m.metric.isin(["accuracy", "f1_macro"])]
        frames.append(m[["round", "metric", "value"]].assign(method=study.LABELS[mode], mode=mode))
    out = pd.concat(frames, ignore_index=True)
    return out[["method", "mode", "round", "metric", "value"]]


def before_after_table(per_client: pd.DataFrame, modes, metric: str = "accuracy") -> pd.DataFrame:
    """Per client, ``metric`` before (the pretrained head) and after each of ``modes`` (once each,
    in order; modes absent from ``per_client`` are skipped): ``client, before, after, change,
    method`` stacked over the modes (``flu.evaluation.before_after``), from :func:`compare`'s
    ``per_client`` table."""
    pre = per_client[per_client.method == study.LABELS["pretrained"]]
    frames = []
    for m in dict.fromkeys(modes):
        chk.option("modes", m, study.MODES)
        after = per_client[per_client.method == study.LABELS[m]]
        if len(after):
            frames.append(before_after(pre, after, metric).assign(method=study.LABELS[m]))
    if not frames:
        chk.fail("modes", "modes with rows in per_client", list(modes))
    return pd.concat(frames, ignore_index=True)
