"""``flu.flower.run``: ``flu.run``'s experiment executed by Flower (ServerApp + ClientApp)."""
from __future__ import annotations

import os
import shutil
import tempfile

from .spec import ENGINES, FLWR_PIN, build, forget, write


def require_flower(engine: str = "inprocess") -> None:
    """Flower (and Ray for the simulation engine) importable, or ModuleNotFoundError saying what to install."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")   # read by flwr at import: no usage events from the bridge
    try:
        import flwr  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError(f"flu.flower needs Flower: pip install \"{FLWR_PIN}\" ({err})",
                                  name="flwr") from None
    if engine == "simulation":
        try:
            import ray  # noqa: F401
        except ImportError as err:
            raise ModuleNotFoundError(f"engine='simulation' needs Ray, Flower's simulation extra: pip install "
                                      f"\"{FLWR_PIN}\" ({err})", name="ray") from None


def run(model, federation, algorithm="fedavg", num_rounds=50, local_steps=5, client_lr=0.05, batch_size=16,
        server_lr=None, clients_per_round=None, sampling="uniform", weights="samples", loss="cross_entropy", l2=0.0,
        finetune="full", systems=None, privacy=None, compression=None, eval_every=1, backend="vectorized",
        record_params=False, diagnostics=False, progress=True, seed=0, checkpoint=None, checkpoint_every=1,
        resume=None, *, engine="simulation", supernodes=2, min_supernodes=None, round_timeout=120.0,
        connect_timeout=60.0, faults=None, port=None, **options):
    """Train ``model`` on ``federation`` as ``flu.run`` does, with Flower carrying every round.

    The arguments up to ``resume`` are ``flu.run``'s (see its docstring), for the optimisation
    algorithms (fedavg, fedprox, scaffold, fednova, feddyn, fedavgm, fedadam, fedyogi,
    fedadagrad); ``systems``, ``privacy``, ``compression``, ``diagnostics``, ``checkpoint``,
    ``checkpoint_every`` and ``resume`` must keep their defaults. One ServerApp selects the
    clients, broadcasts x, aggregates and applies the algorithm's server rule; ``supernodes``
    SuperNodes run one ClientApp each, which trains the selected clients it hosts (client i on
    SuperNode ``i % supernodes``) with the algorithm's client rule and keeps their state (SCAFFOLD's
    c_i, FedDyn's g_i) in its ``Context.state``. A deterministic algorithm and seed give the
    final parameters of ``flu.run`` to rounding.

    Args:
        engine: "simulation" (Flower's simulation engine, Ray actors; ``flwr.simulation.run_simulation``),
            "deployment" (a SuperLink and ``supernodes`` SuperNodes started on 127.0.0.1 as
            processes, the app submitted with ``flwr run``; all stopped afterwards, also on error)
            or "inprocess" (the same ServerApp and ClientApp driven in this process: no Ray,
            no network; what FAST notebooks use).
        supernodes: number of SuperNodes S, in [1, number of clients].
        min_supernodes: SuperNodes that must reply in a round (and be connected at the start);
            None for all of them. A round with fewer raises RuntimeError naming the missing ones
            (``err.history`` holds the completed rounds); with at least this many, the clients of
            the missing ones drop out of the round and the others' weights are renormalised.
        round_timeout: seconds a round waits for the SuperNodes' replies.
        connect_timeout: seconds to wait for all SuperNodes to connect; the ones missing then are
            named (TimeoutError below ``min_supernodes``, else a warning and the run goes on).
        faults: fault injection for "inprocess" and "deployment": ``{"supernode-1": 2}`` kills
            SuperNode 1 after round 2 (its process, with "deployment"), ``{"supernode-1": "offline"}``
            starts it unable to reach the SuperLink.
        port: the SuperLink's port with "deployment" (None: a free one).
        **options: the algorithm's options, as in ``flu.run``.

    Returns:
        A ``History`` with ``flu.run``'s tables; ``rounds`` adds ``supernodes_sent``,
        ``supernodes_replied``, ``participants`` (the clients whose update was aggregated) and
        ``supernodes_missing`` (names); ``config`` adds the Flower settings.

    Raises:
        ModuleNotFoundError naming the package to install when Flower (or Ray) is missing;
        ValueError / TypeError naming the argument for bad or unsupported arguments (before
        anything starts); TimeoutError / RuntimeError naming the SuperNodes that did not connect
        or reply; FloatingPointError when training diverges.
    """
    spec = build(model, federation, engine=engine, supernodes=supernodes, min_supernodes=min_supernodes,
                 round_timeout=round_timeout, connect_timeout=connect_timeout, faults=faults, options=options,
                 algorithm=algorithm, num_rounds=num_rounds, local_steps=local_steps, client_lr=client_lr,
                 batch_size=batch_size, server_lr=server_lr, clients_per_round=clients_per_round, sampling=sampling,
                 weights=weights, loss=loss, l2=l2, finetune=finetune, systems=systems, privacy=privacy,
                 compression=compression, eval_every=eval_every, backend=backend, record_params=record_params,
                 diagnostics=diagnostics, progress=progress, seed=seed, checkpoint=checkpoint,
                 checkpoint_every=checkpoint_every, resume=resume)
    if port is not None and engine != "deployment":
        from .._core import checks as chk
        chk.fail("port", "None unless engine='deployment'", port)
    require_flower(engine)
    if engine == "inprocess":
        from . import inprocess
        return inprocess.run(spec)
    work = tempfile.mkdtemp(prefix="flu-flower-")
    try:
        write(spec, os.path.join(work, "spec.pkl"))
        if engine == "simulation":
            from . import simulation
            return simulation.run(spec)
        from . import deployment
        return deployment.run(spec, work, port)
    finally:
        forget(spec)
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["ENGINES", "require_flower", "run"]
