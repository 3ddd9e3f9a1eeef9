"""Federated algorithms as records of pure functions (client rule, server rule) and their builders.

``base`` holds the records that cross the client/server boundary (:class:`ClientRound`,
:class:`ClientResult`, :class:`ServerRound`), :class:`Algorithm` and the typed :class:`Options`;
``optimization`` the local-SGD algorithms, ``server_opt`` the server optimisers, ``meta`` the
meta-learning ones (Reptile, FedMeta-FOMAML, Per-FedAvg), ``personal`` the personalisation ones
(FedPer, FedRep, FedBABU, LG-FedAvg, Ditto, APFL), ``schedules`` the client learning-rate schedules.
"""
from typing import Callable

from .._core import checks as chk
from . import schedules
from .base import (PERSONAL, Algorithm, ClientResult, ClientRound, Options, ServerRound, flatten, flatten_stacked,
                   expand, local_delta, options_record, personal_copies, sgd_step, unflatten, weighted_sum)
from .optimization import FedDynOptions, FedProxOptions, fedavg, feddyn, fednova, fedprox, scaffold
from .server_opt import AdaptiveOptions, FedAvgMOptions, fedadagrad, fedadam, fedavgm, fedyogi
from .meta import FOMAMLOptions, PerFedAvgOptions, fomaml, perfedavg, reptile
from .personal import APFLOptions, DittoOptions, FedRepOptions, apfl, ditto, fedbabu, fedper, fedrep, lg_fedavg

REGISTRY: dict[str, Callable[[], Algorithm]] = {
    "fedavg": fedavg, "fedprox": fedprox, "scaffold": scaffold, "fednova": fednova, "feddyn": feddyn,
    "fedavgm": fedavgm, "fedadam": fedadam, "fedyogi": fedyogi, "fedadagrad": fedadagrad,
    "reptile": reptile, "fomaml": fomaml, "perfedavg": perfedavg,
    "fedper": fedper, "fedrep": fedrep, "fedbabu": fedbabu, "lg_fedavg": lg_fedavg, "ditto": ditto, "apfl": apfl,
}


def get(algorithm) -> Algorithm:
    """An :class:`Algorithm` from a name in :data:`REGISTRY` or an Algorithm itself."""
    if isinstance(algorithm, Algorithm):
        return algorithm
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be a name or an flu.algorithms.Algorithm, got {type(algorithm).__name__}")
    chk.option("algorithm", algorithm, REGISTRY)
    return REGISTRY[algorithm]()


__all__ = ["APFLOptions", "DittoOptions", "FOMAMLOptions", "FedRepOptions", "PerFedAvgOptions", "apfl", "ditto",
           "fedbabu", "fedper", "fedrep", "fomaml", "lg_fedavg", "perfedavg", "reptile",
           "REGISTRY", "AdaptiveOptions", "Algorithm", "ClientResult", "ClientRound", "FedAvgMOptions",
           "FedDynOptions", "FedProxOptions", "Options", "ServerRound", "fedadagrad", "fedadam", "fedavg", "fedavgm",
           "feddyn", "fednova", "fedprox", "fedyogi", "flatten", "flatten_stacked", "get", "local_delta",
           "options_record", "scaffold", "schedules", "sgd_step", "unflatten", "weighted_sum"]
