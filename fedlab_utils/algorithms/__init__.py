"""Federated algorithms as records of pure functions (client rule, server rule) and their builders.

``base`` holds the records that cross the client/server boundary (:class:`ClientRound`,
:class:`ClientResult`, :class:`ServerRound`), :class:`Algorithm` and the typed :class:`Options`;
``optimization`` the local-SGD algorithms, ``server_opt`` the server optimisers, ``schedules``
the client learning-rate schedules.
"""
from typing import Callable

from .._core import checks as chk
from . import schedules
from .base import (Algorithm, ClientResult, ClientRound, Options, ServerRound, flatten, flatten_stacked,
                   local_delta, options_record, sgd_step, unflatten, weighted_sum)
from .optimization import FedDynOptions, FedProxOptions, fedavg, feddyn, fednova, fedprox, scaffold
from .server_opt import AdaptiveOptions, FedAvgMOptions, fedadagrad, fedadam, fedavgm, fedyogi

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


__all__ = ["REGISTRY", "AdaptiveOptions", "Algorithm", "ClientResult", "ClientRound", "FedAvgMOptions",
           "FedDynOptions", "FedProxOptions", "Options", "ServerRound", "fedadagrad", "fedadam", "fedavg", "fedavgm",
           "feddyn", "fednova", "fedprox", "fedyogi", "flatten", "flatten_stacked", "get", "local_delta",
           "options_record", "scaffold", "schedules", "sgd_step", "unflatten", "weighted_sum"]
