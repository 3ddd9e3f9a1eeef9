"""One round's local training for the selected clients, shared by synchronous and asynchronous
rounds: the learning rates, the minibatch plan, and ``train(shift, pull, start)`` (the primitive
every algorithm's client rule calls), returning the clients' parameters in server coordinates."""
from __future__ import annotations

import math
import time

import torch

from .._core import checks as chk
from .._core.random import LORA, stream
from . import mixed
from .sampling import batch_plan


class LocalRound:
    """Local training of the clients ``sel`` (with ``steps`` each) from the global ``x`` in round
    ``rnd``; ``lrs`` per step, ``lr_sum`` per client, ``seconds`` spent training so far."""

    def __init__(self, setup, x: dict, rnd: int, sel: torch.Tensor, steps: torch.Tensor):
        cfg = setup.cfg
        self.setup, self.x, self.rnd, self.sel = setup, x, rnd, sel
        self.lrs = [cfg.lr(rnd, t) for t in range(int(steps.max()))]
        if callable(cfg.client_lr) and not all(math.isfinite(v) and v > 0 for v in self.lrs):
            chk.fail("client_lr", "a schedule returning positive finite learning rates", self.lrs)
        self.lr_sum = torch.tensor([sum(self.lrs[:s]) for s in steps.tolist()], dtype=setup.dtype)
        self.plan = batch_plan(setup.sizes, setup.offsets, sel, steps, cfg.batch_size, cfg.seed, rnd)
        self.seconds = 0.0

    def __call__(self, shift=None, pull=0.0, start=None) -> dict:
        setup, x, rnd, cfg = self.setup, self.x, self.rnd, self.setup.cfg
        idx, bw, mask = self.plan
        t1 = time.perf_counter()
        if setup.groups is not None:
            out = mixed.train(setup.groups, x, self.sel, idx, bw, mask, self.lrs, rnd, cfg.seed, pull)
        else:
            plan = setup.plan
            if plan.mode == "lora" and (shift is not None or pull):
                chk.fail("finetune", f"a mode other than 'lora' for {cfg.algorithm.name!r}: its local correction "
                         "acts on the dense weights, which LoRA clients do not train (try 'ffa_lora')", "lora")
            if start is None:
                begin = plan.client_start(x, rnd, lambda i: stream(cfg.seed, rnd, i, LORA))
                start = {k: v.unsqueeze(0).expand(len(idx), *v.shape) for k, v in begin.items()}
            setup.trainer.frozen = {**setup.frozen, **{k: v for k, v in x.items() if k in setup.frozen}}
            out = plan.to_server(setup.trainer(x, idx, bw, mask, self.lrs, start, shift=shift, pull=pull), x)
        self.seconds += time.perf_counter() - t1
        return out
