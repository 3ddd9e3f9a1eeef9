"""What one bridged run is: ``flu.run``'s arguments, checked, plus the Flower settings.

A :class:`Spec` crosses process boundaries (Ray actors, the SuperLink's ServerApp process, the
SuperNodes' ClientApp processes) as a file path: it is written once with cloudpickle (so models
and schedules defined in a notebook travel too) and every process loads it once and caches it
with the engine's set-up built from it, so a Flower message carries tensors, never the data.
"""
from __future__ import annotations

import copy
import numbers
import os
import pickle
from dataclasses import dataclass, field

from .._core import checks as chk

# flu.run's optimisation algorithms: the ones that need no personal state and no meta-gradients
ALGORITHMS = ("fedavg", "fedprox", "scaffold", "fednova", "feddyn", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
ENGINES = ("simulation", "deployment", "inprocess")
FLWR_PIN = "flwr[simulation]==1.42.0"

# flu.run arguments the bridge passes through unchanged, with flu.run's defaults
RUN_DEFAULTS = dict(algorithm="fedavg", num_rounds=50, local_steps=5, client_lr=0.05, batch_size=16, server_lr=None,
                    clients_per_round=None, sampling="uniform", weights="samples", loss="cross_entropy", l2=0.0,
                    finetune="full", eval_every=1, backend="vectorized", record_params=False, progress=True, seed=0)
# flu.run arguments the bridge refuses unless left at their defaults, with the reason
UNSUPPORTED = dict(
    systems=(None, "a virtual clock of its own; Flower's rounds run on real time"),
    privacy=(None, "not built into the bridge"),
    compression=(None, "not built into the bridge"),
    diagnostics=(False, "it needs every client's full-batch gradient on the server"),
    checkpoint=(None, "not built into the bridge"),
    checkpoint_every=(1, "not built into the bridge"),
    resume=(None, "not built into the bridge"),
)


@dataclass
class Spec:
    """A run: the model, the federation, ``flu.run``'s keyword arguments (``kwargs``, options
    included) and the Flower settings."""

    model: object
    federation: object
    kwargs: dict                                  # flu.run's keyword arguments (algorithm options apart)
    options: dict
    engine: str
    supernodes: int
    min_supernodes: int
    round_timeout: float
    connect_timeout: float
    faults: dict = field(default_factory=dict)   # SuperNode name -> round after which it is killed, or "offline"
    path: str | None = None                      # where the spec is written for other processes

    def names(self) -> list:
        return [node_name(j) for j in range(self.supernodes)]

    def describe(self) -> dict:
        """The Flower settings as History.config entries."""
        return dict(engine=self.engine, supernodes=self.supernodes, min_supernodes=self.min_supernodes,
                    round_timeout=self.round_timeout, connect_timeout=self.connect_timeout,
                    faults={k: v for k, v in sorted(self.faults.items())} or None)


def node_name(partition: int) -> str:
    return f"supernode-{partition}"


def owner(client: int, supernodes: int) -> int:
    """The SuperNode (its partition id) that hosts ``client``: clients are dealt round-robin."""
    return client % supernodes


def build(model, federation, *, engine, supernodes, min_supernodes, round_timeout, connect_timeout, faults, options,
          **arguments) -> Spec:
    """Check everything before anything starts; returns the :class:`Spec` (``flu.run``'s own
    checks run here too, through ``engine.config.configure``)."""
    from ..engine.config import configure
    chk.option("engine", engine, ENGINES)
    for name, (default, why) in UNSUPPORTED.items():
        value = arguments.pop(name, default)
        if value is not default and value != default:
            chk.fail(name, f"{default!r} with flu.flower.run ({why})", value)
    unknown = sorted(set(arguments) - set(RUN_DEFAULTS))
    if unknown:  # pragma: no cover - run()'s signature lists every name
        raise TypeError(f"unexpected arguments {unknown}")
    kwargs = {**RUN_DEFAULTS, **arguments}
    algorithm = kwargs["algorithm"]
    if isinstance(algorithm, str):
        if algorithm not in ALGORITHMS:
            chk.fail("algorithm", f"one of {list(ALGORITHMS)} with flu.flower.run (meta-learning and "
                     "personalisation methods are not bridged)", algorithm)
    else:
        from ..algorithms import Algorithm
        if not isinstance(algorithm, Algorithm):
            raise TypeError(f"algorithm must be a name or an flu.algorithms.Algorithm, got {type(algorithm).__name__}")
        if algorithm.kind != "optimization" or algorithm.has_personal or algorithm.stays:
            chk.fail("algorithm", "an optimisation Algorithm without personal or client-only parameters with "
                     "flu.flower.run", algorithm.name)
    if not isinstance(kwargs["finetune"], str):
        chk.fail("finetune", "one mode for every client with flu.flower.run", kwargs["finetune"])
    cfg = configure(model, federation, systems=None, privacy=None, compression=None, diagnostics=False,
                    checkpoint=None, checkpoint_every=1, resume=None, options=dict(options), **kwargs)
    N = federation.num_clients
    S = chk.integer("supernodes", supernodes, low=1, high=N)
    m = S if min_supernodes is None else chk.integer("min_supernodes", min_supernodes, low=1, high=S)
    rt = chk.real("round_timeout", round_timeout, low=0, low_open=True)
    ct = chk.real("connect_timeout", connect_timeout, low=0, low_open=True)
    faults = _faults(faults, S, cfg.num_rounds, engine)
    return Spec(model, federation, kwargs, dict(options), engine, S, m, rt, ct, faults)


def _faults(faults, S, num_rounds, engine) -> dict:
    if faults is None:
        return {}
    if not isinstance(faults, dict):
        raise TypeError(f"faults must be a dict {{SuperNode name: round or 'offline'}} or None, "
                        f"got {type(faults).__name__}")
    if faults and engine == "simulation":
        chk.fail("faults", "None with engine='simulation' (Flower's simulation engine has no processes to "
                 "kill; use 'inprocess' or 'deployment')", faults)
    names = [node_name(j) for j in range(S)]
    out = {}
    for name, when in faults.items():
        if name not in names:
            chk.fail("faults", f"keyed by SuperNode names {names[:4] + (['...'] if S > 4 else [])}", name)
        if when != "offline":
            if isinstance(when, bool) or not isinstance(when, numbers.Integral) or not 1 <= when < num_rounds:
                chk.fail(f"faults[{name!r}]", f"'offline' or a round in [1, {num_rounds - 1}] after which the "
                         "SuperNode is killed", when)
            when = int(when)
        out[name] = when
    return out


# ------------------------------------------------------------------------ across processes

def _pickler():
    try:
        import cloudpickle
        return cloudpickle
    except ImportError:
        try:
            from ray import cloudpickle
            return cloudpickle
        except ImportError:
            return pickle


def write(spec: Spec, path: str) -> None:
    """Write ``spec`` for other processes (cloudpickle when available: by value for code defined in
    ``__main__``, so a notebook's own model class and schedules travel)."""
    spec.path = path
    blob = copy.copy(spec)
    with open(path, "wb") as f:
        _pickler().dump(blob, f)


_LOADED: dict = {}   # path -> (Spec, engine pieces), one per process


def load(path: str):
    """The spec written to ``path``, loaded once per process."""
    if path not in _LOADED:
        with open(path, "rb") as f:
            _LOADED[path] = {"spec": pickle.load(f)}
    return _LOADED[path]


def cache(spec: Spec) -> dict:
    """The per-process cache of ``spec`` (the set-up built from it lives here)."""
    key = spec.path or id(spec)
    if key not in _LOADED:
        _LOADED[key] = {"spec": spec}
    return _LOADED[key]


def forget(spec: Spec) -> None:
    _LOADED.pop(spec.path or id(spec), None)
    if spec.path and os.path.exists(spec.path):
        os.remove(spec.path)


def from_run_config(context) -> dict:
    """The spec named by the run config's ``spec`` entry (deployment: the app's pyproject.toml)."""
    return load(str(context.run_config["spec"]))


class Handle:
    """A reference to a spec that pickles as its file path only (what Ray ships with every
    message): the receiving process loads the file once."""

    def __init__(self, spec: Spec):
        self._spec = spec
        self.path = spec.path

    def __call__(self, context=None) -> dict:
        return self.get()

    def get(self) -> dict:
        if self._spec is not None:
            return cache(self._spec)
        return load(self.path)

    def __getstate__(self):
        if self.path is None:
            raise RuntimeError("a spec must be written to a file before it crosses processes")
        return {"path": self.path}

    def __setstate__(self, state):
        self._spec, self.path = None, state["path"]
