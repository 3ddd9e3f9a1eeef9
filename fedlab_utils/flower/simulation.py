"""``engine="simulation"``: Flower's simulation engine (``flwr.simulation.run_simulation``).

The ServerApp runs in a thread of this process; ``supernodes`` virtual SuperNodes run the
ClientApp in Ray actors (one CPU each, as many actors as cores), each loading the run's spec
file once. Ray starts with the call and stops when it returns (Flower's backend shuts it down).
"""
from __future__ import annotations

import contextlib
import logging
import os

from .apps import Hooks, client_app, server_app
from .spec import Handle

OBJECT_STORE_BYTES = 100 << 20   # Ray's shared-memory store: messages here are small


@contextlib.contextmanager
def quiet(level=logging.WARNING):
    """Flower's INFO log lines (and its deprecation notices) hidden for the block."""
    logger = logging.getLogger("flwr")
    before = logger.level
    logger.setLevel(max(level, before))
    try:
        yield
    finally:
        logger.setLevel(before)


def backend_config(num_cpus: int | None = None) -> dict:
    cpus = num_cpus or os.cpu_count() or 1
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "num_gpus": 0, "object_store_memory": OBJECT_STORE_BYTES,
                          "include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}}


def run(spec):
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")   # no GPUs asked for: keep Ray's notice quiet
    from flwr.simulation import run_simulation
    handle = Handle(spec)
    result = {}
    server = server_app(handle, Hooks(), result)
    with quiet(logging.ERROR):
        try:
            run_simulation(server_app=server, client_app=client_app(handle), num_supernodes=spec.supernodes,
                           backend_config=backend_config())
        except Exception:
            if "error" in result:   # the ServerApp's own error, not Flower's wrapper of it
                raise result["error"] from None
            raise
    if "error" in result:
        raise result["error"]
    return result["history"]
