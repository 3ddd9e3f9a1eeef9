"""The few-shot fine-tuning comparison shared by notebook 05 and ``benchmarks/fewshot_modes.py``.

``compare_modes`` fine-tunes one pretrained model with every mode on the same K-shot federation
and returns one summary row per mode (accuracy, macro-F1, client spread, trainable parameters,
bytes, measured seconds per local step, estimated FLOPs) plus the long per-client table.
``text_classifier`` and ``time_steps`` measure full vs head-only fine-tuning of a real sentence
encoder (all-MiniLM-L6-v2) with the backbone in the loop.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._core import checks as chk
from .._core.labels import canonical_label
from .._core.random import BATCH, INIT, seed_value, stream
from ..analysis import evaluation
from ..data import fewshot
from ..models import finetune
from ..engine.runner import run
from ..models.nets import FedModel

MODES = ("none", "linear_probe", "last_layers", "bitfit", "lora", "ffa_lora", "full")
LABELS = {k: canonical_label(k) for k in ("pretrained", *MODES, "local_only", "centralised")}
CLIENT_LR = {"linear_probe": 0.1, "last_layers": 0.05, "bitfit": 0.1, "lora": 0.1, "ffa_lora": 0.1, "full": 0.02}


def compare_modes(model: nn.Module, fed, modes=MODES, *, num_rounds: int = 10, local_steps: int = 5,
                  batch_size: int | None = 16, client_lr=None, seed: int = 0, lora_rank: int = 4,
                  num_layers: int = 2, input_shape=None, baselines: bool = False):
    """Fine-tune ``model`` on the few-shot federation ``fed`` with each mode; evaluate on the query sets.

    ``client_lr``: a number, a dict mode -> number, or None for :data:`CLIENT_LR`. ``baselines``
    adds local-only (each client alone) and centralised (pooled support) linear-probe rows, each
    given as many SGD steps as the federation took (per client, and in all). Returns ``(summary, per_client, histories)``: ``summary`` one row per method,
    ``per_client`` the long table ``method, client, split, model, metric, value``.
    """
    for m in modes:
        chk.option("modes", m, MODES)
    lrs = client_lrs(client_lr)
    input_shape = input_shape or tuple(fed.train[0][0].shape[1:])
    before = evaluation.evaluate(model, fed)
    tables = {"pretrained": before}
    rows = [_row("pretrained", before, before, cost=None)]
    histories = {}
    for mode in modes:
        if mode == "none":
            head, info = fewshot.prototype_classifier(model.body, fed, num_classes=_num_classes(model))
            table = evaluation.evaluate(FedModel(model.body, head), fed)
            rows.append(_row(mode, table, before, cost=None, bytes_up=info["bytes_up"], trainable=0))
        else:
            opts = {"lora_rank": lora_rank} if "lora" in mode else {"num_layers": num_layers} \
                if mode == "last_layers" else {}
            hist = run(model, fed, num_rounds=num_rounds, local_steps=local_steps, client_lr=lrs[mode],
                       batch_size=batch_size, finetune=mode, seed=seed, eval_every=num_rounds, progress=False, **opts)
            histories[mode] = hist
            table = evaluation.evaluate(hist.model, fed)
            cost = finetune.cost(model, mode, input_shape=input_shape, batch_size=batch_size or 16, **opts)
            rows.append(_row(mode, table, before, cost=cost, hist=hist))
        tables[mode] = table
    if baselines:  # linear probes with as many SGD steps as the federation took in all
        kw = dict(num_rounds=1, client_lr=lrs["linear_probe"], batch_size=batch_size, finetune="linear_probe",
                  seed=seed)
        local = _pool_clients(evaluation.local_only(model, fed, local_steps=num_rounds * local_steps, **kw), fed)
        tables["local_only"] = local
        rows.append(_row("local_only", local, before, cost=None))
        central = evaluation.evaluate(evaluation.centralised(
            model, fed, local_steps=num_rounds * local_steps * fed.num_clients, **kw), fed)
        tables["centralised"] = central
        rows.append(_row("centralised", central, before, cost=None))
    per_client = pd.concat([t.assign(method=LABELS[k]) for k, t in tables.items()], ignore_index=True)
    return pd.DataFrame(rows), per_client[["method"] + evaluation.COLUMNS], histories


def _pool_clients(table, fed):
    """Add the pooled loss and accuracy (per-client values weighted by held-out sizes, which is exact
    for means) to a per-client-only table such as ``evaluation.local_only``'s, so that its summary row
    reports pooled accuracy like every other row rather than the client mean. Macro-F1 cannot be
    pooled from per-client values and stays absent."""
    sizes = fed.test_sizes
    per = table[table.client.notna() & table.metric.isin(["loss", "accuracy"])]
    rows = []
    for (split, name, metric), g in per.groupby(["split", "model", "metric"], sort=False):
        n = sizes[g.client.astype(int).to_numpy()].astype(np.float64)
        rows.append((None, split, name, metric, float((g.value.to_numpy() * n).sum() / n.sum())))
    return pd.concat([table, evaluation._frame(rows)], ignore_index=True) if rows else table


def client_lrs(client_lr=None) -> dict:
    """Learning rate per mode: :data:`CLIENT_LR`, overridden by a number (every mode) or a dict."""
    if isinstance(client_lr, dict):
        return {**CLIENT_LR, **client_lr}
    return dict(CLIENT_LR) if client_lr is None else {m: client_lr for m in CLIENT_LR}


def _num_classes(model):
    return model.head.weight.shape[0] if hasattr(model, "head") else None


def _row(mode, table, before, *, cost, hist=None, bytes_up=None, trainable=None):
    s = evaluation.summarize(table, baseline=before)
    f1 = table[(table.metric == "f1_macro") & table.client.isna()]["value"]
    row = {"method": LABELS[mode], "mode": mode, "accuracy": s.get("pooled", s["mean"]),
           "f1_macro": float(f1.iloc[0]) if len(f1) else np.nan, "client_mean": s["mean"],
           "client_worst_10pct": s["worst_10pct"], "fraction_hurt": s["fraction_hurt"]}
    if hist is not None:
        r = hist.rounds
        row.update(trainable_params=int(r.trainable_params.iloc[0]), bytes_up_per_round=float(r.bytes_up.mean()),
                   bytes_down_per_round=float(r.bytes_down.mean()),
                   seconds_per_step=float(hist.timing.seconds_per_step.median()))
    else:
        row.update(trainable_params=trainable, bytes_up_per_round=bytes_up, bytes_down_per_round=None,
                   seconds_per_step=None)
    if cost is not None:
        row.update(flops_step=cost["flops_step"], memory_bytes=cost["memory_bytes"])
    return row


# --------------------------------------------------------------------------- text: a real encoder

class EncoderBody(nn.Module):
    """all-MiniLM-L6-v2 as a body: token ids and attention mask stacked as ``(N, 2, L)`` (long, or float as
    ``flu.run`` passes them) ->
    mean-pooled, L2-normalised 384-d sentence embedding (the sentence-transformers recipe)."""

    def __init__(self, encoder):
        super().__init__()
        self.transformer = encoder[0].auto_model
        # BERT's pooler (a dense layer on the [CLS] token) never reaches the mean-pooled output:
        # drop it so that its parameters are neither counted, sent nor asked for gradients (flu.run
        # differentiates every trainable parameter and fails on unused ones). The encoder's model
        # is changed in place; text_classifier builds a fresh encoder for each body.
        if getattr(self.transformer, "pooler", None) is not None:
            self.transformer.pooler = None

    def forward(self, tokens):
        # flu.run and flu.evaluation cast inputs to the model's float dtype; token ids (< 2**24)
        # survive float32 exactly, so turn them back into the integer indices the embedding needs.
        tokens = tokens.long()
        ids, mask = tokens[:, 0], tokens[:, 1]
        hidden = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return nn.functional.normalize(pooled, dim=-1)


def text_classifier(num_classes: int = 2, *, seed: int = 0, max_length: int = 48):
    """``(model, tokenize)``: a FedModel with the MiniLM encoder as body and a fresh linear head,
    and a function turning a list of strings into the ``(N, 2, L)`` token tensor it reads."""
    from ..models import pretrained

    encoder = pretrained.sentence_encoder()
    tokenizer = encoder.tokenizer
    with torch.random.fork_rng(devices=[]):  # the head is initialised below from its own generator
        head = nn.Linear(384, chk.integer("num_classes", num_classes, low=2))
    gen = stream(seed_value("seed", seed), INIT)
    with torch.no_grad():
        head.weight.uniform_(-384 ** -0.5, 384 ** -0.5, generator=gen)
        head.bias.zero_()

    def tokenize(texts):
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)

    return FedModel(EncoderBody(encoder), head, name="minilm-l6"), tokenize


def time_steps(model: nn.Module, X, y, mode: str, *, steps: int = 3, batch_size: int = 16, lr: float = 1e-3,
               seed: int = 0) -> float:
    """Median wall-clock seconds of one SGD step of ``mode`` with the backbone in the loop
    (a plain PyTorch loop on a copy; the first step is a warm-up and not counted)."""
    chk.integer("steps", steps, low=1)
    plan = finetune.prepare(model, mode)
    net = copy.deepcopy(plan.model)
    train = set(plan.trainable)
    params = [p for n, p in net.named_parameters() if n in train]
    for n, p in net.named_parameters():
        p.requires_grad_(n in train)
    opt = torch.optim.SGD(params, lr=lr)
    gen = stream(seed_value("seed", seed), BATCH)
    times = []
    for _ in range(steps + 1):
        idx = torch.randperm(len(y), generator=gen)[:batch_size]
        t0 = time.perf_counter()
        opt.zero_grad()
        if mode == "linear_probe":  # no graph through the frozen body
            with torch.no_grad():
                z = net.body(X[idx])
            out = net.head(z)
        else:
            out = net(X[idx])
        nn.functional.cross_entropy(out, y[idx]).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))
