"""Why the LoRA server merges products: the error of averaging the factors A and B separately.

A LoRA client ``i`` sends the factors of its update ``Delta W_i = B_i A_i`` (``B_i`` is ``out x r``,
``A_i`` is ``r x in``). What the server should apply is the weighted mean of the *products*,

    Delta W = sum_i p_i B_i A_i,

but averaging each factor on its own ("naive" FedAvg of the adapter parameters) applies

    Delta W_naive = (sum_i p_i B_i) (sum_i p_i A_i),

which differs by the cross terms ``-sum_i p_i (B_i - B_bar)(A_i - A_bar)``: zero only when the clients'
A (or B) agree. All clients start a round from the same A (a shared seed) and B = 0, so after one
local step A has not moved (its gradient is proportional to B = 0) and the two agree; every further
step lets the A_i drift apart. FFA-LoRA (Sun et al. 2024) freezes A, so its naive average is exact.
``flu.finetune`` therefore merges the exact mean of the products into W (``finetune="lora"``).

- :func:`client_factors`: one round of local training from the engine's round-``rnd`` start
  (``Plan.client_start``, the same adapter streams as ``flu.run``), full-batch gradient descent on each
  client's training split; returns the starting point, the weights p_i and every client's parameters.
- :func:`factor_averaging_error`: per adapted layer, the norms of the exact and naive merges and their gap.
- :func:`lora_factor_averaging_error`: both, over several local step counts and modes (a long table).

Pure compute: nothing is drawn, no global state is seeded. With ``batch_size=None`` in ``flu.run``
the exact merge here equals the engine's merged weight after one round (``tests/test_fewshot_extra.py``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call

from .._core import checks as chk
from .._core.random import LORA, stream
from ..models import finetune
from ..data.datasets import Federation

MODES = ("lora", "ffa_lora")


def client_factors(model: nn.Module, fed: Federation, *, mode: str = "lora", lora_rank: int = 4,
                   local_steps: int = 5, client_lr: float = 0.1, seed: int = 0, rnd: int = 1,
                   weights: str = "samples") -> dict:
    """Every client's adapters after ``local_steps`` full-batch gradient steps from the round-``rnd`` start.

    The start is the one ``flu.run(..., finetune=mode, lora_rank=lora_rank, seed=seed)`` gives its
    clients in round ``rnd`` of a run begun from ``model`` (for ``rnd=1``: the pretrained weights,
    A from the shared adapter stream, B = 0). Loss: mean cross-entropy on the client's training split.

    Returns ``{"plan", "start", "weights", "clients"}``: the :class:`flu.finetune.Plan`, the starting
    trainable parameters (dict), the aggregation weights p_i (float64 array) and one dict of trained
    parameters per client (same keys as ``start``).
    """
    chk.option("mode", mode, MODES)
    local_steps = chk.integer("local_steps", local_steps, low=0)
    client_lr = chk.real("client_lr", client_lr, low=0, low_open=True)
    seed = chk.integer("seed", seed, low=0)
    rnd = chk.integer("rnd", rnd, low=1)
    if not isinstance(fed, Federation):
        raise TypeError(f"fed must be an flu.data.Federation, got {type(fed).__name__}")
    plan = finetune.prepare(model, mode, seed=seed, lora_rank=lora_rank)
    params = {k: v.detach().clone() for k, v in plan.model.named_parameters()}
    dtype = next(iter(params.values())).dtype
    x = {k: params[k] for k in plan.server}
    start = plan.client_start(x, rnd, lambda i: stream(seed, rnd, i, LORA))
    frozen = {k: v for k, v in params.items() if k not in start}
    clients = []
    for X, y in fed.train:
        X = X.to(dtype)
        P = {k: v.detach().clone() for k, v in start.items()}
        for _ in range(local_steps):
            leaves = {k: v.requires_grad_() for k, v in P.items()}
            out = functional_call(plan.model, {**frozen, **leaves}, (X,))
            grads = torch.autograd.grad(nn.functional.cross_entropy(out, y), list(leaves.values()))
            P = {k: (v - client_lr * g).detach() for (k, v), g in zip(leaves.items(), grads)}
        if not all(bool(torch.isfinite(v).all()) for v in P.values()):
            raise FloatingPointError(f"client {len(clients)}: local training diverged within {local_steps} "
                                     f"full-batch steps at client_lr={client_lr:g}; try a smaller client_lr")
        # FFA-LoRA's A is frozen (shared by all clients): keep it beside the trained factors
        clients.append({**{k: v for k, v in frozen.items() if k.endswith(("lora_A", "lora_B"))}, **P})
    return {"plan": plan, "start": start, "weights": fed.weights(weights), "clients": clients}


def factor_averaging_error(factors: dict) -> pd.DataFrame:
    """Exact vs naive merge of the clients' adapters, one row per adapted layer.

    Columns: ``layer``, ``rank``, ``exact_norm`` = ||sum_i p_i B_i A_i||_F, ``naive_norm`` =
    ||(sum_i p_i B_i)(sum_i p_i A_i)||_F, ``error`` = ||naive - exact||_F, ``relative_error`` =
    error / exact_norm, and ``A_spread`` = sum_i p_i ||A_i - A_bar||_F / ||A_bar||_F (how far the
    clients' A drifted apart). Computed in float64.
    """
    if not isinstance(factors, dict) or not {"plan", "weights", "clients"} <= set(factors):
        chk.fail("factors", "the dict returned by client_factors", type(factors).__name__)
    plan, clients = factors["plan"], factors["clients"]
    p = torch.as_tensor(np.asarray(factors["weights"], dtype=np.float64))
    rows = []
    for prefix in plan.adapters:
        A = torch.stack([c[prefix + "lora_A"].to(torch.float64) for c in clients])   # (N, r, in)
        B = torch.stack([c[prefix + "lora_B"].to(torch.float64) for c in clients])   # (N, out, r)
        exact = torch.einsum("n,nor,nri->oi", p, B, A)
        A_bar, B_bar = torch.einsum("n,nri->ri", p, A), torch.einsum("n,nor->or", p, B)
        naive = B_bar @ A_bar
        exact_norm = float(exact.norm())
        error = float((naive - exact).norm())
        spread = float((p * (A - A_bar).flatten(1).norm(dim=1)).sum() / A_bar.norm().clamp(min=1e-300))
        rows.append(dict(layer=prefix.rstrip("."), rank=int(A.shape[1]), exact_norm=exact_norm,
                         naive_norm=float(naive.norm()), error=error,
                         relative_error=error / exact_norm if exact_norm > 0 else float(error > 0) * np.inf,
                         A_spread=spread))
    return pd.DataFrame(rows)


def exact_merge(factors: dict) -> dict:
    """The server's exact LoRA merge: ``{layer + ".weight": W + sum_i p_i B_i A_i}`` (in W's dtype)."""
    plan, clients = factors["plan"], factors["clients"]
    params = dict(plan.model.named_parameters())
    p = torch.as_tensor(np.asarray(factors["weights"], dtype=np.float64))
    out = {}
    for prefix in plan.adapters:
        W = params[prefix + "weight"].detach()
        delta = sum(float(p_i) * (c[prefix + "lora_B"].double() @ c[prefix + "lora_A"].double())
                    for p_i, c in zip(p, clients))
        out[prefix + "weight"] = (W.double() + delta).to(W.dtype)
    return out


def lora_factor_averaging_error(model: nn.Module, fed: Federation, *, local_steps=(1, 5, 20), modes=MODES,
                                lora_rank: int = 4, client_lr: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """:func:`factor_averaging_error` for each ``mode`` and each number of ``local_steps``.

    Long table: ``mode, local_steps`` and the columns of :func:`factor_averaging_error`. Expect
    ``relative_error`` 0 at one local step, growing with more steps for ``"lora"``, and 0 (up to
    rounding) for ``"ffa_lora"`` at every step count.
    """
    steps = [chk.integer("local_steps", s, low=1) for s in np.atleast_1d(local_steps).tolist()]
    frames = []
    for mode in modes:
        for s in steps:
            f = client_factors(model, fed, mode=mode, lora_rank=lora_rank, local_steps=s, client_lr=client_lr,
                               seed=seed)
            frames.append(factor_averaging_error(f).assign(mode=mode, local_steps=s))
    out = pd.concat(frames, ignore_index=True)
    return out[["mode", "local_steps"] + [c for c in out.columns if c not in ("mode", "local_steps")]]
