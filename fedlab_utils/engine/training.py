"""One round's local training for the selected clients, shared by synchronous and asynchronous
rounds: the learning rates, the minibatch plans, and the primitives every algorithm's client rule
calls: ``train(shift, pull, start, fixed, steps, draw)`` (local SGD), ``grad`` and ``hvp``
(stacked minibatch gradients and Hessian-vector products, for meta-learning), all in server
coordinates."""
from __future__ import annotations

import math
import time

import torch

from .._core import checks as chk
from .._core.random import LORA, PRIVACY, mix, stream
from . import mixed
from .sampling import batch_plan, poisson_plan

PARTS = ("train", "support", "query")


def support_query(sizes: torch.Tensor, offsets: torch.Tensor, fraction: float, seed: int) -> dict:
    """Each client's training data split once into support and query (FedMeta, Chen et al. 2018):
    support = the round(f n_i) examples (at least 1, at most n_i - 1) first in a seeded
    permutation from the stream (seed, client, SPLIT). Returns part -> (sizes, offsets, index) with
    ``index`` the flat training positions of the part's examples, client by client."""
    from .._core.random import SPLIT
    small = (sizes < 2).nonzero().flatten().tolist()
    if small:
        chk.fail("federation", f"clients with at least 2 training examples for a support/query split (client "
                 f"{small[0]} has {int(sizes[small[0]])})", "support_fraction")
    sup, qry, n_sup = [], [], []
    for c, (n, off) in enumerate(zip(sizes.tolist(), offsets.tolist())):
        s = min(max(int(round(fraction * n)), 1), n - 1)
        perm = torch.randperm(n, generator=stream(seed, c, SPLIT)) + off
        sup.append(perm[:s])
        qry.append(perm[s:])
        n_sup.append(s)
    out = {}
    for part, pieces in (("support", sup), ("query", qry)):
        n = torch.tensor([len(v) for v in pieces], dtype=sizes.dtype)
        out[part] = (n, torch.cumsum(n, 0) - n, torch.cat(pieces))
    return out


class LocalRound:
    """Local training of the clients ``sel`` (with ``steps`` each) from the global ``x`` in round
    ``rnd``; ``lrs`` per step, ``lr_sum`` per client, ``seconds`` spent training so far."""

    def __init__(self, setup, x: dict, rnd: int, sel: torch.Tensor, steps: torch.Tensor):
        cfg = setup.cfg
        self.setup, self.x, self.rnd, self.sel, self.steps = setup, x, rnd, sel, steps
        self.lrs = self._rates(int(steps.max()))
        self.lr_sum = torch.tensor([sum(self.lrs[:s]) for s in steps.tolist()], dtype=setup.dtype)
        self.dpsgd = type(cfg.privacy).__name__ == "DPSGD"
        draw = poisson_plan if self.dpsgd else batch_plan
        self.plan = draw(setup.sizes, setup.offsets, sel, steps, cfg.batch_size, cfg.seed, rnd)
        self._plans = {("train", 0, None): self.plan}
        self.seconds = 0.0

    def _rates(self, T: int) -> list:
        cfg = self.setup.cfg
        lrs = [cfg.lr(self.rnd, t) for t in range(T)]
        if callable(cfg.client_lr) and not all(math.isfinite(v) and v > 0 for v in lrs):
            chk.fail("client_lr", "a schedule returning positive finite learning rates", lrs)
        return lrs

    def batches(self, part: str = "train", draw: int = 0, steps: int | None = None):
        """The minibatch plan ``(idx, w, mask)`` of ``part`` for draw ``draw`` (independent draws
        come from the streams of seed ``mix(seed, draw)``; draw 0 is the round's own plan)."""
        key = (part, draw, steps)
        if key not in self._plans:
            setup, cfg = self.setup, self.setup.cfg
            if part == "train":
                sizes, offsets, index = setup.sizes, setup.offsets, None
            elif setup.parts is None:
                chk.fail("part", "'train' for an algorithm without a support/query split", part)
            else:
                sizes, offsets, index = setup.parts[chk.option("part", part, PARTS)]
            seed = cfg.seed if draw == 0 else mix(cfg.seed, draw)
            s = self.steps if steps is None else torch.full_like(self.steps, steps)
            draw_plan = poisson_plan if (self.dpsgd and part == "train") else batch_plan
            idx, w, mask = draw_plan(sizes, offsets, self.sel, s, cfg.batch_size, seed, self.rnd)
            self._plans[key] = (idx if index is None else index[idx], w, mask)
        return self._plans[key]

    def __call__(self, shift=None, pull=0.0, start=None, fixed=(), steps=None, draw=0) -> dict:
        setup, x, rnd, cfg = self.setup, self.x, self.rnd, self.setup.cfg
        idx, bw, mask = self.batches("train", draw, steps)
        lrs = self.lrs if steps is None else self._rates(steps)
        t1 = time.perf_counter()
        if setup.groups is not None:
            out = mixed.train(setup.groups, x, self.sel, idx, bw, mask, lrs, rnd, cfg.seed, pull)
        else:
            plan = setup.plan
            if plan.mode == "lora" and (shift is not None or pull):
                chk.fail("finetune", f"a mode other than 'lora' for {cfg.algorithm.name!r}: its local correction "
                         "acts on the dense weights, which LoRA clients do not train (try 'ffa_lora')", "lora")
            if start is None:
                begin = plan.client_start(x, rnd, lambda i: stream(cfg.seed, rnd, i, LORA))
                start = {k: v.unsqueeze(0).expand(len(idx), *v.shape) for k, v in begin.items()}
            self._freeze()
            setup.trainer.dp = self._dp(draw) if self.dpsgd else None
            try:
                out = setup.trainer(x, idx, bw, mask, lrs, start, shift=shift, pull=pull, fixed=fixed)
            finally:
                setup.trainer.dp = None
            out = plan.to_server(out, x)
        self.seconds += time.perf_counter() - t1
        return out

    def _dp(self, draw: int):
        """DP-SGD's per-round inputs: clip, noise multiplier, 1 / (q_i n_i) per client, and each
        client's noise stream (seed, round, client, PRIVACY, draw)."""
        cfg, n = self.setup.cfg, self.setup.sizes[self.sel].to(torch.float64)
        expected = torch.clamp(torch.full_like(n, float(cfg.batch_size)), max=n)   # q_i n_i
        gens = [stream(cfg.seed, self.rnd, c, PRIVACY, draw) for c in self.sel.tolist()]
        return cfg.privacy.clip, cfg.privacy.noise_multiplier, 1.0 / expected, gens

    def _freeze(self) -> None:
        setup = self.setup
        setup.trainer.frozen = {**setup.frozen, **{k: v for k, v in self.x.items() if k in setup.frozen}}

    def grad(self, params: dict, step: int = 0, draw: int = 0, part: str = "train") -> dict:
        """Stacked gradients of each client's minibatch loss (step ``step`` of ``part``'s plan
        ``draw``; the full part with ``batch_size=None``) at stacked ``params``; zero for a client
        past its last local step."""
        idx, w, _ = self.batches(part, draw)
        t1 = time.perf_counter()
        self._freeze()
        out = self.setup.trainer.grad(params, idx[:, step], w[:, step])
        self.seconds += time.perf_counter() - t1
        return out

    def hvp(self, params: dict, vector: dict, step: int = 0, draw: int = 0, part: str = "train") -> dict:
        """Stacked Hessian-vector products of the same minibatch losses (autograd)."""
        idx, w, _ = self.batches(part, draw)
        t1 = time.perf_counter()
        self._freeze()
        out = self.setup.trainer.hvp(params, vector, idx[:, step], w[:, step])
        self.seconds += time.perf_counter() - t1
        return out
