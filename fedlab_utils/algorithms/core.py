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

from dataclasses import dataclass, field
from typing import Callable

import torch

from .._core import checks as chk

Params = dict  # name -> tensor


@dataclass(frozen=True)
class ClientRound:
    """What the K selected clients get in one round (stacked tensors have a leading K axis)."""

    params: Params            # global trainable parameters x (not stacked)
    state: Params             # per-client persistent state, stacked (K, ...)
    server_state: Params      # what the server broadcasts besides x
    steps: torch.Tensor       # (K,) local steps tau_i
    lr_sum: torch.Tensor      # (K,) sum of the client learning rates over each client's steps
    options: dict
    train: Callable           # train(shift=None, pull=0.0, start=None) -> stacked local params


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
    aggregation ``weights`` (K,) of the sampling scheme and the population weights ``p`` (K,)."""

    params: Params
    server_state: Params
    delta: Params
    upload: Params
    weights: torch.Tensor
    p: torch.Tensor
    steps: torch.Tensor
    server_lr: float
    options: dict
    num_clients: int


@dataclass(frozen=True)
class Algorithm:
    """A federated algorithm: ``init_server(params, options) -> server_state``,
    ``init_client(params, options) -> state of ONE client`` (the engine stacks it for all clients),
    ``client_update(ClientRound) -> ClientResult``, ``server_update(ServerRound) -> (params, server_state)``.

    ``options`` holds the default of every option the algorithm accepts (unknown names are
    errors); ``broadcast`` names the server-state entries sent to clients (counted in bytes_down).
    """

    name: str
    client_update: Callable
    server_update: Callable
    init_server: Callable = lambda params, options: {}
    init_client: Callable = lambda params, options: {}
    options: dict = field(default_factory=dict)
    broadcast: tuple = ()
    default_server_lr: float = 1.0
    label: str = ""
    check_options: Callable = lambda options: None


def weighted_sum(stacked: Params, w: torch.Tensor) -> Params:
    """``sum_k w_k t_k`` for every stacked tensor ``t`` (K, ...)."""
    return {k: torch.tensordot(w.to(v.dtype), v, dims=1) for k, v in stacked.items()}


def sgd_step(params: Params, update: Params, lr: float) -> Params:
    return {k: params[k] - lr * update[k] for k in params}


def local_delta(batch: ClientRound, local: Params) -> Params:
    """``delta_i = x - y_i`` for every selected client."""
    return {k: batch.params[k].unsqueeze(0) - local[k] for k in local}


# ---------------------------------------------------------------------------------- FedAvg

def _fedavg_client(batch: ClientRound) -> ClientResult:
    return ClientResult(local_delta(batch, batch.train()))


def _average_server(srv: ServerRound):
    return sgd_step(srv.params, weighted_sum(srv.delta, srv.weights), srv.server_lr), srv.server_state


def fedavg() -> Algorithm:
    """FedAvg (McMahan et al. 2017, AISTATS, Algorithm 1): local SGD, then
    ``x <- x - server_lr * sum_i w_i delta_i`` with the sampling scheme's weights w_i."""
    return Algorithm("fedavg", _fedavg_client, _average_server, label="FedAvg")


# ---------------------------------------------------------------------------------- helpers

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


def _flat_full(params: Params, fill: float = 0.0) -> torch.Tensor:
    """A flat (D,) state vector over the trainable parameters, filled with ``fill``."""
    return torch.full_like(flatten(params), fill)


def _check_unit(options: dict, *names: str) -> None:
    for name in names:
        chk.real(name, options[name], low=0, high=1, high_open=True)


def _check_positive(options: dict, *names: str) -> None:
    for name in names:
        chk.real(name, options[name], low=0, low_open=True)


def _mean_delta(srv: ServerRound) -> torch.Tensor:
    """``Delta = sum_i w_i delta_i`` over the round's clients, flat (D,)."""
    return flatten(weighted_sum(srv.delta, srv.weights))


def _step_flat(srv: ServerRound, update: torch.Tensor) -> Params:
    """``x <- x - server_lr * update`` with ``update`` a flat vector."""
    return sgd_step(srv.params, unflatten(update, srv.params), srv.server_lr)


# ---------------------------------------------------------------------------------- FedProx

def _fedprox_client(batch: ClientRound) -> ClientResult:
    return ClientResult(local_delta(batch, batch.train(pull=batch.options["mu"])))


def fedprox() -> Algorithm:
    """FedProx (Li et al. 2020, MLSys, Algorithm 2): each client runs its local steps on

        h_i(w) = F_i(w) + mu/2 ||w - x||^2,

    then ``x <- x - server_lr * sum_i w_i delta_i`` as in FedAvg. Option ``mu >= 0`` (default
    0.01); ``mu = 0`` is FedAvg."""
    return Algorithm("fedprox", _fedprox_client, _average_server, options={"mu": 0.01}, label="FedProx",
                     check_options=lambda o: chk.real("mu", o["mu"], low=0))


# ---------------------------------------------------------------------------------- SCAFFOLD

def _scaffold_client(batch: ClientRound) -> ClientResult:
    c, ci = batch.server_state["c"], batch.state["c"]
    local = batch.train(shift=unflatten(c.unsqueeze(0) - ci, batch.params, stacked=True))
    delta = local_delta(batch, local)
    ci_new = ci - c + flatten_stacked(delta) / batch.lr_sum.to(ci.dtype).unsqueeze(1)
    return ClientResult(delta, state={"c": ci_new}, upload={"dc": ci_new - ci})


def _scaffold_server(srv: ServerRound):
    c = srv.server_state["c"] + srv.p.to(srv.upload["dc"].dtype) @ srv.upload["dc"]
    return _average_server(srv)[0], {"c": c}


def scaffold() -> Algorithm:
    """SCAFFOLD (Karimireddy et al. 2020, ICML, Algorithm 1, option II control variates).

    Client i starts at y_i = x and takes its local steps with the corrected gradient
    ``g_i(y) - c_i + c`` (``train(shift=c - c_i)``), then

        c_i+ = c_i - c + (x - y_i) / (sum_t eta_t),     delta_i = x - y_i,

    (``sum_t eta_t = K_i * eta`` for a constant rate; ``lr_sum`` makes schedules work). Server:

        x <- x - server_lr * sum_{i in S} w_i delta_i,    c <- c + sum_{i in S} p_i (c_i+ - c_i),

    with the population weights p_i (uniform p, full or uniform participation: the paper's
    ``|S|/N * mean``), so ``c = sum_i p_i c_i`` holds under partial participation. ``c`` travels
    down (bytes_down) and ``c_i+ - c_i`` up (bytes_up). State is kept flat over the trainable
    parameters: server ``c`` (D,), clients ``c`` (N, D) in ``History.client_state``."""
    return Algorithm("scaffold", _scaffold_client, _scaffold_server, label="SCAFFOLD",
                     init_server=lambda params, options: {"c": _flat_full(params)},
                     init_client=lambda params, options: {"c": _flat_full(params)},
                     broadcast=("c",))


# ---------------------------------------------------------------------------------- FedNova

def _fednova_client(batch: ClientRound) -> ClientResult:
    return ClientResult(local_delta(batch, batch.train()), upload={"lr_sum": batch.lr_sum})


def _fednova_server(srv: ServerRound):
    a = srv.upload["lr_sum"].to(srv.weights.dtype)
    tau_eff = (srv.weights * a).sum()
    d = weighted_sum(srv.delta, srv.weights / a)
    return sgd_step(srv.params, d, srv.server_lr * float(tau_eff)), srv.server_state


def fednova() -> Algorithm:
    """FedNova (Wang et al. 2020, NeurIPS, "Tackling the Objective Inconsistency Problem in
    Heterogeneous Federated Optimization", Section 4, vanilla local SGD: a_i = (1, ..., 1), ||a_i||_1 = tau_i).

    With a constant rate eta: normalised updates ``d_i = delta_i / tau_i`` and

        x <- x - server_lr * tau_eff * sum_i w_i d_i,      tau_eff = sum_i w_i tau_i.

    With a learning-rate schedule the local update is ``delta_i = sum_t eta_t g_i,t``, i.e. the
    general FedNova form with a_i = (eta_0, ..., eta_{tau_i - 1}) / eta; we normalise by
    ``||eta a_i||_1 = sum_t eta_t`` (``lr_sum``): ``d_i = delta_i / sum_t eta_t`` and
    ``x <- x - server_lr * (sum_i w_i sum_t eta_t) * sum_i w_i d_i``, identical to the rule
    above for a constant rate. Each client uploads its scalar ``sum_t eta_t`` (counted in bytes_up)."""
    return Algorithm("fednova", _fednova_client, _fednova_server, label="FedNova")


# ---------------------------------------------------------------------------------- FedDyn

def _feddyn_client(batch: ClientRound) -> ClientResult:
    alpha, g = batch.options["alpha"], batch.state["g"]
    local = batch.train(shift=unflatten(-g, batch.params, stacked=True), pull=alpha)
    delta = local_delta(batch, local)
    return ClientResult(delta, state={"g": g + alpha * flatten_stacked(delta)})


def _feddyn_server(srv: ServerRound):
    alpha = srv.options["alpha"]
    d = flatten_stacked(srv.delta)
    h = srv.server_state["h"] + alpha * (srv.p.to(d.dtype) @ d)
    return _step_flat(srv, srv.weights.to(d.dtype) @ d + h / alpha), {"h": h}


def feddyn() -> Algorithm:
    """FedDyn (Acar et al. 2021, ICLR, Algorithm 1). Client i (state g_i, initially 0) runs its
    local steps from x on

        F_i(w) - <g_i, w> + alpha/2 ||w - x||^2       (``train(shift=-g_i, pull=alpha)``),

    then ``g_i <- g_i - alpha (y_i - x)``. Server, with population weights p_i and the sampling
    scheme's weights w_i:

        h <- h - alpha * sum_{i in S} p_i (y_i - x),
        x <- x - server_lr * (sum_{i in S} w_i delta_i + h / alpha)

    which for ``server_lr = 1`` (and weights summing to 1) is ``x = sum_i w_i y_i - h / alpha``: with
    uniform p_i = 1/m and uniform sampling exactly the paper's ``h <- h - alpha/m sum_k (theta_k -
    theta)``, ``theta <- mean_k theta_k - h / alpha``. ``h = sum_i p_i g_i`` holds under partial
    participation. Option ``alpha > 0`` (default 0.01)."""
    return Algorithm("feddyn", _feddyn_client, _feddyn_server, label="FedDyn", options={"alpha": 0.01},
                     init_server=lambda params, options: {"h": _flat_full(params)},
                     init_client=lambda params, options: {"g": _flat_full(params)},
                     check_options=lambda o: _check_positive(o, "alpha"))


# ---------------------------------------------------------------------------------- server optimisers

def _fedavgm_server(srv: ServerRound):
    m = srv.options["server_momentum"] * srv.server_state["m"] + _mean_delta(srv)
    return _step_flat(srv, m), {"m": m}


def fedavgm() -> Algorithm:
    """FedAvgM (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution"):
    server momentum on the pseudo-gradient Delta = sum_i w_i delta_i,

        m <- beta m + Delta,     x <- x - server_lr * m,

    with ``server_momentum`` beta in [0, 1) (default 0.9; 0 is FedAvg), m starting at 0."""
    return Algorithm("fedavgm", _fedavg_client, _fedavgm_server, label="FedAvgM",
                     options={"server_momentum": 0.9},
                     init_server=lambda params, options: {"m": _flat_full(params)},
                     check_options=lambda o: _check_unit(o, "server_momentum"))


def _adaptive_server(second_moment: Callable):
    """Reddi et al.'s server step, with ``second_moment(v, Delta^2, beta2) -> v``."""
    def server(srv: ServerRound):
        o = srv.options
        D = _mean_delta(srv)
        m = o["beta1"] * srv.server_state["m"] + (1 - o["beta1"]) * D
        v = second_moment(srv.server_state["v"], D * D, o["beta2"])
        return _step_flat(srv, m / (v.sqrt() + o["tau"])), {"m": m, "v": v}
    return server


def _check_adaptive(o: dict) -> None:
    _check_unit(o, "beta1", "beta2")
    _check_positive(o, "tau")


def _adaptive(name: str, label: str, second_moment: Callable) -> Algorithm:
    return Algorithm(name, _fedavg_client, _adaptive_server(second_moment), label=label, default_server_lr=1e-2,
                     options={"beta1": 0.9, "beta2": 0.99, "tau": 1e-3}, check_options=_check_adaptive,
                     init_server=lambda params, options: {"m": _flat_full(params),
                                                          "v": _flat_full(params, options["tau"] ** 2)})


# Reddi et al. 2021 (ICLR), "Adaptive Federated Optimization", Algorithm 2, in our sign
# (delta_i = x - y_i; the paper's x + eta m / (sqrt(v) + tau) with Delta = local - global is the
# same rule). Delta = sum_i w_i delta_i after FedAvg's local SGD; m starts at 0, v at tau^2; no
# bias correction. Options beta1, beta2 in [0, 1) (0.9, 0.99), tau > 0 (1e-3); server_lr 1e-2.

def fedadam() -> Algorithm:
    """FedAdam (Reddi et al. 2021, ICLR, Algorithm 2):

        m <- beta1 m + (1 - beta1) Delta,   v <- beta2 v + (1 - beta2) Delta^2,
        x <- x - server_lr * m / (sqrt(v) + tau),

    Delta = sum_i w_i delta_i, m_0 = 0, v_0 = tau^2, no bias correction. Options ``beta1``,
    ``beta2`` in [0, 1) (0.9, 0.99), ``tau > 0`` (1e-3); default ``server_lr`` 1e-2."""
    return _adaptive("fedadam", "FedAdam", lambda v, D2, b2: b2 * v + (1 - b2) * D2)


def fedyogi() -> Algorithm:
    """FedYogi (Reddi et al. 2021, ICLR, Algorithm 2): as FedAdam but

        v <- v - (1 - beta2) Delta^2 sign(v - Delta^2)."""
    return _adaptive("fedyogi", "FedYogi", lambda v, D2, b2: v - (1 - b2) * D2 * torch.sign(v - D2))


def fedadagrad() -> Algorithm:
    """FedAdagrad (Reddi et al. 2021, ICLR, Algorithm 2): as FedAdam but

        v <- v + Delta^2

    (``beta2`` is accepted, as one of the algorithm's inputs in the paper, and unused)."""
    return _adaptive("fedadagrad", "FedAdagrad", lambda v, D2, b2: v + D2)


REGISTRY: dict[str, Callable[[], Algorithm]] = {
    "fedavg": fedavg, "fedprox": fedprox, "scaffold": scaffold, "fednova": fednova, "feddyn": feddyn,
    "fedavgm": fedavgm, "fedadam": fedadam, "fedyogi": fedyogi, "fedadagrad": fedadagrad,
}


def get(algorithm) -> Algorithm:
    """An :class:`Algorithm` from a name in :data:`REGISTRY` or an Algorithm itself."""
    if isinstance(algorithm, Algorithm):
        return algorithm
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be a name or an flu.algorithms.Algorithm, got {type(algorithm).__name__}")
    chk.option("algorithm", algorithm, REGISTRY)
    return REGISTRY[algorithm]()
