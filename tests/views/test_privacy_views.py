"""Notebook 10's plots (``flu.plots.privacy``) and panels (``flu.widgets.privacy``): the plots
draw what their tables hold and name a bad table; the panels are built headless and recompute
with the new values when a control changes (as the browser would make them)."""
import math

import ipywidgets as W
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils.lessons import privacy as lp
from fedlab_utils.views.plots import privacy as pp
from fedlab_utils.views.widgets import privacy as pw

matplotlib.use("Agg")
DELTA = 1e-5


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _gallery(k=3, attacks=("a", "b")):
    rows = [dict(attack=a, kind=kind, slot=j, label=j, image=np.full((8, 8), j / 10))
            for a in attacks for kind in ("original", "recovered") for j in range(k)]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ plots

def test_plot_gallery_tiles_every_image_into_one_mosaic():
    ax = pp.plot_gallery(_gallery(k=3))
    mosaic = ax.images[0].get_array()
    assert mosaic.shape == (2 * 9, (3 + 2 + 3) * 9)         # two rows of 8x8 (+1 gap); blocks of 3 with a gap of 2
    assert float(mosaic[9, 9]) == pytest.approx(0.1)         # recovered row, slot 1 of attack "a"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["original", "recovered"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    with pytest.raises(ValueError, match="gallery must be"):
        pp.plot_gallery(_gallery().drop(columns="image"))
    with pytest.raises(ValueError, match="gallery"):
        pp.plot_gallery(_gallery().assign(kind="other"))


def test_plot_reconstruction_error_one_line_per_protection():
    t = pd.DataFrame(dict(shots=[1, 4, 1, 4], protection=["none", "none", "noise", "noise"],
                          relative_mse=[0.01, 0.1, 1.0, 2.0]))
    ax = pp.plot_reconstruction_error(t)
    lines = [ln for ln in ax.get_lines() if ln.get_label() in ("none", "noise")]
    assert [list(ln.get_ydata()) for ln in lines] == [[0.01, 0.1], [1.0, 2.0]]
    with pytest.raises(ValueError, match="table must be"):
        pp.plot_reconstruction_error(t.drop(columns="relative_mse"))


def test_plot_privacy_utility_draws_no_privacy_as_a_horizontal_line():
    t = pd.DataFrame(dict(alpha=[0.5] * 3, shots=[5] * 3, noise_multiplier=[0.0, 2.0, 6.0],
                          epsilon=[math.inf, 12.0, 3.0], accuracy=[0.9, 0.85, 0.8]))
    ax = pp.plot_privacy_utility(t)
    task = [ln for ln in ax.get_lines() if ln.get_label() == "alpha=0.5, shots=5"][0]
    assert list(task.get_xdata()) == [3.0, 12.0] and list(task.get_ydata()) == [0.8, 0.85]
    flat = [ln for ln in ax.get_lines() if list(ln.get_ydata()) == [0.9, 0.9]]
    assert len(flat) == 1 and flat[0].get_linestyle() == "--"
    with pytest.raises(ValueError, match="df must be"):
        pp.plot_privacy_utility(t.drop(columns="epsilon"))


def test_plot_lines_bound_histograms_and_costs_draw_their_columns():
    df = pd.DataFrame(dict(label=["x", "x", "y", "y"], round=[0, 1, 0, 1], epsilon=[0.0, 1.0, 0.0, math.inf]))
    ax = pp.plot_lines(df, "round", "epsilon")
    assert [len(ln.get_xdata()) for ln in ax.get_lines()] == [2, 1]          # inf skipped
    bound = pd.DataFrame(dict(noise_multiplier=[1.0] * 4, round=[1, 2, 1, 2], kind=["measured"] * 2 + ["bound"] * 2,
                              value=[0.5, 0.4, 2.0, 3.0]))
    ax = pp.plot_bound(bound, colors={1.0: "#000000"})
    assert [list(ln.get_ydata()) for ln in ax.get_lines()] == [[0.5, 0.4], [2.0, 3.0]]
    assert ax.get_lines()[1].get_linestyle() == "--"
    h = pd.DataFrame(dict(what=["a"] * 50 + ["b"] * 50, value=np.r_[np.zeros(50), np.linspace(0, 1, 50)]))
    ax = pp.plot_histograms(h, bins=10)
    assert len(ax.patches) == 2
    costs = pd.DataFrame(dict(method=["plaintext", "masking"], bytes=[100.0, 250.0]))
    ax = pp.plot_costs(costs)
    assert [p.get_width() for p in ax.patches] == [100.0, 250.0] and ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="costs must be"):
        pp.plot_costs(costs, "seconds")


# ------------------------------------------------------------------ panels

def _sliders_release_only(panel):
    for c in panel.controls.values():
        if hasattr(c, "continuous_update"):
            assert c.continuous_update is False


def test_accounting_panel_recomputes_epsilon_and_ignores_the_clip():
    panel = pw.accounting_panel(noise_multiplier=2.0, clip=1.0, sample_rate=1.0, rounds=10, delta=DELTA,
                                num_clients=50)
    assert isinstance(panel, W.VBox) and panel.calls == 1 and panel.error is None
    first = list(panel.controls.values())[0]
    assert isinstance(first, W.FloatSlider) and list(panel.controls)[0] == "noise_multiplier"
    _sliders_release_only(panel)
    assert panel.result.epsilon.iloc[0] == flu.privacy.epsilon(2.0, 1.0, 10, DELTA)
    panel.noise_multiplier.value = 4.0
    assert panel.calls == 2 and panel.result.epsilon.iloc[0] == flu.privacy.epsilon(4.0, 1.0, 10, DELTA)
    eps = panel.result.epsilon.iloc[0]
    panel.clip.value = 0.1
    assert panel.calls == 3 and panel.result.epsilon.iloc[0] == eps
    assert panel.result.noise_std.iloc[0] == pytest.approx(4.0 * 0.1 / (1.0 * 50))
    panel.rounds.value = 20
    assert panel.result.epsilon.iloc[0] == flu.privacy.epsilon(4.0, 1.0, 20, DELTA)
    assert panel.result.epsilon_prv.iloc[0] is None


def test_accounting_panel_can_add_the_prv_accountant():
    panel = pw.accounting_panel(noise_multiplier=3.0, sample_rate=0.5, rounds=5, delta=DELTA, prv=True)
    assert panel.error is None
    assert panel.result.epsilon_prv.iloc[0] == flu.privacy.epsilon(3.0, 0.5, 5, DELTA, accountant="prv")


def test_leak_panel_reruns_the_attack_for_the_chosen_setting():
    task = lp.digits_task(shots=1, alpha=10.0, num_clients=20, seed=0)
    X, y = lp.distinct_first(*task.federation.train[0])
    model = flu.models.mlp(64, 16, 10, seed=0)
    prot = {"none": (math.inf, 0.0), "noise": (0.1, 1.0)}
    panel = pw.leak_panel(model, X, y, protections=prot, shots=1, steps=5)
    assert panel.calls == 1 and panel.error is None and panel.result.shots.iloc[0] == 1
    assert all(isinstance(c, W.Dropdown) for c in panel.controls.values())      # no slider before the accounting panel
    panel.shots.value = 2
    assert panel.calls == 2 and panel.result.shots.iloc[0] == 2 and panel.result.noise_norm.iloc[0] == 0
    panel.protection.value = "noise"
    assert panel.calls == 3 and panel.result.noise_norm.iloc[0] > 0
    with pytest.raises(ValueError, match="protections"):
        pw.leak_panel(model, X, y, protections={})


def test_utility_panel_trains_with_the_new_noise_multiplier():
    task = lp.digits_task(shots=2, alpha=1.0, num_clients=10, seed=0)
    model = flu.models.mlp(64, 8, 10, seed=0)
    panel = pw.utility_panel(task, model, noise_multiplier=2.0, clip=0.5, num_rounds=2, local_steps=1, delta=DELTA)
    assert panel.calls == 1 and panel.error is None
    _sliders_release_only(panel)
    eps = panel.result[panel.result["round"] == 2].set_index("label")["epsilon"]
    assert eps["FedAvg"] == math.inf and eps["DP-FedAvg z=2, C=0.5"] == flu.privacy.epsilon(2.0, 1.0, 2, DELTA)
    panel.noise_multiplier.value = 5.0
    eps = panel.result[panel.result["round"] == 2].set_index("label")["epsilon"]
    assert panel.calls == 2 and eps["DP-FedAvg z=5, C=0.5"] == flu.privacy.epsilon(5.0, 1.0, 2, DELTA)
    panel.num_rounds.value = 3
    assert panel.calls == 3 and panel.result["round"].max() == 3


def test_clipping_panel_switches_between_fixed_and_adaptive():
    task = lp.digits_task(shots=2, alpha=1.0, num_clients=10, seed=0)
    model = flu.models.mlp(64, 8, 10, seed=0)
    panel = pw.clipping_panel(task, model, clip=0.1, target_quantile=None, num_rounds=3, local_steps=1)
    assert panel.calls == 1 and panel.error is None and panel.clip_lr.disabled
    assert all(isinstance(c, W.Dropdown) for c in panel.controls.values())
    assert (panel.result.loc[panel.result["round"] > 0, "clip"] == 0.1).all()
    panel.target_quantile.value = 0.5
    assert panel.calls == 2 and not panel.clip_lr.disabled
    clips = panel.result["clip"].to_numpy()
    assert clips[1] == 0.1 and clips[2] != 0.1                      # round 1 uses the start, round 2 the update
    dp = flu.privacy.DPFedAvg(clip=0.1, noise_multiplier=2.0, target_quantile=0.5, clip_lr=1.0)
    hist = lp.train(model, task.federation, dp, num_rounds=3, local_steps=1)
    np.testing.assert_array_equal(clips[1:], hist.rounds["clip"].to_numpy())
    panel.clip.value = 10.0
    assert panel.calls == 3 and panel.result["clip"].iloc[1] == 10.0


def test_secure_panel_recomputes_and_refuses_too_many_dropouts():
    g = torch.Generator().manual_seed(0)
    ups = [0.01 * torch.randn(200, generator=g) for _ in range(6)]
    panel = pw.secure_panel(ups, clients=4, dropped=0)
    assert panel.calls == 1 and panel.error is None
    _sliders_release_only(panel)
    _, tr = flu.privacy.secure_sum(ups[:4], seed=0)
    assert panel.result.set_index("phase")["bytes"].to_dict() == {k: v["bytes"] for k, v in tr["phases"].items()}
    assert panel.dropped.max == 2
    panel.clients.value = 6
    assert panel.dropped.max == 4
    _, tr = flu.privacy.secure_sum(ups, seed=0)
    assert panel.result["bytes"].sum() == tr["bytes"]
    panel.dropped.value = 3                                 # threshold t = 4 of 6: only 3 survive
    assert panel.error is not None and "dropped" in panel.error


def test_encoded_is_the_ring_element_secure_sum_masks():
    x = torch.tensor([0.5, -0.5, 0.0])
    e = pw.encoded(x)
    assert e[0] == pytest.approx(2.0 ** 23 / 2.0 ** 64) and e[2] == 0.0
    assert e[1] == pytest.approx(1 - 2.0 ** 23 / 2.0 ** 64)
