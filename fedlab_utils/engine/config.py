"""``flu.run``'s arguments, validated once into a frozen :class:`RunConfig`.

Every check happens here, before any training, and raises ``ValueError``/``TypeError`` naming
the parameter, the constraint and the value received. :meth:`RunConfig.describe` is the run's
``History.config``: every value the run used, defaults included (FedProx's ``mu``, the resolved
``server_lr``, LoRA's ``lora_rank``), as plain JSON values.
"""
from __future__ import annotations

import hashlib
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import algorithms as algs
from .._core import checks as chk
from .._core.losses import LOSSES
from .._core.random import seed_value
from ..data.datasets import Federation
from ..models import finetune as ft
from .local import BACKENDS
from .sampling import SAMPLING

WEIGHTS = ("samples", "uniform")
# arguments that may differ between a checkpointed run and its resumption
RESUMABLE = ("num_rounds", "progress", "checkpoint", "checkpoint_every", "resume")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run uses, validated: the algorithm with its typed options, the fine-tuning
    mode with its options, per-client local steps, the resolved server learning rate."""

    algorithm: algs.Algorithm
    options: algs.Options
    num_rounds: int
    local_steps: tuple            # one int per client
    client_lr: float | Callable   # a constant or a schedule (round, step) -> lr
    batch_size: int | None
    server_lr: float
    clients_per_round: int | None
    sampling: str
    weights: str
    loss: str
    l2: float
    finetune: str                 # one mode, or "mixed" with one mode per client in ``modes``
    finetune_options: dict
    eval_every: int
    backend: str
    record_params: bool
    diagnostics: bool
    progress: bool
    seed: int
    checkpoint: Path | None
    checkpoint_every: int
    resume: Path | None
    systems: object               # an flu.systems.Simulation or None
    compression: object           # an flu.systems.Compression or None
    model_name: str
    federation_name: str
    fingerprint: str              # of the model's initial parameters and the federation's data
    modes: tuple = ()             # one mode per client when finetune == "mixed"
    privacy: object = None        # an flu.privacy.DPFedAvg or None

    @property
    def compressing(self) -> bool:
        """Whether uploads are encoded (``Compression("none")`` is the same as no compression)."""
        return self.compression is not None and self.compression.method != "none"

    def lr(self, rnd: int, step: int) -> float:
        return float(self.client_lr(rnd, step)) if callable(self.client_lr) else float(self.client_lr)

    def describe(self) -> dict:
        """``History.config``: plain JSON values (a schedule by its name, a model by name and size)."""
        steps = self.local_steps
        cfg = dict(
            model=self.model_name, federation=self.federation_name, algorithm=self.algorithm.name,
            num_rounds=self.num_rounds,
            local_steps=steps[0] if len(set(steps)) == 1 else list(steps),
            client_lr=getattr(self.client_lr, "__name__", repr(self.client_lr)) if callable(self.client_lr)
            else self.client_lr,
            batch_size=self.batch_size, server_lr=self.server_lr, clients_per_round=self.clients_per_round,
            sampling=self.sampling, weights=self.weights, loss=self.loss, l2=self.l2,
            finetune=list(self.modes) if self.finetune == "mixed" else self.finetune,
            systems=_describe(self.systems), privacy=_describe(self.privacy), compression=_describe(self.compression),
            eval_every=self.eval_every, backend=self.backend,
            record_params=self.record_params, diagnostics=self.diagnostics, progress=self.progress,
            seed=self.seed, checkpoint=None if self.checkpoint is None else str(self.checkpoint),
            checkpoint_every=self.checkpoint_every, resume=None if self.resume is None else str(self.resume),
            fingerprint=self.fingerprint)
        cfg.update({k: _plain(v) for k, v in self.options.as_dict().items()})
        cfg.update({k: _plain(v) for k, v in self.finetune_options.items()})
        return cfg


def _describe(record):
    """A Simulation or Compression as plain values (profiles by a short fingerprint)."""
    if record is None:
        return None
    out = {"type": type(record).__name__}
    for name in record.__dataclass_fields__:
        value = getattr(record, name)
        if hasattr(value, "to_numpy"):  # the profiles DataFrame
            h = hashlib.blake2b(value.to_csv(index=False).encode(), digest_size=8).hexdigest()
            out[name] = f"{len(value)} clients ({h})"
        elif isinstance(value, (list, tuple, np.ndarray)):
            out[name] = [_plain(v) for v in value]
        else:
            out[name] = _plain(value) if not hasattr(value, "__dataclass_fields__") else _describe(value)
    return out


def _plain(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    return repr(value)


def _steps(local_steps, N) -> tuple:
    if isinstance(local_steps, numbers.Integral) and not isinstance(local_steps, bool):
        return (chk.integer("local_steps", local_steps, low=1),) * N
    if not isinstance(local_steps, (list, tuple, np.ndarray, torch.Tensor)):
        raise TypeError(f"local_steps must be an int or one int per client, got {type(local_steps).__name__}")
    steps = list(local_steps.tolist() if isinstance(local_steps, (np.ndarray, torch.Tensor)) else local_steps)
    if len(steps) != N:
        chk.fail("local_steps", f"one int per client ({N} clients)", f"a list of length {len(steps)}")
    return tuple(chk.integer(f"local_steps[{i}]", s, low=1) for i, s in enumerate(steps))


def _path(name, value) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path or None, got {type(value).__name__}")
    return Path(value)


def fingerprint(model: torch.nn.Module, federation: Federation) -> str:
    """A short hash of the model's parameters and the federation's tensors (what a resume must match)."""
    h = hashlib.blake2b(digest_size=8)
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    for pairs in (federation.train, federation.test):
        for X, y in pairs:
            for t in (X, y):
                h.update(str(tuple(t.shape)).encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def configure(model, federation, *, algorithm, num_rounds, local_steps, client_lr, batch_size, server_lr,
              clients_per_round, sampling, weights, loss, l2, finetune, systems, privacy, compression, eval_every,
              backend, record_params, diagnostics, progress, seed, checkpoint, checkpoint_every, resume,
              options) -> RunConfig:
    """Validate ``flu.run``'s arguments (see its docstring) into a :class:`RunConfig`."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(federation, Federation):
        raise TypeError(f"federation must be an flu.data.Federation, got {type(federation).__name__}")
    alg = algs.get(algorithm)
    N = federation.num_clients
    if callable(client_lr):
        schedule = client_lr
        try:
            first = schedule(1, 0)
        except Exception as exc:  # a schedule of the wrong shape fails here, named, not in round 1
            chk.fail("client_lr", "a callable (round, step) -> learning rate (calling client_lr(1, 0) raised "
                     f"{type(exc).__name__}: {str(exc)[:120]})", client_lr)
        if isinstance(first, bool) or not isinstance(first, (int, float, np.number, torch.Tensor)):
            chk.fail("client_lr", "a callable returning a number (client_lr(1, 0) returned "
                     f"{type(first).__name__})", client_lr)
    else:
        schedule = chk.real("client_lr", client_lr, low=0, low_open=True)
    if batch_size is not None:
        batch_size = chk.integer("batch_size", batch_size, low=1)
    if clients_per_round is not None:
        clients_per_round = chk.integer("clients_per_round", clients_per_round, low=1, high=N)
    if systems is not None:
        from ..systems.simulation import Simulation
        if not isinstance(systems, Simulation):
            raise TypeError(f"systems must be an flu.systems.Simulation or None, got {type(systems).__name__}")
    if compression is not None:
        from ..systems.compression import Compression
        if not isinstance(compression, Compression):
            raise TypeError(f"compression must be an flu.systems.Compression or None, got {type(compression).__name__}")
        if not isinstance(finetune, str) and len(set(finetune)) > 1 and compression.method != "none":
            chk.fail("compression", "None with one fine-tuning mode per client (compare the two instead: both cut "
                     "bytes)", compression.method)
        lora = finetune == "lora" if isinstance(finetune, str) else "lora" in finetune
        if lora and compression.method != "none":
            chk.fail("compression", "None with finetune='lora' (its clients upload factors, not the dense update "
                     "the server merges; compress with finetune='ffa_lora')", compression.method)
    if privacy is not None:
        _check_privacy(privacy, finetune, systems, compression, clients_per_round, sampling, N, batch_size, alg)
    mode, modes = _modes(finetune, N)
    alg_values, ft_values = _route(options, alg, modes)
    opts = alg.configure(**alg_values)
    ft_options = {}
    for m in dict.fromkeys(modes):
        ft_options.update(ft.resolve_options(m, **{k: v for k, v in ft_values.items() if k in ft.OPTIONS.get(m, {})}))
    server_lr = alg.default_server_lr if server_lr is None else chk.real("server_lr", server_lr, low=0,
                                                                         low_open=True)
    checkpoint, resume = _path("checkpoint", checkpoint), _path("resume", resume)
    if checkpoint is not None and checkpoint.exists() and (resume is None or resume.resolve() != checkpoint.resolve()):
        chk.fail("checkpoint", "a new file, or the file given as resume= (a run never overwrites another's "
                 "checkpoint: pass resume= to continue it, or delete it)", str(checkpoint))
    if checkpoint is not None and (checkpoint.is_dir() or not checkpoint.absolute().parent.is_dir()):
        chk.fail("checkpoint", "a file path in an existing directory", str(checkpoint))
    if resume is not None and not resume.exists():
        chk.fail("resume", "an existing checkpoint file", str(resume))
    if alg.kind != "optimization" and mode in ("lora", "mixed"):
        chk.fail("finetune", f"one mode other than 'lora' with {alg.kind} algorithm {alg.name!r} (its client rule "
                 "works on the parameters it trains, in the server's coordinates)", finetune)
    if diagnostics and mode == "lora":
        chk.fail("diagnostics", "False with finetune='lora' (its server and client coordinates differ)", True)
    return RunConfig(
        algorithm=alg, options=opts, num_rounds=chk.integer("num_rounds", num_rounds, low=1),
        local_steps=_steps(local_steps, N), client_lr=schedule, batch_size=batch_size, server_lr=server_lr,
        clients_per_round=clients_per_round, sampling=chk.option("sampling", sampling, SAMPLING),
        weights=chk.option("weights", weights, WEIGHTS), loss=chk.option("loss", loss, LOSSES),
        l2=chk.real("l2", l2, low=0), finetune=mode, finetune_options=ft_options,
        eval_every=chk.integer("eval_every", eval_every, low=1), backend=chk.option("backend", backend, BACKENDS),
        record_params=_flag("record_params", record_params), diagnostics=_flag("diagnostics", diagnostics),
        progress=_flag("progress", progress), seed=seed_value("seed", seed), checkpoint=checkpoint,
        checkpoint_every=chk.integer("checkpoint_every", checkpoint_every, low=1), resume=resume,
        systems=systems, compression=compression, privacy=privacy,
        model_name=f"{getattr(model, 'name', type(model).__name__)} "
                   f"({sum(p.numel() for p in model.parameters())} parameters)",
        federation_name=repr(federation), fingerprint=fingerprint(model, federation),
        modes=modes if mode == "mixed" else ())


def _check_privacy(privacy, finetune, systems, compression, clients_per_round, sampling, N, batch_size, alg) -> None:
    """DP-FedAvg's preconditions: Poisson client sampling under partial participation (what the
    RDP accountant assumes) and one synchronous, uncompressed aggregation of one mode."""
    from ..privacy.dp import DPSGD, DPFedAvg
    from ..privacy.secure_agg import SecureAggregation
    if isinstance(privacy, DPSGD):
        if batch_size is None:
            chk.fail("batch_size", "an int with privacy=DPSGD (the Poisson rate is batch_size / n_i)", batch_size)
        if alg.kind == "meta" and alg.name != "reptile":
            chk.fail("privacy", f"None or DPFedAvg with {alg.name!r} (its client rule uses gradients DP-SGD does "
                     "not privatise)", privacy)
        if not isinstance(finetune, str) or finetune == "lora" or (systems is not None and systems.aggregation != "sync"):
            chk.fail("privacy", "None with one mode per client, finetune='lora' or asynchronous aggregation "
                     "(not built for DP-SGD)", privacy)
        return
    if isinstance(privacy, SecureAggregation):
        if N < 2 or (clients_per_round is not None and clients_per_round < 2):
            chk.fail("clients_per_round", "at least 2 with secure aggregation (one update cannot be hidden)",
                     clients_per_round or N)
    elif not isinstance(privacy, DPFedAvg):
        raise TypeError(f"privacy must be an flu.privacy.DPFedAvg, DPSGD or SecureAggregation, or None, "
                        f"got {type(privacy).__name__}")
    if isinstance(privacy, DPFedAvg) and clients_per_round is not None and clients_per_round < N \
            and sampling != "poisson":
        chk.fail("sampling", "'poisson' with privacy= and clients_per_round < N (the sampling the RDP accountant "
                 "assumes)", sampling)
    if not isinstance(finetune, str):
        chk.fail("privacy", "None with one fine-tuning mode per client (not built)", privacy)
    if compression is not None or (systems is not None and systems.aggregation != "sync"):
        chk.fail("privacy", "None with compression or asynchronous aggregation (not built: DP-FedAvg clips and "
                 "noises one synchronous aggregate)", privacy)


def _flag(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _modes(finetune, N) -> tuple[str, tuple]:
    """``(mode, modes)``: one mode for everyone, or ``("mixed", one mode per client)``; a list
    whose modes are all equal is that one mode (the same run, bit for bit)."""
    if isinstance(finetune, str):
        return finetune, (finetune,)
    if not isinstance(finetune, (list, tuple)):
        raise TypeError(f"finetune must be a mode name or a list of them (one per client), "
                        f"got {type(finetune).__name__}")
    if len(finetune) != N:
        chk.fail("finetune", f"one mode per client ({N} modes)", f"a list of {len(finetune)}")
    for i, m in enumerate(finetune):
        if not isinstance(m, str) or m not in ft.MODES:
            chk.fail(f"finetune[{i}]", f"one of {list(ft.MODES)}", m)
    modes = tuple(finetune)
    if len(set(modes)) == 1:
        return modes[0], modes[:1]
    return "mixed", modes


def _route(options: dict, alg: algs.Algorithm, modes: tuple) -> tuple[dict, dict]:
    """Split ``flu.run``'s extra keywords between the algorithm and the fine-tuning mode.

    A name the mode takes (``num_layers`` for ``last_layers``, ``lora_rank`` for the LoRA modes)
    goes to the mode, any other to the algorithm; a name both claim is ambiguous, a name neither
    takes is unknown: both are errors.
    """
    mode_names = {k for m in modes for k in ft.OPTIONS.get(m, {})}
    mode = modes[0] if len(set(modes)) == 1 else "mixed"
    alg_names = set(alg.options.names())
    alg_values, ft_values = {}, {}
    for key, value in options.items():
        if key in mode_names and key in alg_names:
            chk.fail(key, f"claimed by one side only: both finetune={mode!r} and algorithm {alg.name!r} take it "
                     "(rename the algorithm's option)", value)
        if key in mode_names:
            ft_values[key] = value
        elif key in alg_names:
            alg_values[key] = value
        elif key in ft.ALL_OPTIONS:
            chk.fail(key, f"an option of finetune={mode!r} or of algorithm {alg.name!r} (it belongs to "
                     f"{sorted(m for m, o in ft.OPTIONS.items() if key in o)})", value)
        else:
            chk.fail(key, f"an option of algorithm {alg.name!r} (options: {sorted(alg_names) or 'none'})", value)
    return alg_values, ft_values
