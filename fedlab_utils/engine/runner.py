"""The round loop: ``flu.run(model, federation, algorithm, ...) -> History``.

``run`` is thin: validate (:func:`~.config.configure`, :mod:`.checks`) -> set up
(:class:`Setup`, what stays fixed; :class:`State`, what each round changes) -> one call of
:func:`play_round` per round -> :meth:`State.history`. One round, as four named calls (TFF's
simple_fedavg sketch):

1. **broadcast** the global trainable parameters x (and any server state) to the sampled clients,
2. **local update**: each client runs ``local_steps`` of SGD from x (``Algorithm.client_update``),
3. **aggregate** the pseudo-gradients delta_i = x - y_i with the sampling scheme's weights,
4. **server update** ``x <- x - server_lr * update(delta)`` (``Algorithm.server_update``).

A round commits its results only when it completes, so a run that diverges or is interrupted
hands back the History of its completed rounds (``err.history``), and a checkpoint holds
everything a resumption needs: streams are derived from (seed, round, client), so round r+1
after a resume draws exactly what it would have drawn.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from .. import algorithms as algs
from .._core import checks as chk
from .._core.runtime import tune_allocator
from ..models import finetune as ft
from . import asynchronous, checks, mixed, private
from .config import RESUMABLE, RunConfig, configure
from .diagnostics import round_diagnostics
from .evaluate import Evaluator
from .history import METRIC_COLUMNS, History, metrics_frame
from .local import GATHER_BYTES, Trainer
from .training import LocalRound, support_query
from .sampling import batch_plan, select_clients

import numpy as np


def run(model, federation, algorithm="fedavg", num_rounds=50, local_steps=5, client_lr=0.05,
        batch_size=16, server_lr=None, clients_per_round=None, sampling="uniform", weights="samples",
        loss="cross_entropy", l2=0.0, finetune="full", systems=None, privacy=None, compression=None,
        eval_every=1, backend="vectorized", record_params=False, diagnostics=False, progress=True, seed=0,
        checkpoint=None, checkpoint_every=1, resume=None, **options) -> History:
    """Train ``model`` on ``federation`` with a federated ``algorithm``; return a :class:`History`.

    Minimises F(x) = sum_i p_i F_i(x), F_i the mean ``loss`` on client i's training data plus
    ``l2/2 ||W||^2`` over weight tensors (biases excluded), with p_i from ``weights``.

    Args:
        model: a ``torch.nn.Module`` (left unchanged; History.model is a trained copy). Models from
            ``flu.models`` have ``.body``/``.head``; for any other the head is the last module with
            parameters. Dropout and BatchNorm must be in eval mode (``model.eval()``).
        federation: an ``flu.data.Federation``: per-client train (and test) tensors. Data that do
            not fit the model are refused before round 0.
        algorithm: a name in ``flu.algorithms.REGISTRY`` ("fedavg", "fedprox", "scaffold",
            "fednova", "feddyn", "fedavgm", "fedadam", "fedyogi", "fedadagrad"; meta-learning
            "reptile", "fomaml", "perfedavg"; personalisation "fedper", "fedrep", "fedbabu",
            "lg_fedavg", "ditto", "apfl") or an ``flu.algorithms.Algorithm``. Methods with
            personal models add ``model="personal"`` metric rows and ``History.personal_params``.
        num_rounds: communication rounds R >= 1.
        local_steps: SGD steps per client per round: an int, or one int per client.
        client_lr: the clients' learning rate: a positive float, or a callable ``(round, step)``
            with rounds counted from 1 and steps from 0 within a round (``flu.schedules``).
        batch_size: minibatch size (sampled without replacement per step from per-(seed, round,
            client) streams); None for full-batch local gradient descent.
        server_lr: the server step ``x <- x - server_lr * update(delta)``; None takes the
            algorithm's default (1.0 for averaging, 1e-2 for FedAdam/FedYogi/FedAdagrad).
        clients_per_round: clients sampled per round; None for all of them every round.
        sampling: "uniform" (K without replacement, weights p_i renormalised), "li_scheme_1" or
            "li_scheme_2" (the unbiased schemes of Li et al. 2020, ICLR), "poisson" (each client
            independently with probability q = clients_per_round / N, weight p_i / q).
        weights: "samples" (p_i = n_i / n) or "uniform" (p_i = 1 / N).
        loss: "cross_entropy" (softmax; binary on a single logit) or "mse" (no 1/2).
        l2: weight decay l2/2 ||W||^2 on weight tensors (not biases) in every client's loss.
        finetune: which parameters train and travel: "full", "linear_probe", "last_layers"
            (option ``num_layers``, default 2), "bitfit", "lora" or "ffa_lora" (option
            ``lora_rank``, default 4); or one mode per client (a list; each parameter is then
            averaged over the clients whose mode trained it; ``flu.systems.assign_modes``).
        systems: an ``flu.systems.Simulation`` (device, network and availability profiles on a
            virtual clock, straggler policy, synchronous or FedAsync/FedBuff aggregation); None
            for ideal synchronous rounds. Adds ``rounds`` columns (virtual_time, round_time,
            clients_available, clients_dropped, clients_late, energy_j) and ``History.timeline``.
        privacy: an ``flu.privacy.DPFedAvg`` (client-level DP-FedAvg: each update clipped to norm
            ``clip``, Gaussian noise of std ``noise_multiplier * clip * max_i w_i`` added to the
            weighted sum; ``sampling="poisson"`` when ``clients_per_round`` < N); adds ``rounds``
            columns ``clip`` and ``epsilon`` (Opacus' RDP accountant); an ``flu.privacy.DPSGD``
            (sample-level DP-SGD in every local step: Poisson minibatches, per-example clipping,
            noise; ``epsilon`` is the largest per-client one); an ``flu.privacy.SecureAggregation``
            (each round's weighted sum from masked uploads). None for no privacy.
        compression: an ``flu.systems.Compression`` of the uploaded updates ("qsgd", "topk",
            "float16"; "none" is the same as None); bytes_up counts the encoded size.
        eval_every: evaluate the global model every this many rounds (and after the last).
        backend: "vectorized" (all selected clients as one batched computation) or "loop" (the
            plain per-client reference); they agree to rounding.
        record_params: keep the global parameters of every round in ``History.trajectory``.
        diagnostics: add global loss, gradient norm, dissimilarity and client drift per round to
            ``History.rounds`` (costs one full-batch gradient per client per round).
        progress: show a progress bar.
        seed: an int in [0, 2**63): every random draw of the run derives from it.
        checkpoint: a file path: the History is saved there atomically every ``checkpoint_every``
            rounds, after the last round, and when the run stops on an error or Ctrl-C. The file
            must not exist yet unless it is also ``resume``.
        checkpoint_every: rounds between checkpoints.
        resume: a checkpoint file written by a run with the same arguments (``num_rounds``,
            ``progress`` and the checkpoint settings may differ): the run goes on from its last
            completed round and ends with the result an uninterrupted run would give.
        **options: the algorithm's options (FedProx ``mu``; FedDyn ``alpha``; FedAvgM
            ``server_momentum``; FedAdam/FedYogi/FedAdagrad ``beta1``, ``beta2``, ``tau``; FOMAML
            ``inner_lr``, ``inner_steps``, ``support_fraction``; Per-FedAvg ``inner_lr``, ``variant``,
            ``hvp_delta``; FedRep ``head_steps``; Ditto ``lam``; APFL ``mix``) and the
            fine-tuning mode's (``num_layers``, ``lora_rank``). Unknown names, and names both the
            mode and the algorithm claim, are errors.

    Returns:
        A :class:`History`; ``History.config`` records every value used, defaults included.

    Raises:
        ValueError / TypeError naming the argument, before round 0, for bad arguments.
        FloatingPointError naming the round when training diverges, and KeyboardInterrupt when
        interrupted; both carry the History of the completed rounds as ``err.history``.
    """
    cfg = configure(model, federation, algorithm=algorithm, num_rounds=num_rounds, local_steps=local_steps,
                    client_lr=client_lr, batch_size=batch_size, server_lr=server_lr,
                    clients_per_round=clients_per_round, sampling=sampling, weights=weights, loss=loss, l2=l2,
                    finetune=finetune, systems=systems, privacy=privacy, compression=compression,
                    eval_every=eval_every, backend=backend, record_params=record_params, diagnostics=diagnostics,
                    progress=progress, seed=seed, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                    resume=resume, options=options)
    setup = Setup.build(cfg, model, federation)
    state = State.start(setup) if cfg.resume is None else State.resume(setup, History.load(cfg.resume))
    from tqdm.auto import tqdm
    rounds = range(state.completed + 1, cfg.num_rounds + 1)
    try:
        for rnd in tqdm(rounds, disable=not cfg.progress, desc=cfg.algorithm.label or cfg.algorithm.name,
                        leave=False):
            play_round(setup, state, rnd)
            if cfg.checkpoint is not None and (rnd % cfg.checkpoint_every == 0 or rnd == cfg.num_rounds):
                state.history().save(cfg.checkpoint, overwrite=True)
    except (FloatingPointError, KeyboardInterrupt) as err:
        err.history = state.history()
        if cfg.checkpoint is not None:
            err.history.save(cfg.checkpoint, overwrite=True)
        raise
    return state.history()


# ------------------------------------------------------------------------------- set-up

@dataclass
class Setup:
    """What stays fixed during a run: the configuration, the mode's plan, the data as flat tensors
    with per-client offsets, the trainer and evaluator, and per-round byte counts."""

    cfg: RunConfig
    model: torch.nn.Module
    plan: ft.Plan
    params: dict              # every parameter of the client network at round 0
    frozen: dict
    sizes: torch.Tensor
    offsets: torch.Tensor
    p: torch.Tensor           # population weights p_i (float64)
    steps: torch.Tensor       # (N,) local steps
    trainer: Trainer
    evaluator: Evaluator
    up_bytes: int
    down_bytes: int
    trainable_count: int
    full_batch: tuple | None  # (idx, w) of every client's full batch, for diagnostics
    clocked: object = None    # the virtual clock (engine.clocked.Clocked) with systems=
    upload_extra: int = 0     # bytes each client uploads besides its update (control variates, ...)
    groups: list | None = None  # one group of clients per fine-tuning mode with finetune=[...] (engine.mixed)
    head: tuple = ()            # trainable names in the model's head
    keeps: tuple = ()           # names of which every client keeps a personal copy (Algorithm.keeps)
    stays: tuple = ()           # trainable names that never travel (Algorithm.stays)
    private: object = None      # DP-FedAvg's per-round steps (engine.private) with privacy=
    parts: dict | None = None   # each client's support/query split (meta-learning with support_fraction)

    @property
    def asynchronous(self) -> bool:
        return self.cfg.systems is not None and self.cfg.systems.aggregation != "sync"

    @classmethod
    def build(cls, cfg: RunConfig, model, federation) -> "Setup":
        checks.check_replayable(model)
        mixed_modes = cfg.finetune == "mixed"
        plan = ft.prepare(model, "full" if mixed_modes else cfg.finetune, seed=cfg.seed,
                          **({} if mixed_modes else cfg.finetune_options))
        params = {k: v.detach().clone() for k, v in plan.model.named_parameters()}
        if not params:
            chk.fail("model", "a module with parameters", type(model).__name__)
        dtype = next(iter(params.values())).dtype
        checks.check_data(model, federation, cfg.loss, dtype)
        X = torch.cat([x for x, _ in federation.train]).to(dtype)
        Y = torch.cat([y for _, y in federation.train])
        if cfg.backend == "vectorized":
            tune_allocator()
        trainable = list(plan.trainable)
        frozen = {k: v for k, v in params.items() if k not in plan.trainable}
        l2_names = {k for k in trainable if params[k].dim() >= 2}
        sizes = torch.as_tensor(federation.sizes)
        N = len(sizes)
        trainer = Trainer(plan.model, frozen, X, Y, cfg.loss, l2_names, cfg.l2, cfg.backend)
        if cfg.backend == "vectorized":
            trainer.chunk = _chunk(cfg, plan, params, X, sizes)
        full_batch = None
        if cfg.diagnostics:
            idx, w, _ = batch_plan(sizes, torch.cumsum(sizes, 0) - sizes, torch.arange(N),
                                   torch.ones(N, dtype=torch.long), None, cfg.seed, 0)
            full_batch = (idx, w)
        nbytes = {k: v.numel() * v.element_size() for k, v in params.items()}
        head = _head(cfg, plan, trainable)
        part = {"head": set(head), "body": set(trainable) - set(head), "all": set(trainable), "": set()}
        stays = part[cfg.algorithm.stays]
        offsets = torch.cumsum(sizes, 0) - sizes
        setup = cls(cfg, model, plan, params, frozen, sizes, offsets,
                    torch.as_tensor(federation.weights(cfg.weights), dtype=torch.float64),
                    torch.tensor(cfg.local_steps, dtype=torch.long), trainer,
                    Evaluator(copy.deepcopy(model), federation, dtype, cfg.loss, not Y.is_floating_point()),
                    sum(nbytes[k] for k in trainable if k not in stays),
                    sum(nbytes[k] for k in plan.server if k not in stays),
                    sum(params[k].numel() for k in trainable), full_batch, head=head,
                    keeps=tuple(k for k in trainable if k in part[cfg.algorithm.keeps]),
                    stays=tuple(k for k in trainable if k in stays))
        if "support_fraction" in cfg.options.names():
            setup.parts = support_query(sizes, offsets, cfg.options.support_fraction, cfg.seed)
        if mixed_modes:
            setup._attach_modes(X, Y)
        if cfg.systems is not None:
            setup._attach_clock(tuple(X.shape[1:]))
        if cfg.privacy is not None:
            setup.private = private.build(setup)
            if setup.private.replaces_sum:
                private.check(setup, _upload_extra(cfg, setup))
        return setup

    def _attach_modes(self, X, Y) -> None:
        """One group of clients per fine-tuning mode (finetune=[...]; engine.mixed)."""
        cfg, params = self.cfg, self.params
        mixed.check(list(cfg.modes), cfg.algorithm, cfg.options, {k: params[k] for k in self.plan.server})
        self.groups = mixed.build(list(cfg.modes), self.model, params, X, Y, cfg.loss, cfg.l2, cfg.backend, cfg.seed,
                                  cfg.finetune_options)
        for g in self.groups:
            g.trainer.chunk = self.trainer.chunk
        self.down_bytes = mixed.download_bytes(self.groups, params)
        union = {k: v for g in self.groups for k, v in g.plan.model.named_parameters() if k in g.plan.trainable}
        self.trainable_count = sum(v.numel() for v in union.values())

    def _attach_clock(self, input_shape: tuple) -> None:
        """The virtual clock (systems=; engine.clocked), with each client's upload and download sizes."""
        from .clocked import Clocked
        cfg = self.cfg
        if cfg.systems.aggregation != "sync":
            asynchronous.check(cfg)
        self.upload_extra = _upload_extra(cfg, self)
        if self.groups is None:
            up = self.update_bytes() + self.upload_extra
        else:
            up = torch.zeros(len(self.sizes), dtype=torch.long)
            for g in self.groups:
                up[g.members] = g.up_bytes + self.upload_extra
        self.clocked = Clocked.build(cfg.systems, cfg=cfg, model=self.model, sizes=self.sizes, input_shape=input_shape,
                                     bytes_down=self.down_bytes + self.broadcast_bytes(), bytes_up=up)

    def broadcast_bytes(self) -> int:
        """Bytes of the server state sent to each client besides x (SCAFFOLD's c)."""
        x = {k: self.params[k] for k in self.plan.server}
        state = self.cfg.algorithm.init_server(x, self.cfg.options)
        return sum(state[k].numel() * state[k].element_size() for k in self.cfg.algorithm.broadcast)

    def update_bytes(self) -> int:
        """Bytes of one client's model update as it travels (encoded when compressed)."""
        if not self.cfg.compressing:
            return self.up_bytes
        zeros = {k: torch.zeros(1, *self.params[k].shape, dtype=self.params[k].dtype) for k in self.plan.trainable
                 if k not in self.stays}
        _, nbytes, _ = self.cfg.compression.compress(zeros, None, 1, torch.zeros(1, dtype=torch.long))
        return int(nbytes[0])

    @property
    def dtype(self):
        return next(iter(self.params.values())).dtype

    def full(self, x: dict) -> dict:
        """The original architecture's parameters (adapters merged) with trainable values from ``x``."""
        return self.plan.merged({k: (x[k] if k in x else v).detach().clone() for k, v in self.params.items()})


def _head(cfg, plan, trainable) -> tuple:
    """The trainable names in the model's head; an algorithm that keeps a part of the model on the
    clients (``Algorithm.stays``) needs both a trainable body and a trainable head."""
    prefix = ft.head_prefix(plan.model)
    head = tuple(k for k in trainable if k.startswith(prefix))
    part = cfg.algorithm.stays or cfg.algorithm.keeps
    if part in ("head", "body") and (not head or len(head) == len(trainable)):
        chk.fail("model", f"a model with a trainable body and head for {cfg.algorithm.name!r} (it keeps the "
                 f"{part} on the clients); with finetune={cfg.finetune!r} the trainable parameters "
                 f"are {list(trainable)}", type(plan.model).__name__)
    return head


def _upload_extra(cfg, setup) -> int:
    """Bytes one client uploads besides its model update: the algorithm's ``upload`` entries,
    found by calling its client rule once on one client with a no-op local training."""
    x = {k: setup.params[k] for k in setup.plan.server}
    template = cfg.algorithm.init_client(x, cfg.options)
    template.update({algs.PERSONAL + k: x[k] for k in setup.keeps})
    state = {k: v.unsqueeze(0) for k, v in template.items()}
    server_state = cfg.algorithm.init_server(x, cfg.options)

    def train(shift=None, pull=0.0, start=None, fixed=(), steps=None, draw=0):
        return {k: v.unsqueeze(0).clone() for k, v in x.items()} if start is None else dict(start)

    def grad(params, *args, **kwargs):
        return {k: torch.zeros_like(v) for k, v in params.items()}

    one = torch.ones(1, dtype=torch.long)
    result = cfg.algorithm.client_update(algs.ClientRound(x, state, server_state, one, torch.ones(1, dtype=setup.dtype),
                                                          cfg.options, train, grad, lambda p, v, *a, **k: grad(v),
                                                          setup.head, (1.0,)))
    return sum(v[0].numel() * v.element_size() for v in result.upload.values())


def _chunk(cfg, plan, params, X, sizes) -> int:
    """Clients per stacked computation: every selected client at once when they fit in memory."""
    K = cfg.clients_per_round or len(sizes)
    B = int(sizes.max()) if cfg.batch_size is None else min(cfg.batch_size, int(sizes.max()))
    nbytes = {k: v.numel() * v.element_size() for k, v in params.items()}
    trainable = sum(nbytes[k] for k in plan.trainable)
    T = max(cfg.local_steps)
    batch_in = T * B * X[0].numel() * X.element_size()
    gathered = batch_in if K * batch_in <= GATHER_BYTES else 0
    # per client: parameters, gradients, start copy and algorithm state; activations kept for backward
    per_client = 4 * trainable + 3 * B * checks.activation_bytes(plan.model, X[:1]) + gathered
    shared = X.numel() * X.element_size() + sum(nbytes.values()) + len(sizes) * 2 * trainable
    return checks.clients_per_chunk(per_client=per_client, shared=shared, num_clients=K,
                                    num_params=sum(p.numel() for p in params.values()))


# ------------------------------------------------------------------------------- state

RESIDUAL = "residual."  # client_state keys of the compression's error feedback

@dataclass
class State:
    """What the rounds change: global parameters x (server coordinates), server and client
    state, and the tables of the completed rounds."""

    setup: Setup
    x: dict
    server_state: dict
    client_state: dict
    completed: int = 0
    rows: dict = field(default_factory=lambda: {c: [] for c in METRIC_COLUMNS})
    round_rows: list = field(default_factory=list)
    timing_rows: list = field(default_factory=list)
    trajectory: list | None = None
    sys: dict | None = None          # the virtual clock: time, energy per client, availability state
    timeline: list = field(default_factory=list)
    residual: dict | None = None     # top-k error feedback, per client (N, ...)
    privacy: dict | None = None      # DP-FedAvg's current clip

    @classmethod
    def start(cls, setup: Setup) -> "State":
        cfg = setup.cfg
        x = {k: setup.params[k] for k in setup.plan.server}
        template = cfg.algorithm.init_client(x, cfg.options)
        N = len(setup.sizes)
        template.update({algs.PERSONAL + k: x[k] for k in setup.keeps})
        state = cls(setup, x, cfg.algorithm.init_server(x, cfg.options), algs.expand(template, N))
        if setup.asynchronous:
            state.sys = asynchronous.start_state(N)
        elif setup.clocked is not None:
            state.sys = {"virtual_time": 0.0, "energy": np.zeros(N), "previous": None}
        comp = cfg.compression
        if cfg.compressing and comp.method == "topk" and comp.error_feedback:
            state.residual = {k: torch.zeros(N, *v.shape, dtype=v.dtype) for k, v in x.items() if k not in setup.stays}
        if setup.private is not None:
            state.privacy = setup.private.start()
        current = setup.full(x)
        state.trajectory = [current] if cfg.record_params else None
        setup.evaluator(current, 0, state.rows)
        if cfg.algorithm.has_personal:
            setup.evaluator(current, 0, state.rows, personal=state.personal())
        return state

    def personal(self, x=None, client_state=None) -> dict | None:
        """Each client's personal parameters ``{name: (N, ...)}`` (None for methods without them)."""
        alg = self.setup.cfg.algorithm
        x = self.x if x is None else x
        client_state = self.client_state if client_state is None else client_state
        if alg.personal is not None:
            return alg.personal(x, client_state, self.setup.cfg.options)
        return algs.personal_copies(client_state) or None

    @classmethod
    def resume(cls, setup: Setup, hist: History) -> "State":
        cfg = setup.cfg
        want = {k: v for k, v in cfg.describe().items() if k not in RESUMABLE}
        have = {k: v for k, v in hist.config.items() if k not in RESUMABLE}
        differ = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if differ:
            chk.fail("resume", "a checkpoint of a run with the same arguments (these differ: "
                     + ", ".join(f"{k}={have.get(k)!r} there, {want.get(k)!r} here" for k in differ[:4]) + ")",
                     str(cfg.resume))
        saved = hist.server_state
        done = int(saved.get("round", -1))
        if done < 0 or "params" not in saved:
            chk.fail("resume", "a checkpoint written by flu.run(checkpoint=...)", str(cfg.resume))
        if done > cfg.num_rounds:
            chk.fail("num_rounds", f"at least the checkpoint's {done} completed rounds", cfg.num_rounds)
        metrics = hist.metrics
        rows = {c: metrics[c].tolist() for c in METRIC_COLUMNS}
        rows["client"] = [-1 if pd.isna(c) else int(c) for c in rows["client"]]
        client_state = {k: v for k, v in hist.client_state.items() if not k.startswith(RESIDUAL)}
        residual = {k[len(RESIDUAL):]: v for k, v in hist.client_state.items() if k.startswith(RESIDUAL)} or None
        sys = None
        if setup.asynchronous:
            sys = asynchronous.restore(saved["systems"])
        elif setup.clocked is not None:
            saved_sys = saved.get("systems") or {}
            previous = saved_sys.get("previous")
            sys = {"virtual_time": float(saved_sys.get("virtual_time", 0.0)),
                   "energy": np.asarray(saved_sys.get("energy", torch.zeros(len(setup.sizes))), dtype=np.float64),
                   "previous": None if previous is None else np.asarray(previous, dtype=bool)}
        timeline = [] if hist.timeline is None else list(hist.timeline.itertuples(index=False, name=None))
        privacy = None
        if setup.private is not None:
            privacy = {k: v if isinstance(v, torch.Tensor) else float(v)
                       for k, v in saved.get("privacy", setup.private.start()).items()}
        return cls(setup, dict(saved["params"]), dict(saved.get("algorithm", {})), client_state, done,
                   rows, hist.rounds.to_dict("records"), hist.timing.to_dict("records"),
                   None if hist.trajectory is None else list(hist.trajectory), sys, timeline, residual, privacy)

    def history(self) -> History:
        setup = self.setup
        final = setup.full(self.x)
        trained = copy.deepcopy(setup.model)
        with torch.no_grad():
            for k, v in trained.named_parameters():
                v.copy_(final[k])
        server_state = {"round": self.completed, "params": dict(self.x), "algorithm": dict(self.server_state)}
        if self.privacy is not None:
            server_state["privacy"] = dict(self.privacy)
        timeline = None
        if self.sys is not None and setup.asynchronous:
            server_state["systems"] = asynchronous.portable(self.sys)
        elif self.sys is not None:
            previous = self.sys["previous"]
            server_state["systems"] = {"virtual_time": float(self.sys["virtual_time"]),
                                       "energy": torch.as_tensor(self.sys["energy"], dtype=torch.float64),
                                       "previous": None if previous is None else torch.as_tensor(previous)}
        if self.sys is not None:
            from .clocked import TIMELINE_COLUMNS
            timeline = pd.DataFrame(self.timeline, columns=TIMELINE_COLUMNS)
        client_state = dict(self.client_state)
        if self.residual is not None:
            client_state.update({RESIDUAL + k: v for k, v in self.residual.items()})
        return History(metrics_frame(self.rows), pd.DataFrame(self.round_rows), pd.DataFrame(self.timing_rows),
                       setup.cfg.describe(), final, trained, self.trajectory, client_state,
                       server_state=server_state, personal_params=self.personal(), timeline=timeline)


# ------------------------------------------------------------------------------- one round

def play_round(setup: Setup, state: State, rnd: int) -> None:
    """Round ``rnd``: select, train locally, aggregate, update the server, evaluate; commit to
    ``state`` only when all of it succeeded."""
    cfg, alg, N = setup.cfg, setup.cfg.algorithm, len(setup.sizes)
    t0 = time.perf_counter()
    if setup.asynchronous:
        return _play_async(setup, state, rnd, t0)
    if setup.clocked is None:
        sel, agg_w = select_clients(N, cfg.clients_per_round, setup.p, cfg.sampling, cfg.seed, rnd)
        steps, selected, systems = setup.steps[sel], len(sel), None
    else:
        sel, agg_w, steps, selected, systems = _clocked_selection(setup, state, rnd)
    K = len(sel)  # the clients whose update reaches the server
    if K or isinstance(setup.private, private.Private):   # DP noise is added even to a round without clients
        up = _update(setup, state, rnd, sel, agg_w, steps)
    else:
        up = _Update(state.x, state.server_state)
    x_new, server_state = up.x, up.server_state
    down_extra = sum(server_state[k].numel() * server_state[k].element_size() for k in alg.broadcast) * selected
    evaluate = rnd % cfg.eval_every == 0 or rnd == cfg.num_rounds
    current = setup.full(x_new) if (cfg.record_params or evaluate) else None
    rows = {c: [] for c in METRIC_COLUMNS}
    if evaluate:
        setup.evaluator(current, rnd, rows)  # raises FloatingPointError on a non-finite metric
        if alg.has_personal:
            after = {k: v.clone() for k, v in state.client_state.items()}
            for k, v in up.client_state.items():
                after[k][sel] = v
            setup.evaluator(current, rnd, rows, personal=state.personal(x_new, after))
    # ---- commit: nothing above changed the state
    for k, v in up.client_state.items():
        state.client_state[k][sel] = v
    if up.residual is not None:
        for k, v in up.residual.items():
            state.residual[k][sel] = v
    state.x, state.server_state = x_new, server_state
    for c in METRIC_COLUMNS:
        state.rows[c].extend(rows[c])
    row = dict(round=rnd, clients_selected=selected, clients_completed=K, bytes_up=up.bytes_up,
               bytes_down=selected * setup.down_bytes + down_extra, trainable_params=setup.trainable_count, **up.diag)
    if up.privacy is not None:
        row.update(setup.private.row(rnd, state.privacy, up.privacy), **up.privacy_extra)
        state.privacy = up.privacy
    if systems is not None:
        state.sys, timeline, extra = systems
        state.timeline.extend(timeline)
        row.update(extra)
    state.round_rows.append(row)
    if cfg.record_params:
        state.trajectory.append(current)
    state.timing_rows.append(dict(round=rnd, seconds=time.perf_counter() - t0, local_seconds=up.local_seconds,
                                  seconds_per_step=up.local_seconds / up.steps if up.steps else math.nan))
    state.completed = rnd


@dataclass
class _Update:
    """What a round's training and aggregation produce, before it is committed."""

    x: dict
    server_state: dict
    client_state: dict = field(default_factory=dict)   # the completing clients' new state rows
    residual: dict | None = None                        # their new error-feedback rows
    bytes_up: int = 0
    diag: dict = field(default_factory=dict)
    local_seconds: float = 0.0
    steps: int = 0                                      # the most local steps a client took
    privacy: dict | None = None                         # the privacy mechanism's state for the next round
    privacy_extra: dict = field(default_factory=dict)   # its rounds columns (secure aggregation's traffic)


def _update(setup: Setup, state: State, rnd: int, sel, agg_w, steps) -> _Update:
    """Local training of the clients ``sel`` and the server's update (nothing in ``state`` changes)."""
    cfg, alg, dtype, N, K = setup.cfg, setup.cfg.algorithm, setup.dtype, len(setup.sizes), len(sel)
    x, plan = state.x, setup.plan
    if K:
        train = LocalRound(setup, x, rnd, sel, steps)
        result = alg.client_update(algs.ClientRound(x, {k: v[sel] for k, v in state.client_state.items()},
                                                    state.server_state, steps, train.lr_sum, cfg.options, train,
                                                    train.grad, train.hvp, setup.head, tuple(train.lrs)))
    else:   # a private round without clients: only the noise
        train = None
        result = algs.ClientResult({k: torch.zeros(0, *v.shape, dtype=v.dtype) for k, v in x.items()})
    delta, bytes_up, residual = result.delta, K * setup.up_bytes, None
    if setup.groups is not None:  # each parameter averaged over the clients that trained it
        delta = mixed.rescale(delta, sel, agg_w.to(dtype), setup.groups)
        bytes_up = mixed.upload_bytes(setup.groups, sel)
    if cfg.compressing:
        before = None if state.residual is None else {k: v[sel] for k, v in state.residual.items()}
        travel = {k: v for k, v in delta.items() if k not in setup.stays}   # what stays is not sent
        sent, nbytes, residual = cfg.compression.compress(travel, before, rnd, sel)
        delta = {**delta, **sent}
        bytes_up = int(nbytes.sum())
    weights, p, privacy, extra, client_delta = agg_w.to(dtype), setup.p[sel].to(dtype), None, {}, delta
    if setup.private is not None:   # the private sum (clipped and noised, or masked) as one virtual client
        delta, privacy, extra = setup.private.aggregate(delta, weights, state.privacy, rnd, sel, steps)
        if setup.private.replaces_sum:
            weights, p = torch.ones(1, dtype=dtype), torch.ones(1, dtype=dtype)
        if "secure_bytes" in extra:
            bytes_up = extra["secure_bytes"]   # every protocol message (keys, shares, masked uploads)
    if delta is None:   # secure aggregation with fewer than two clients: nothing can be aggregated
        x_new, server_state = x, state.server_state
    else:
        x_new, server_state = alg.server_update(algs.ServerRound(
            x, state.server_state, delta, result.upload, weights, p, steps,
            cfg.server_lr, cfg.options, N, sel, torch.ones(K, dtype=torch.bool), setup.head))
    if not all(bool(torch.isfinite(v).all()) for v in x_new.values()):
        raise FloatingPointError(f"round {rnd}: the global parameters became NaN or infinite (training "
                                 f"diverged); try a smaller client_lr (now {cfg.lr(rnd, 0):g}) or server_lr")
    x_new = {k: x_new[k] for k in plan.server}
    diag = {}
    if cfg.diagnostics and K:
        losses, grads = setup.trainer.objectives(x_new, *setup.full_batch)
        diag = round_diagnostics(losses, grads, setup.p.to(dtype), client_delta, {k: x[k] - x_new[k] for k in x_new})
    bytes_up += sum(v.numel() * v.element_size() for v in result.upload.values())
    return _Update(x_new, server_state, result.state, residual, bytes_up, diag,
                   train.seconds if train else 0.0, len(train.lrs) if train else 0, privacy, extra)


def _play_async(setup: Setup, state: State, rnd: int, t0: float) -> None:
    """One server update of FedAsync or FedBuff (engine.asynchronous); commits like a round."""
    cfg = setup.cfg
    update, counts, timeline, sys_new = asynchronous.next_update(setup, state, rnd)
    x_new = asynchronous.apply(state.x, update, cfg.server_lr)
    if not all(bool(torch.isfinite(v).all()) for v in x_new.values()):
        raise FloatingPointError(f"round {rnd}: the global parameters became NaN or infinite (training "
                                 "diverged); try a smaller client_lr or server_lr")
    evaluate = rnd % cfg.eval_every == 0 or rnd == cfg.num_rounds
    current = setup.full(x_new) if (cfg.record_params or evaluate) else None
    rows = {c: [] for c in METRIC_COLUMNS}
    if evaluate:
        setup.evaluator(current, rnd, rows)
    # ---- commit
    state.x, state.sys = x_new, sys_new
    for c in METRIC_COLUMNS:
        state.rows[c].extend(rows[c])
    state.timeline.extend(timeline)
    state.round_rows.append(dict(round=rnd, clients_selected=counts.pop("clients_selected"),
                                 clients_completed=counts.pop("clients_completed"), bytes_up=counts.pop("bytes_up"),
                                 bytes_down=counts.pop("bytes_down"), trainable_params=setup.trainable_count,
                                 **counts))
    if cfg.record_params:
        state.trajectory.append(current)
    state.timing_rows.append(dict(round=rnd, seconds=time.perf_counter() - t0, local_seconds=math.nan,
                                  seconds_per_step=math.nan))
    state.completed = rnd


def _clocked_selection(setup: Setup, state: State, rnd: int):
    """Selection among the available clients and the round on the virtual clock: the clients that
    complete (with their steps done) and their renormalised weights, and what to record."""
    from .clocked import timeline_rows
    cfg, ck, N = setup.cfg, setup.clocked, len(setup.sizes)
    sys_new = {"virtual_time": state.sys["virtual_time"], "energy": state.sys["energy"].copy(),
               "previous": state.sys["previous"]}
    avail = ck.available(rnd, sys_new)
    n_avail = int(avail.sum())
    target = min(cfg.clients_per_round or N, n_avail)
    pick = None if cfg.clients_per_round is None else ck.over_selected(target, n_avail)
    sel, agg_w = select_clients(N, pick, setup.p, cfg.sampling, cfg.seed, rnd, available=torch.as_tensor(avail))
    clients = sel.numpy()
    rc = ck.play(rnd, clients, setup.steps[sel].numpy(), keep=target)
    done = torch.as_tensor(rc.completed, dtype=torch.bool)
    energy = ck.watts[clients] * rc.busy
    sys_new["energy"][clients] += energy
    timeline = timeline_rows(rnd, clients, rc, start=state.sys["virtual_time"])
    sys_new["virtual_time"] = state.sys["virtual_time"] + rc.round_time
    extra = dict(virtual_time=sys_new["virtual_time"], round_time=rc.round_time, clients_available=n_avail,
                 clients_dropped=int((rc.outcome == "dropped").sum()), clients_late=int((rc.outcome == "late").sum()),
                 energy_j=float(energy.sum()))
    w = agg_w[done]
    if len(w) and not bool(done.all()):  # renormalised over the clients that complete
        w = w * (agg_w.sum() / w.sum())
    steps = torch.as_tensor(rc.steps_done, dtype=torch.long)[done]
    return sel[done], w, steps, len(sel), (sys_new, timeline, extra)
