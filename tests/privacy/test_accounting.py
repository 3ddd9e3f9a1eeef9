"""flu.privacy.epsilon / noise_multiplier: Opacus' accountants, the q = 1 closed form, round trips."""
import math

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedlab_utils import privacy

CASES = [(1.0, 0.01, 1000, 1e-5), (2.5, 0.5, 7, 1e-3), (1.3, 1.0, 20, 1e-5)]


def _opacus(acc, z, q, T, delta):
    for _ in range(T):
        acc.step(noise_multiplier=z, sample_rate=q)
    return acc.get_epsilon(delta=delta)


@pytest.mark.parametrize("z,q,T,delta", CASES)
def test_rdp_epsilon_is_opacus_rdp_accountant(z, q, T, delta):
    assert privacy.epsilon(z, q, T, delta) == pytest.approx(_opacus(RDPAccountant(), z, q, T, delta), rel=1e-12)


def test_prv_epsilon_is_opacus_prv_accountant_and_tighter_than_rdp():
    z, q, T, delta = 1.0, 0.05, 200, 1e-5
    prv = privacy.epsilon(z, q, T, delta, accountant="prv")
    assert prv == pytest.approx(_opacus(PRVAccountant(), z, q, T, delta), rel=1e-9)
    assert prv < privacy.epsilon(z, q, T, delta)


def _closed_form(z, T, delta):
    alphas = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)), dtype=np.float64)
    eps = T * alphas / (2 * z**2) + np.log((alphas - 1) / alphas) - (np.log(delta) + np.log(alphas)) / (alphas - 1)
    return float(eps.min())


@pytest.mark.parametrize("z,T,delta", [(1.0, 1, 1e-5), (3.0, 10, 1e-5), (10.0, 100, 1e-7), (0.8, 3, 0.01)])
def test_full_participation_matches_the_gaussian_rdp_formula(z, T, delta):
    assert privacy.epsilon(z, 1.0, T, delta) == pytest.approx(_closed_form(z, T, delta), rel=1e-12)


def test_no_noise_is_no_privacy():
    assert privacy.epsilon(0, 0.1, 10, 1e-5) == math.inf
    assert privacy.epsilon(0.0, 1.0, 1, 1e-5, accountant="prv") == math.inf


def test_epsilon_grows_with_rounds_and_sampling_and_falls_with_noise():
    base = privacy.epsilon(1.0, 0.05, 100, 1e-5)
    assert privacy.epsilon(1.0, 0.05, 200, 1e-5) > base
    assert privacy.epsilon(1.0, 1.0, 100, 1e-5) > base
    assert privacy.epsilon(2.0, 0.05, 100, 1e-5) < base


@pytest.mark.parametrize("z,q,T", [(0.9, 0.02, 500), (4.0, 1.0, 10)])
def test_noise_multiplier_round_trips_within_opacus_tolerance(z, q, T):
    delta, tol = 1e-5, 0.01
    eps = privacy.epsilon(z, q, T, delta)
    z2 = privacy.noise_multiplier(eps, q, T, delta)
    # Opacus' bisection stops at the first sigma with eps - tol <= eps(sigma) <= eps
    assert z2 >= z
    assert eps - tol <= privacy.epsilon(z2, q, T, delta) <= eps
    assert z2 - z < 0.05 * z


def test_unreachable_target_names_target_epsilon():
    # at q = 1, T = 1 even z -> inf leaves eps >= the conversion term at the largest order
    floor = _closed_form(1e6, 1, 1e-5)
    assert floor > 0.1
    with pytest.raises(ValueError, match="target_epsilon"):
        privacy.noise_multiplier(0.1, 1.0, 1, 1e-5)


@pytest.mark.parametrize("kwargs,name", [
    (dict(noise_multiplier=-0.1), "noise_multiplier"), (dict(delta=0.0), "delta"), (dict(delta=1.0), "delta"),
    (dict(sample_rate=0.0), "sample_rate"), (dict(sample_rate=1.5), "sample_rate"), (dict(rounds=0), "rounds"),
    (dict(accountant="gdp"), "accountant")])
def test_epsilon_rejects_bad_input_by_name(kwargs, name):
    args = dict(noise_multiplier=1.0, sample_rate=0.1, rounds=10, delta=1e-5) | kwargs
    with pytest.raises(ValueError, match=name):
        privacy.epsilon(**args)


@pytest.mark.parametrize("kwargs,name", [
    (dict(target_epsilon=0.0), "target_epsilon"), (dict(delta=2.0), "delta"), (dict(sample_rate=-1.0), "sample_rate"),
    (dict(rounds=0), "rounds")])
def test_noise_multiplier_rejects_bad_input_by_name(kwargs, name):
    args = dict(target_epsilon=1.0, sample_rate=0.1, rounds=10, delta=1e-5) | kwargs
    with pytest.raises(ValueError, match=name):
        privacy.noise_multiplier(**args)
