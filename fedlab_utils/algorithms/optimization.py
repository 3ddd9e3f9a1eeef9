"""Optimisation algorithms with local SGD: FedAvg, FedProx, SCAFFOLD, FedNova, FedDyn."""
from __future__ import annotations

from dataclasses import dataclass

from .base import (Algorithm, ClientResult, ClientRound, Options, ServerRound, flat_full, flatten, flatten_stacked,
                   local_delta, non_negative, positive, sgd_step, step_flat, unflatten, weighted_sum)


# ---------------------------------------------------------------------------------- FedAvg

def _fedavg_client(batch: ClientRound) -> ClientResult:
    return ClientResult(local_delta(batch, batch.train()))


def _average_server(srv: ServerRound):
    return sgd_step(srv.params, weighted_sum(srv.delta, srv.weights), srv.server_lr), srv.server_state


def fedavg() -> Algorithm:
    """FedAvg (McMahan et al. 2017, AISTATS, Algorithm 1): local SGD, then
    ``x <- x - server_lr * sum_i w_i delta_i`` with the sampling scheme's weights w_i."""
    return Algorithm("fedavg", _fedavg_client, _average_server)


# ---------------------------------------------------------------------------------- FedProx

@dataclass(frozen=True)
class FedProxOptions(Options):
    """``mu >= 0``: weight of the proximal term mu/2 ||w - x||^2 (0 is FedAvg)."""

    mu: float = 0.01

    def __post_init__(self):
        non_negative("mu", self.mu)


def _fedprox_client(batch: ClientRound) -> ClientResult:
    return ClientResult(local_delta(batch, batch.train(pull=batch.options.mu)))


def fedprox() -> Algorithm:
    """FedProx (Li et al. 2020, MLSys, Algorithm 2): each client runs its local steps on

        h_i(w) = F_i(w) + mu/2 ||w - x||^2,

    then ``x <- x - server_lr * sum_i w_i delta_i`` as in FedAvg. Option ``mu >= 0`` (default
    0.01); ``mu = 0`` is FedAvg."""
    return Algorithm("fedprox", _fedprox_client, _average_server, options=FedProxOptions())


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
    return Algorithm("scaffold", _scaffold_client, _scaffold_server,
                     init_server=lambda params, options: {"c": flat_full(params)},
                     init_client=lambda params, options: {"c": flat_full(params)},
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
    return Algorithm("fednova", _fednova_client, _fednova_server)


# ---------------------------------------------------------------------------------- FedDyn

@dataclass(frozen=True)
class FedDynOptions(Options):
    """``alpha > 0``: weight of FedDyn's dynamic regulariser."""

    alpha: float = 0.01

    def __post_init__(self):
        positive("alpha", self.alpha)


def _feddyn_client(batch: ClientRound) -> ClientResult:
    alpha, g = batch.options.alpha, batch.state["g"]
    local = batch.train(shift=unflatten(-g, batch.params, stacked=True), pull=alpha)
    delta = local_delta(batch, local)
    return ClientResult(delta, state={"g": g + alpha * flatten_stacked(delta)})


def _feddyn_server(srv: ServerRound):
    alpha = srv.options.alpha
    d = flatten_stacked(srv.delta)
    h = srv.server_state["h"] + alpha * (srv.p.to(d.dtype) @ d)
    return step_flat(srv, srv.weights.to(d.dtype) @ d + h / alpha), {"h": h}


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
    return Algorithm("feddyn", _feddyn_client, _feddyn_server, options=FedDynOptions(),
                     init_server=lambda params, options: {"h": flat_full(params)},
                     init_client=lambda params, options: {"g": flat_full(params)})
