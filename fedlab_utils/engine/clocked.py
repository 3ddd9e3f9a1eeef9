"""A run on the virtual clock: who is available, who is selected, who completes, and when.

Used by ``flu.run(..., systems=Simulation(...))`` (synchronous aggregation). Per round:

1. availability: the simulation's model (always, Bernoulli, diurnal, Markov on/off), churn, and
   energy (a client whose cumulative energy reached its budget is gone);
2. selection among the available clients (``over_select``: ceil(f K) of them);
3. the round on the clock (:func:`flu.systems.clock.play`): per-client download, compute and
   upload times from the profiles, dropouts after the download, the straggler policy;
4. only the clients that complete train (partial work with its reduced steps); the aggregation
   weights are renormalised over them. A round in which nobody completes leaves everything as is.

System draws (availability, dropouts) come from the simulation's own seed, so changing the
system never reshuffles training's minibatches and vice versa.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._core import checks as chk
from .._core.random import DROPOUT, np_stream
from ..models import finetune as ft
from ..systems import clock
from ..systems.simulation import Simulation

TIMELINE_COLUMNS = ["round", "client", "phase", "start", "end", "outcome"]


@dataclass
class Clocked:
    """The fixed part: profiles as arrays, per-client batch and compute cost, bytes per client."""

    sim: Simulation
    speed: np.ndarray
    down_mbps: np.ndarray
    up_mbps: np.ndarray
    latency: np.ndarray
    dropout: np.ndarray
    watts: np.ndarray
    budget: np.ndarray
    batch: np.ndarray           # b_i = min(batch_size, n_i), n_i for full batch
    cost: np.ndarray            # the mode's training FLOPs per example over full fine-tuning's
    bytes_down: int             # per selected client
    bytes_up: np.ndarray        # per client, as encoded, algorithm uploads included

    @classmethod
    def build(cls, sim: Simulation, *, cfg, model, sizes, input_shape, bytes_down: int, bytes_up: int) -> "Clocked":
        from ..systems.modes import check_modes
        from ..systems.profiles import check_profiles
        N = len(sizes)
        prof = check_profiles(sim.profiles, N)
        col = {c: prof[c].to_numpy(dtype=np.float64) for c in prof.columns if c != "client"}
        n = sizes.numpy().astype(np.int64)
        batch = n if cfg.batch_size is None else np.minimum(cfg.batch_size, n)
        b = int(cfg.batch_size or n.max())
        modes = check_modes(list(cfg.modes) if cfg.finetune == "mixed" else cfg.finetune, prof, model, input_shape,
                            b, **cfg.finetune_options)  # each client's mode fits its memory_mb
        flops = {}
        for m in dict.fromkeys(["full", *modes]):
            opts = {k: v for k, v in cfg.finetune_options.items() if k in ft.OPTIONS.get(m, {})}
            flops[m] = ft.cost(model, m, input_shape=input_shape, batch_size=b, **opts)["flops_step"]
        cost = np.array([flops[m] / flops["full"] for m in modes])
        out = cls(sim, col["samples_per_s"], col["download_mbps"], col["upload_mbps"], col["latency_s"],
                  col["dropout"], col["watts"], col["energy_budget_j"], batch, cost, int(bytes_down),
                  np.broadcast_to(np.asarray(bytes_up, dtype=np.int64), (N,)).copy())
        out._check_deadline(np.asarray(cfg.local_steps))
        return out

    # ------------------------------------------------------------------ per client times
    def times(self, clients: np.ndarray, steps: np.ndarray):
        d = clock.transfer_seconds(self.latency[clients], self.bytes_down, self.down_mbps[clients])
        c = clock.compute_seconds(steps, self.batch[clients], self.cost[clients], self.speed[clients])
        u = clock.transfer_seconds(self.latency[clients], self.bytes_up[clients], self.up_mbps[clients])
        return d, c, u

    def _check_deadline(self, steps: np.ndarray) -> None:
        sim = self.sim
        if sim.policy not in ("deadline", "partial_work"):
            return
        clients = np.arange(len(steps))
        d, c, u = self.times(clients, steps)
        if sim.policy == "partial_work":
            c = c / np.maximum(steps, 1)
            what = "download + one local step + upload"
        else:
            what = "download + compute + upload"
        fastest = float((d + c + u).min())
        if sim.deadline < fastest:
            chk.fail("deadline", f"at least the smallest {what} over the clients ({fastest:.4g} s): "
                     "with a smaller one no client could ever complete", sim.deadline)

    # ------------------------------------------------------------------ per round
    def available(self, rnd: int, sys_state: dict) -> np.ndarray:
        N = len(self.speed)
        sim = self.sim
        model = sim.availability
        if isinstance(model, str):  # "always"
            avail = np.ones(N, dtype=bool)
        else:  # Markov on/off needs the previous round's state; the others ignore it
            previous = sys_state.get("previous")
            avail = np.asarray(model.available(rnd, N, sim.seed, previous=None if previous is None
                                               else np.asarray(previous, dtype=bool)), dtype=bool)
        sys_state["previous"] = avail.copy()
        if sim.churn is not None:
            avail &= np.asarray(sim.churn.available(rnd, N, sim.seed), dtype=bool)
        return avail & (sys_state["energy"] < self.budget)

    def dropped(self, clients: np.ndarray, *keys: int) -> np.ndarray:
        """Who drops out: one uniform per client of the population from the stream (seed, *keys),
        read at the selected clients, so a client's draw does not depend on who else was picked."""
        if not (self.dropout[clients] > 0).any():
            return np.zeros(len(clients), dtype=bool)
        draws = np_stream(self.sim.seed, *keys, DROPOUT).random(len(self.dropout))
        return draws[clients] < self.dropout[clients]

    def play(self, rnd: int, clients: np.ndarray, steps: np.ndarray, keep: int) -> clock.RoundClock:
        dropped = self.dropped(clients, rnd)
        d, c, u = self.times(clients, steps)
        return clock.play(d, c, u, steps, dropped, policy=self.sim.policy, deadline=self.sim.deadline, keep=keep)

    def over_selected(self, k: int, num_available: int) -> int:
        if self.sim.policy != "over_select":
            return k
        return min(num_available, int(math.ceil(self.sim.over_select * k - 1e-9)))


def timeline_rows(rnd: int, clients: np.ndarray, rc: clock.RoundClock, start: float) -> list:
    """Long-form rows (tuples in TIMELINE_COLUMNS order) for the phases each client ran (a dropped
    client only downloaded)."""
    K = len(clients)
    ran = np.ones((K, 3), dtype=bool)
    ran[rc.outcome == "dropped", 1:] = False
    k, j = np.nonzero(ran)
    starts = (start + rc.phases[k, j, 0]).tolist()
    ends = (start + rc.phases[k, j, 1]).tolist()
    who, what, outcome = clients[k].tolist(), np.asarray(clock.PHASES)[j].tolist(), rc.outcome[k].tolist()
    return list(zip([rnd] * len(who), who, what, starts, ends, outcome))
