"""Local training of the selected clients: one primitive for every algorithm.

``Trainer(x, idx, w, mask, lrs, start, shift, pull, fixed)`` runs the minibatch SGD steps of
``F_i(w) + <shift_i, w> + pull/2 ||w - x||^2 (+ l2/2 ||W||^2)`` for all selected clients (the
parameters named in ``fixed`` keep their start values), either stacked along a client axis
(``backend="vectorized"``: ``flu.models.batched``) or one client at a time (``backend="loop"``,
the plain reference). ``Trainer.grad`` and ``Trainer.hvp`` give the stacked minibatch gradients
and Hessian-vector products that meta-learning rules compose.
"""
from __future__ import annotations

import torch
from torch.func import functional_call

from .._core.losses import sample_losses
from ..models.batched import chain_sgd_step, linear_chain, stacked_forward

BACKENDS = ("vectorized", "loop")
GATHER_BYTES = 64 << 20  # gather a whole round's minibatches at once below this size
CHAIN_BYTES = 4 << 20    # stacked parameters per chunk of the hand-written chain step: about the
                         # last-level cache share of a core (1000 clients of an MLP 64-128-10 in
                         # chunks of 110: 1.3x faster than all at once on a 2-core EPYC)


class Trainer:
    """Local SGD on ``F_i(w) + <shift_i, w> + pull/2 ||w - x||^2 (+ l2/2 ||W||^2)``."""

    def __init__(self, model, frozen, X, Y, loss, l2_names, l2, backend):
        self.model, self.frozen, self.X, self.Y = model, frozen, X, Y
        self.loss, self.l2_names, self.l2, self.backend = loss, l2_names, l2, backend
        # a chain of Linear layers and activations: local SGD with the backward written out
        # (flu.models.batched.chain_sgd_step) instead of autograd; soft labels take autograd
        soft = loss == "cross_entropy" and Y.is_floating_point() and Y.dim() > 1
        self.chain = linear_chain(model) if backend == "vectorized" and not soft else None

    chunk = None  # clients trained at once by the vectorised backend (None: all selected)
    dp = None     # sample-level DP-SGD of this round: (clip, noise_multiplier, scale (K,), generators)

    def __call__(self, x, idx, w, mask, lrs, start, shift=None, pull=0.0, fixed=()):
        if self.dp is not None:
            return self._dp_sgd(x, idx, w, mask, lrs, start, shift, pull, fixed)
        if self.backend == "loop":
            return self._loop(x, idx, w, mask, lrs, shift, pull, start, fixed)
        return self._chunked(lambda rows, sh, st: self._vectorized(x, idx[rows], w[rows], mask[rows], lrs, sh, pull,
                                                                   st, fixed), idx.shape[0], shift, start)

    def _chunked(self, fn, K, *stacked):
        """``fn(rows, *stacked[rows])`` over chunks of at most ``chunk`` clients (stacked clients that
        would not fit in memory at once), concatenated."""
        c = K if self.chunk is None else self.chunk
        cut = lambda d, rows: None if d is None else {k: v[rows] for k, v in d.items()}
        if K <= c:
            return fn(slice(None), *stacked)
        parts = [fn(slice(a, min(a + c, K)), *(cut(d, slice(a, min(a + c, K))) for d in stacked))
                 for a in range(0, K, c)]
        return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}

    def _batch_loss(self, P, idx, w):
        """``sum_k sum_b w_kb loss(f(P_k; X_kb), Y_kb)``: the sum over clients of their minibatch means."""
        out = stacked_forward(self.model, {**self.frozen, **P}, self.X[idx], frozenset(P))
        return (sample_losses(out, self.Y[idx], self.loss) * w.to(out.dtype)).sum()

    def _plus_l2(self, grads: dict, P: dict) -> dict:
        return {k: g + self.l2 * P[k] if self.l2 and k in self.l2_names else g for k, g in grads.items()}

    def grad(self, params, idx, w):
        """Stacked gradients ``grad F_i(P_i; B_i)`` at stacked ``params`` (K, ...) on the minibatches
        ``idx`` (K, B) with example weights ``w`` (K, B) (a row of zeros gives a zero gradient)."""
        if self.backend == "loop":
            return self._loop_grad(params, idx, w)

        def fn(rows, P):
            leaves = {k: v.detach().requires_grad_() for k, v in P.items()}
            grads = torch.autograd.grad(self._batch_loss(leaves, idx[rows], w[rows]), list(leaves.values()))
            return self._plus_l2({k: g.detach() for k, g in zip(leaves, grads)}, P)
        return self._chunked(fn, idx.shape[0], params)

    def hvp(self, params, vector, idx, w):
        """Stacked Hessian-vector products ``grad^2 F_i(P_i; B_i) v_i`` (autograd, double backward)."""
        if self.backend == "loop":
            return self._loop_grad(params, idx, w, vector)

        def fn(rows, P, V):
            leaves = {k: v.detach().requires_grad_() for k, v in P.items()}
            grads = torch.autograd.grad(self._batch_loss(leaves, idx[rows], w[rows]), list(leaves.values()),
                                        create_graph=True)
            dot = sum((g * V[k]).sum() for k, g in zip(leaves, grads))
            hv = torch.autograd.grad(dot, list(leaves.values()))
            return self._plus_l2({k: h.detach() for k, h in zip(leaves, hv)}, V)
        return self._chunked(fn, idx.shape[0], params, vector)

    def _loop_grad(self, params, idx, w, vector=None):
        """The per-client reference of :meth:`grad` (and of :meth:`hvp` when ``vector`` is given)."""
        rows = []
        for k in range(idx.shape[0]):
            sel = idx[k][w[k] > 0]
            P = {n: v[k].detach().requires_grad_() for n, v in params.items()}
            if len(sel) == 0:
                rows.append({n: torch.zeros_like(v) for n, v in P.items()})
                continue
            out = functional_call(self.model, {**self.frozen, **P}, (self.X[sel],))
            lval = sample_losses(out, self.Y[sel], self.loss).mean()
            grads = torch.autograd.grad(lval, list(P.values()), create_graph=vector is not None)
            if vector is None:
                rows.append(self._plus_l2({n: g.detach() for n, g in zip(P, grads)}, P))
            else:
                V = {n: v[k] for n, v in vector.items()}
                hv = torch.autograd.grad(sum((g * V[n]).sum() for n, g in zip(P, grads)), list(P.values()))
                rows.append(self._plus_l2({n: h.detach() for n, h in zip(P, hv)}, V))
        return {n: torch.stack([r[n] for r in rows]) for n in params}

    def _grad_terms(self, g, name, p, x, shift, pull, rows=slice(None)):
        if self.l2 and name in self.l2_names:
            g = g + self.l2 * p
        if shift is not None and name in shift:
            g = g + shift[name][rows]
        if pull:
            g = g + pull * (p - x[name])
        return g

    def _vectorized(self, x, idx, w, mask, lrs, shift, pull, start, fixed=()):
        if self.chain is not None:
            return self._chain(x, idx, w, mask, lrs, shift, pull, start, fixed)
        P = {k: start[k].detach().clone() for k in start}
        names = [k for k in start if k not in fixed]
        if not names:
            return P
        stacked = frozenset(P)
        w = w.to(next(iter(P.values())).dtype)
        # every step's minibatch in one gather (K, T, B, ...) when it is small, else step by step
        at_once = idx.numel() * self.X[0].numel() * self.X.element_size() <= GATHER_BYTES
        Xb, Yb = (self.X[idx], self.Y[idx]) if at_once else (None, None)
        for t in range(idx.shape[1]):
            m = mask[:, t]
            leaves = {k: P[k].requires_grad_() for k in names}
            xt, yt = (Xb[:, t], Yb[:, t]) if at_once else (self.X[idx[:, t]], self.Y[idx[:, t]])
            out = stacked_forward(self.model, {**self.frozen, **P, **leaves}, xt, stacked)
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

    def _chain(self, x, idx, w, mask, lrs, shift, pull, start, fixed=()):
        """:meth:`_vectorized` for a :func:`~fedlab_utils.models.batched.linear_chain` model, without
        autograd: the first step writes start - lr grad into fresh tensors (no copy of the start;
        a start shared by all clients runs as shared matmuls), later steps update them in place
        (``chain_sgd_step``), chunk by chunk of clients (views of one output, so nothing is
        concatenated; within the memory chunks of :meth:`_chunked`) small enough that a chunk's
        parameters and minibatches stay in cache through its steps. The penalty and correction
        terms ``l2 W + shift + pull (P - x)`` are taken at each step's starting point, like the
        gradient."""
        names = [k for k in start if k not in fixed]
        if not names or idx.shape[1] == 0:
            return {k: start[k].detach().clone() for k in start}
        start = {k: v.detach() for k, v in start.items()}
        P = {k: torch.empty(v.shape, dtype=v.dtype) if k in names else v.clone() for k, v in start.items()}
        K = idx.shape[0]
        per_client = sum(v[0].numel() * v.element_size() for v in P.values())
        c = max(1, CHAIN_BYTES // max(1, per_client))
        w = w.to(next(iter(P.values())).dtype)
        extra = bool(self.l2 and self.l2_names) or shift is not None or pull
        with torch.no_grad():
            for a in range(0, K, c):
                rows = slice(a, min(a + c, K))
                self._chain_steps(x, idx[rows], w[rows], mask[rows], lrs, None if shift is None else
                                  {k: v[rows] for k, v in shift.items()}, pull,
                                  {k: v[rows] for k, v in start.items()}, {k: v[rows] for k, v in P.items()},
                                  names, extra)
        return P

    def _chain_steps(self, x, idx, w, mask, lrs, shift, pull, start, P, names, extra):
        stacked, trained = frozenset(P), frozenset(names)
        at_once = idx.numel() * self.X[0].numel() * self.X.element_size() <= GATHER_BYTES
        Xb, Yb = (self.X[idx], self.Y[idx]) if at_once else (None, None)
        for t in range(idx.shape[1]):
            cur = start if t == 0 else P   # step 0 reads the start and writes P
            m = mask[:, t]
            full = bool(m.all())
            wt = w[:, t] if full else w[:, t] * m.unsqueeze(1).to(w.dtype)
            terms = {}
            if extra:
                for k in names:
                    g = self._grad_terms(torch.zeros((), dtype=cur[k].dtype), k, cur[k], x, shift, pull)
                    if g.dim():
                        terms[k] = g if full else g * m.view(-1, *[1] * (g.dim() - 1)).to(g.dtype)
            xt, yt = (Xb[:, t], Yb[:, t]) if Xb is not None else (self.X[idx[:, t]], self.Y[idx[:, t]])
            chain_sgd_step(self.chain, {**self.frozen, **cur}, stacked, trained, xt, yt, wt, self.loss, lrs[t],
                           out=P if t == 0 else None)
            for k, g in terms.items():
                P[k].sub_(g, alpha=lrs[t])

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

    def _loop(self, x, idx, w, mask, lrs, shift, pull, start, fixed=()):
        names = [n for n in start if n not in fixed]
        rows = []
        for k in range(idx.shape[0]):
            P = {n: start[n][k].detach().clone() for n in start}
            for t in range(int(mask[k].sum()) if names else 0):
                leaves = {n: P[n].requires_grad_() for n in names}
                sel = idx[k, t][w[k, t] > 0]
                out = functional_call(self.model, {**self.frozen, **P, **leaves}, (self.X[sel],))
                lval = sample_losses(out, self.Y[sel], self.loss).mean()
                grads = torch.autograd.grad(lval, [leaves[n] for n in names])
                with torch.no_grad():
                    for n, g in zip(names, grads):
                        g = self._grad_terms(g, n, P[n], x, shift, pull, rows=k)
                        P[n] = P[n].detach() - lrs[t] * g
            rows.append({n: v.detach() for n, v in P.items()})
        return {n: torch.stack([r[n] for r in rows]) for n in start}

    def _dp_sgd(self, x, idx, w, mask, lrs, start, shift, pull, fixed):
        """DP-SGD steps (Abadi et al. 2016): per-example gradients (each example as its own row of a
        stacked computation), each clipped to norm C over the trained tensors, summed over the
        Poisson minibatch, plus N(0, (z C)^2 I) from the client's stream, times 1 / (q_i n_i)."""
        clip, z, scale, gens = self.dp
        P = {k: start[k].detach().clone() for k in start}
        names = [k for k in start if k not in fixed]
        K, T, B = idx.shape
        for t in range(T):
            xt, yt = self.X[idx[:, t]], self.Y[idx[:, t]]
            E = {k: v.repeat_interleave(B, 0) for k, v in P.items()}
            leaves = {k: E[k].requires_grad_() for k in names}
            out = stacked_forward(self.model, {**self.frozen, **E, **leaves}, xt.reshape(K * B, 1, *xt.shape[2:]),
                                  frozenset(E))
            losses = sample_losses(out, yt.reshape(K * B, 1, *yt.shape[2:]), self.loss)
            grads = torch.autograd.grad(losses.sum(), [leaves[k] for k in names])
            with torch.no_grad():
                per = {k: g.reshape(K, B, *g.shape[1:]) for k, g in zip(names, grads)}
                norms = torch.sqrt(sum(g.reshape(K, B, -1).double().pow(2).sum(2) for g in per.values()))
                keep = (w[:, t] > 0).double() * torch.clamp(clip / norms.clamp(min=1e-300), max=1.0)
                m = mask[:, t]
                for k in names:
                    g = torch.einsum("kb,kb...->k...", keep.to(per[k].dtype), per[k])
                    if z > 0:
                        noise = torch.stack([torch.randn(P[k].shape[1:], generator=gens[i], dtype=torch.float64)
                                             for i in range(K)])
                        g = g + (z * clip * noise).to(g.dtype)
                    g = g * scale.to(g.dtype).view(-1, *[1] * (g.dim() - 1))
                    g = self._grad_terms(g, k, P[k], x, shift, pull)
                    P[k] = P[k] - lrs[t] * g * m.to(g.dtype).view(-1, *[1] * (g.dim() - 1))
        return {k: v.detach() for k, v in P.items()}
