"""Simulation: every field checked and named; the staleness weight."""
import math

import numpy as np
import pandas as pd
import pytest

from fedlab_utils.systems import (Always, Bernoulli, Churn, Diurnal, MarkovOnOff, Simulation, profiles,
                                  staleness_weight)


@pytest.fixture
def prof():
    return profiles("phones", 4, seed=0)


def test_fields_and_defaults(prof):
    sim = Simulation(prof)
    assert [f for f in Simulation.__dataclass_fields__] == [
        "profiles", "availability", "churn", "policy", "deadline", "over_select", "aggregation", "buffer_size",
        "staleness", "seed"]
    assert (sim.availability, sim.churn, sim.policy, sim.deadline, sim.over_select, sim.aggregation,
            sim.buffer_size, sim.staleness, sim.seed) == ("always", None, "wait_all", None, 1.0, "sync", None, 0.5, 0)
    pd.testing.assert_frame_equal(sim.profiles, prof)
    assert sim.num_clients == 4
    with pytest.raises(AttributeError):
        sim.seed = 3  # frozen


def test_profiles_are_a_checked_copy(prof):
    sim = Simulation(prof)
    prof.loc[0, "samples_per_s"] = 1.0
    assert sim.profiles.loc[0, "samples_per_s"] != 1.0
    assert Simulation(profiles("phones", 4)) == Simulation(profiles("phones", 4))
    assert Simulation(profiles("phones", 4)) != Simulation(profiles("phones", 4), seed=1)
    assert Simulation(profiles("phones", 4)) != Simulation(profiles("phones", 4, seed=1))
    assert "4 clients" in repr(sim)


def test_valid_combinations(prof):
    Simulation(prof, availability=Bernoulli([0.5, 0.6, 0.7, 0.8]), churn=Churn([0, 0, 3, 1], [-1, 5, -1, 9]))
    Simulation(prof, availability=Diurnal(24, 0.2, 0.9), policy="deadline", deadline=30)
    Simulation(prof, availability=MarkovOnOff(0.2, 0.1), policy="partial_work", deadline=12.5)
    Simulation(prof, availability=Always(), policy="over_select", over_select=1.3)
    Simulation(prof, aggregation="fedbuff", buffer_size=3, staleness=0.0)
    Simulation(prof, aggregation="fedasync", staleness=1.0, seed=2 ** 63 - 1)
    assert Simulation(prof, policy="deadline", deadline=3).deadline == 3.0


@pytest.mark.parametrize("kwargs, name", [
    (dict(availability="sometimes"), "availability"),
    (dict(availability=Bernoulli([0.5, 0.5])), "availability"),
    (dict(availability=MarkovOnOff([0.1] * 3, 0.2)), "availability"),
    (dict(availability=Churn([0] * 4, [-1] * 4)), "availability"),
    (dict(churn=Churn([0, 0], [-1, -1])), "churn"),
    (dict(policy="fastest"), "policy"),
    (dict(policy="deadline"), "deadline"),
    (dict(policy="deadline", deadline=0), "deadline"),
    (dict(policy="partial_work", deadline=-1.0), "deadline"),
    (dict(policy="partial_work", deadline=math.inf), "deadline"),
    (dict(deadline=10.0), "deadline"),
    (dict(policy="over_select", over_select=0.9), "over_select"),
    (dict(over_select=1.5), "over_select"),
    (dict(aggregation="gossip"), "aggregation"),
    (dict(aggregation="fedasync", policy="deadline", deadline=5.0), "policy"),
    (dict(aggregation="fedbuff", buffer_size=0), "buffer_size"),
    (dict(buffer_size=4), "buffer_size"),
    (dict(staleness=-0.5), "staleness"),
    (dict(staleness=math.nan), "staleness"),
    (dict(seed=-1), "seed"),
    (dict(seed=2 ** 63), "seed"),
])
def test_bad_fields_are_named(prof, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}"):
        Simulation(prof, **kwargs)


def test_bad_types_and_profiles(prof):
    with pytest.raises(TypeError, match="profiles"):
        Simulation(prof.to_numpy())
    with pytest.raises(TypeError, match="availability"):
        Simulation(prof, availability=0.5)
    with pytest.raises(TypeError, match="churn"):
        Simulation(prof, churn=[0, 1])
    with pytest.raises(TypeError, match="buffer_size"):
        Simulation(prof, aggregation="fedbuff", buffer_size=2.5)
    with pytest.raises(TypeError, match="seed"):
        Simulation(prof, seed=1.0)
    bad = prof.copy()
    bad.loc[2, "dropout"] = 2.0
    with pytest.raises(ValueError, match=r"profiles\['dropout'\] .* client 2"):
        Simulation(bad)
    with pytest.raises(ValueError, match="profiles"):
        Simulation(prof.iloc[:0])


def test_staleness_weight():
    assert staleness_weight(0, 0.5) == 1.0
    assert staleness_weight(3, 0.5) == pytest.approx(0.5)         # 4 ** -0.5
    assert staleness_weight(7, 1 / 3) == pytest.approx(0.5)       # 8 ** -(1/3)
    assert staleness_weight(9, 1.0) == pytest.approx(0.1)
    assert staleness_weight(1000, 0.0) == 1.0
    np.testing.assert_allclose(staleness_weight(np.array([0, 1, 3]), 2.0), [1.0, 0.25, 1 / 16])
    with pytest.raises(ValueError, match="staleness"):
        staleness_weight(1, -1.0)
    with pytest.raises(ValueError, match="^t must"):
        staleness_weight(-1, 0.5)
    with pytest.raises(TypeError, match="^t must"):
        staleness_weight(True, 0.5)
