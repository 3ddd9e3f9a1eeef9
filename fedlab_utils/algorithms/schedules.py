"""Client learning-rate schedules: callables ``(round, step) -> lr`` for ``flu.run(client_lr=...)``.

Rounds count from 1 and steps from 0 within a round (the engine asks for the rates of steps
``0 .. max_i tau_i - 1`` of every round). Each schedule has a readable ``__name__`` (what
``History.config`` records), e.g. ``step_decay(lr=0.1, every=10, factor=0.5)``.

=========================================  ==================================================
``constant(lr)``                           eta = lr
``step_decay(lr, every, factor)``          eta = lr * factor ** floor((round - 1) / every)
``inverse_time(lr0, decay)``               eta = lr0 / (1 + decay * (round - 1))  (per round)
``inverse_time(lr0, decay, local_steps)``  eta = lr0 / (1 + decay * t), t = (round-1) E + step
``li_decay(mu, gamma, local_steps)``       eta_t = 2 / (mu (gamma + t)), t = (round-1) E + step
=========================================  ==================================================

``li_decay`` is the schedule of Li et al. 2020 (ICLR), "On the Convergence of FedAvg on
Non-IID Data", Theorem 1: mu the strong-convexity constant, gamma = max(8 L / mu, E), E the
local steps, t the global count of local iterations. With unequal local steps pass E = the
largest, so the counter never repeats across rounds.
"""
from __future__ import annotations

import numpy as np

from .._core import checks as chk


class Schedule:
    """A learning-rate schedule ``(round, step) -> lr``; subclasses define ``_lr``."""

    __name__ = "schedule"

    def __call__(self, round: int, step: int) -> float:
        rnd = chk.integer("round", round, low=1)
        step = chk.integer("step", step, low=0)
        return float(self._lr(rnd, step))

    def _lr(self, rnd: int, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def curve(self, num_rounds: int, local_steps: int) -> np.ndarray:
        """The rates as a ``(num_rounds, local_steps)`` array (row r-1 is round r), for plots."""
        R = chk.integer("num_rounds", num_rounds, low=1)
        E = chk.integer("local_steps", local_steps, low=1)
        return np.array([[self(r, s) for s in range(E)] for r in range(1, R + 1)])

    def __repr__(self) -> str:
        return self.__name__


def _positive(name, value):
    return chk.real(name, value, low=0, low_open=True)


class _Constant(Schedule):
    def __init__(self, lr):
        self.lr = _positive("lr", lr)
        self.__name__ = f"constant(lr={self.lr:g})"

    def _lr(self, rnd, step):
        return self.lr


class _StepDecay(Schedule):
    def __init__(self, lr, every, factor):
        self.lr = _positive("lr", lr)
        self.every = chk.integer("every", every, low=1)
        self.factor = chk.real("factor", factor, low=0, high=1, low_open=True)
        self.__name__ = f"step_decay(lr={self.lr:g}, every={self.every}, factor={self.factor:g})"

    def _lr(self, rnd, step):
        return self.lr * self.factor ** ((rnd - 1) // self.every)


class _InverseTime(Schedule):
    def __init__(self, lr0, decay, local_steps):
        self.lr0 = _positive("lr0", lr0)
        self.decay = chk.real("decay", decay, low=0)
        self.local_steps = None if local_steps is None else chk.integer("local_steps", local_steps, low=1)
        E = "" if self.local_steps is None else f", local_steps={self.local_steps}"
        self.__name__ = f"inverse_time(lr0={self.lr0:g}, decay={self.decay:g}{E})"

    def iteration(self, rnd: int, step: int) -> int:
        """The counter t: ``round - 1`` per round, or ``(round - 1) E + step`` per local iteration."""
        if self.local_steps is None:
            return rnd - 1
        if step >= self.local_steps:
            chk.fail("step", f"below local_steps={self.local_steps} of {self.__name__} (pass the largest "
                     "number of local steps, so the iteration counter never repeats)", step)
        return (rnd - 1) * self.local_steps + step

    def _lr(self, rnd, step):
        return self.lr0 / (1.0 + self.decay * self.iteration(rnd, step))


def constant(lr: float) -> Schedule:
    """``eta = lr`` in every round and step (the same as passing the float)."""
    return _Constant(lr)


def step_decay(lr: float, every: int, factor: float) -> Schedule:
    """``eta = lr * factor ** floor((round - 1) / every)``: multiply by ``factor`` in (0, 1] every
    ``every`` rounds (constant within a round)."""
    return _StepDecay(lr, every, factor)


def inverse_time(lr0: float, decay: float, local_steps: int | None = None) -> Schedule:
    """``eta = lr0 / (1 + decay * t)``.

    ``local_steps=None``: t = round - 1 (constant within a round); ``local_steps=E``:
    t = (round - 1) * E + step counts local iterations (as in Li et al. 2020).
    """
    return _InverseTime(lr0, decay, local_steps)


class _LiDecay(_InverseTime):
    def __init__(self, mu, gamma, local_steps):
        chk.integer("local_steps", local_steps, low=1)
        self.mu = _positive("mu", mu)
        self.gamma = _positive("gamma", gamma)
        super().__init__(2.0 / (self.mu * self.gamma), 1.0 / self.gamma, local_steps)
        self.__name__ = f"li_decay(mu={self.mu:g}, gamma={self.gamma:g}, local_steps={self.local_steps})"

    def _lr(self, rnd, step):
        return 2.0 / (self.mu * (self.gamma + self.iteration(rnd, step)))


def li_decay(mu: float, gamma: float, local_steps: int) -> Schedule:
    """Li et al. 2020 (ICLR), Theorem 1: ``eta_t = 2 / (mu (gamma + t))`` with
    ``t = (round - 1) * E + step`` the global local-iteration count (E = ``local_steps``).

    ``mu`` is the strong-convexity constant and the theorem takes gamma = max(8 L / mu, E);
    here any ``gamma > 0`` is accepted. Mathematically ``inverse_time(2 / (mu gamma), 1 / gamma, E)``.
    """
    return _LiDecay(mu, gamma, local_steps)
