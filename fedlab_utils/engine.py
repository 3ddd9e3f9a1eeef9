"""The round loop: ``flu.run(model, federation, algorithm, ...) -> History``.

One round, as four named calls (TFF's simple_fedavg sketch):

1. **broadcast** the global trainable parameters x (and any server state) to the sampled clients,
2. **local update**: each client runs ``local_steps`` of SGD from x (``Algorithm.client_update``),
3. **aggregate** the pseudo-gradients delta_i = x - y_i with the sampling scheme's weights,
4. **server update** ``x <- x - server_lr * update(delta)`` (``Algorithm.server_update``).

With ``backend="vectorized"`` the sampled clients train as one batched computation
(``flu.batched``); ``backend="loop"`` is the plain per-client reference. Both draw the same
minibatches from per-(seed, round, client) streams, so they agree up to summation order.
"""
from __future__ import annotations

import copy
import ctypes
import math
import numbers
import os
import time

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call

from . import _checks as chk
from . import algorithms as algs
from . import finetune as ft
from .batched import stacked_forward
from .data import Federation
from .history import History, metrics_frame

LOSSES = ("cross_entropy", "mse")
SAMPLING = ("uniform", "li_scheme_1", "li_scheme_2")
BACKENDS = ("vectorized", "loop")
_MASK64 = (1 << 64) - 1


# ------------------------------------------------------------------------- memory

_ALLOCATOR_TUNED = []


def tune_allocator() -> bool:
    """Let glibc keep freed buffers for reuse instead of unmapping them (``mallopt``), once per process.

    Each vectorised local step allocates stacked gradients and activations of several MB
    (K clients x parameters); by default glibc serves blocks over 128 KB with a fresh ``mmap`` and
    returns them on free, so every step pays page faults on new memory. Raising the mmap and trim
    thresholds to 64 MB / 256 MB (PyTorch's CPU tuning guide recommends a caching allocator for the
    same reason) measured 1.3-1.7x faster rounds here. Process-wide and harmless: the process may
    hold up to that much freed memory. Set ``FEDLAB_NO_MALLOPT=1`` to skip; a no-op off glibc.
    Returns whether the tuning is in effect.
    """
    if not _ALLOCATOR_TUNED:
        ok = False
        if os.environ.get("FEDLAB_NO_MALLOPT", "0") != "1":
            try:
                libc = ctypes.CDLL("libc.so.6")
                ok = bool(libc.mallopt(-3, 64 << 20)) and bool(libc.mallopt(-1, 256 << 20))  # MMAP, TRIM
            except (OSError, AttributeError):
                ok = False
        _ALLOCATOR_TUNED.append(ok)
    return _ALLOCATOR_TUNED[0]


# ------------------------------------------------------------------------- random streams

def stream(seed: int, *keys: int) -> torch.Generator:
    """A torch generator for the stream ``(seed, *keys)`` (splitmix64 mixing): one stream per
    (round, client, purpose), so changing one knob does not reshuffle the others."""
    h = (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK64
    for k in keys:
        h = ((h ^ (k + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) * 0xBF58476D1CE4E5B9) & _MASK64
        h ^= h >> 31
    return torch.Generator().manual_seed(h & ((1 << 63) - 1))


_SAMPLE, _BATCH, _LORA = 1, 2, 3
_GATHER_BYTES = 64 << 20  # gather a whole round's minibatches at once below this size


def select_clients(num_clients: int, k: int | None, p: torch.Tensor, sampling: str, seed: int, rnd: int):
    """Clients of round ``rnd`` and their aggregation weights.

    - full participation (``k`` None): every client, weights p_i.
    - ``uniform``: k clients without replacement, p_i renormalised over them (biased when sizes differ).
    - ``li_scheme_1`` (Li et al. 2020, ICLR, Scheme I): k draws with replacement by p_i, plain mean
      (a client drawn twice counts twice).
    - ``li_scheme_2`` (Scheme II): k uniform without replacement, weights p_i N / k (unbiased; they
      sum to 1 only for balanced p).
    """
    if k is None or (k == num_clients and sampling != "li_scheme_1"):
        return torch.arange(num_clients), p.clone()
    g = stream(seed, rnd, _SAMPLE)
    if sampling == "li_scheme_1":
        draws = torch.multinomial(p, k, replacement=True, generator=g)
        sel, counts = torch.unique(draws, return_counts=True)
        return sel, counts.to(p.dtype) / k
    sel = torch.randperm(num_clients, generator=g)[:k].sort().values
    if sampling == "uniform":
        return sel, p[sel] / p[sel].sum()
    return sel, p[sel] * num_clients / k


# ------------------------------------------------------------------------- batches and losses

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
        for k, (c, n_c, t_c) in enumerate(zip(clients.tolist(), n.tolist(), steps.tolist())):
            if n_c > B:
                keys[k, :t_c, :n_c] = torch.rand(t_c, n_c, generator=stream(seed, rnd, c, _BATCH))
            else:
                keys[k, :, :n_c] = 0.0
        pos = keys.topk(B, dim=2, largest=False, sorted=False).indices
        valid = keys.gather(2, pos) < 1.5
    valid = valid & mask.unsqueeze(2)
    idx = torch.where(valid, off + pos, off)
    w = valid.to(torch.float64) / n.clamp(max=B).view(K, 1, 1).to(torch.float64)
    return idx, w, mask


def sample_losses(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-example loss, shape ``out.shape[:-1]``.

    ``cross_entropy``: softmax cross-entropy (binary cross-entropy on the logit for a one-output
    model); ``mse``: torch's mean squared error per example, the mean over outputs (no 1/2);
    integer labels with a multi-output model are one-hot encoded.
    """
    if loss == "cross_entropy":
        if out.shape[-1] == 1:
            return torch.nn.functional.binary_cross_entropy_with_logits(
                out[..., 0], y.to(out.dtype), reduction="none")
        flat = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
        return flat.reshape(y.shape)
    if not y.is_floating_point() and out.shape[-1] > 1:
        target = torch.nn.functional.one_hot(y, out.shape[-1]).to(out.dtype)
    else:
        target = y.to(out.dtype)
    if target.dim() == out.dim() - 1:
        target = target.unsqueeze(-1)
    return ((out - target) ** 2).mean(-1)


def predictions_correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    pred = (out[..., 0] > 0).long() if out.shape[-1] == 1 else out.argmax(-1)
    return (pred == y).to(torch.float64)


# ------------------------------------------------------------------------- local training

class _Trainer:
    """Local SGD on ``F_i(w) + <shift_i, w> + pull/2 ||w - x||^2 (+ l2/2 ||W||^2)``."""

    def __init__(self, model, frozen, X, Y, loss, l2_names, l2, backend):
        self.model, self.frozen, self.X, self.Y = model, frozen, X, Y
        self.loss, self.l2_names, self.l2, self.backend = loss, l2_names, l2, backend

    def __call__(self, x, idx, w, mask, lrs, start, shift=None, pull=0.0):
        run = self._vectorized if self.backend == "vectorized" else self._loop
        return run(x, idx, w, mask, lrs, shift, pull, start)

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
        at_once = idx.numel() * self.X[0].numel() * self.X.element_size() <= _GATHER_BYTES
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


# ------------------------------------------------------------------------- evaluation

class _Evaluator:
    """Loss/accuracy of the global model on every client's train and test split, and pooled."""

    def __init__(self, model, fed: Federation, dtype, loss, classification):
        self.model, self.loss, self.classification = model, loss, classification
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

    @torch.no_grad()
    def __call__(self, params, rnd, rows):
        for split, (X, Y, cid, sizes) in self.splits.items():
            out = torch.cat([functional_call(self.model, params, (X[i:i + 8192],)) for i in range(0, len(X), 8192)])
            per = {"loss": sample_losses(out, Y, self.loss).to(torch.float64)}
            if self.classification:
                per["accuracy"] = predictions_correct(out, Y)
            for metric, values in per.items():
                if not math.isfinite(float(values.sum())):
                    raise FloatingPointError(
                        f"round {rnd}: the {split} {metric} is not finite (training diverged); "
                        "try a smaller client_lr")
                sums = torch.zeros(len(sizes), dtype=torch.float64).index_add_(0, cid, values)
                keep = sizes > 0
                clients = torch.arange(len(sizes))[keep]
                _append(rows, rnd, -1, split, metric, float(values.mean()))
                for c, v in zip(clients.tolist(), (sums[keep] / sizes[keep]).tolist()):
                    _append(rows, rnd, c, split, metric, v)
            if self.classification and split == self.held_out:
                _append(rows, rnd, -1, split, "f1_macro", f1_macro(out, Y))


def _append(rows, rnd, client, split, metric, value):
    rows["round"].append(rnd)
    rows["client"].append(client)
    rows["split"].append(split)
    rows["model"].append("global")
    rows["metric"].append(metric)
    rows["value"].append(value)


def f1_macro(out: torch.Tensor, y: torch.Tensor) -> float:
    """Macro-averaged F1 over the classes present in ``y`` or predicted (scikit-learn's definition)."""
    pred = (out[..., 0] > 0).long() if out.shape[-1] == 1 else out.argmax(-1)
    C = max(int(out.shape[-1]), 2)
    conf = torch.bincount(y * C + pred, minlength=C * C).reshape(C, C).to(torch.float64)
    tp = conf.diag()
    support, predicted = conf.sum(1), conf.sum(0)
    present = (support + predicted) > 0
    f1 = torch.where(present, 2 * tp / (support + predicted).clamp(min=1), torch.zeros_like(tp))
    return float(f1[present].mean())


# ------------------------------------------------------------------------- the run

def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _describe(value):
    """A JSON-able description of an argument for ``History.config``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, torch.nn.Module):
        n = sum(p.numel() for p in value.parameters())
        return f"{getattr(value, 'name', type(value).__name__)} ({n} parameters)"
    if isinstance(value, algs.Algorithm):
        return value.name
    if isinstance(value, Federation):
        return repr(value)
    if callable(value):
        return getattr(value, "__name__", repr(value))
    return repr(value)


def _check_schedule(client_lr):
    if callable(client_lr):
        return client_lr
    chk.real("client_lr", client_lr, low=0, low_open=True)
    return None


def _steps_vector(local_steps, N):
    if isinstance(local_steps, numbers.Integral) and not isinstance(local_steps, bool):
        return torch.full((N,), chk.integer("local_steps", local_steps, low=1), dtype=torch.long)
    steps = list(local_steps) if isinstance(local_steps, (list, tuple, np.ndarray, torch.Tensor)) else None
    if steps is None:
        raise TypeError(f"local_steps must be an int or one int per client, got {type(local_steps).__name__}")
    if len(steps) != N:
        chk.fail("local_steps", f"one int per client ({N} clients)", f"a list of length {len(steps)}")
    return torch.tensor([chk.integer("local_steps[i]", int(s) if isinstance(s, (np.integer, torch.Tensor)) else s,
                                     low=1) for s in steps], dtype=torch.long)


def run(model, federation, algorithm="fedavg", num_rounds=50, local_steps=5, client_lr=0.05,
        batch_size=16, server_lr=None, clients_per_round=None, sampling="uniform", weights="samples",
        loss="cross_entropy", l2=0.0, finetune="full", systems=None, eval_every=1, backend="vectorized",
        record_params=False, diagnostics=False, progress=True, seed=0, **algorithm_options) -> History:
    """Train ``model`` on ``federation`` with a federated ``algorithm``; return a :class:`History`.

    Minimises F(x) = sum_i p_i F_i(x), F_i the mean ``loss`` on client i's training data plus
    ``l2/2 ||W||^2`` over weight tensors (biases excluded), with p_i from ``weights``. See
    DESIGN.md (Contracts) for every argument; ``client_lr`` may be a callable ``(round, step)``
    with rounds counted from 1 and steps from 0 within a round.
    """
    config = {k: _describe(v) for k, v in dict(
        model=model, federation=federation, algorithm=algorithm, num_rounds=num_rounds,
        local_steps=local_steps, client_lr=client_lr, batch_size=batch_size, server_lr=server_lr,
        clients_per_round=clients_per_round, sampling=sampling, weights=weights, loss=loss, l2=l2,
        finetune=finetune, systems=systems, eval_every=eval_every, backend=backend,
        record_params=record_params, diagnostics=diagnostics, seed=seed, **algorithm_options).items()}
    # ---- validation
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(federation, Federation):
        raise TypeError(f"federation must be an flu.data.Federation, got {type(federation).__name__}")
    alg = algs.get(algorithm)
    num_rounds = chk.integer("num_rounds", num_rounds, low=1)
    N = federation.num_clients
    steps_all = _steps_vector(local_steps, N)
    schedule = _check_schedule(client_lr)
    if batch_size is not None:
        batch_size = chk.integer("batch_size", batch_size, low=1)
    if clients_per_round is not None:
        clients_per_round = chk.integer("clients_per_round", clients_per_round, low=1, high=N)
    chk.option("sampling", sampling, SAMPLING)
    chk.option("weights", weights, ("samples", "uniform"))
    chk.option("loss", loss, LOSSES)
    l2 = chk.real("l2", l2, low=0)
    chk.option("backend", backend, BACKENDS)
    eval_every = chk.integer("eval_every", eval_every, low=1)
    seed = chk.integer("seed", seed, low=0)
    if systems is not None:
        chk.fail("systems", "None (systems heterogeneity simulation is not available yet)", systems)
    ft_opts = {k: v for k, v in algorithm_options.items() if k in ft.ALL_OPTIONS}
    alg_opts = {k: v for k, v in algorithm_options.items() if k not in ft.ALL_OPTIONS}
    for key in alg_opts:
        if key not in alg.options:
            chk.fail(key, f"an option of algorithm {alg.name!r} (options: {sorted(alg.options) or 'none'})",
                     alg_opts[key])
    options = {**alg.options, **alg_opts}
    alg.check_options(options)
    server_lr = alg.default_server_lr if server_lr is None else chk.real("server_lr", server_lr, low=0, low_open=True)

    if backend == "vectorized":
        tune_allocator()
    plan = ft.prepare(model, finetune, seed=seed, **ft_opts)
    if diagnostics and plan.mode == "lora":
        chk.fail("diagnostics", "False with finetune='lora' (its server and client coordinates differ)", True)
    net = plan.model
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    if not params:
        chk.fail("model", "a module with parameters", type(model).__name__)
    dtype = next(iter(params.values())).dtype
    trainable = list(plan.trainable)
    frozen = {k: v for k, v in params.items() if k not in plan.trainable}
    l2_names = {k for k in trainable if params[k].dim() >= 2}

    # ---- data as flat tensors with per-client offsets
    X = torch.cat([x for x, _ in federation.train]).to(dtype)
    Y = torch.cat([y for _, y in federation.train])
    classification = not Y.is_floating_point()
    if loss == "cross_entropy" and not classification:
        chk.fail("loss", "'mse' for real-valued targets", loss)
    sizes = torch.as_tensor(federation.sizes)
    offsets = torch.cumsum(sizes, 0) - sizes
    p = torch.as_tensor(federation.weights(weights), dtype=torch.float64)
    evaluator = _Evaluator(copy.deepcopy(model), federation, dtype, loss, classification)
    trainer = _Trainer(net, frozen, X, Y, loss, l2_names, l2, backend)

    x = {k: params[k] for k in plan.server}
    server_state = alg.init_server(x, options)
    template = alg.init_client(x, options)
    client_state = {k: v.unsqueeze(0).repeat(N, *[1] * v.dim()) for k, v in template.items()}
    up_bytes = sum(_nbytes(params[k]) for k in trainable)
    down_bytes = sum(_nbytes(params[k]) for k in plan.server)
    trainable_count = sum(params[k].numel() for k in trainable)

    if diagnostics:
        full_idx, full_w, _ = batch_plan(sizes, offsets, torch.arange(N), torch.ones(N, dtype=torch.long), None,
                                         seed, 0)
    rows = {c: [] for c in ("round", "client", "split", "model", "metric", "value")}
    round_rows, timing_rows = [], []
    current = plan.merged(_full(params, x))
    trajectory = [current] if record_params else None
    evaluator(current, 0, rows)

    from tqdm.auto import tqdm
    for rnd in tqdm(range(1, num_rounds + 1), disable=not progress, desc=alg.label or alg.name, leave=False):
        t0 = time.perf_counter()
        sel, agg_w = select_clients(N, clients_per_round, p, sampling, seed, rnd)
        steps = steps_all[sel]
        T = int(steps.max())
        lrs = [float(schedule(rnd, t)) if schedule else float(client_lr) for t in range(T)]
        if schedule and not all(math.isfinite(v) and v > 0 for v in lrs):
            chk.fail("client_lr", "a schedule returning positive finite learning rates", lrs)
        lr_sum = torch.tensor([sum(lrs[:s]) for s in steps.tolist()], dtype=dtype)
        idx, bw, mask = batch_plan(sizes, offsets, sel, steps, batch_size, seed, rnd)
        t_local = [0.0]

        def train(shift=None, pull=0.0, start=None, _idx=idx, _bw=bw, _mask=mask, _lrs=lrs, _rnd=rnd, _x=x):
            if plan.mode == "lora" and (shift is not None or pull):
                chk.fail("finetune", f"a mode other than 'lora' for {alg.name!r}: its local correction "
                         "acts on the dense weights, which LoRA clients do not train (try 'ffa_lora')", "lora")
            t1 = time.perf_counter()
            if start is None:
                begin = plan.client_start(_x, _rnd, lambda i: stream(seed, _rnd, i, _LORA))
                start = {k: v.unsqueeze(0).expand(len(_idx), *v.shape) for k, v in begin.items()}
            trainer.frozen = {**frozen, **{k: v for k, v in _x.items() if k in frozen}}
            out = plan.to_server(trainer(_x, _idx, _bw, _mask, _lrs, start, shift=shift, pull=pull), _x)
            t_local[0] += time.perf_counter() - t1
            return out

        state_sel = {k: v[sel] for k, v in client_state.items()}
        result = alg.client_update(algs.ClientRound(x, state_sel, server_state, steps, lr_sum, options, train))
        for k, v in result.state.items():
            client_state[k][sel] = v
        x_new, server_state = alg.server_update(algs.ServerRound(
            x, server_state, result.delta, result.upload, agg_w.to(dtype), p[sel].to(dtype), steps, server_lr,
            options, N))
        if not all(bool(torch.isfinite(v).all()) for v in x_new.values()):
            raise FloatingPointError(f"round {rnd}: the global parameters became NaN or infinite (training "
                                     f"diverged); try a smaller client_lr (now {lrs[0]:g}) or server_lr")
        x_old, x = x, {k: x_new[k] for k in plan.server}
        K = len(sel)
        diag = {}
        if diagnostics:
            from . import convergence
            losses, grads = trainer.objectives(x, full_idx, full_w)
            diag = convergence.round_diagnostics(losses, grads, p.to(dtype), result.delta,
                                                 {k: x_old[k] - x[k] for k in x})
        up_extra = sum(_nbytes(v) for v in result.upload.values())
        down_extra = sum(_nbytes(server_state[k]) for k in alg.broadcast) * K
        round_rows.append(dict(round=rnd, clients_selected=K, clients_completed=K,
                               bytes_up=K * up_bytes + up_extra,
                               bytes_down=K * down_bytes + down_extra, trainable_params=trainable_count,
                               **diag))
        evaluate = rnd % eval_every == 0 or rnd == num_rounds
        if record_params or evaluate:
            current = plan.merged(_full(params, x))
        if record_params:
            trajectory.append(current)
        if evaluate:
            evaluator(current, rnd, rows)
        seconds = time.perf_counter() - t0
        timing_rows.append(dict(round=rnd, seconds=seconds, local_seconds=t_local[0],
                                seconds_per_step=t_local[0] / T))

    final = plan.merged(_full(params, x))
    trained = copy.deepcopy(model)
    with torch.no_grad():
        for k, v in trained.named_parameters():
            v.copy_(final[k])
    return History(metrics_frame(rows), pd.DataFrame(round_rows), pd.DataFrame(timing_rows), config, final,
                   trained, trajectory, client_state)


def _full(params, x):
    """All parameters (frozen ones from ``params``, trainable from ``x``), detached copies."""
    return {k: (x[k] if k in x else v).detach().clone() for k, v in params.items()}

