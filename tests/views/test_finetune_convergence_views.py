"""flu.plots.finetune_convergence and flu.widgets.finetune_convergence (notebook 09): what each
figure draws, and that each panel recomputes with the new control values (the compute stubbed
where it would train, the closed form run for real)."""
import matplotlib

matplotlib.use("Agg")

from types import SimpleNamespace  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

import fedlab_utils as flu  # noqa: E402
from fedlab_utils._core.labels import method_color  # noqa: E402
from fedlab_utils.lessons import drift  # noqa: E402
from fedlab_utils.lessons import finetune_convergence as fc  # noqa: E402
from fedlab_utils.views.plots import finetune_convergence as pf  # noqa: E402
from fedlab_utils.views.widgets import finetune_convergence as wf  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def dashed(line):
    return line.get_linestyle() not in ("-", "solid")


def stationarity_table():
    return pd.DataFrame({"mode": ["full"] * 3 + ["linear_probe"] * 3, "round": [0, 1, 2] * 2,
                         "grad_norm2": [9.0, 4.0, 1.0, 3.0, 2.0, 1.5],
                         "running_mean": [9.0, 6.5, 14 / 3, 3.0, 2.5, 6.5 / 3],
                         "b_dissimilarity": [1.0, 1.5, 2.0, 1.1, 1.2, 1.3], "client_drift": [np.nan, 0.3, 0.2] * 2,
                         "grad_dissimilarity": [1.0, 2.0, 3.0] * 2, "accuracy": [0.5, 0.7, 0.8, 0.5, 0.6, 0.9]})


# ------------------------------------------------------------------ plots

def test_plot_feature_constants_bars_are_the_values():
    het = pd.DataFrame({"space": ["a", "b", "c"], "Gamma": [0.2, 0.3, 0.1], "zeta2": [0.5, 0.4, 0.6]})
    ax = pf.plot_feature_constants(het)
    heights = sorted(round(p.get_height(), 12) for p in ax.patches)
    assert heights == sorted([0.2, 0.3, 0.1, 0.5, 0.4, 0.6])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="^table"):
        pf.plot_feature_constants(het.drop(columns="zeta2"))


def test_plot_stationarity_measured_solid_and_rate_dashed_in_the_modes_colour():
    rate = fc.nonconvex_rate(beta=2.0, gap0=1.0, local_steps=2, num_clients=3, num_rounds=2, G2=1.0)
    ax = pf.plot_stationarity(stationarity_table(), rate=rate, rate_mode="full")
    solid = [ln for ln in ax.get_lines() if not dashed(ln)]
    theory = [ln for ln in ax.get_lines() if dashed(ln)]
    assert [to_hex(ln.get_color()) for ln in solid] == [method_color("full"), method_color("linear_probe")]
    assert len(theory) == 1 and to_hex(theory[0].get_color()) == method_color("full")
    np.testing.assert_allclose(theory[0].get_ydata(), rate["bound"])
    np.testing.assert_allclose(solid[0].get_ydata(), [9.0, 6.5, 14 / 3])
    assert ax.get_yscale() == "log" and ax.get_legend() is not None


def test_plot_accuracy_vs_compute_scales_rounds_by_flops():
    ax = pf.plot_accuracy_vs_compute(stationarity_table(), {"full": 3e9, "linear_probe": 1e9}, target=0.85)
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 3]
    np.testing.assert_allclose(lines[0].get_xdata(), [0, 3, 6])
    np.testing.assert_allclose(lines[1].get_xdata(), [0, 1, 2])
    with pytest.raises(ValueError, match="^flops"):
        pf.plot_accuracy_vs_compute(stationarity_table(), {"full": 1.0})


def test_plot_lora_trace_and_sweep():
    trace = pd.DataFrame({"mode": ["lora"] * 3 + ["ffa_lora"] * 3, "lr": [0.1] * 6, "step": [0, 1, 2] * 2,
                          "ratio": [0.3, 0.4, 2.0, 0.3, 0.3, 0.3], "bound": [0.35, 0.5, 3.0, 0.35, 0.35, 0.35]})
    ax = pf.plot_lora_trace(trace)
    assert sum(dashed(ln) for ln in ax.get_lines()) == 2 and sum(not dashed(ln) for ln in ax.get_lines()) == 2
    sweep = pd.DataFrame({"alpha": [0.1] * 4 + [10.0] * 4, "client_lr": [0.1, 0.1, 1.0, 1.0] * 2,
                          "round": [0, 1, 0, 1] * 2, "accuracy": [0.5, 0.8, 0.5, 0.1, 0.5, 0.9, 0.5, 0.85],
                          "diverged": [False, False, True, True] + [False] * 4})
    ax = pf.plot_lora_sweep(sweep)
    crosses = [c for c in ax.collections if len(c.get_offsets())]
    assert len(crosses) == 1 and crosses[0].get_offsets()[0][0] == 1.0       # alpha 0.1 at lr 1 diverged
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata())]
    assert [len(ln.get_xdata()) for ln in lines] == [1, 2]
    assert ax.get_xscale() == "log"


def test_plot_curvature_colours_by_convexity():
    t = pd.DataFrame({"setting": ["probe", "lora"], "lam_min": [1e-3, -0.5], "convex_here": [True, False]})
    ax = pf.plot_curvature(t)
    colors = [to_hex(p.get_facecolor()) for p in ax.patches]
    assert colors == ["#2ca02c", "#d62728"] and ax.get_xscale() == "symlog"


def test_plot_bound_vs_measured_one_colour_per_setting():
    curves = pd.DataFrame({"inner_lr": [0.1] * 4 + [0.2] * 4, "round": [1, 2] * 4,
                           "kind": (["measured"] * 2 + ["bound"] * 2) * 2, "value": [1.0, 0.8, 9.0, 5.0] * 2})
    ax = pf.plot_bound_vs_measured(curves)
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata())]
    assert len(lines) == 4 and sum(dashed(ln) for ln in lines) == 2
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()


def test_plot_limits_distance_blocks_and_report():
    quad = drift.heterogeneous_quadratics(3)
    points, traj = fc.participation_points(quad, [1.0, 0.6, 0.3], num_rounds=4)
    ax = pf.plot_limits(points, traj)
    assert len([ln for ln in ax.get_lines() if len(ln.get_xdata()) == 5]) == 3
    ax = pf.plot_distance(traj, y="dist", hue="method")
    assert len(ax.get_lines()) == 3
    blocks = pd.DataFrame({"parameter": ["a", "b"], "clients": [1, 3], "grad_own": [0.1, 0.2], "grad_all": [0.5, 0.2]})
    ax = pf.plot_block_gradients(blocks)
    assert sorted(p.get_height() for p in ax.patches) == [0.1, 0.2, 0.2, 0.5]
    rep = fc.report_table({"image_probe": [0.8, 0.9], "compute_ratio": [2.9]})
    ax = pf.plot_report(rep)
    assert len(ax.get_yticklabels()) == (fc.REPORT["report"] <= 1).sum()
    with pytest.raises(ValueError, match="^points"):
        pf.plot_limits(points.drop(columns="kind"), traj)


# ------------------------------------------------------------------ panels

def probe_result():
    g = torch.Generator().manual_seed(0)
    clients = [(torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g))
               for n in (6, 8)]
    probe = flu.convergence.probe_problem(None, flu.data.Federation.from_clients(clients), num_classes=2)
    table, info = fc.probe_experiment(probe, l2=0.1, local_steps=2, num_rounds=3, batch_size=4)
    het = pd.DataFrame({"space": ["a", "b"], "Gamma": [0.2, 0.1], "zeta2": [0.3, 0.2]})
    return dict(table=table, info=info, heterogeneity=het, constants=info["constants"])


def test_probe_panel_recomputes_with_the_new_values(monkeypatch):
    seen = []
    result = probe_result()

    def stub(**kw):
        seen.append(kw)
        return result
    monkeypatch.setattr(wf.fc, "probe_scenario", stub)
    box = wf.probe_panel(shots=5, alpha=0.5)
    assert box.calls == 1 and box.error is None and seen[-1]["shots"] == 5
    assert type(box.children[1].children[0].children[0]).__name__ == "IntSlider"   # the first control: a slider
    box.shots.value = 7
    box.alpha.value = 2.0
    assert box.calls == 3 and seen[-1]["shots"] == 7 and seen[-1]["alpha"] == pytest.approx(2.0)
    assert box.result is result


def test_nonconvex_panel_recomputes_and_draws(monkeypatch):
    seen = []
    st = stationarity_table()
    st = st[st["mode"] == "full"]
    res = dict(stationarity=st, rate=fc.nonconvex_rate(beta=2.0, gap0=1.0, local_steps=2, num_clients=3, num_rounds=2,
                                                       G2=1.0), beta=2.0, G2=1.0, gap0=1.0, client_lr=0.02)

    def stub(**kw):
        seen.append(kw)
        return res
    monkeypatch.setattr(wf.fc, "nonconvex_scenario", stub)
    box = wf.nonconvex_panel()
    assert "lora" not in box.method.options                              # flu.run has no diagnostics for it
    box.method.value = "ffa_lora"
    assert box.error is None and box.calls == 2 and seen[-1]["mode"] == "ffa_lora"
    fig = wf.draw_nonconvex(res)
    assert len(fig.axes) == 3


def test_lora_panel_recomputes(monkeypatch):
    seen = []
    model = flu.models.mlp(4, [6], 3, dtype=torch.float64, seed=2)
    X, y = torch.randn(8, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    res = dict(trace=fc.lora_trace(model, X, y, lr=0.1, steps=2, layer=1, rank=2), client=0,
               sweep=pd.DataFrame({"alpha": 0.3, "client_lr": 0.1, "round": [0, 1], "accuracy": [0.5, 0.6],
                                   "dense_update": [0.0, 0.1], "diverged": False}))

    def stub(**kw):
        seen.append(kw)
        return res
    monkeypatch.setattr(wf.fc, "lora_scenario", stub)
    box = wf.lora_panel(client_lr=0.1)
    box.client_lr.value = 1.0
    box.mode.value = "ffa_lora"
    assert box.error is None and box.calls == 3
    assert seen[-1]["client_lr"] == pytest.approx(1.0) and seen[-1]["mode"] == "ffa_lora"


def test_perfedavg_panel_uses_known_runs_then_recomputes(monkeypatch):
    seen = []
    curves = pd.DataFrame({"inner_lr": 0.05, "round": [1, 2, 1, 2], "kind": ["measured"] * 2 + ["bound"] * 2,
                           "value": [1.0, 0.9, 5.0, 4.0]})
    summary = pd.DataFrame([dict(inner_lr=0.05, ratio=4.4, floor=0.1, personal=0.8)])

    def stub(model, fed, lrs, **kw):
        seen.append(lrs)
        return curves.assign(inner_lr=lrs[0]), summary.assign(inner_lr=lrs[0])
    monkeypatch.setattr(wf.fc, "perfedavg_sweep", stub)
    constants = SimpleNamespace(L=2.0)
    box = wf.perfedavg_panel(None, None, constants, inner_lr=0.05, client_lr=0.01, known={0.05: (curves, summary)})
    assert box.calls == 1 and seen == [] and box.error is None
    box.inner_lr.value = 0.2
    assert box.calls == 2 and seen[-1][0] == pytest.approx(0.2)
    assert box.inner_lr.max == pytest.approx(np.log10(0.5))              # the slider stops at 1/L


def test_participation_panel_moves_the_limit_with_the_spread():
    quad = drift.heterogeneous_quadratics(3)
    box = wf.participation_panel(quad, spread=0.0, num_rounds=5)
    first = box.result.set_index("label").loc["FedAvg, renormalised", "dist_to_opt"]
    assert first == pytest.approx(0.0, abs=1e-9)                         # everyone present: w*
    box.spread.value = 0.8
    later = box.result.set_index("label")
    assert box.calls == 2 and later.loc["FedAvg, renormalised", "dist_to_opt"] > 1e-3
    assert later.loc["re-weighted p_i / q_i", "dist_to_opt"] == pytest.approx(0.0, abs=1e-9)
    box.local_steps.value = 0                                             # below the slider: clamped to 1
    assert box.error is None
