"""Federated algorithms as pairs of pure functions (a client rule and a server rule).

Following FedJAX and TFF's simple_fedavg, an :class:`Algorithm` is a frozen record of four
functions; the engine (``flu.run``) owns sampling, batching, vectorisation and bookkeeping.
What crosses the client/server boundary are small frozen records: :class:`ClientRound` (what
the selected clients see) and :class:`ServerRound` (what the server receives).

Sign convention: ``delta_i = global - local`` (a pseudo-gradient). A server step is
``x <- x - server_lr * update(delta)``; FedAvg with ``server_lr = 1`` is plain model averaging.

Local training is one shared primitive, ``ClientRound.train(shift=None, pull=0.0, start=None)``:
``local_steps`` SGD steps on the client objective

    F_i(w) + <shift_i, w> + pull / 2 * ||w - x||^2,

which covers FedAvg (no shift, no pull), FedProx (pull = mu), SCAFFOLD (shift = c - c_i) and
FedDyn (shift = -g_i, pull = alpha). Everything an algorithm returns is stacked along the
client axis (one row per selected client).

Each algorithm declares its options as a typed frozen record (:class:`Options`, as pfl-research
does for FedProx): defaults in the fields, validation in ``__post_init__``; ``flu.run`` builds it
from its keyword arguments, so unknown or invalid options fail before round 0.

Builders (names in :data:`REGISTRY`, usable as ``flu.run(..., algorithm=name, **options)``):
``fedavg``, ``fedprox`` (``mu``), ``scaffold``, ``fednova``, ``feddyn`` (``alpha``), and the
server optimisers on the pseudo-gradient ``fedavgm`` (``server_momentum``), ``fedadam``,
``fedyogi``, ``fedadagrad`` (``beta1``, ``beta2``, ``tau``). Algorithm state (control variates,
FedDyn's g_i and h, server moments) is kept as flat vectors over the trainable parameters in
their order (:func:`flatten` / :func:`unflatten`): the server's ``(D,)`` and the clients'
``(N, D)``, which ``History.client_state`` returns. Aggregates of per-client state use the
population weights p_i (``ServerRound.p``), models the sampling weights w_i (``ServerRound.weights``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from .._core import checks as chk
from .._core.labels import canonical_label

Params = dict  # name -> tensor


@dataclass(frozen=True)
class Options:
    """Base of the typed option records: fields with defaults, checks in ``__post_init__``.

    Read by attribute (``options.mu``) or by name (``options["mu"]``); :meth:`as_dict` gives the
    values, which ``History.config`` records (defaults included).
    """

    def __getitem__(self, name: str):
        return getattr(self, name)

    @classmethod
    def names(cls) -> tuple:
        return tuple(f.name for f in dataclasses.fields(cls))

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.names()}


def options_record(name: str, defaults: Mapping) -> type:
    """A frozen :class:`Options` record type with ``defaults`` as its fields (for a user's own
    Algorithm given ``options={"k": 1}``): any value is accepted; ``check_options`` validates."""
    cls_name = "".join(part.title() for part in str(name).split("_")) + "Options"
    fields = [(str(k), object, field(default=v)) for k, v in defaults.items()]
    return dataclasses.make_dataclass(cls_name, fields, bases=(Options,), frozen=True)


def positive(name: str, value) -> None:
    chk.real(name, value, low=0, low_open=True)


def non_negative(name: str, value) -> None:
    chk.real(name, value, low=0)


def unit(name: str, value) -> None:
    """A number in [0, 1)."""
    chk.real(name, value, low=0, high=1, high_open=True)


@dataclass(frozen=True)
class ClientRound:
    """What the K selected clients get in one round (stacked tensors have a leading K axis)."""

    params: Params            # global trainable parameters x (not stacked)
    state: Params             # per-client persistent state, stacked (K, ...)
    server_state: Params      # what the server broadcasts besides x
    steps: torch.Tensor       # (K,) local steps tau_i
    lr_sum: torch.Tensor      # (K,) sum of the client learning rates over each client's steps
    options: Options
    train: Callable           # train(shift=None, pull=0.0, start=None, fixed=(), steps=None, draw=0) -> stacked params
    grad: Callable = None     # grad(params, step=0, draw=0, part="train") -> stacked minibatch gradients
    hvp: Callable = None      # hvp(params, vector, step=0, draw=0, part="train") -> stacked Hessian-vector products
    head: tuple = ()          # names of the trainable parameters in the model's head (the rest is the body)
    lrs: tuple = ()           # the client learning rate of each local step


@dataclass(frozen=True)
class ClientResult:
    """``delta`` (stacked pseudo-gradients), the clients' new ``state``, and ``upload``: any other
    stacked tensor that travels to the server (counted in ``bytes_up``)."""

    delta: Params
    state: Params = field(default_factory=dict)
    upload: Params = field(default_factory=dict)


@dataclass(frozen=True)
class ServerRound:
    """What the server receives: the stacked ``delta`` and ``upload`` of the K clients, the
    aggregation ``weights`` (K,) of the sampling scheme and the population weights ``p`` (K,),
    the selected ``clients`` and which of them ``completed`` their round, and ``head`` (the
    trainable names in the model's head)."""

    params: Params
    server_state: Params
    delta: Params
    upload: Params
    weights: torch.Tensor
    p: torch.Tensor
    steps: torch.Tensor
    server_lr: float
    options: Options
    num_clients: int
    clients: torch.Tensor = None      # (K,) ids of the selected clients
    completed: torch.Tensor = None    # (K,) bool: which selected clients completed (all, without systems)
    head: tuple = ()


@dataclass(frozen=True)
class Algorithm:
    """A federated algorithm: ``init_server(params, options) -> server_state``,
    ``init_client(params, options) -> state of ONE client`` (the engine stacks it for all clients),
    ``client_update(ClientRound) -> ClientResult``, ``server_update(ServerRound) -> (params, server_state)``.

    ``options`` is the algorithm's :class:`Options` record with its defaults (a plain dict of
    defaults is turned into one); ``flu.run`` replaces fields by name, so unknown names are
    errors and ``__post_init__`` (or ``check_options``) validates the values. ``broadcast`` names
    the server-state entries sent to clients (counted in bytes_down).

    ``kind`` is "optimization", "meta" (meta-learning: a client rule that may call
    ``ClientRound.grad``/``hvp``) or "personal" (personalisation). ``stays`` names the part of the
    model that never travels ("head" or "body"; "" for none): it is left out of bytes_up and
    bytes_down, and the model needs a body/head split. ``keeps`` names the part of which every
    client keeps a personal copy across rounds ("head", "body", "all" or ""): the engine stores it
    as client state ``"personal." + name`` (N, ...), initially the round-0 global values.
    Personal models are the global model with those copies in place, or what
    ``personal(x, client_state, options) -> {name: (N, ...)}`` returns (APFL's mixture); they fill
    ``History.personal_params`` and the ``model="personal"`` metrics.
    """

    name: str
    client_update: Callable
    server_update: Callable
    init_server: Callable = lambda params, options: {}
    init_client: Callable = lambda params, options: {}
    options: Options = field(default_factory=Options)
    broadcast: tuple = ()
    default_server_lr: float = 1.0
    label: str = ""
    check_options: Callable = lambda options: None
    kind: str = "optimization"
    stays: str = ""
    keeps: str = ""
    personal: Callable | None = None

    @property
    def has_personal(self) -> bool:
        return bool(self.keeps) or self.personal is not None

    def __post_init__(self):
        if not self.label:  # the one plot label of this method (flu._core.labels)
            object.__setattr__(self, "label", canonical_label(self.name))
        if isinstance(self.options, Mapping):
            object.__setattr__(self, "options", options_record(self.name, self.options)())
        elif isinstance(self.options, type) and issubclass(self.options, Options):
            object.__setattr__(self, "options", self.options())
        if not isinstance(self.options, Options):
            raise TypeError(f"options must be an flu.algorithms.Options record or a dict of defaults, "
                            f"got {type(self.options).__name__}")

    def configure(self, **values) -> Options:
        """The options record with ``values`` replacing the defaults (validated)."""
        names = self.options.names()
        for key, value in values.items():
            if key not in names:
                chk.fail(key, f"an option of algorithm {self.name!r} (options: {sorted(names) or 'none'})", value)
        options = dataclasses.replace(self.options, **values)
        self.check_options(options)
        return options


PERSONAL = "personal."  # client-state prefix of the personal copies


def personal_copies(client_state: Params) -> Params:
    """``{name: (N, ...)}`` of the client state's personal copies (``"personal." + name``)."""
    return {k[len(PERSONAL):]: v for k, v in client_state.items() if k.startswith(PERSONAL)}


def expand(params: Params, K: int) -> Params:
    """``params`` repeated along a new leading client axis of size K (fresh storage)."""
    return {k: v.unsqueeze(0).repeat(K, *[1] * v.dim()) for k, v in params.items()}


def weighted_sum(stacked: Params, w: torch.Tensor) -> Params:
    """``sum_k w_k t_k`` for every stacked tensor ``t`` (K, ...)."""
    return {k: torch.tensordot(w.to(v.dtype), v, dims=1) for k, v in stacked.items()}


def sgd_step(params: Params, update: Params, lr: float) -> Params:
    return {k: params[k] - lr * update[k] for k in params}


def local_delta(batch: ClientRound, local: Params) -> Params:
    """``delta_i = x - y_i`` for every selected client."""
    return {k: batch.params[k].unsqueeze(0) - local[k] for k in local}





def flatten(params: Params) -> torch.Tensor:
    """One vector (D,) from a dict of tensors, in the dict's order (the trainable parameters')."""
    return torch.cat([v.reshape(-1) for v in params.values()])


def flatten_stacked(stacked: Params) -> torch.Tensor:
    """One (K, D) matrix from stacked tensors (K, ...), in the dict's order."""
    return torch.cat([v.reshape(v.shape[0], -1) for v in stacked.values()], dim=1)


def unflatten(vec: torch.Tensor, like: Params, stacked: bool = False) -> Params:
    """Inverse of :func:`flatten` (``stacked=True``: of :func:`flatten_stacked`) with ``like``'s
    names, shapes and dtypes."""
    out, i = {}, 0
    for k, v in like.items():
        n = v.numel()
        part = vec[..., i:i + n]
        out[k] = part.reshape(*vec.shape[:-1], *v.shape).to(v.dtype)
        i += n
    return out


def flat_full(params: Params, fill: float = 0.0) -> torch.Tensor:
    """A flat (D,) state vector over the trainable parameters, filled with ``fill``."""
    return torch.full_like(flatten(params), fill)


def mean_delta(srv: ServerRound) -> torch.Tensor:
    """``Delta = sum_i w_i delta_i`` over the round's clients, flat (D,)."""
    return flatten(weighted_sum(srv.delta, srv.weights))


def step_flat(srv: ServerRound, update: torch.Tensor) -> Params:
    """``x <- x - server_lr * update`` with ``update`` a flat vector."""
    return sgd_step(srv.params, unflatten(update, srv.params), srv.server_lr)
