"""Asynchronous aggregation on the virtual clock: FedAsync and FedBuff. A History round is one
server update.

``clients_per_round`` clients (all N when None) work at any time. A client downloads the newest
global model x (version v), trains its ``local_steps`` and uploads delta_i = x_v - y_i; its
staleness on arrival is t = (server updates since v) and its weight s(t) = (1 + t) ** -a
(``Simulation.staleness`` a). The server applies

- FedAsync (Xie et al. 2019, "Asynchronous Federated Optimization"), every arrival at once:
  x <- x - server_lr * s(t) * (x - y_i), x the newest model (with server_lr = 1 the paper's
  mixing x <- (1 - alpha_t) x + alpha_t y_i, alpha_t = s(t));
- FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation"),
  every ``buffer_size`` arrivals: x <- x - server_lr * mean_i s(t_i) delta_i (unweighted).

Uploads arriving at the same virtual time are taken in client order before any client restarts;
a client restarts from the newest model, and free places go to available idle clients drawn
uniformly. A client that drops out frees its place after its download. With identical profiles,
equal steps and batches, no dropout and a buffer of all N clients, FedBuff is synchronous FedAvg
with ``weights="uniform"``: everyone arrives together, s(0) = 1, and the same round's batches.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import algorithms as algs
from .._core import checks as chk
from ..systems.simulation import staleness_weight
from .sampling import select_clients
from .training import LocalRound

ASYNC_ALGORITHMS = ("fedavg", "fedprox")


def check(cfg) -> None:
    if cfg.algorithm.name not in ASYNC_ALGORITHMS:
        chk.fail("algorithm", f"one of {list(ASYNC_ALGORITHMS)} with aggregation={cfg.systems.aggregation!r} "
                 "(the asynchronous server rules replace the algorithm's)", cfg.algorithm.name)
    dropout = cfg.systems.profiles["dropout"].to_numpy(dtype=float)
    if (dropout >= 1).all():
        chk.fail("systems", "an asynchronous run in which some client can complete: every client's dropout is 1",
                 cfg.systems.aggregation)
    if cfg.finetune == "mixed" or cfg.compression is not None:
        chk.fail("systems.aggregation", "'sync' with one mode per client or with compression (not built for "
                 "asynchronous runs)", cfg.systems.aggregation)


def start_state(N: int) -> dict:
    return {"virtual_time": 0.0, "energy": np.zeros(N), "previous": None, "version": 0, "events": 0,
            "jobs": [], "pending": [], "buffer": [], "last_update": 0.0}


def _start_jobs(setup, state, sys: dict, rows: dict) -> None:
    """Fill the free places with available idle clients (they start from the newest x)."""
    cfg, ck, N = setup.cfg, setup.clocked, len(setup.sizes)
    places = (cfg.clients_per_round or N) - len(sys["jobs"])
    if places <= 0:
        return
    avail = ck.available(sys["version"] + 1, sys)
    busy = np.zeros(N, dtype=bool)
    busy[[j["client"] for j in sys["jobs"]]] = True
    idle = avail & ~busy
    rows["clients_available"] = int(avail.sum())
    if not idle.any():
        return
    sys["events"] += 1
    k = min(places, int(idle.sum()))
    sel, _ = select_clients(N, None if k == N else k, setup.p, "uniform", cfg.seed, sys["events"],
                            available=torch.as_tensor(idle))
    sel = sel.sort().values
    rnd = sys["version"] + 1
    steps = setup.steps[sel]
    train = LocalRound(setup, state.x, rnd, sel, steps)
    result = cfg.algorithm.client_update(algs.ClientRound(state.x, {}, state.server_state, steps, train.lr_sum,
                                                          cfg.options, train))
    x = state.x
    clients = sel.numpy()
    dropped = ck.dropped(clients, rnd, sys["events"])
    d, c, u = ck.times(clients, steps.numpy())
    now = sys["virtual_time"]
    for i, client in enumerate(clients.tolist()):
        end = d[i] if dropped[i] else d[i] + c[i] + u[i]
        sys["jobs"].append({"client": client, "version": sys["version"], "start": now, "end": now + float(end),
                            "dropped": bool(dropped[i]), "times": torch.tensor([d[i], c[i], u[i]], dtype=torch.float64),
                            "delta": {k: v[i].clone() for k, v in result.delta.items()},
                            "local": {k: x[k] - v[i] for k, v in result.delta.items()}})
    rows["clients_selected"] += len(clients)
    rows["bytes_down"] += len(clients) * setup.down_bytes


def _finish(setup, sys: dict, job: dict, rows: dict, timeline: list, outcome: str) -> None:
    ck = setup.clocked
    d, c, u = job["times"].tolist()
    phases = [("download", job["start"], job["start"] + d)]
    if outcome != "dropped":
        phases += [("compute", job["start"] + d, job["start"] + d + c), ("upload", job["start"] + d + c, job["end"])]
    busy = sum(b - a for _, a, b in phases)
    energy = float(ck.watts[job["client"]] * busy)
    sys["energy"][job["client"]] += energy
    rows["energy_j"] += energy
    for phase, a, b in phases:
        timeline.append((sys["version"] + 1, job["client"], phase, a, b, outcome))


def next_update(setup, state, rnd: int):
    """Advance the events until the server's next update; returns (delta to apply (flat dict),
    the round's record, its timeline rows, the new systems state). Nothing in ``state`` changes."""
    cfg, sim = setup.cfg, setup.cfg.systems
    sys = dict(state.sys)  # jobs and buffered updates are never changed in place: copy the containers only
    sys.update(energy=state.sys["energy"].copy(), jobs=list(state.sys["jobs"]), pending=list(state.sys["pending"]),
               buffer=list(state.sys["buffer"]))
    rows = dict(clients_selected=0, clients_completed=0, bytes_up=0, bytes_down=0, clients_available=0,
                clients_dropped=0, clients_late=0, energy_j=0.0)
    timeline = []
    size = (sim.buffer_size or cfg.clients_per_round or len(setup.sizes)) if sim.aggregation == "fedbuff" else 1
    idle_rounds = 0
    while True:
        if not sys["pending"]:
            _start_jobs(setup, state, sys, rows)
            if not sys["jobs"]:
                chk.fail("systems", f"an asynchronous run in which some client can complete: before server update "
                         f"{rnd} no client is available or working (availability, churn or energy budgets)",
                         sim.aggregation)
            t_next = min(j["end"] for j in sys["jobs"])
            arriving = sorted((j for j in sys["jobs"] if j["end"] == t_next), key=lambda j: j["client"])
            sys["jobs"] = [j for j in sys["jobs"] if j["end"] != t_next]
            sys["pending"] = arriving
            sys["virtual_time"] = t_next
            if all(j["dropped"] for j in arriving):
                idle_rounds += 1
                if idle_rounds > 1000:
                    chk.fail("systems", "an asynchronous run in which some client can complete: 1,000 arrivals "
                             "in a row were dropouts (dropout probabilities of 1?)", sim.aggregation)
        job = sys["pending"].pop(0)
        if job["dropped"]:
            rows["clients_dropped"] += 1
            _finish(setup, sys, job, rows, timeline, "dropped")
            continue
        idle_rounds = 0
        _finish(setup, sys, job, rows, timeline, "completed")
        rows["clients_completed"] += 1
        rows["bytes_up"] += setup.up_bytes
        weight = float(staleness_weight(sys["version"] - job["version"], sim.staleness))
        if sim.aggregation == "fedasync":  # s(t) (x - y_i) against the newest x; y_i = x_v - delta_i
            sys["buffer"].append({k: weight * (state.x[k] - job["local"][k]) for k in job["delta"]})
        else:
            sys["buffer"].append({k: weight * v for k, v in job["delta"].items()})
        if len(sys["buffer"]) >= size:
            update = {k: torch.stack([b[k] for b in sys["buffer"]]).mean(0) for k in sys["buffer"][0]}
            sys["buffer"] = []
            sys["version"] += 1
            rows["round_time"] = sys["virtual_time"] - sys["last_update"]
            sys["last_update"] = sys["virtual_time"]
            rows["virtual_time"] = sys["virtual_time"]
            return update, rows, timeline, sys


def portable(sys: dict) -> dict:
    """The asynchronous state as tensors and plain values (History.server_state["systems"])."""
    out = dict(sys)
    out["energy"] = torch.as_tensor(sys["energy"], dtype=torch.float64)
    out["previous"] = None if sys["previous"] is None else torch.as_tensor(sys["previous"])
    out["jobs"] = [dict(j) for j in sys["jobs"]]
    out["pending"] = [dict(j) for j in sys["pending"]]
    return out


def restore(saved: dict) -> dict:
    sys = dict(saved)
    sys["energy"] = np.asarray(saved["energy"], dtype=np.float64)
    sys["previous"] = None if saved.get("previous") is None else np.asarray(saved["previous"], dtype=bool)
    sys["version"], sys["events"] = int(saved["version"]), int(saved["events"])
    sys["virtual_time"], sys["last_update"] = float(saved["virtual_time"]), float(saved["last_update"])
    sys["jobs"], sys["pending"], sys["buffer"] = list(saved["jobs"]), list(saved["pending"]), list(saved["buffer"])
    return sys


def apply(x: dict, update: dict, server_lr: float) -> dict:
    return {k: x[k] - server_lr * update[k] for k in x}

