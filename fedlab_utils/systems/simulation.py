"""``Simulation``: the system-heterogeneity settings ``flu.run(..., systems=sim)`` plays on the virtual clock.

Fields (docs/systems.md):

- ``profiles``: the per-client DataFrame (:func:`flu.systems.profiles` or your own; checked by
  :func:`check_profiles`, stored as a clean copy);
- ``availability``: ``"always"`` or an availability model (:class:`Always`, :class:`Bernoulli`,
  :class:`Diurnal`, :class:`MarkovOnOff`, or a subclass of :class:`Availability`);
- ``churn``: None or :class:`Churn` (clients joining and leaving);
- ``policy``: ``"wait_all"`` (the round ends with the slowest), ``"deadline"`` (late clients are
  dropped), ``"partial_work"`` (late clients send the steps done by the deadline), ``"over_select"``
  (select ceil(``over_select`` K), keep the first K to finish; Bonawitz et al. 2019);
- ``deadline``: seconds, required (> 0) for ``deadline`` and ``partial_work``, else None;
- ``over_select``: the factor f >= 1 (other than 1 only with ``policy="over_select"``);
- ``aggregation``: ``"sync"``, ``"fedasync"`` (Xie et al. 2019: each arrival applied as
  x <- x - server_lr s(t) (x - y_i)) or ``"fedbuff"`` (Nguyen et al. 2022: the mean of a buffer of
  ``buffer_size`` pseudo-gradients, scaled by s(t)); asynchronous aggregation waits for nobody,
  so its policy is ``"wait_all"``;
- ``buffer_size``: FedBuff's buffer (int >= 1; None: ``clients_per_round``), None otherwise;
- ``staleness``: a >= 0 in the staleness weight s(t) = (1 + t)^-a (:func:`staleness_weight`);
- ``seed``: the system's own seed (availability and drop-out draws), an int in [0, 2**63).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from .._core import checks as chk
from .._core.random import seed_value
from .clock import POLICIES
from .dynamics import Availability, Churn
from .profiles import check_profiles

AGGREGATIONS = ("sync", "fedasync", "fedbuff")
_DEADLINE_POLICIES = ("deadline", "partial_work")


def staleness_weight(t, staleness: float):
    """s(t) = (1 + t) ** -staleness for a staleness t >= 0 (server updates since the client's
    model; a number or an array): the polynomial weight of FedAsync (Xie et al. 2019) and FedBuff
    (Nguyen et al. 2022). s(0) = 1; staleness 0 weighs every update 1."""
    a = chk.real("staleness", staleness, low=0.0)
    if isinstance(t, bool) or not isinstance(t, (numbers.Real, list, tuple, np.ndarray)):
        raise TypeError(f"t must be a number >= 0 or an array of them, got {t!r} of type {type(t).__name__}")
    arr = np.asarray(t, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        chk.fail("t", "a finite staleness >= 0 (or an array of them)", t)
    w = (1.0 + arr) ** -a
    return float(w) if arr.ndim == 0 else w


@dataclass(frozen=True, eq=False, repr=False)
class Simulation:
    """System heterogeneity for ``flu.run(..., systems=sim)``; every field checked here (see the
    module docstring), a ValueError naming it otherwise."""

    profiles: pd.DataFrame
    availability: object = "always"
    churn: object = None
    policy: str = "wait_all"
    deadline: float | None = None
    over_select: float = 1.0
    aggregation: str = "sync"
    buffer_size: int | None = None
    staleness: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.profiles, pd.DataFrame):
            raise TypeError(f"profiles must be a pandas DataFrame (flu.systems.profiles(...)), "
                            f"got {type(self.profiles).__name__}")
        if len(self.profiles) == 0:
            raise ValueError("profiles must be a DataFrame with one row per client, got 0 rows")
        object.__setattr__(self, "profiles", check_profiles(self.profiles, len(self.profiles)))
        n = len(self.profiles)

        av = self.availability
        if isinstance(av, str):
            if av != "always":
                chk.fail("availability", "'always' or an availability model (Always, Bernoulli, Diurnal, "
                         "MarkovOnOff)", av)
        elif isinstance(av, Churn):
            chk.fail("availability", "an availability model; pass Churn as churn=", av)
        elif isinstance(av, Availability):
            _check_model("availability", av, n)
        else:
            raise TypeError(f"availability must be 'always' or an availability model (flu.systems.Bernoulli, "
                            f"Diurnal, MarkovOnOff, ...), got {type(av).__name__}")

        if self.churn is not None:
            if not isinstance(self.churn, Churn):
                raise TypeError(f"churn must be None or flu.systems.Churn, got {type(self.churn).__name__}")
            _check_model("churn", self.churn, n)

        chk.option("policy", self.policy, POLICIES)
        if self.policy in _DEADLINE_POLICIES:
            if self.deadline is None:
                chk.fail("deadline", f"a number of seconds > 0 with policy={self.policy!r}", None)
            object.__setattr__(self, "deadline", chk.real("deadline", self.deadline, low=0.0, low_open=True))
        elif self.deadline is not None:
            chk.fail("deadline", "None unless policy is 'deadline' or 'partial_work'", self.deadline)

        object.__setattr__(self, "over_select", chk.real("over_select", self.over_select, low=1.0))
        if self.policy != "over_select" and self.over_select != 1.0:
            chk.fail("over_select", "1.0 unless policy='over_select'", self.over_select)

        chk.option("aggregation", self.aggregation, AGGREGATIONS)
        if self.aggregation != "sync" and self.policy != "wait_all":
            chk.fail("policy", f"'wait_all' with aggregation={self.aggregation!r} (asynchronous aggregation "
                     "waits for nobody)", self.policy)
        if self.buffer_size is not None:
            object.__setattr__(self, "buffer_size", chk.integer("buffer_size", self.buffer_size, low=1))
            if self.aggregation != "fedbuff":
                chk.fail("buffer_size", "None unless aggregation='fedbuff'", self.buffer_size)

        object.__setattr__(self, "staleness", chk.real("staleness", self.staleness, low=0.0))
        object.__setattr__(self, "seed", seed_value("seed", self.seed))

    @property
    def num_clients(self) -> int:
        return len(self.profiles)

    def __eq__(self, other):
        if not isinstance(other, Simulation):
            return NotImplemented
        return all(self.profiles.equals(other.profiles) if f.name == "profiles"
                   else getattr(self, f.name) == getattr(other, f.name) for f in fields(self))

    __hash__ = None

    def __repr__(self):
        rest = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "profiles")
        return f"Simulation(profiles=<{self.num_clients} clients>, {rest})"


def _check_model(field: str, model, num_clients: int) -> None:
    try:
        model.check(num_clients)
    except ValueError as err:
        raise ValueError(f"{field}: {err}") from None
