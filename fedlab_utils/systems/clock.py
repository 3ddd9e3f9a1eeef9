"""The virtual clock of one synchronous round: per-client phases, straggler policies, energy.

Times in seconds for each selected client i (docs/systems.md):

    download_i = latency_s + 8 * bytes_down_i / (1e6 * download_mbps)
    compute_i  = steps_i * b_i * cost_i / samples_per_s      (b_i = min(batch_size, n_i); n_i for full batch)
    upload_i   = latency_s + 8 * bytes_up_i / (1e6 * upload_mbps)

cost_i is the training FLOPs per example of client i's fine-tuning mode over full fine-tuning's
(1 for "full"). Every client starts at 0; a client that drops out (probability ``dropout``) ends
after its download. Policies decide who completes:

- ``wait_all``: everyone who did not drop; the round ends with the last end time.
- ``deadline``: a client whose download + compute + upload exceeds the deadline is ``late``: its
  phases are cut at the deadline and its update is lost; the round then ends at the deadline.
- ``partial_work``: a late client sends the steps it finished by the deadline, keeping time for its
  upload (``partial``); with no whole step done it is ``late``.
- ``over_select``: of the ceil(f K) selected clients, the first K to finish complete (ties to
  the lower client id); the others are ``late``, cut when the K-th finishes.

Infinite speeds and bandwidths (the "ideal" preset) give zero time. Energy: watts x busy time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

POLICIES = ("wait_all", "deadline", "partial_work", "over_select")
PHASES = ("download", "compute", "upload")
OUTCOMES = ("completed", "dropped", "late", "partial")


def transfer_seconds(latency_s, nbytes, mbps) -> np.ndarray:
    """``latency_s + 8 * nbytes / (1e6 * mbps)``: zero transfer time at infinite bandwidth."""
    mbps = np.asarray(mbps, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        wire = np.where(np.isinf(mbps), 0.0, 8.0 * np.asarray(nbytes, dtype=np.float64) / (1e6 * mbps))
    return np.asarray(latency_s, dtype=np.float64) + wire


def compute_seconds(steps, batch, cost, samples_per_s) -> np.ndarray:
    """``steps * batch * cost / samples_per_s``: zero at infinite speed."""
    speed = np.asarray(samples_per_s, dtype=np.float64)
    work = np.asarray(steps, dtype=np.float64) * np.asarray(batch, dtype=np.float64) * np.asarray(cost, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isinf(speed), 0.0, work / speed)


@dataclass(frozen=True)
class RoundClock:
    """One round on the virtual clock, per selected client (arrays of length K)."""

    outcome: np.ndarray        # str: completed / dropped / late / partial
    steps_done: np.ndarray     # int: local steps whose update reaches the server (0 if none)
    phases: np.ndarray         # (K, 3, 2) start, end of download, compute, upload (end == start: not run)
    busy: np.ndarray           # seconds each client worked (cut at dropout or deadline)
    round_time: float

    @property
    def completed(self) -> np.ndarray:
        """Clients whose update reaches the server (completed, or partial work)."""
        return np.isin(self.outcome, ("completed", "partial"))


def play(download, compute, upload, steps, dropped, *, policy="wait_all", deadline=None, keep=None) -> RoundClock:
    """Schedule one synchronous round (see the module docstring); ``keep`` is K for ``over_select``."""
    d, c, u = (np.asarray(a, dtype=np.float64) for a in (download, compute, upload))
    steps = np.asarray(steps, dtype=np.int64)
    dropped = np.asarray(dropped, dtype=bool)
    K = len(d)
    end = d + c + u
    outcome = np.where(dropped, "dropped", "completed").astype(object)
    done = np.where(dropped, 0, steps)
    cut = np.full(K, math.inf)                     # when each client's work is cut
    cut[dropped] = d[dropped]
    live = ~dropped
    if policy in ("deadline", "partial_work"):
        late = live & (end > deadline)
        if policy == "partial_work" and late.any():
            per_step = np.where(steps > 0, c / np.maximum(steps, 1), 0.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                fit = np.where(per_step > 0, np.floor((deadline - d - u) / per_step + 1e-9), steps)
            fit = np.clip(fit, 0, steps).astype(np.int64)
            partial = late & (fit >= 1)
            c = np.where(partial, fit * per_step, c)
            end = d + c + u
            done = np.where(partial, fit, done)
            outcome[partial] = "partial"
            late = late & ~partial
        outcome[late] = "late"
        done = np.where(late, 0, done)
        cut[late] = deadline
        any_cut = late.any() or (outcome == "partial").any()
        finished = end[live & ~late]
        round_time = float(deadline) if any_cut else float(max(finished.max(initial=0.0), d.max(initial=0.0)))
    elif policy == "over_select":
        order = sorted(np.flatnonzero(live), key=lambda i: (end[i], i))
        winners = order[:keep]
        losers = order[keep:]
        stop = float(end[winners[-1]]) if winners else float(d.max(initial=0.0))
        outcome[losers] = "late"
        done = np.where(np.isin(np.arange(K), losers), 0, done)
        cut[losers] = stop
        round_time = max(stop, float(d[dropped].max(initial=0.0)))
    else:
        round_time = float(np.where(dropped, d, end).max(initial=0.0))
    starts = np.stack([np.zeros(K), d, d + c], axis=1)
    ends = np.stack([d, d + c, end], axis=1)
    phases = np.stack([np.minimum(starts, cut[:, None]), np.minimum(ends, cut[:, None])], axis=2)
    busy = (phases[:, :, 1] - phases[:, :, 0]).sum(1)
    return RoundClock(outcome.astype(str), done.astype(np.int64), phases, busy, round_time)
