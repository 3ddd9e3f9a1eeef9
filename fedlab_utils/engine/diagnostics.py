"""Round diagnostics at the new global model: loss, gradient norm, dissimilarity, drift."""
from __future__ import annotations

import math

import torch

from .._core import checks as chk


def _flat(tensors: dict, lead: int | None) -> torch.Tensor:
    """Concatenate tensors into (lead, P) (or (P,) when ``lead`` is None) in float64."""
    parts = [torch.as_tensor(v).to(torch.float64) for v in tensors.values()]
    if lead is None:
        return torch.cat([v.reshape(-1) for v in parts]) if parts else torch.zeros(0, dtype=torch.float64)
    for name, v in zip(tensors, parts):
        if v.dim() == 0 or v.shape[0] != lead:
            chk.fail(f"{name!r} entry", f"a tensor with a leading axis of length {lead}", tuple(v.shape))
    return torch.cat([v.reshape(lead, -1) for v in parts], 1)


def round_diagnostics(losses, grads, p, deltas, update) -> dict:
    """Per-round diagnostics at the new global model x (all sums over the N clients):

    - ``global_loss`` = sum_i p_i F_i(x);  ``grad_norm`` = ||grad F(x)||, grad F = sum_i p_i grad F_i;
    - ``grad_dissimilarity`` zeta^2 = sum_i p_i ||grad F_i - grad F||^2;
    - ``b_dissimilarity`` B = sqrt(sum_i p_i ||grad F_i||^2 / ||grad F||^2) (Li et al. 2020, MLSys,
      "Federated Optimization in Heterogeneous Networks", Definition 3; 1 when all gradients are
      0, inf when only grad F is);
    - ``client_drift`` = mean over the K selected clients of ||delta_i||, delta_i = x_old - y_i;
    - ``update_norm`` = ||x_old - x_new||.

    ``losses`` (N,), ``grads`` name -> (N, ...), ``p`` (N,) population weights (used as given),
    ``deltas`` name -> (K, ...), ``update`` name -> tensor. Returns plain floats.
    """
    losses = torch.as_tensor(losses, dtype=torch.float64).reshape(-1)
    p = torch.as_tensor(p, dtype=torch.float64).reshape(-1)
    N = len(p)
    if len(losses) != N:
        chk.fail("losses", f"one value per client ({N}, the length of p)", f"{len(losses)} values")
    G = _flat(grads, N)
    gbar = p @ G
    gn2 = float(gbar @ gbar)
    sq = float(p @ (G * G).sum(1))
    if gn2 > 0:
        b = math.sqrt(sq / gn2)
    else:
        b = 1.0 if sq == 0 else math.inf
    K = len(next(iter(deltas.values()))) if deltas else 0
    drift = float(_flat(deltas, K).norm(dim=1).mean()) if K else math.nan
    return dict(global_loss=float(p @ losses), grad_norm=math.sqrt(gn2),
                grad_dissimilarity=float(p @ ((G - gbar) ** 2).sum(1)), b_dissimilarity=b,
                client_drift=drift, update_norm=float(_flat(update, None).norm()))
