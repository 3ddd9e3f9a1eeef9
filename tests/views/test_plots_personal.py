"""flu.plots.personal: the drawn data equal the table's numbers, computed here by hand."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

import fedlab_utils as flu  # noqa: E402
from fedlab_utils._core.labels import method_color  # noqa: E402
from fedlab_utils.views.plots import personal  # noqa: E402

BEFORE = [0.5, 0.6, 0.7, 0.8, 0.4]
AFTER = {1: [0.6, 0.5, 0.7, 0.9, 0.3], 5: [0.9, 0.7, 0.8, 0.9, 0.6]}


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _personal_table():
    rows = []
    for c, b in enumerate(BEFORE):
        for s, v in ((0, b), (1, AFTER[1][c]), (5, AFTER[5][c])):
            rows.append((c, s, "test", "global" if s == 0 else "personal", "accuracy", v))
            rows.append((c, s, "test", "global" if s == 0 else "personal", "loss", 1.0 - v))
    return pd.DataFrame(rows, columns=["client", "steps", "split", "model", "metric", "value"])


def _identity_lines(ax):
    return [ln for ln in ax.lines if ln.get_linestyle() == "--"
            and np.allclose(ln.get_xdata(), ln.get_ydata()) and len(ln.get_xdata()) >= 2]


def test_before_after_scatter_line_and_fraction_hurt():
    assert flu.plots.personal is personal
    t = _personal_table()
    ax = personal.plot_before_after(t, 1, method="fedavg")
    hurt = np.mean(np.array(AFTER[1]) < np.array(BEFORE))  # clients 1 and 4: 2 of 5
    assert f"{hurt:.0%}" in ax.get_title() and "40%" in ax.get_title() and "FedAvg" in ax.get_title()
    assert len(_identity_lines(ax)) == 1
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    assert sorted(map(tuple, points.round(12))) == sorted(zip(BEFORE, AFTER[1]))
    helped = ax.collections[0]
    assert to_hex(helped.get_facecolor()[0]) == method_color("FedAvg")
    ax5 = personal.plot_before_after(t, 5)
    assert "0%" in ax5.get_title() and "40%" not in ax5.get_title()
    loss = personal.plot_before_after(t, 1, metric="loss")  # the loss rose where accuracy fell
    assert "40%" in loss.get_title()


def test_before_after_errors_name_the_parameter():
    t = _personal_table()
    with pytest.raises(ValueError, match="steps"):
        personal.plot_before_after(t, 3)
    with pytest.raises(ValueError, match="table"):
        personal.plot_before_after(t.drop(columns="steps"), 1)
    with pytest.raises(ValueError, match="metric"):
        personal.plot_before_after(t, 1, metric="f1_macro")
    with pytest.raises(ValueError, match="table"):
        personal.plot_before_after(t[t.steps != 0], 1)
    with pytest.raises(ValueError, match="table"):
        personal.plot_before_after(pd.concat([t, t.assign(split="train")]), 1)


def _client_table():
    vals = {"fedavg": [0.2, 0.9, 0.5, 0.7], "Ditto": [0.6, 0.8, 0.65, 0.75]}
    rows = [(m, c, "accuracy", v) for m, vs in vals.items() for c, v in enumerate(vs)]
    rows += [(m, c, "loss", 1 - v) for m, vs in vals.items() for c, v in enumerate(vs)]
    return vals, pd.DataFrame(rows, columns=["method", "client", "metric", "value"])


def test_client_ecdf_steps_through_each_methods_values():
    vals, t = _client_table()
    ax = personal.plot_client_ecdf(t)
    assert len(ax.lines) == 2
    by_color = {to_hex(ln.get_color()): ln for ln in ax.lines}
    for method, vs in vals.items():
        ln = by_color[method_color(method)]
        x, y = np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float)
        finite = np.isfinite(x)
        assert np.allclose(np.unique(x[finite]), np.sort(vs))
        for v in vs:  # F(v) = fraction of clients <= v
            assert y[finite][x[finite] == v].max() == pytest.approx(np.mean(np.array(vs) <= v))
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"FedAvg", "Ditto"}
    with pytest.raises(ValueError, match="metric"):
        personal.plot_client_ecdf(t, metric="f1_macro")
    with pytest.raises(ValueError, match="table"):
        personal.plot_client_ecdf(t.drop(columns="client"))


def test_accuracy_vs_draws_the_mean_with_a_band():
    rows = []
    for method, offset in (("fedavg", 0.0), ("Linear probe", 0.1)):
        for shots in (1, 5, 10):
            for e in range(4):
                acc = 0.3 + 0.04 * shots + offset + 0.01 * e
                rows += [(method, shots, e, "accuracy", acc), (method, shots, e, "loss", 5.0)]
    t = pd.DataFrame(rows, columns=["method", "shots", "episode", "metric", "value"])
    ax = personal.plot_accuracy_vs(t, "shots")
    lines = [ln for ln in ax.lines if len(ln.get_xdata()) == 3]
    assert len(lines) == 2
    for method, offset in (("fedavg", 0.0), ("Linear probe", 0.1)):
        ln = next(ln for ln in lines if to_hex(ln.get_color()) == method_color(method))
        want = [0.3 + 0.04 * s + offset + 0.015 for s in (1, 5, 10)]  # mean of 0.01 * e, e = 0..3
        assert np.allclose(ln.get_ydata(), want) and np.allclose(ln.get_xdata(), [1, 5, 10])
    assert len(ax.collections) >= 2  # one band per method
    band = next(c for c in ax.collections if to_hex(c.get_facecolor()[0]) == method_color("fedavg"))
    verts = np.concatenate([p.vertices for p in band.get_paths()])
    at1 = verts[np.isclose(verts[:, 0], 1.0), 1]
    v = 0.34 + 0.01 * np.arange(4)
    half = 1.96 * v.std(ddof=1) / np.sqrt(4)  # normal 95% band: mean -+ 1.96 s / sqrt(n)
    assert at1.max() == pytest.approx(v.mean() + half) and at1.min() == pytest.approx(v.mean() - half)
    assert max(ax.get_ylim()) < 2  # the loss rows (5.0) were left out
    with pytest.raises(ValueError, match="x"):
        personal.plot_accuracy_vs(t, "rounds")
    with pytest.raises(ValueError, match="table"):
        personal.plot_accuracy_vs(t.drop(columns="method"), "shots")
