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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from . import _checks as chk

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


REGISTRY: dict[str, Callable[[], Algorithm]] = {"fedavg": fedavg}


def get(algorithm) -> Algorithm:
    """An :class:`Algorithm` from a name in :data:`REGISTRY` or an Algorithm itself."""
    if isinstance(algorithm, Algorithm):
        return algorithm
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be a name or an flu.algorithms.Algorithm, got {type(algorithm).__name__}")
    chk.option("algorithm", algorithm, REGISTRY)
    return REGISTRY[algorithm]()
