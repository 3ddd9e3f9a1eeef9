"""Server optimisers on the pseudo-gradient: FedAvgM, FedAdam, FedYogi, FedAdagrad."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .base import Algorithm, Options, ServerRound, flat_full, mean_delta, positive, step_flat, unit
from .optimization import _fedavg_client


@dataclass(frozen=True)
class FedAvgMOptions(Options):
    """``server_momentum`` beta in [0, 1) (0 is FedAvg)."""

    server_momentum: float = 0.9

    def __post_init__(self):
        unit("server_momentum", self.server_momentum)


def _fedavgm_server(srv: ServerRound):
    m = srv.options.server_momentum * srv.server_state["m"] + mean_delta(srv)
    return step_flat(srv, m), {"m": m}


def fedavgm() -> Algorithm:
    """FedAvgM (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution"):
    server momentum on the pseudo-gradient Delta = sum_i w_i delta_i,

        m <- beta m + Delta,     x <- x - server_lr * m,

    with ``server_momentum`` beta in [0, 1) (default 0.9; 0 is FedAvg), m starting at 0."""
    return Algorithm("fedavgm", _fedavg_client, _fedavgm_server,
                     options=FedAvgMOptions(),
                     init_server=lambda params, options: {"m": flat_full(params)})


def _adaptive_server(second_moment: Callable):
    """Reddi et al.'s server step, with ``second_moment(v, Delta^2, beta2) -> v``."""
    def server(srv: ServerRound):
        o = srv.options
        D = mean_delta(srv)
        m = o.beta1 * srv.server_state["m"] + (1 - o.beta1) * D
        v = second_moment(srv.server_state["v"], D * D, o.beta2)
        return step_flat(srv, m / (v.sqrt() + o.tau)), {"m": m, "v": v}
    return server


@dataclass(frozen=True)
class AdaptiveOptions(Options):
    """Reddi et al.'s ``beta1``, ``beta2`` in [0, 1) and ``tau > 0`` (the adaptivity floor)."""

    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self):
        unit("beta1", self.beta1)
        unit("beta2", self.beta2)
        positive("tau", self.tau)


def _adaptive(name: str, second_moment: Callable) -> Algorithm:
    return Algorithm(name, _fedavg_client, _adaptive_server(second_moment), default_server_lr=1e-2,
                     options=AdaptiveOptions(),
                     init_server=lambda params, options: {"m": flat_full(params),
                                                          "v": flat_full(params, options.tau ** 2)})


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
    return _adaptive("fedadam", lambda v, D2, b2: b2 * v + (1 - b2) * D2)


def fedyogi() -> Algorithm:
    """FedYogi (Reddi et al. 2021, ICLR, Algorithm 2): as FedAdam but

        v <- v - (1 - beta2) Delta^2 sign(v - Delta^2)."""
    return _adaptive("fedyogi", lambda v, D2, b2: v - (1 - b2) * D2 * torch.sign(v - D2))


def fedadagrad() -> Algorithm:
    """FedAdagrad (Reddi et al. 2021, ICLR, Algorithm 2): as FedAdam but

        v <- v + Delta^2

    (``beta2`` is accepted, as one of the algorithm's inputs in the paper, and unused)."""
    return _adaptive("fedadagrad", lambda v, D2, b2: v + D2)
