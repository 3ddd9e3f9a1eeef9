"""Local training of the selected clients: one primitive for every algorithm.

``Trainer(x, idx, w, mask, lrs, start, shift, pull)`` runs the minibatch SGD steps of
``F_i(w) + <shift_i, w> + pull/2 ||w - x||^2 (+ l2/2 ||W||^2)`` for all selected clients, either
stacked along a client axis (``backend="vectorized"``: ``flu.models.batched``) or one client at
a time (``backend="loop"``, the plain reference).
"""
from __future__ import annotations

import torch
from torch.func import functional_call

from .._core.losses import sample_losses
from ..models.batched import stacked_forward

BACKENDS = ("vectorized", "loop")
GATHER_BYTES = 64 << 20  # gather a whole round's minibatches at once below this size


class Trainer:
    """Local SGD on ``F_i(w) + <shift_i, w> + pull/2 ||w - x||^2 (+ l2/2 ||W||^2)``."""

    def __init__(self, model, frozen, X, Y, loss, l2_names, l2, backend):
        self.model, self.frozen, self.X, self.Y = model, frozen, X, Y
        self.loss, self.l2_names, self.l2, self.backend = loss, l2_names, l2, backend

    chunk = None  # clients trained at once by the vectorised backend (None: all selected)

    def __call__(self, x, idx, w, mask, lrs, start, shift=None, pull=0.0):
        if self.backend == "loop":
            return self._loop(x, idx, w, mask, lrs, shift, pull, start)
        K = idx.shape[0]
        c = K if self.chunk is None else self.chunk
        if K <= c:
            return self._vectorized(x, idx, w, mask, lrs, shift, pull, start)
        parts = []
        for a in range(0, K, c):  # stacked clients that would not fit in memory at once
            rows = slice(a, min(a + c, K))
            parts.append(self._vectorized(x, idx[rows], w[rows], mask[rows], lrs,
                                          None if shift is None else {k: v[rows] for k, v in shift.items()},
                                          pull, {k: v[rows] for k, v in start.items()}))
        return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}

    def _grad_terms(self, g, name, p, x, shift, pull, rows=slice(None)):
        if self.l2 and name in self.l2_names:
            g = g + self.l2 * p
        if shift is not None and name in shift:
            g = g + shift[name][rows]
        if pull:
            g = g + pull * (p - x[name])
        return g

    def _vectorized(self, x, idx, w, mask, lrs, shift, pull, start):
        names = list(start)
        P = {k: start[k].detach().clone() for k in names}
        stacked = frozenset(names)
        w = w.to(next(iter(P.values())).dtype)
        # every step's minibatch in one gather (K, T, B, ...) when it is small, else step by step
        at_once = idx.numel() * self.X[0].numel() * self.X.element_size() <= GATHER_BYTES
        Xb, Yb = (self.X[idx], self.Y[idx]) if at_once else (None, None)
        for t in range(idx.shape[1]):
            m = mask[:, t]
            leaves = {k: P[k].requires_grad_() for k in names}
            xt, yt = (Xb[:, t], Yb[:, t]) if at_once else (self.X[idx[:, t]], self.Y[idx[:, t]])
            out = stacked_forward(self.model, {**self.frozen, **leaves}, xt, stacked)
            total = (sample_losses(out, yt, self.loss) * w[:, t]).sum()
            grads = torch.autograd.grad(total, [leaves[k] for k in names])
            full = bool(m.all())
            with torch.no_grad():  # in place: no fresh (K, ...) buffers per step
                for k, g in zip(names, grads):
                    g = self._grad_terms(g, k, P[k], x, shift, pull)
                    if not full:
                        g.mul_(m.view(-1, *[1] * (g.dim() - 1)).to(g.dtype))
                    P[k].sub_(g, alpha=lrs[t])
        return {k: v.detach() for k, v in P.items()}

    def objectives(self, x, idx, w):
        """Per-client penalised objectives F_i(x) and full-batch gradients (for diagnostics)."""
        names = list(x)
        K = idx.shape[0]
        leaves = {k: v.detach().unsqueeze(0).repeat(K, *[1] * v.dim()).requires_grad_() for k, v in x.items()}
        out = stacked_forward(self.model, {**self.frozen, **leaves}, self.X[idx[:, 0]], frozenset(names))
        per = (sample_losses(out, self.Y[idx[:, 0]], self.loss) * w[:, 0].to(out.dtype)).sum(1)
        grads = torch.autograd.grad(per.sum(), [leaves[k] for k in names])
        penalty = sum((x[k] ** 2).sum() for k in self.l2_names) if self.l2 and self.l2_names else 0.0
        grads = {k: (g + self.l2 * x[k] if k in self.l2_names and self.l2 else g).detach()
                 for k, g in zip(names, grads)}
        return (per.detach() + self.l2 / 2 * penalty).to(torch.float64), grads

    def _loop(self, x, idx, w, mask, lrs, shift, pull, start):
        names = list(start)
        rows = []
        for k in range(idx.shape[0]):
            b = int((w[k, 0] > 0).sum())
            P = {n: start[n][k].detach().clone() for n in names}
            for t in range(int(mask[k].sum())):
                leaves = {n: P[n].requires_grad_() for n in names}
                sel = idx[k, t, :b]
                out = functional_call(self.model, {**self.frozen, **leaves}, (self.X[sel],))
                lval = sample_losses(out, self.Y[sel], self.loss).mean()
                grads = torch.autograd.grad(lval, [leaves[n] for n in names])
                with torch.no_grad():
                    for n, g in zip(names, grads):
                        g = self._grad_terms(g, n, P[n], x, shift, pull, rows=k)
                        P[n] = P[n].detach() - lrs[t] * g
            rows.append(P)
        return {n: torch.stack([r[n] for r in rows]) for n in names}
