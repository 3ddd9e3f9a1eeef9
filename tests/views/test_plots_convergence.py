"""flu.plots.convergence: what the figures of notebooks 02 and 03 must show.

Theory lines on top of the measured ones and named in the legend; settings of one panel told apart
by markers (and a note when their curves coincide); log-axis tick labels that do not overlap.
"""
import matplotlib

matplotlib.use("Agg")

import itertools  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import fedlab_utils as flu  # noqa: E402
from fedlab_utils.views.plots import convergence as pc  # noqa: E402

ROUNDS = np.arange(11)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def rate_frames(rhos={"FedAvg": 0.8, "SCAFFOLD": 0.5}):
    """Measured distances (a transient on top of rho^t) and the theory C rho^t, as rate_table returns them."""
    measured = pd.concat([pd.DataFrame({"method": m, "round": ROUNDS,
                                        "dist_fixed": rho ** ROUNDS * (1 + 0.5 * 0.3 ** ROUNDS)})
                          for m, rho in rhos.items()], ignore_index=True)
    theory = pd.concat([pd.DataFrame({"method": m, "round": ROUNDS, "value": rho ** ROUNDS})
                        for m, rho in rhos.items()], ignore_index=True)
    return measured, theory


def sweep_frame(values: dict, bound: float | None = 100.0):
    """Long form ``setting, iteration, kind, value`` of li_sweep, one measured curve per setting."""
    it = np.arange(0, 80, 5)
    rows = []
    for k, (name, curve) in enumerate(values.items()):
        rows.append(pd.DataFrame({"setting": name, "iteration": it, "kind": "measured", "value": curve(it)}))
        if bound is not None:
            rows.append(pd.DataFrame({"setting": name, "iteration": it, "kind": "bound",
                                      "value": bound * (1 + k) / (1 + it)}))
    return pd.concat(rows, ignore_index=True)


# ------------------------------------------------------------------ notebook 02: the rate panel

def test_theory_lines_are_drawn_on_top_dashed_and_in_the_legend():
    measured, theory = rate_frames()
    ax = pc.plot_distance(measured, theory=theory, y="dist_fixed")
    lines = ax.get_lines()
    solid = [ln for ln in lines if ln.get_linestyle() == "-"]
    dashed = [ln for ln in lines if ln.get_linestyle() == "--"]
    assert len(solid) == len(dashed) == 2
    # the theory is drawn over the measured curves, which are a little transparent
    assert min(ln.get_zorder() for ln in dashed) > max(ln.get_zorder() for ln in solid)
    assert all(ln.get_alpha() is not None and ln.get_alpha() < 1 for ln in solid)
    assert all(ln.get_alpha() in (None, 1.0) for ln in dashed)
    # each method's colour, the same for both kinds
    colours = [flu.plots.method_color(m) for m in ("FedAvg", "SCAFFOLD")]
    assert [ln.get_color() for ln in solid] == [ln.get_color() for ln in dashed] == colours
    # the legend names the methods and tells "measured" from "theory C rho^t" by line style
    leg = ax.get_legend()
    assert leg is not None
    texts = [t.get_text() for t in leg.get_texts()]
    assert texts[:2] == ["FedAvg", "SCAFFOLD"]
    assert "measured" in texts and any("theory" in t and "rho" in t for t in texts)
    handles = dict(zip(texts, leg.legend_handles))
    assert handles["measured"].get_linestyle() == "-"
    assert handles[next(t for t in texts if "theory" in t)].get_linestyle() == "--"


def test_distance_without_theory_leaves_the_legend_to_the_caller():
    measured, _ = rate_frames()
    ax = pc.plot_distance(measured, y="dist_fixed")
    assert ax.get_legend() is None and len(ax.get_lines()) == 2
    assert all(ln.get_alpha() in (None, 1.0) for ln in ax.get_lines())     # nothing drawn over them: not faded
    ax = pc.plot_distance(measured, y="dist_fixed", legend=True)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["FedAvg", "SCAFFOLD", "measured"]


# ------------------------------------------------------------------ notebook 03: the four-panel sweep

def test_settings_get_distinct_markers_named_in_the_legend():
    df = sweep_frame({"participation=full": lambda t: 1 / (1 + t),
                      "participation=li_scheme_1": lambda t: 1.01 / (1 + t),
                      "participation=li_scheme_2": lambda t: 0.99 / (1 + t)})
    ax = pc.plot_suboptimality(df)
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    assert len(solid) == 3
    markers = [ln.get_marker() for ln in solid]
    assert len(set(markers)) == 3 and "None" not in markers
    assert len({ln.get_color() for ln in solid}) == 3
    leg = ax.get_legend()
    texts = [t.get_text() for t in leg.get_texts()]
    assert texts == ["participation=full", "participation=li_scheme_1", "participation=li_scheme_2",
                     "measured", "bound (theory)"]
    # each setting's legend entry carries its curve's marker and colour
    for handle, line in zip(leg.legend_handles[:3], solid):
        assert handle.get_marker() == line.get_marker() and handle.get_color() == line.get_color()
    # the markers sit at different places along the nearly identical curves
    assert len({str(ln.get_markevery()) for ln in solid}) == 3
    # nearly equal is not equal: no "coincide" note
    assert not [t for t in ax.texts if "coincide" in t.get_text()]


def test_a_single_curve_has_no_markers_unless_asked():
    df = sweep_frame({"FedAvg (E=5)": lambda t: 1 / (1 + t)})
    assert all(ln.get_marker() in ("None", None, "") for ln in pc.plot_suboptimality(df).get_lines())
    assert all(ln.get_marker() == "o" for ln in pc.plot_suboptimality(df, markers=True).get_lines())


def test_coinciding_curves_are_found_and_noted_in_the_figure():
    same = lambda t: 1 / (1 + t)  # noqa: E731
    df = sweep_frame({"a": same, "b": lambda t: 2 / (1 + t), "c": same})
    assert pc.coinciding(df) == [["a", "c"]]
    ax = pc.plot_suboptimality(df)
    notes = [t.get_text() for t in ax.texts if "coincide" in t.get_text()]
    assert notes == ["curves coincide: a = c"]
    # a relative difference far above rounding is not coincidence
    df2 = sweep_frame({"a": same, "c": lambda t: (1 + 1e-6) / (1 + t)})
    assert pc.coinciding(df2) == []
    # different iterations (different E) are different curves even with equal values
    df3 = pd.concat([df[df.setting == "a"], df[df.setting == "c"].assign(iteration=lambda d: d.iteration * 2)])
    assert pc.coinciding(df3) == []


def _overlaps(fig, ax):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in ax.get_xticklabels(which="both")
             if t.get_visible() and t.get_text() and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
    return boxes, [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]


@pytest.mark.parametrize("iterations", [np.arange(5, 80, 5), np.arange(1, 301)])
def test_log_axis_tick_labels_do_not_overlap(iterations):
    # the notebook's layout: four panels side by side, each under a decade or a few decades wide
    df = pd.DataFrame({"setting": "FedAvg", "iteration": iterations, "kind": "measured",
                       "value": 1 / (1.0 + iterations)})
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), sharey=True, layout="constrained")
    for ax in axes:
        pc.plot_suboptimality(df, ax=ax)
    boxes, bad = _overlaps(fig, axes[1])
    assert len(boxes) >= 2 and not bad
    labels = [t.get_text() for t in axes[1].get_xticklabels() if t.get_text()]
    assert "10" in labels                                        # plain numbers, not 1x10^1
