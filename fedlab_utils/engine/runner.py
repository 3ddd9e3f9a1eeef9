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
import math
import numbers
import time

import numpy as np
import pandas as pd
import torch

from .._core import checks as chk
from .._core.losses import LOSSES
from .._core.random import LORA, stream
from .._core.runtime import tune_allocator
from ..algorithms import core as algs
from ..data.datasets import Federation
from ..models import finetune as ft
from .diagnostics import round_diagnostics
from .evaluate import Evaluator
from .history import History, metrics_frame
from .local import BACKENDS, Trainer
from .sampling import SAMPLING, batch_plan, select_clients

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
    evaluator = Evaluator(copy.deepcopy(model), federation, dtype, loss, classification)
    trainer = Trainer(net, frozen, X, Y, loss, l2_names, l2, backend)

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
                begin = plan.client_start(_x, _rnd, lambda i: stream(seed, _rnd, i, LORA))
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
            losses, grads = trainer.objectives(x, full_idx, full_w)
            diag = round_diagnostics(losses, grads, p.to(dtype), result.delta,
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

