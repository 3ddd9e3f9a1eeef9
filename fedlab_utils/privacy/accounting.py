"""Privacy accounting for DP-FedAvg: Opacus' accountants, called, not re-derived.

One round of DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models") is the sampled Gaussian mechanism: each client is in the round with
probability q (``sample_rate``), the server adds N(0, (z S)^2 I) to a sum of sensitivity S, so
z (``noise_multiplier``) is the noise std in units of the sensitivity. ``rounds`` = T compositions.

- ``accountant="rdp"`` (default): Renyi DP of the sampled Gaussian mechanism (Mironov et al. 2019,
  "Renyi Differential Privacy of the Sampled Gaussian Mechanism"), composed additively over T and
  converted to (eps, delta) by Balle et al. 2020 (Thm. 21) at Opacus' default orders alpha:
  ``eps = min_alpha  T rdp_q(alpha) + log((alpha - 1) / alpha) - (log delta + log alpha) / (alpha - 1)``,
  with ``rdp_1(alpha) = alpha / (2 z^2)`` when every client is in every round (q = 1).
- ``accountant="prv"``: the privacy-loss random variable accountant (Gopi et al. 2021, "Numerical
  Composition of Differential Privacy"), a tighter numerical upper bound, for comparison.

Opacus is imported on first call, so ``import fedlab_utils.privacy`` stays light.
"""
from __future__ import annotations

import functools
import math
import warnings

from .._core import checks as chk

ACCOUNTANTS = ("rdp", "prv")


def _check(noise_multiplier=None, sample_rate=None, rounds=None, delta=None, accountant="rdp"):
    if noise_multiplier is not None:
        chk.real("noise_multiplier", noise_multiplier, low=0)
    chk.real("sample_rate", sample_rate, low=0, high=1, low_open=True)
    chk.integer("rounds", rounds, low=1)
    chk.real("delta", delta, low=0, high=1, low_open=True, high_open=True)
    chk.option("accountant", accountant, ACCOUNTANTS)


def _accountant(name: str, noise_multiplier: float, sample_rate: float, rounds: int):
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if name == "rdp" else PRVAccountant()
    acc.history = [(float(noise_multiplier), float(sample_rate), int(rounds))]
    return acc


@functools.lru_cache(maxsize=512)
def _unit_rdp(noise_multiplier: float, sample_rate: float):
    """Opacus' RDP of ONE step at its default orders (``compute_rdp(q, z, steps=1, orders)``).
    RDP composes additively and Opacus computes ``rdp(one step) * steps``, so T steps are this
    vector times T: the same floats as ``RDPAccountant``, without recomputing the orders' series
    (0.4 s a call here) for every round."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    orders = list(RDPAccountant.DEFAULT_ALPHAS)
    return orders, compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders)


def _rdp_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    from opacus.accountants.analysis.rdp import get_privacy_spent

    orders, unit = _unit_rdp(float(noise_multiplier), float(sample_rate))
    eps, _ = get_privacy_spent(orders=orders, rdp=unit * int(rounds), delta=delta)
    return float(eps)


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float, *,
            accountant: str = "rdp") -> float:
    """The epsilon of ``rounds`` rounds of the sampled Gaussian mechanism at ``delta``.

    ``noise_multiplier`` z >= 0 (noise std / sensitivity; 0 gives ``inf``: no privacy),
    ``sample_rate`` q in (0, 1] (the probability a client takes part in a round), ``rounds`` T >= 1,
    ``delta`` in (0, 1). Exactly Opacus' ``RDPAccountant`` (or ``PRVAccountant``) with history
    ``[(z, q, T)]``; see the module docstring for the formula.
    """
    _check(noise_multiplier, sample_rate, rounds, delta, accountant)
    if noise_multiplier == 0:
        return math.inf
    with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound is still valid
        warnings.filterwarnings("ignore", message="Optimal order is the")
        if accountant == "rdp":
            return _rdp_epsilon(noise_multiplier, sample_rate, rounds, delta)
        return float(_accountant(accountant, noise_multiplier, sample_rate, rounds).get_epsilon(delta=delta))


def noise_multiplier(target_epsilon: float, sample_rate: float, rounds: int, delta: float, *,
                     accountant: str = "rdp", epsilon_tolerance: float = 0.01) -> float:
    """The smallest noise multiplier z (up to the bisection's tolerance) with
    ``epsilon(z, sample_rate, rounds, delta) <= target_epsilon``.

    Opacus' ``get_noise_multiplier``: bisection until ``target_epsilon - epsilon_tolerance <=
    epsilon(z) <= target_epsilon``. A target below what z = 10^6 reaches (the RDP conversion term
    ``-log(delta) / (alpha_max - 1)`` at Opacus' largest order 63 floors it) raises ValueError.
    """
    chk.real("target_epsilon", target_epsilon, low=0, low_open=True)
    _check(None, sample_rate, rounds, delta, accountant)
    chk.real("epsilon_tolerance", epsilon_tolerance, low=0, low_open=True)
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            return float(get_noise_multiplier(target_epsilon=float(target_epsilon), target_delta=float(delta),
                                              sample_rate=float(sample_rate), steps=int(rounds),
                                              accountant=accountant, epsilon_tolerance=float(epsilon_tolerance)))
    except ValueError as err:
        if "budget is too low" not in str(err):
            raise
        chk.fail("target_epsilon", f"reachable with a noise multiplier <= 1e6 at sample_rate={sample_rate}, "
                                   f"rounds={rounds}, delta={delta} ({accountant} accountant)", target_epsilon)
