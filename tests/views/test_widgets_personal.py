"""Notebook 06's panel and figure helpers (``flu.widgets.personal``), built headless: setting a
control's ``.value`` from Python fires the observer the browser would, so each test checks that
the wired compute (``flu.lessons.personal.scenario``) ran again with the new arguments."""
import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import pytest

import fedlab_utils as flu
from fedlab_utils.lessons import personal as lp
from fedlab_utils.views.widgets import personal as pw

matplotlib.use("Agg")

SMALL = dict(num_clients=12, num_unseen=4, num_rounds=2, local_steps=2, client_lr=0.05, batch_size=8, steps=(0, 1, 3))


@pytest.fixture(scope="module")
def digits():
    return flu.data.load_dataset("digits")


def _reference(digits, **settings):
    fixed = {**SMALL, "lr": SMALL["client_lr"], "eval_every": SMALL["num_rounds"], "seed": 0}
    return lp.scenario(digits.X, digits.y, **fixed, **settings).table


def test_panel_recomputes_when_a_control_changes(digits):
    panel = pw.personal_panel(digits.X, digits.y, shots=3, alpha=0.5, method="Ditto", lam=0.1, **SMALL)
    assert list(panel.controls) == ["shots", "alpha", "method", "inner_steps", "inner_lr", "lam"]
    assert panel.calls == 1 and panel.error is None
    for c in panel.controls.values():
        if hasattr(c, "continuous_update"):
            assert c.continuous_update is False
    pd.testing.assert_frame_equal(panel.result, _reference(digits, method="Ditto", shots=3, alpha=0.5, lam=0.1,
                                                           inner_steps=1, inner_lr=0.05))
    panel.shots.value = 2
    assert panel.calls == 2 and panel.error is None
    pd.testing.assert_frame_equal(panel.result, _reference(digits, method="Ditto", shots=2, alpha=0.5, lam=0.1,
                                                           inner_steps=1, inner_lr=0.05))
    panel.method.value = "FedRep"
    assert panel.calls == 3 and set(panel.result.method) == {"FedRep"}
    assert panel.lam.disabled and not panel.inner_steps.disabled and panel.inner_lr.disabled
    panel.inner_steps.value = 3
    assert panel.calls == 4
    pd.testing.assert_frame_equal(panel.result, _reference(digits, method="FedRep", shots=2, alpha=0.5, lam=0.1,
                                                           inner_steps=3, inner_lr=0.05))


def test_panel_shows_a_rejected_setting(digits):
    panel = pw.personal_panel(digits.X, digits.y, shots=3, method="FedAvg + fine-tuning",
                              **{**SMALL, "num_clients": 20, "num_unseen": 6})
    assert panel.error is None and panel.inner_steps.disabled and panel.lam.disabled
    panel.shots.value = 40                                 # leaves no query digits on most clients
    assert panel.calls == 2 and panel.error is not None and "shots" in panel.error
    assert "shots" in panel.status.value
    panel.shots.value = 3
    assert panel.error is None


def test_panel_refuses_an_unknown_method(digits):
    with pytest.raises(ValueError, match="method"):
        pw.personal_panel(digits.X, digits.y, method="Local only", **SMALL)


def test_draw_groups_and_protocol_html(digits):
    sc = lp.scenario(digits.X, digits.y, method="FedRep", shots=3, **{**SMALL, "lr": 0.05})
    fig = pw.draw_groups(sc.tables, sc.best, "FedRep", title="a title")
    assert len(fig.axes) == 2 and fig._suptitle.get_text() == "a title"
    assert fig.axes[1].get_title().startswith(f"unseen clients, {sc.best['unseen']} steps")
    plt.close(fig)
    with pytest.raises(ValueError, match="best"):
        pw.draw_groups(sc.tables, {"seen": 0}, "FedRep")
    html = pw.protocol_html(sc.table)
    assert html.startswith("<table") and "FedRep" in html and "worst_10pct" in html
    with pytest.raises(ValueError, match="table"):
        pw.protocol_html(sc.table.drop(columns="group"))


def test_draw_ecdf_dashes_fedavg_fine_tuning_only():
    table = pd.DataFrame({"method": ["FedAvg"] * 3 + ["FedAvg + fine-tuning"] * 3, "client": [0, 1, 2] * 2,
                          "metric": "accuracy", "value": [0.1, 0.5, 0.7, 0.2, 0.6, 0.9]})
    ax = pw.draw_ecdf(table)
    legend = ax.get_legend()
    styles = {t.get_text(): h.get_linestyle() for t, h in zip(legend.get_texts(), legend.legend_handles)}
    lines = {matplotlib.colors.to_hex(line.get_color()): line.get_linestyle() for line in ax.get_lines()}
    assert lines == {flu.plots.method_color("FedAvg + fine-tuning"): "--", flu.plots.method_color("FedAvg"): "-"}
    assert styles == {"FedAvg": "-", "FedAvg + fine-tuning": "--"}
    plt.close(ax.figure)
