"""flu.plots.systems and flu.widgets.systems (notebook 07): what each figure must draw."""
import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import QuadMesh  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import fedlab_utils as flu  # noqa: E402
from fedlab_utils.views.plots import systems as ps  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def timeline():
    """Round 2 starts at t = 10: client 0 completes, 1 is late (cut at 4 s), 2 dropped after its download."""
    rows = [(1, 0, "download", 0.0, 1.0, "completed"), (1, 0, "compute", 1.0, 5.0, "completed"),
            (1, 0, "upload", 5.0, 6.0, "completed"),
            (2, 0, "download", 10.0, 10.5, "completed"), (2, 0, "compute", 10.5, 12.0, "completed"),
            (2, 0, "upload", 12.0, 12.5, "completed"),
            (2, 1, "download", 10.0, 11.0, "late"), (2, 1, "compute", 11.0, 14.0, "late"),
            (2, 1, "upload", 14.0, 14.0, "late"),
            (2, 2, "download", 10.0, 10.2, "dropped")]
    return pd.DataFrame(rows, columns=["round", "client", "phase", "start", "end", "outcome"])


def bars(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_timeline_draws_one_bar_per_phase_from_the_round_start():
    ax = ps.plot_timeline(timeline(), 2, deadline=4.0)
    drawn = bars(ax)
    assert len(drawn) == 7
    lefts = sorted(round(b.get_x(), 9) for b in drawn)
    assert lefts[0] == 0.0 and max(b.get_x() + b.get_width() for b in drawn) == pytest.approx(4.0)
    late = [b for b in drawn if b.get_alpha() is not None and b.get_alpha() < 1]
    assert len(late) == 4                                     # client 1's three phases and 2's download
    assert any(b.get_hatch() for b in late)
    assert {to_hex(b.get_facecolor()[:3]) for b in drawn} == {to_hex(c) for c in ps.PHASE_COLORS.values()}
    vlines = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [4.0, 4.0]]
    assert len(vlines) == 1                                   # the deadline
    crosses = [ln for ln in ax.get_lines() if ln.get_marker() == "x"]
    assert len(crosses) == 1 and crosses[0].get_xdata()[0] == pytest.approx(0.2)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["client 0", "client 1", "client 2"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "late" in legend and any("deadline" in t for t in legend)


def test_timeline_round_must_exist():
    with pytest.raises(ValueError, match="round"):
        ps.plot_timeline(timeline(), 7)
    with pytest.raises(ValueError, match="timeline"):
        ps.plot_timeline(timeline().drop(columns="phase"))


def run_table():
    r = np.arange(4)
    return pd.concat([pd.DataFrame({"policy": p, "round": r, "virtual_time": r * dt, "accuracy": 0.2 + 0.2 * r,
                                    "bytes_up": r * 10})
                      for p, dt in (("wait_all", 5.0), ("deadline", 2.0))], ignore_index=True)


def test_accuracy_vs_time_one_line_per_policy_in_its_colour():
    ax = ps.plot_accuracy_vs_time(run_table(), target=0.5)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert to_hex(lines["wait_all"].get_color()) == ps.POLICY_COLORS["wait_all"]
    assert to_hex(lines["deadline"].get_color()) == ps.POLICY_COLORS["deadline"]
    np.testing.assert_allclose(lines["deadline"].get_xdata(), [0, 2, 4, 6])
    assert any(ln.get_linestyle() == ":" for ln in ax.get_lines())          # the target
    assert ax.get_ylim()[1] == 1.0 and ax.get_xlabel() == "virtual time (s)"
    ax2 = ps.plot_curve(run_table().rename(columns={"policy": "compression"}), "bytes_up", hue="compression")
    assert len(ax2.get_lines()) == 2


def test_participation_map_colours_every_cell():
    ax = ps.plot_participation(timeline(), num_clients=4)
    mesh = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(mesh) == 1
    codes = np.asarray(mesh[0].get_array()).reshape(4, 2)       # clients x rounds
    names = list(ps.OUTCOME_COLORS)
    grid = [[names[int(v)] for v in row] for row in codes]
    assert grid == [["completed", "completed"], ["idle", "late"], ["idle", "dropped"], ["idle", "idle"]]
    ordered = ps.plot_participation(timeline(), num_clients=4, order=[2, 1, 0, 3])
    codes = np.asarray([c for c in ordered.collections if isinstance(c, QuadMesh)][0].get_array()).reshape(4, 2)
    assert names[int(codes[0, 1])] == "dropped"
    with pytest.raises(ValueError, match="timeline"):
        ps.plot_participation(timeline().assign(outcome="lost"))


def test_energy_bars_per_client_and_policy_with_the_lost_part():
    df = pd.DataFrame({"policy": ["wait_all"] * 3 + ["deadline"] * 3, "client": [0, 1, 2] * 2,
                       "energy_j": [10.0, 20.0, 30.0, 10.0, 8.0, 30.0], "wasted_j": [0, 0, 0, 0, 8.0, 0]})
    ax = ps.plot_energy(df)
    drawn = bars(ax)
    heights = sorted(round(b.get_height(), 9) for b in drawn if b.get_height() > 0)
    # useful parts (total - lost) of six bars, plus deadline's lost part of client 1 (8 J) on a zero bar
    assert heights == sorted([10.0, 20.0, 30.0, 10.0, 30.0, 8.0])
    lost = [b for b in drawn if b.get_hatch() and b.get_height() > 0]
    assert len(lost) == 1 and lost[0].get_y() == 0.0 and lost[0].get_height() == 8.0


def test_device_plots():
    dev = flu.lessons.systems.device_table(flu.systems.profiles("phones", 6, seed=0), flu.models.mlp(4, 3, 2))
    ax = ps.plot_devices(dev)
    assert sum(len(c.get_offsets()) for c in ax.collections) == 6 and ax.get_xscale() == "log"
    ax = ps.plot_round_cost(dev)
    assert len(bars(ax)) == 3 * 6
    top = max(b.get_x() + b.get_width() for b in bars(ax))
    assert top == pytest.approx(dev.round_s.max())


# ------------------------------------------------------------------ the panel

def small_federation():
    g = torch.Generator().manual_seed(0)
    clients = [(torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)) for n in (8, 12, 6, 10)]
    return flu.data.Federation.from_clients(clients, test=clients)


def test_panel_recomputes_and_reports_a_deadline_too_small():
    from fedlab_utils.views.widgets import systems as sw
    fed = small_federation()
    panel = sw.systems_panel(fed, flu.models.logistic(3, 2), policy="deadline", deadline=1.0, num_rounds=2,
                             clients_per_round=3, target=0.5)
    assert panel.error is None and panel.calls == 1
    assert set(panel.result["policy"]) == {"wait_all", "deadline"}
    assert not panel.deadline.disabled
    panel.policy.value = "over_select"
    assert panel.calls == 2 and set(panel.result["policy"]) == {"wait_all", "over_select"}
    assert panel.deadline.disabled
    panel.policy.value = "deadline"
    panel.deadline.value = 0.1                                  # below every client's round
    assert panel.error is not None and "deadline" in panel.error
    assert panel.speed_spread.continuous_update is False and panel.availability.continuous_update is False
