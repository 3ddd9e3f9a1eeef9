"""One fine-tuning mode per client (``flu.run(..., finetune=[...])``): strong devices train the
whole model, weak ones only the head.

The server keeps the dense model (every parameter). Clients are grouped by mode; each group
trains its own mode's parameters from the dense x (a LoRA client with fresh adapters, its update
entering as the dense product B_i A_i). Each parameter is then averaged over the clients whose
mode trained it, their weights renormalised among them:

    x_k <- x_k - server_lr * sum_{i in S_k} (w_i / sum_{j in S_k} w_j) * W * delta_{i,k},

S_k the round's clients that trained parameter k and W = sum_i w_i (1 for averaging weights).
Done by rescaling delta_{i,k} by W / sum_{j in S_k} w_j before the server rule, so FedAvg and the
server optimisers see the renormalised mean. Algorithms with per-client state or local
corrections (SCAFFOLD, FedDyn) act on every coordinate and are refused with mixed modes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._core import checks as chk
from .._core.random import LORA, stream
from ..models import finetune as ft
from .local import Trainer

MIXABLE = ("full", "linear_probe", "last_layers", "bitfit", "lora")


@dataclass
class Group:
    """The clients of one mode: their plan, trainer, upload size and the server names they change."""

    mode: str
    members: torch.Tensor      # (N,) bool
    plan: ft.Plan
    trainer: Trainer
    frozen: dict
    up_bytes: int
    changes: frozenset         # server (dense) names this mode's update changes


def check(modes: list, algorithm, options, params: dict) -> None:
    """Refuse what mixed modes cannot do exactly, naming ``finetune``."""
    for i, m in enumerate(modes):
        if m not in MIXABLE:
            chk.fail("finetune", f"modes that mix ({list(MIXABLE)}); client {i} has {m!r} (an FFA-LoRA update lives "
                     "in its adapters' coordinates, not the dense model's)", m)
    x = dict(params)
    if algorithm.init_client(x, options):
        chk.fail("finetune", f"one mode for all clients with algorithm {algorithm.name!r}: its per-client state "
                 "acts on every parameter, which mixed modes do not train", "a list of modes")


def build(modes: list, model, params: dict, X, Y, loss, l2, backend, seed, finetune_options) -> list:
    groups = []
    for mode in dict.fromkeys(modes):  # first-seen order: deterministic
        opts = {k: v for k, v in finetune_options.items() if k in ft.OPTIONS.get(mode, {})}
        plan = ft.prepare(model, mode, seed=seed, **opts)
        names = dict(plan.model.named_parameters())
        trainable = list(plan.trainable)
        frozen = {k: v.detach().clone() for k, v in names.items() if k not in plan.trainable}
        l2_names = {k for k in trainable if names[k].dim() >= 2}
        changes = frozenset(k for k in trainable if k in params) | frozenset(p + "weight" for p in plan.adapters
                                                                              if mode == "lora")
        members = torch.tensor([m == mode for m in modes], dtype=torch.bool)
        groups.append(Group(mode, members, plan, Trainer(plan.model, frozen, X, Y, loss, l2_names, l2, backend),
                            frozen, sum(names[k].numel() * names[k].element_size() for k in trainable),
                            changes))
    return groups


def train(groups: list, x: dict, sel: torch.Tensor, idx, bw, mask, lrs, rnd: int, seed: int, pull: float) -> dict:
    """Every selected client's local parameters in server (dense) coordinates, stacked (K, ...):
    what its mode did not train stays at x."""
    K = len(sel)
    local = {k: v.unsqueeze(0).repeat(K, *[1] * v.dim()) for k, v in x.items()}
    for g in groups:
        rows = g.members[sel].nonzero().flatten()
        if len(rows) == 0:
            continue
        if pull and g.mode == "lora":
            chk.fail("finetune", "modes other than 'lora' with a proximal algorithm (its pull acts on the dense "
                     "weights, which LoRA clients do not train)", "lora")
        begin = g.plan.client_start(x, rnd, lambda i: stream(seed, rnd, i, LORA))
        start = {k: v.unsqueeze(0).expand(len(rows), *v.shape) for k, v in begin.items()}
        g.trainer.frozen = {**g.frozen, **{k: v for k, v in x.items() if k in g.frozen}}
        out = g.plan.to_server(g.trainer(x, idx[rows], bw[rows], mask[rows], lrs, start, pull=pull), x)
        for k in g.changes:
            local[k][rows] = out[k]
    return local


def rescale(delta: dict, sel: torch.Tensor, weights: torch.Tensor, groups: list) -> dict:
    """delta_{i,k} * W / sum_{j in S_k} w_j for the clients that changed k (the others' delta is 0)."""
    total = weights.sum()
    out = {}
    for k, d in delta.items():
        trained = torch.zeros(len(sel), dtype=torch.bool)
        for g in groups:
            if k in g.changes:
                trained |= g.members[sel]
        share = weights[trained].sum()
        scale = torch.where(trained, total / share, torch.zeros(())) if share > 0 else torch.zeros(len(sel))
        out[k] = d * scale.to(d.dtype).view(-1, *[1] * (d.dim() - 1))
    return out


def upload_bytes(groups: list, sel: torch.Tensor) -> int:
    return sum(int(g.members[sel].sum()) * g.up_bytes for g in groups)


def download_bytes(groups: list, params: dict) -> int:
    """Each client downloads every parameter that some client's mode trains (dense)."""
    names = set().union(*(g.changes for g in groups))
    return sum(params[k].numel() * params[k].element_size() for k in names)
