"""Federated algorithms as records of pure functions (client rule, server rule) and their builders."""
from . import schedules
from .core import (REGISTRY, Algorithm, ClientResult, ClientRound, ServerRound, fedadagrad, fedadam, fedavg,
                   fedavgm, feddyn, fednova, fedprox, fedyogi, flatten, flatten_stacked, get, local_delta, scaffold,
                   sgd_step, unflatten, weighted_sum)

__all__ = ["REGISTRY", "Algorithm", "ClientResult", "ClientRound", "ServerRound", "fedadagrad", "fedadam", "fedavg",
           "fedavgm", "feddyn", "fednova", "fedprox", "fedyogi", "flatten", "flatten_stacked", "get", "local_delta",
           "scaffold", "schedules", "sgd_step", "unflatten", "weighted_sum"]
