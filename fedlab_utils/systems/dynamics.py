"""Who is reachable in round r: availability models and churn.

Every model answers ``available(round, num_clients, seed, previous=None)`` with a bool array of
shape (N,). Draws come from the package's one seeded stream: round r uses the uniform draws
u_r = ``np_stream(seed, r, AVAILABILITY).random(N)`` (client i reads u_r[i], so its draw does not
depend on N) and per-client constants (Diurnal's phases) come from ``np_stream(seed,
AVAILABILITY)``. The same seed gives the same availability; a round's answer depends only on the
seed and rounds <= r.

- :class:`Always`: everyone, every round.
- :class:`Bernoulli` ``(p)``: client i is available with probability p_i, independently across
  rounds (u_r[i] < p_i); ``p`` one number or one per client. FedScale-style random availability.
- :class:`Diurnal` ``(period, low, high)``: probability p_i(r) = low + (high - low)
  (1 + cos(2 pi (r / period + phase_i))) / 2, a day-night cycle of ``period`` rounds with a
  seeded phase_i ~ U[0, 1) per client (time zones); its mean over a period is (low + high) / 2.
  Devices train when idle and charging, mostly at night (Bonawitz et al. 2019; Yang et al. 2018).
- :class:`MarkovOnOff` ``(p_on, p_off)``: a two-state chain per client, off -> on with p_on,
  on -> off with p_off; round 0 is drawn from the stationary law P(on) = p_on / (p_on + p_off)
  (u_0[i] < P(on)); then on_r = u_r[i] >= p_off if on_{r-1} else u_r[i] < p_on. Sessions last
  1 / p_off rounds on average, absences 1 / p_on.
- :class:`Churn` ``(join_round, leave_round)``: client i is present in rounds
  join_round[i] <= r < leave_round[i] (leave_round -1: never leaves). Deterministic.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .._core import checks as chk
from .._core.random import AVAILABILITY, np_stream, seed_value


def _probabilities(name: str, value):
    """A probability in [0, 1], or a non-empty 1-D sequence of them (one per client) as a tuple."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return chk.real(name, value, low=0.0, high=1.0)
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value, dtype=object)
        if arr.ndim != 1 or arr.size == 0:
            chk.fail(name, "a probability in [0, 1] or a non-empty 1-D list of them (one per client)", value)
        return tuple(chk.real(f"{name}[{i}]", v, low=0.0, high=1.0) for i, v in enumerate(arr.tolist()))
    raise TypeError(f"{name} must be a probability or a list of them (one per client), got {value!r} "
                    f"of type {type(value).__name__}")


def _per_client(name: str, value, num_clients: int) -> np.ndarray:
    if isinstance(value, tuple):
        if len(value) != num_clients:
            chk.fail(name, f"one value per client ({num_clients} values)", list(value))
        return np.asarray(value, dtype=np.float64)
    return np.full(num_clients, float(value))


def _check_call(round, num_clients, seed):
    return (chk.integer("round", round, low=0), chk.integer("num_clients", num_clients, low=1),
            seed_value("seed", seed))


def _uniforms(seed: int, round: int, num_clients: int) -> np.ndarray:
    """u_r: one uniform draw in [0, 1) per client for round r."""
    return np_stream(seed, round, AVAILABILITY).random(num_clients)


class Availability:
    """Base of the availability models: subclass it and define :meth:`available`."""

    def check(self, num_clients: int) -> None:
        """Raise a ValueError naming the parameter if per-client values do not fit ``num_clients``."""

    def available(self, round: int, num_clients: int, seed: int, previous=None) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class Always(Availability):
    """Every client, every round."""

    def available(self, round, num_clients, seed=0, previous=None) -> np.ndarray:
        round, num_clients, seed = _check_call(round, num_clients, seed)
        return np.ones(num_clients, dtype=bool)


@dataclass(frozen=True)
class Bernoulli(Availability):
    """Client i available with probability ``p`` (or ``p[i]``), independently in every round."""

    p: object

    def __post_init__(self):
        object.__setattr__(self, "p", _probabilities("p", self.p))

    def check(self, num_clients):
        _per_client("p", self.p, num_clients)

    def available(self, round, num_clients, seed=0, previous=None) -> np.ndarray:
        round, num_clients, seed = _check_call(round, num_clients, seed)
        return _uniforms(seed, round, num_clients) < _per_client("p", self.p, num_clients)


@dataclass(frozen=True)
class Diurnal(Availability):
    """Availability probability on a cosine between ``low`` and ``high`` with ``period`` rounds,
    each client at its own seeded phase: p_i(r) = low + (high - low) (1 + cos(2 pi (r / period + phase_i))) / 2."""

    period: float
    low: float
    high: float

    def __post_init__(self):
        object.__setattr__(self, "period", chk.real("period", self.period, low=1.0))
        low = chk.real("low", self.low, low=0.0, high=1.0)
        high = chk.real("high", self.high, low=0.0, high=1.0)
        if low > high:
            chk.fail("low", f"<= high ({high})", low)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def phases(self, num_clients: int, seed: int = 0) -> np.ndarray:
        """phase_i ~ U[0, 1) per client, from ``np_stream(seed, AVAILABILITY)``."""
        num_clients = chk.integer("num_clients", num_clients, low=1)
        return np_stream(seed_value("seed", seed), AVAILABILITY).random(num_clients)

    def probability(self, round: int, num_clients: int, seed: int = 0) -> np.ndarray:
        """p_i(round) for every client."""
        round, num_clients, seed = _check_call(round, num_clients, seed)
        wave = (1.0 + np.cos(2.0 * math.pi * (round / self.period + self.phases(num_clients, seed)))) / 2.0
        return self.low + (self.high - self.low) * wave

    def available(self, round, num_clients, seed=0, previous=None) -> np.ndarray:
        p = self.probability(round, num_clients, seed)
        return _uniforms(seed, round, num_clients) < p


@dataclass(frozen=True)
class MarkovOnOff(Availability):
    """Two-state chain per client: off -> on with ``p_on``, on -> off with ``p_off`` (numbers or
    one per client); starts from the stationary law P(on) = p_on / (p_on + p_off)."""

    p_on: object
    p_off: object

    def __post_init__(self):
        p_on = _probabilities("p_on", self.p_on)
        p_off = _probabilities("p_off", self.p_off)
        on, off = np.atleast_1d(np.asarray(p_on)), np.atleast_1d(np.asarray(p_off))
        if on.size != off.size and 1 not in (on.size, off.size):
            chk.fail("p_off", f"one number or as many values as p_on ({on.size})", p_off)
        stuck = np.flatnonzero(on + off == 0)
        if stuck.size:
            chk.fail("p_on", "such that p_on + p_off > 0 for every client (else the chain never moves and has "
                     "no stationary start)", float(on[stuck[0]] if on.size > 1 else on[0]))
        object.__setattr__(self, "p_on", p_on)
        object.__setattr__(self, "p_off", p_off)

    def check(self, num_clients):
        _per_client("p_on", self.p_on, num_clients)
        _per_client("p_off", self.p_off, num_clients)

    def stationary(self, num_clients: int) -> np.ndarray:
        """P(on) = p_on / (p_on + p_off) per client."""
        on, off = _per_client("p_on", self.p_on, num_clients), _per_client("p_off", self.p_off, num_clients)
        return on / (on + off)

    def start(self, num_clients: int, seed: int = 0) -> np.ndarray:
        """The state at round 0, drawn from the stationary law: u_0[i] < P(on)."""
        _, num_clients, seed = _check_call(0, num_clients, seed)
        return _uniforms(seed, 0, num_clients) < self.stationary(num_clients)

    def step(self, round: int, state, seed: int = 0) -> np.ndarray:
        """The state at ``round`` (>= 1) given ``state``, the state at ``round - 1``."""
        state = np.asarray(state)
        if state.ndim != 1 or state.size == 0 or state.dtype != bool:
            chk.fail("previous", "a 1-D bool array (the state at the round before)",
                     f"array of shape {state.shape} and dtype {state.dtype}")
        round, num_clients, seed = _check_call(round, state.size, seed)
        if round == 0:
            chk.fail("round", "an int >= 1 for a step (round 0 is the stationary start)", round)
        u = _uniforms(seed, round, num_clients)
        on, off = _per_client("p_on", self.p_on, num_clients), _per_client("p_off", self.p_off, num_clients)
        return np.where(state, u >= off, u < on)

    def available(self, round, num_clients, seed=0, previous=None) -> np.ndarray:
        """The state at ``round``: one step from ``previous`` (the state at round - 1), or, with
        ``previous=None``, the chain run from its stationary start at round 0 (the same answer)."""
        round, num_clients, seed = _check_call(round, num_clients, seed)
        if previous is not None:
            previous = np.asarray(previous)
            if previous.shape != (num_clients,):
                chk.fail("previous", f"a bool array of shape ({num_clients},)", f"shape {previous.shape}")
            if round == 0:
                chk.fail("previous", "None at round 0 (the chain starts there)", "an array")
            return self.step(round, previous, seed)
        state = self.start(num_clients, seed)
        for r in range(1, round + 1):
            state = self.step(r, state, seed)
        return state


def _rounds(name: str, value) -> tuple:
    if not isinstance(value, (list, tuple, np.ndarray)) or np.ndim(value) != 1 or len(value) == 0:
        chk.fail(name, "a non-empty 1-D list of ints, one per client", value)
    return tuple(chk.integer(f"{name}[{i}]", v, low=-1 if name == "leave_round" else 0)
                 for i, v in enumerate(np.asarray(value, dtype=object).tolist()))


@dataclass(frozen=True)
class Churn(Availability):
    """Clients join and leave: client i is present in rounds join_round[i] <= r < leave_round[i]
    (leave_round[i] = -1: it never leaves)."""

    join_round: tuple
    leave_round: tuple

    def __post_init__(self):
        join = _rounds("join_round", self.join_round)
        leave = _rounds("leave_round", self.leave_round)
        if len(leave) != len(join):
            chk.fail("leave_round", f"one value per client, as many as join_round ({len(join)})", list(leave))
        for i, (j, k) in enumerate(zip(join, leave)):
            if k != -1 and k <= j:
                chk.fail(f"leave_round[{i}]", f"-1 (never leaves) or > join_round[{i}] ({j})", k)
        object.__setattr__(self, "join_round", join)
        object.__setattr__(self, "leave_round", leave)

    def check(self, num_clients):
        if len(self.join_round) != num_clients:
            chk.fail("join_round", f"one value per client ({num_clients} values)", list(self.join_round))

    def available(self, round, num_clients, seed=0, previous=None) -> np.ndarray:
        round, num_clients, seed = _check_call(round, num_clients, seed)
        self.check(num_clients)
        join = np.asarray(self.join_round)
        leave = np.asarray(self.leave_round)
        return (join <= round) & ((leave == -1) | (round < leave))
