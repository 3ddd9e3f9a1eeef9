"""Who trains in a round, and on which minibatches: seeded per (seed, round, client) streams.

Both backends draw the same indices from these streams, so they agree up to summation order.
"""
from __future__ import annotations

import torch

from .._core.random import BATCH, SAMPLE, mix, stream

SAMPLING = ("uniform", "li_scheme_1", "li_scheme_2", "poisson")


def select_clients(num_clients: int, k: int | None, p: torch.Tensor, sampling: str, seed: int, rnd: int,
                   available=None):
    """Clients of round ``rnd`` and their aggregation weights.

    - full participation (``k`` None): every client, weights p_i.
    - ``uniform``: k clients without replacement, p_i renormalised over them (biased when sizes differ).
    - ``li_scheme_1`` (Li et al. 2020, ICLR, Scheme I): k draws with replacement by p_i, plain mean
      (a client drawn twice counts twice).
    - ``li_scheme_2`` (Scheme II): k uniform without replacement, weights p_i N / k (unbiased; they
      sum to 1 only for balanced p).
    - ``poisson``: each client independently with probability q = k / N, weight p_i / q (unbiased,
      not renormalised; the number of clients varies by round and may be 0: the sampling that
      Opacus' RDP accountant assumes for client-level differential privacy).

    ``available`` (a bool mask over the clients, from a systems simulation) restricts the draw to
    the available clients (all of them when fewer than k are available; N becomes their number
    and p_i is renormalised over them); all available is exactly the draw without it.
    """
    if available is not None and not bool(torch.as_tensor(available).all()):
        candidates = torch.as_tensor(available).nonzero().flatten()
        if len(candidates) == 0:
            return candidates, p[:0].clone()
        q = p[candidates] / p[candidates].sum()
        k = None if k is None else min(k, len(candidates))
        sel, w = select_clients(len(candidates), k, q, sampling, seed, rnd)
        return candidates[sel], w
    if k is None or (k == num_clients and sampling != "li_scheme_1"):
        return torch.arange(num_clients), p.clone()
    g = stream(seed, rnd, SAMPLE)
    if sampling == "poisson":
        q = k / num_clients
        sel = (torch.rand(num_clients, generator=g, dtype=torch.float64) < q).nonzero().flatten()
        return sel, p[sel] / q
    if sampling == "li_scheme_1":
        draws = torch.multinomial(p, k, replacement=True, generator=g)
        sel, counts = torch.unique(draws, return_counts=True)
        return sel, counts.to(p.dtype) / k
    sel = torch.randperm(num_clients, generator=g)[:k].sort().values
    if sampling == "uniform":
        return sel, p[sel] / p[sel].sum()
    return sel, p[sel] * num_clients / k


def batch_plan(sizes, offsets, clients, steps, batch_size, seed, rnd):
    """Minibatch indices (into the flat training data) for every selected client and step.

    Client i at step t takes the ``batch_size`` examples with the smallest keys of a fresh
    uniform draw from its own stream (seed, round, client): a uniform sample without replacement.
    ``batch_size=None`` or ``n_i <= batch_size`` is client i's full batch. Returns ``idx`` (K, T, B)
    long, per-example weights ``w`` (K, T, B) (1/b_i, 0 for padding) and the step mask (K, T).
    """
    K, T = len(clients), int(steps.max())
    n = sizes[clients]
    n_max = int(n.max())
    B = n_max if batch_size is None else min(batch_size, n_max)
    off = offsets[clients].view(K, 1, 1)
    mask = torch.arange(T).unsqueeze(0) < steps.unsqueeze(1)
    if B == n_max:  # everyone takes its full batch: no randomness needed
        pos = torch.arange(B).view(1, 1, B).expand(K, T, B)
        valid = pos < n.view(K, 1, 1)
    else:
        keys = torch.full((K, T, n_max), 2.0)  # padding never beats a uniform key in [0, 1)
        big = n > B
        g = torch.Generator()  # re-seeded per client: the draws of stream(seed, rnd, c, BATCH)
        draws = [torch.rand(t_c, n_c, generator=g.manual_seed(mix(seed, rnd, c, BATCH))).reshape(-1)
                 for c, n_c, t_c, b in zip(clients.tolist(), n.tolist(), steps.tolist(), big.tolist()) if b]
        inside = torch.arange(n_max).view(1, 1, n_max) < n.view(K, 1, 1)
        if draws:  # client k's (t_c, n_c) draw fills keys[k, :t_c, :n_c], in row-major order
            keys.masked_scatter_(inside & mask.unsqueeze(2) & big.view(K, 1, 1), torch.cat(draws))
        keys.masked_fill_(inside & ~big.view(K, 1, 1), 0.0)
        pos = keys.topk(B, dim=2, largest=False, sorted=False).indices
        valid = keys.gather(2, pos) < 1.5
    valid = valid & mask.unsqueeze(2)
    idx = torch.where(valid, off + pos, off)
    w = valid.to(torch.float64) / n.clamp(max=B).view(K, 1, 1).to(torch.float64)
    return idx, w, mask


def poisson_plan(sizes, offsets, clients, steps, batch_size, seed, rnd):
    """Poisson minibatches for DP-SGD: at each step client i takes every example independently
    with probability q_i = min(1, batch_size / n_i) (stream (seed, round, client, BATCH)). Same
    shapes as :func:`batch_plan`, padded to the largest batch drawn; the weights are 1 / (q_i n_i)
    (the expected batch size, as Opacus divides) and 0 for padding."""
    K, T = len(clients), int(steps.max())
    n = sizes[clients]
    draws = []
    for c, n_c, t_c in zip(clients.tolist(), n.tolist(), steps.tolist()):
        q = min(1.0, batch_size / n_c)
        keep = torch.rand(T, n_c, generator=stream(seed, rnd, c, BATCH), dtype=torch.float64) < q
        keep[t_c:] = False
        draws.append((keep, q * n_c))
    B = max(1, max(int(k.sum(1).max()) for k, _ in draws))
    idx = offsets[clients].view(K, 1, 1).repeat(1, T, B)
    w = torch.zeros(K, T, B, dtype=torch.float64)
    for k, (keep, expected) in enumerate(draws):
        for t in range(T):
            pos = keep[t].nonzero().flatten()
            idx[k, t, :len(pos)] += pos
            w[k, t, :len(pos)] = 1.0 / expected
    mask = torch.arange(T).unsqueeze(0) < steps.unsqueeze(1)
    return idx, w, mask
