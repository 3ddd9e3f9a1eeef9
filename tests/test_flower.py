"""flu.flower: flu.run's rounds on Flower, checked against flu.run and against rounds done by hand.

Without Flower installed these tests skip with the reason, except in CI (env CI set), where a
missing Flower is a failure. The simulation engine (Ray) runs once for the module; the
deployment test starts a SuperLink and two SuperNodes and kills one after round 1.
"""
import copy
import os
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fedlab_utils as flu

try:
    import flwr  # noqa: F401
    WHY = ""
except ImportError as err:   # pragma: no cover - depends on the environment
    WHY = f"Flower is not installed ({err}); pip install \"{flu.flower.FLWR_PIN}\""
    if os.environ.get("CI"):
        raise ImportError(f"CI must test the Flower bridge: {WHY}") from err
needs_flower = pytest.mark.skipif(bool(WHY), reason=WHY or "Flower installed")

TOL = 1e-6   # float32 parameters: flu.run sums the stacked clients in another order


@pytest.fixture(scope="module")
def fed():
    ds = flu.data.load_dataset("digits")
    part = flu.partition.dirichlet(ds.y, num_clients=6, alpha=0.5, seed=0)
    return flu.data.federate(ds.X, ds.y, part, test_fraction=0.2, seed=0, shape=ds.shape)


@pytest.fixture(scope="module")
def model():
    return flu.models.mlp(64, 16, 10, seed=0)


KW = dict(num_rounds=3, local_steps=3, client_lr=0.05, batch_size=16, clients_per_round=4, progress=False, seed=1)


def gap(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((((a[k] - b[k]).abs().max().item() if a[k].numel() else 0.0) for k in a), default=0.0)


def same_run(hist, ref, tol=TOL):
    """The bridged History against flu.run's: parameters, client and server state within ``tol``,
    every metric row, and flu.run's own rounds columns exactly."""
    assert gap(hist.params, ref.params) < tol
    assert gap(hist.client_state, ref.client_state) < 50 * tol if ref.client_state else not hist.client_state
    assert gap(hist.server_state["algorithm"], ref.server_state["algorithm"]) < 50 * tol
    cols = ["round", "client", "split", "model", "metric"]
    assert hist.metrics[cols].equals(ref.metrics[cols])
    assert (hist.metrics["value"] - ref.metrics["value"]).abs().max() < 1e-4
    assert hist.rounds[list(ref.rounds.columns)].equals(ref.rounds)
    assert list(hist.timing.columns) == list(ref.timing.columns)
    assert {k: v for k, v in hist.config.items() if k in ref.config} == ref.config


# ------------------------------------------------------------------ inprocess: equality, fast

@needs_flower
@pytest.mark.parametrize("algorithm", flu.flower.ALGORITHMS)
def test_inprocess_equals_flu_run(fed, model, algorithm):
    ref = flu.run(model, fed, algorithm, **KW)
    hist = flu.flower.run(model, fed, algorithm, engine="inprocess", supernodes=3, **KW)
    same_run(hist, ref)
    assert hist.config["engine"] == "inprocess" and hist.config["supernodes"] == 3
    assert (hist.rounds["supernodes_replied"] == 3).all() and (hist.rounds["supernodes_sent"] == 3).all()
    for row in hist.rounds.itertuples():   # every selected client took part, each once
        assert len(row.participants) == row.clients_selected == 4 == len(set(row.participants))
        assert row.supernodes_missing == []
    assert isinstance(hist.model, torch.nn.Module) and gap(dict(hist.model.named_parameters()), hist.params) == 0


@needs_flower
def test_inprocess_options_schedule_and_one_supernode_per_client(fed, model):
    schedule = lambda rnd, step: 0.1 / rnd   # noqa: E731 - a schedule travels with the spec
    kw = dict(KW, clients_per_round=None, client_lr=schedule, local_steps=[1, 2, 3, 1, 2, 3])
    ref = flu.run(model, fed, "fedprox", mu=0.5, **kw)
    hist = flu.flower.run(model, fed, "fedprox", mu=0.5, engine="inprocess", supernodes=6, **kw)
    same_run(hist, ref)
    assert hist.config["mu"] == 0.5
    assert all(sorted(p) == list(range(6)) for p in hist.rounds["participants"])


# ------------------------------------------------------------------ faults, by hand

def logistic_setting():
    ds = flu.data.load_dataset("digits")
    part = flu.partition.dirichlet(ds.y, num_clients=4, alpha=0.5, seed=2)
    fed = flu.data.federate(ds.X, ds.y, part, test_fraction=0.2, seed=2, shape=ds.shape)
    model = flu.models.logistic(64, 10, dtype=torch.float64)
    kw = dict(num_rounds=2, local_steps=3, client_lr=0.1, batch_size=None, record_params=True, progress=False, seed=0)
    return fed, model, kw


def fedavg_round_by_hand(params, fed, clients, steps, lr):
    """One FedAvg round in plain PyTorch: full-batch GD on each client, deltas averaged with
    n_i / sum of the clients' n."""
    n = torch.tensor([len(fed.train[i][1]) for i in clients], dtype=torch.float64)
    deltas = []
    for i in clients:
        X, y = fed.train[i]
        local = {k: v.clone() for k, v in params.items()}
        for _ in range(steps):
            leaves = {k: v.requires_grad_() for k, v in local.items()}
            loss = F.cross_entropy(X.double() @ leaves["head.weight"].T + leaves["head.bias"], y)
            grads = torch.autograd.grad(loss, list(leaves.values()))
            local = {k: (v - lr * g).detach() for (k, v), g in zip(leaves.items(), grads)}
        deltas.append({k: params[k] - local[k] for k in params})
    w = n / n.sum()
    return {k: params[k] - sum(wi * d[k] for wi, d in zip(w, deltas)) for k in params}


def check_killed_after_round_one(hist, ref, fed, kw):
    """Round 1 as flu.run; round 2 without SuperNode 1's clients (1 and 3), by hand."""
    assert gap(hist.trajectory[1], ref.trajectory[1]) < 1e-12
    by_hand = fedavg_round_by_hand(hist.trajectory[1], fed, [0, 2], kw["local_steps"], kw["client_lr"])
    assert gap(hist.trajectory[2], by_hand) < 1e-12
    assert gap(hist.params, ref.params) > 1e-6   # the failure did change the result
    r = hist.rounds.set_index("round")
    assert r.loc[1, "participants"] == [0, 1, 2, 3] and r.loc[1, "supernodes_missing"] == []
    assert r.loc[2, "participants"] == [0, 2] and r.loc[2, "supernodes_missing"] == ["supernode-1"]
    assert list(r["clients_selected"]) == [4, 4] and list(r["clients_completed"]) == [4, 2]
    assert list(r["supernodes_replied"]) == [2, 1]


@needs_flower
def test_inprocess_supernode_killed_mid_run():
    fed, model, kw = logistic_setting()
    ref = flu.run(model, fed, "fedavg", **kw)
    hist = flu.flower.run(model, fed, "fedavg", engine="inprocess", supernodes=2, min_supernodes=1,
                          faults={"supernode-1": 1}, **kw)
    check_killed_after_round_one(hist, ref, fed, kw)


@needs_flower
def test_too_few_supernodes_in_a_round_is_an_error_with_the_completed_rounds():
    fed, model, kw = logistic_setting()
    with pytest.raises(RuntimeError, match=r"round 2: 1 of 2 SuperNodes.*min_supernodes=2.*supernode-1") as info:
        flu.flower.run(model, fed, "fedavg", engine="inprocess", supernodes=2, faults={"supernode-1": 1}, **kw)
    assert list(info.value.history.rounds["round"]) == [1]


@needs_flower
def test_supernode_that_never_connects_is_named_not_waited_on():
    fed, model, kw = logistic_setting()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"\['supernode-1'\] did not connect within connect_timeout=0.5 s"):
        flu.flower.run(model, fed, "fedavg", engine="inprocess", supernodes=2, connect_timeout=0.5,
                       faults={"supernode-1": "offline"}, **kw)
    assert time.monotonic() - t0 < 30
    with pytest.warns(UserWarning, match="supernode-1.*goes on without them"):
        hist = flu.flower.run(model, fed, "fedavg", engine="inprocess", supernodes=2, min_supernodes=1,
                              connect_timeout=0.5, faults={"supernode-1": "offline"}, **kw)
    assert all(p == [0, 2] for p in hist.rounds["participants"])
    assert gap(hist.trajectory[1], fedavg_round_by_hand(hist.trajectory[0], fed, [0, 2], 3, 0.1)) < 1e-12


# ------------------------------------------------------------------ bad input: clear errors, nothing started

@pytest.mark.parametrize("kwargs, name", [
    (dict(supernodes=7), "supernodes"),
    (dict(supernodes=0), "supernodes"),
    (dict(min_supernodes=3), "min_supernodes"),
    (dict(algorithm="ditto"), "algorithm"),
    (dict(algorithm="reptile"), "algorithm"),
    (dict(engine="cloud"), "engine"),
    (dict(systems=object()), "systems"),
    (dict(privacy=object()), "privacy"),
    (dict(diagnostics=True), "diagnostics"),
    (dict(checkpoint="run.pt"), "checkpoint"),
    (dict(finetune=["full"] * 6), "finetune"),
    (dict(faults={"supernode-9": 1}), "faults"),
    (dict(faults={"supernode-1": 3}), "faults"),
    (dict(engine="simulation", faults={"supernode-1": 1}), "faults"),
    (dict(engine="inprocess", port=9092), "port"),
    (dict(round_timeout=0), "round_timeout"),
    (dict(mu=0.1), "mu"),
])
def test_bad_arguments_name_the_argument(fed, model, kwargs, name):
    args = dict(engine="inprocess", supernodes=2, num_rounds=3, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        flu.flower.run(model, fed, **args)


def test_missing_flower_says_what_to_install(fed, model, monkeypatch):
    monkeypatch.setitem(sys.modules, "flwr", None)   # `import flwr` now raises ImportError
    with pytest.raises(ModuleNotFoundError, match=r"pip install \"flwr\[simulation\]==1\.42\.0\""):
        flu.flower.run(model, fed, engine="inprocess", num_rounds=1, progress=False)


@needs_flower
def test_deployment_port_in_use_is_refused_before_anything_starts(fed, model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        before = _flower_processes()
        with pytest.raises(ValueError, match=rf"^port must be a free TCP port on 127.0.0.1, got {port} \(in use"):
            flu.flower.run(model, fed, engine="deployment", port=port, num_rounds=1, progress=False)
    assert _flower_processes() == before


def _flower_processes() -> set:
    """Live processes of this user running Flower's launchers (SuperLink, SuperNode, SuperExec, apps)."""
    psutil = pytest.importorskip("psutil")
    found = set()
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(
                    "flower-super" in part or "flwr-" in part for part in (p.info["cmdline"] or [])):
                found.add(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


# ------------------------------------------------------------------ the simulation engine (Ray), once

@pytest.fixture(scope="module")
def simulated(fed, model):
    if WHY:
        pytest.skip(WHY)
    pytest.importorskip("ray", reason=f"Ray is not installed: pip install \"{flu.flower.FLWR_PIN}\"")
    t0 = time.perf_counter()
    hist = flu.flower.run(model, fed, "scaffold", engine="simulation", supernodes=3, **KW)
    return hist, time.perf_counter() - t0


@pytest.mark.slow   # Ray or real processes: run serially, beside the notebooks
@needs_flower
def test_simulation_engine_equals_flu_run(simulated, fed, model):
    hist, _ = simulated
    same_run(hist, flu.run(model, fed, "scaffold", **KW))
    assert hist.config["engine"] == "simulation"
    assert (hist.rounds["supernodes_replied"] == 3).all()


@pytest.mark.slow   # Ray or real processes: run serially, beside the notebooks
@needs_flower
def test_simulation_engine_stops_ray(simulated):
    import ray
    assert not ray.is_initialized()


# ------------------------------------------------------------------ the deployment engine, one SuperNode killed

@pytest.mark.slow   # Ray or real processes: run serially, beside the notebooks
@needs_flower
def test_deployment_supernode_killed_mid_run_and_everything_stopped():
    fed, model, kw = logistic_setting()
    ref = flu.run(model, fed, "fedavg", **kw)
    before = _flower_processes()
    tmp_before = set(Path(tempfile.gettempdir()).glob("flu-flower-*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # both SuperNodes connect: no warning
        hist = flu.flower.run(model, fed, "fedavg", engine="deployment", supernodes=2, min_supernodes=1,
                              round_timeout=40, faults={"supernode-1": 1}, **kw)
    check_killed_after_round_one(hist, ref, fed, kw)
    assert hist.config["engine"] == "deployment"
    assert isinstance(hist.model, torch.nn.Module)
    deadline = time.monotonic() + 10   # children reaped a moment after their parents
    while _flower_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _flower_processes() - before, "Flower processes left running"
    assert set(Path(tempfile.gettempdir()).glob("flu-flower-*")) <= tmp_before, "work folder left behind"


@needs_flower
def test_a_clientapp_that_raises_is_reported_with_its_error():
    fed, model, kw = logistic_setting()

    def client_update(batch):
        raise ArithmeticError("boom in the client rule")

    broken = flu.algorithms.Algorithm("broken", client_update, flu.algorithms.fedavg().server_update)
    with pytest.raises(RuntimeError, match=r"round 1: 0 of 2 SuperNodes replied.*ArithmeticError: boom in the client"):
        flu.flower.run(model, fed, broken, engine="inprocess", supernodes=2, **kw)
