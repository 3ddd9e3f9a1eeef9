"""The virtual clock of one round, against hand-computed times."""
import math

import numpy as np
import pytest

from fedlab_utils.systems import clock


def three_clients():
    """Hand-made: 1 MB down and 0.5 MB up for everyone; speeds 100, 50, 10 samples/s; 5 steps of 10."""
    latency = np.array([0.1, 0.2, 0.5])
    down = clock.transfer_seconds(latency, 1e6, np.array([80.0, 8.0, 1.0]))       # 0.1+0.1, 0.2+1, 0.5+8
    up = clock.transfer_seconds(latency, 5e5, np.array([40.0, 4.0, 1.0]))         # 0.1+0.1, 0.2+1, 0.5+4
    comp = clock.compute_seconds(np.array([5, 5, 5]), np.array([10, 10, 10]), np.array([1.0, 1.0, 0.5]),
                                 np.array([100.0, 50.0, 10.0]))                    # 0.5, 1.0, 2.5
    return down, comp, up


def test_phase_formulas_by_hand():
    down, comp, up = three_clients()
    np.testing.assert_allclose(down, [0.2, 1.2, 8.5])
    np.testing.assert_allclose(comp, [0.5, 1.0, 2.5])
    np.testing.assert_allclose(up, [0.2, 1.2, 4.5])
    assert clock.transfer_seconds(0.0, 1e9, math.inf) == 0.0
    assert clock.compute_seconds(10, 16, 1.0, math.inf) == 0.0


def test_wait_all_ends_with_the_slowest_and_a_dropout_after_its_download():
    down, comp, up = three_clients()
    rc = clock.play(down, comp, up, [5, 5, 5], [False, False, False])
    assert rc.round_time == pytest.approx(8.5 + 2.5 + 4.5)
    assert list(rc.outcome) == ["completed"] * 3 and list(rc.steps_done) == [5, 5, 5]
    np.testing.assert_allclose(rc.phases[1], [[0, 1.2], [1.2, 2.2], [2.2, 3.4]])
    rc = clock.play(down, comp, up, [5, 5, 5], [False, False, True])
    assert rc.round_time == pytest.approx(8.5)  # the dropped client ends after its download, still the last
    assert list(rc.outcome) == ["completed", "completed", "dropped"] and rc.steps_done[2] == 0
    np.testing.assert_allclose(rc.busy, [0.9, 3.4, 8.5])


def test_deadline_cuts_late_clients_and_ends_the_round_there():
    down, comp, up = three_clients()
    rc = clock.play(down, comp, up, [5, 5, 5], [False] * 3, policy="deadline", deadline=5.0)
    assert list(rc.outcome) == ["completed", "completed", "late"]
    assert rc.round_time == 5.0 and rc.steps_done[2] == 0
    np.testing.assert_allclose(rc.phases[2], [[0, 5.0], [5.0, 5.0], [5.0, 5.0]])
    assert rc.busy[2] == pytest.approx(5.0)
    rc = clock.play(down, comp, up, [5, 5, 5], [False] * 3, policy="deadline", deadline=100.0)
    assert rc.round_time == pytest.approx(15.5) and rc.completed.all()


def test_partial_work_sends_the_steps_done_by_the_deadline():
    down, comp, up = three_clients()
    # client 2: 8.5 down + 0.5 s per step + 4.5 up; deadline 14.6 leaves 1.6 s: 3 steps
    rc = clock.play(down, comp, up, [5, 5, 5], [False] * 3, policy="partial_work", deadline=14.6)
    assert list(rc.outcome) == ["completed", "completed", "partial"] and list(rc.steps_done) == [5, 5, 3]
    np.testing.assert_allclose(rc.phases[2], [[0, 8.5], [8.5, 10.0], [10.0, 14.5]])
    assert rc.round_time == 14.6 and rc.completed.all()
    rc = clock.play(down, comp, up, [5, 5, 5], [False] * 3, policy="partial_work", deadline=13.2)
    assert rc.outcome[2] == "late" and rc.steps_done[2] == 0  # not even one step fits


def test_over_select_keeps_the_first_k_to_finish():
    down, comp, up = three_clients()
    rc = clock.play(down, comp, up, [5, 5, 5], [False] * 3, policy="over_select", keep=2)
    assert list(rc.outcome) == ["completed", "completed", "late"]
    assert rc.round_time == pytest.approx(3.4)
    rc = clock.play(down, comp, up, [5, 5, 5], [True, False, False], policy="over_select", keep=2)
    assert list(rc.outcome) == ["dropped", "completed", "completed"] and rc.round_time == pytest.approx(15.5)
