"""Evaluation of the global model, and of each client's personal model, on every client's train
and test split, per client and pooled."""
from __future__ import annotations

import math

import torch
from torch.func import functional_call

from .._core.losses import f1_macro, predictions_correct, sample_losses
from ..data.datasets import Federation
from ..models.batched import chain_forward, linear_chain


class Evaluator:
    """Loss/accuracy (and F1 on the held-out split) per client and pooled over all examples:
    ``model="global"`` for the global parameters, ``model="personal"`` when each client's
    personal parameters ``{name: (N, ...)}`` override them on that client's data."""

    def __init__(self, model, fed: Federation, dtype, loss, classification):
        self.model, self.loss, self.classification = model, loss, classification
        self.chain = linear_chain(model)   # a Linear/activation chain runs without functional_call
        self.held_out = fed.splits[1]
        self.splits = {}
        for split, pairs in zip(fed.splits, (fed.train, fed.test)):
            sizes = [len(y) for _, y in pairs]
            if sum(sizes) == 0:
                continue
            X = torch.cat([X for X, _ in pairs]).to(dtype)
            Y = torch.cat([y for _, y in pairs])
            cid = torch.repeat_interleave(torch.arange(len(pairs)), torch.tensor(sizes))
            self.splits[split] = (X, Y, cid, torch.tensor(sizes, dtype=torch.float64))

    def _forward(self, params, X):
        return functional_call(self.model, params, (X,)) if self.chain is None else chain_forward(self.chain, params, X)

    def _outputs(self, params, X, sizes, personal):
        if personal is None:
            return torch.cat([self._forward(params, X[i:i + 8192]) for i in range(0, len(X), 8192)])
        outs, start = [], 0
        for c, n in enumerate(sizes.long().tolist()):
            if n:
                own = {**params, **{k: v[c] for k, v in personal.items()}}
                outs.append(self._forward(own, X[start:start + n]))
            start += n
        return torch.cat(outs)

    @torch.no_grad()
    def __call__(self, params, rnd, rows, personal=None):
        tag = "global" if personal is None else "personal"
        for split, (X, Y, cid, sizes) in self.splits.items():
            out = self._outputs(params, X, sizes, personal)
            per = {"loss": sample_losses(out, Y, self.loss).to(torch.float64)}
            if self.classification:
                per["accuracy"] = predictions_correct(out, Y)
            for metric, values in per.items():
                if not math.isfinite(float(values.sum())):
                    raise FloatingPointError(
                        f"round {rnd}: the {split} {metric} of the {tag} model is not finite (training diverged); "
                        "try a smaller client_lr")
                sums = torch.zeros(len(sizes), dtype=torch.float64).index_add_(0, cid, values)
                keep = sizes > 0
                clients = torch.arange(len(sizes))[keep].tolist()
                _append(rows, rnd, -1, split, tag, metric, float(values.mean()))
                _extend(rows, rnd, clients, split, tag, metric, (sums[keep] / sizes[keep]).tolist())
            if self.classification and split == self.held_out:
                _append(rows, rnd, -1, split, tag, "f1_macro", f1_macro(out, Y))


def _append(rows, rnd, client, split, model, metric, value):
    rows["round"].append(rnd)
    rows["client"].append(client)
    rows["split"].append(split)
    rows["model"].append(model)
    rows["metric"].append(metric)
    rows["value"].append(value)


def _extend(rows, rnd, clients, split, model, metric, values):
    """:func:`_append` for many clients at once."""
    n = len(clients)
    rows["round"].extend([rnd] * n)
    rows["client"].extend(clients)
    rows["split"].extend([split] * n)
    rows["model"].extend([model] * n)
    rows["metric"].extend([metric] * n)
    rows["value"].extend(values)
