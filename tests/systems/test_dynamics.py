"""Availability models and churn: rates against their probabilities, replay, validation."""
import math

import numpy as np
import pytest

from fedlab_utils.systems import Always, Bernoulli, Churn, Diurnal, MarkovOnOff


def trace(model, rounds, n, seed=0):
    """(rounds, n) availability, stepping a Markov chain round by round from round 0."""
    out, prev = [], None
    for r in range(rounds):
        prev = model.available(r, n, seed, previous=prev)
        out.append(prev)
    return np.array(out)


def test_always():
    a = Always().available(7, 4, 0)
    assert a.dtype == bool and a.shape == (4,) and a.all()


def test_bernoulli_rate_is_p_and_per_client_p_works():
    # 2000 rounds x 50 clients = 1e5 draws: the binomial sd of the rate is 0.0015
    t = trace(Bernoulli(0.3), 2000, 50, seed=1)
    assert t.dtype == bool and t.mean() == pytest.approx(0.3, abs=0.006)
    ps = np.linspace(0, 1, 6)
    t = trace(Bernoulli(ps.tolist()), 3000, 6, seed=2)
    np.testing.assert_allclose(t.mean(axis=0), ps, atol=0.03)
    assert not t[:, 0].any() and t[:, -1].all()  # p = 0 never, p = 1 always


def test_bernoulli_rounds_are_independent():
    # P(available in r and r+1) = p^2 for independent rounds
    t = trace(Bernoulli(0.5), 4000, 20, seed=3)
    assert (t[1:] & t[:-1]).mean() == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("model", [Bernoulli(0.4), Diurnal(24, 0.1, 0.9), MarkovOnOff(0.2, 0.3)])
def test_seeded_replay_and_prefix_stability(model):
    a, b = trace(model, 30, 12, seed=7), trace(model, 30, 12, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, trace(model, 30, 12, seed=8))
    # client i's availability does not depend on how many clients there are
    np.testing.assert_array_equal(trace(model, 30, 5, seed=7), a[:, :5])


def test_diurnal_mean_and_extremes():
    t = trace(Diurnal(period=10, low=0.2, high=0.6), 2000, 40, seed=4)
    assert t.mean() == pytest.approx(0.4, abs=0.01)  # mean of the cosine over whole periods
    assert trace(Diurnal(5, 1.0, 1.0), 10, 8).all() and not trace(Diurnal(5, 0.0, 0.0), 10, 8).any()


def test_diurnal_probability_follows_the_cosine_with_per_client_phases():
    d = Diurnal(period=8, low=0.1, high=0.7)
    phase = d.phases(5, seed=3)
    assert phase.shape == (5,) and ((0 <= phase) & (phase < 1)).all() and len(set(phase)) == 5
    for r in (0, 3, 8, 11):
        expected = 0.1 + 0.6 * (1 + np.cos(2 * np.pi * (r / 8 + phase))) / 2
        np.testing.assert_allclose(d.probability(r, 5, seed=3), expected)
    np.testing.assert_allclose(d.probability(2, 5, seed=3), d.probability(10, 5, seed=3))  # periodic
    # empirical rate per client at one phase of the cycle, across many cycles (rounds r = 2 mod 8)
    t = trace(Diurnal(8, 0.1, 0.7), 8 * 600, 5, seed=3)
    np.testing.assert_allclose(t[2::8].mean(axis=0), d.probability(2, 5, seed=3), atol=0.06)


@pytest.mark.parametrize("p_on, p_off", [(0.2, 0.3), (0.05, 0.5), (0.9, 0.1)])
def test_markov_stationary_fraction_and_transitions(p_on, p_off):
    t = trace(MarkovOnOff(p_on, p_off), 3000, 40, seed=5)
    assert t.mean() == pytest.approx(p_on / (p_on + p_off), abs=0.02)
    prev, now = t[:-1], t[1:]
    assert now[~prev].mean() == pytest.approx(p_on, abs=0.02)     # off -> on
    assert (~now[prev]).mean() == pytest.approx(p_off, abs=0.02)   # on -> off
    # round 0 already follows the stationary law (no burn-in)
    starts = np.array([MarkovOnOff(p_on, p_off).start(500, seed=s) for s in range(10)])
    assert starts.mean() == pytest.approx(p_on / (p_on + p_off), abs=0.03)


def test_markov_state_depends_only_on_seed_and_earlier_rounds():
    m = MarkovOnOff([0.1, 0.5, 0.9], [0.4, 0.2, 0.6])
    t = trace(m, 25, 3, seed=9)
    for r in (0, 1, 13, 24):  # without `previous`, the chain is run from round 0: the same state
        np.testing.assert_array_equal(m.available(r, 3, 9), t[r])
    np.testing.assert_array_equal(m.step(5, t[4], seed=9), t[5])
    np.testing.assert_array_equal(m.start(3, seed=9), t[0])


def test_markov_stuck_chain_is_its_start():
    m = MarkovOnOff(0.0, 1.0)  # once off, never back on; stationary P(on) = 0
    assert not trace(m, 5, 10).any()
    t = trace(MarkovOnOff([1.0, 0.0], [0.0, 1.0]), 6, 2)
    assert t[:, 0].all() and not t[:, 1].any()


def test_churn_presence():
    c = Churn(join_round=[0, 2, 5], leave_round=[-1, 4, 6])
    expected = {0: [1, 0, 0], 1: [1, 0, 0], 2: [1, 1, 0], 3: [1, 1, 0], 4: [1, 0, 0], 5: [1, 0, 1], 6: [1, 0, 0],
                100: [1, 0, 0]}
    for r, want in expected.items():
        np.testing.assert_array_equal(c.available(r, 3, seed=0), np.array(want, dtype=bool))
    with pytest.raises(ValueError, match="join_round"):
        c.available(0, 4, 0)


@pytest.mark.parametrize("build, name", [
    (lambda: Bernoulli(1.2), "p"), (lambda: Bernoulli([0.5, -0.1]), r"p\[1\]"), (lambda: Bernoulli([]), "p"),
    (lambda: Bernoulli(math.nan), "p"),
    (lambda: Diurnal(0.5, 0.1, 0.9), "period"), (lambda: Diurnal(24, -0.1, 0.9), "low"),
    (lambda: Diurnal(24, 0.1, 1.1), "high"), (lambda: Diurnal(24, 0.8, 0.2), "low"),
    (lambda: MarkovOnOff(1.5, 0.1), "p_on"), (lambda: MarkovOnOff(0.1, -1), "p_off"),
    (lambda: MarkovOnOff(0.0, 0.0), "p_on"), (lambda: MarkovOnOff([0.1, 0.2], [0.1, 0.2, 0.3]), "p_off"),
    (lambda: Churn([0, 1], [-1]), "leave_round"), (lambda: Churn([0, -1], [-1, -1]), r"join_round\[1\]"),
    (lambda: Churn([3], [3]), r"leave_round\[0\]"), (lambda: Churn([0], [-2]), r"leave_round\[0\]"),
    (lambda: Churn([], []), "join_round"),
])
def test_bad_parameters_are_named(build, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        build()


def test_bad_calls_are_named():
    with pytest.raises(ValueError, match=r"p must be one value per client \(3 values\), got \[0.1, 0.2\]"):
        Bernoulli([0.1, 0.2]).available(0, 3, 0)
    with pytest.raises(ValueError, match="round"):
        Bernoulli(0.5).available(-1, 3, 0)
    with pytest.raises(ValueError, match="num_clients"):
        Always().available(0, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        Bernoulli(0.5).available(0, 3, -5)
    with pytest.raises(ValueError, match="previous"):
        MarkovOnOff(0.2, 0.2).available(3, 3, 0, previous=np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="previous"):
        MarkovOnOff(0.2, 0.2).available(0, 3, 0, previous=np.ones(3, dtype=bool))
    with pytest.raises(TypeError, match="p"):
        Bernoulli("often")
