"""The interactive panels (``flu.widgets``) and the pure compute behind notebooks 00-01's panels
(``flu.lessons.explore``).

Panels are built headless (no kernel): a control's ``.value`` set from Python fires the same
observer the browser would, so each test checks that the wired compute function ran with the
new arguments and that the panel kept its result.
"""
import ipywidgets as W
import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils.lessons import explore
from fedlab_utils.lessons import fewshot as lf
from fedlab_utils.views import widgets as fw

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def digits():
    return flu.data.load_dataset("digits")


# Small federation settings so every FedAvg test stays well under a second or two.
SMALL = dict(num_rounds=3, local_steps=2, clients_per_round=4, num_clients=8, model="logistic")


# ----------------------------------------------------------------------------- explore

@pytest.mark.parametrize("scheme", explore.SCHEMES)
def test_partition_summary_matches_the_partition_module(digits, scheme):
    counts, metrics = explore.partition_summary(digits.y, scheme, num_clients=12, alpha=0.3,
                                                classes_per_client=2, sigma=1.0, seed=3)
    part = explore.make_partition(digits.y, scheme, num_clients=12, alpha=0.3, classes_per_client=2,
                                  sigma=1.0, seed=3)
    assert part.name == scheme
    assert list(counts.columns) == ["client", "label", "count"]
    assert len(counts) == 12 * 10
    assert int(counts["count"].sum()) == len(digits.y)
    pd.testing.assert_frame_equal(counts, flu.partition.label_counts(part, digits.y))
    assert metrics == flu.partition.heterogeneity(part, digits.y)


def test_make_partition_reads_only_its_schemes_arguments(digits):
    y = digits.y
    assert explore.make_partition(y, "iid", alpha=0.01, sigma=3.0) == flu.partition.iid(y, 20, seed=0)
    assert explore.make_partition(y, "dirichlet", alpha=0.2, seed=4) == flu.partition.dirichlet(y, 20, 0.2, seed=4)
    assert (explore.make_partition(y, "shards", classes_per_client=3)
            == flu.partition.shards(y, 20, 3, seed=0))
    assert (explore.make_partition(y, "pathological", classes_per_client=3, alpha=5.0)
            == flu.partition.pathological(y, 20, 3, seed=0))
    assert (explore.make_partition(y, "quantity_skew", sigma=2.0)
            == flu.partition.quantity_skew(y, 20, 2.0, seed=0))
    assert (explore.make_partition(y, "inner_dirichlet", alpha=0.7)
            == flu.partition.inner_dirichlet(y, 20, 0.7, seed=0))
    for scheme, used in explore.SCHEME_PARAMS.items():
        assert set(used) <= {"alpha", "classes_per_client", "sigma"}, scheme


def test_make_partition_rejects_unknown_scheme(digits):
    with pytest.raises(ValueError, match="scheme must be one of"):
        explore.make_partition(digits.y, "random")


def test_metrics_table_rows_and_iid_reference(digits):
    _, metrics = explore.partition_summary(digits.y, "iid")
    table = explore.metrics_table(metrics, num_classes=10)
    assert list(table.columns) == ["metric", "value", "formula", "range", "iid"]
    assert list(table.metric) == ["js_divergence", "emd", "effective_classes", "size_gini", "size_cv"]
    assert table.set_index("metric").loc["effective_classes", "iid"] == "10"
    assert np.allclose(table.value, [metrics[k] for k in table.metric])
    with pytest.raises(ValueError, match="metrics must be"):
        explore.metrics_table({"emd": 0.1})


def test_fedavg_curves_returns_history_metrics_with_partition_column(digits):
    m = explore.fedavg_curves(alpha=0.3, iid_reference=True, **SMALL)
    assert list(m.columns) == ["round", "client", "split", "model", "metric", "value", "partition", "alpha"]
    assert set(m.partition) == {"Dirichlet split", "IID split"}
    assert set(m["round"]) == {0, 1, 2, 3}
    dirichlet = m[m.partition == "Dirichlet split"].drop(columns=["partition", "alpha"]).reset_index(drop=True)
    part = flu.partition.dirichlet(digits.y, 8, 0.3, seed=0)
    fed = flu.data.federate(digits.X, digits.y, part, test_fraction=0.2, seed=0, shape=digits.shape)
    hist = flu.run(flu.models.logistic(64, 10, seed=0), fed, "fedavg", num_rounds=3, local_steps=2,
                   client_lr=0.1, batch_size=16, clients_per_round=4, progress=False, seed=0)
    pd.testing.assert_frame_equal(dirichlet, hist.metrics)
    assert m.loc[m.partition == "IID split", "alpha"].eq(np.inf).all()


def test_fedavg_curves_restores_the_thread_count():
    before = torch.get_num_threads()
    explore.fedavg_curves(**SMALL, num_threads=1)
    assert torch.get_num_threads() == before


def test_alpha_sweep_one_row_per_alpha_and_seed(digits):
    df = explore.alpha_sweep((0.05, 50.0), seeds=(0, 1), num_rounds=2, local_steps=1, num_clients=8,
                             clients_per_round=None, model="logistic")
    assert list(df.columns[:2]) == ["alpha", "seed"]
    assert len(df) == 4
    assert {"js_divergence", "emd", "effective_classes", "size_gini", "size_cv", "accuracy", "loss"} <= set(df)
    low, high = df[df.alpha == 0.05], df[df.alpha == 50.0]
    assert (low.js_divergence.to_numpy() > high.js_divergence.to_numpy()).all()
    row = df.iloc[0]
    part = flu.partition.dirichlet(digits.y, 8, 0.05, seed=0)
    assert row.js_divergence == flu.partition.heterogeneity(part, digits.y)["js_divergence"]


def test_images_by_client_shape(digits):
    part = flu.partition.iid(digits.y, 4, seed=0)
    fed = flu.data.federate(digits.X, digits.y, part, seed=0, shape=digits.shape)
    img = explore.images_by_client(fed, clients=[0, 3], per_client=5)
    assert img.shape == (2, 5, 8, 8)
    assert np.allclose(img[1, 0], fed.train[3][0][0].reshape(8, 8).numpy())


# ----------------------------------------------------------------------------- panels

def test_partition_explorer_builds_and_draws_once(digits):
    panel = fw.partition_explorer(digits.y, seed=1)
    assert isinstance(panel, W.VBox)
    assert set(panel.controls) == {"scheme", "alpha", "classes_per_client", "sigma", "num_clients", "seed",
                                   "kind", "normalize"}
    assert panel.calls == 1 and panel.error is None
    assert isinstance(panel.output, W.Output) and panel.output in panel.children
    counts, metrics = panel.result
    assert metrics == flu.partition.heterogeneity(flu.partition.dirichlet(digits.y, 20, 0.5, seed=1), digits.y)
    for name, widget in panel.controls.items():
        assert getattr(panel, name) is widget
        if hasattr(widget, "continuous_update"):
            assert widget.continuous_update is False


def test_partition_explorer_recomputes_with_the_new_values(digits, monkeypatch):
    panel = fw.partition_explorer(digits.y)
    calls = []
    real = explore.partition_summary

    def spy(y, scheme, **kw):
        calls.append((scheme, kw))
        return real(y, scheme, **kw)

    monkeypatch.setattr(explore, "partition_summary", spy)
    panel.alpha.value = 0.1
    assert calls[-1] == ("dirichlet", dict(num_clients=20, alpha=pytest.approx(0.1), classes_per_client=2,
                                           sigma=1.0, seed=0))
    assert panel.result[1] == flu.partition.heterogeneity(
        flu.partition.dirichlet(digits.y, 20, panel.alpha.value, seed=0), digits.y)
    panel.scheme.value = "pathological"
    panel.classes_per_client.value = 1
    panel.num_clients.value = 30
    assert calls[-1][0] == "pathological" and calls[-1][1]["classes_per_client"] == 1
    assert calls[-1][1]["num_clients"] == 30
    assert panel.result[1]["effective_classes"] == pytest.approx(1.0)
    assert panel.calls == 5


def test_partition_explorer_greys_out_unused_controls(digits):
    panel = fw.partition_explorer(digits.y, scheme="quantity_skew")
    assert panel.alpha.disabled and panel.classes_per_client.disabled and not panel.sigma.disabled
    panel.scheme.value = "inner_dirichlet"
    assert not panel.alpha.disabled and panel.classes_per_client.disabled and panel.sigma.disabled


def test_partition_explorer_reports_an_impossible_setting(digits):
    panel = fw.partition_explorer(digits.y, scheme="pathological", num_clients=4)
    before = panel.result
    panel.classes_per_client.value = 1          # 4 clients x 1 class cannot cover 10 classes
    assert panel.error is not None and "classes_per_client" in panel.error
    assert panel.result is before               # the last good result stays
    assert "classes_per_client" in panel.status.value
    panel.classes_per_client.value = 3
    assert panel.error is None


def test_partition_explorer_recomputes_once_per_change(digits):
    # (how long a redraw takes is measured by benchmarks/widget_redraw.py, not asserted here)
    panel = fw.partition_explorer(digits.y)
    for calls, alpha in enumerate((0.05, 0.2, 1.0), start=2):
        panel.alpha.value = alpha
        assert panel.calls == calls and panel.error is None
        want = flu.partition.heterogeneity(flu.partition.dirichlet(digits.y, 20, alpha, seed=0), digits.y)
        assert panel.result[1] == want
        assert panel.seconds > 0


def test_fedavg_panel_builds_and_reruns_with_new_values(monkeypatch):
    panel = fw.fedavg_panel(alpha=0.5, local_steps=2, clients_per_round=4, num_rounds=5, num_clients=8,
                            model="logistic", iid_reference=False)
    assert isinstance(panel, W.VBox) and panel.calls == 1 and panel.error is None
    assert set(panel.result.partition) == {"Dirichlet split"}
    for name in ("alpha", "local_steps", "clients_per_round", "client_lr", "num_rounds"):
        assert getattr(panel, name).continuous_update is False
    calls = []
    real = explore.fedavg_curves

    def spy(**kw):
        calls.append(kw)
        return real(**kw)

    monkeypatch.setattr(explore, "fedavg_curves", spy)
    panel.alpha.value = 0.1
    panel.local_steps.value = 3
    assert calls[-1]["alpha"] == pytest.approx(0.1) and calls[-1]["local_steps"] == 3
    assert calls[-1]["num_clients"] == 8 and calls[-1]["model"] == "logistic"
    assert panel.result["alpha"].iloc[0] == pytest.approx(0.1)
    assert panel.calls == 3


def test_fedavg_panel_shows_only_the_chosen_controls():
    panel = fw.fedavg_panel(num_rounds=5, num_clients=6, clients_per_round=3, model="logistic",
                            iid_reference=False, controls=("local_steps", "client_lr"))
    shown = [w for box in panel.children[1].children for w in box.children]
    assert shown == [panel.local_steps, panel.client_lr]
    assert panel.alpha is panel.controls["alpha"]
    with pytest.raises(ValueError, match="controls must be"):
        fw.fedavg_panel(num_rounds=5, num_clients=6, clients_per_round=3, controls=("beta",))


def test_draw_functions_return_figures(digits):
    counts, metrics = explore.partition_summary(digits.y, "shards")
    for kind in ("heatmap", "bars"):
        fig = fw.draw_partition(counts, metrics, kind=kind, title="shards")
        assert len(fig.axes) >= 2
        matplotlib.pyplot.close(fig)
    fig = fw.draw_curves(explore.fedavg_curves(**SMALL, iid_reference=True))
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["test accuracy", "train loss"]
    matplotlib.pyplot.close(fig)
    assert fw.metrics_html(metrics).startswith("<table")


# ----------------------------------------------------------------------------- few-shot panel (05)

def test_finetune_panel_builds_headless_and_reacts(digits):
    model = flu.models.mlp(64, 16, 10, seed=0)
    panel = fw.fewshot.finetune_panel(model, digits.X, digits.y, shape=digits.shape, shots=5, num_rounds=2,
                                      num_clients=4, local_steps=2)
    assert set(panel.controls) == {"shots", "alpha", "mode", "lora_rank", "num_rounds"}
    assert panel.calls == 1 and panel.error is None
    assert list(panel.result["mode"]) == ["pretrained", "none", "linear_probe"]
    assert panel.lora_rank.disabled
    for c in panel.controls.values():
        if hasattr(c, "continuous_update"):
            assert c.continuous_update is False
    first = panel.result
    panel.shots.value = 2
    assert panel.calls == 2 and panel.error is None
    assert not panel.result["accuracy"].equals(first["accuracy"])
    panel.mode.value = "lora"
    assert panel.calls == 3 and not panel.lora_rank.disabled
    assert "lora" in list(panel.result["mode"])
    rank2 = panel.result.set_index("mode").loc["lora", "trainable_params"]
    panel.lora_rank.value = 1
    assert panel.calls == 4
    assert panel.result.set_index("mode").loc["lora", "trainable_params"] < rank2


def test_draw_mode_draws_the_tables_it_is_given(digits):
    model = flu.models.mlp(64, 16, 10, seed=0)
    few = lf.few_shot_federation(digits.X, digits.y, shots=3, num_clients=4, seed=0, shape=digits.shape)
    summary, per_client, _ = lf.compare(model, few.federation, ("none", "linear_probe"), num_rounds=1,
                                        local_steps=1)
    dumbbells = lf.before_after_table(per_client, ("none", "linear_probe"))
    fig = fw.fewshot.draw_mode(summary, dumbbells, title="one setting")
    ax_ba, ax_cost = fig.axes[:2]
    assert fig._suptitle.get_text() == "one setting"
    pre = float(summary.loc[summary["mode"] == "pretrained", "accuracy"].iloc[0])
    assert f"pretrained head: {pre:.2f}" in ax_cost.get_title()
    matplotlib.pyplot.close(fig)

