import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from sklearn.datasets import load_digits

from fedlab_utils import partition, plots

Y = load_digits().target


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def counts():
    return partition.label_counts(partition.dirichlet(Y, 8, alpha=0.3, seed=0), Y)


def metrics_table(methods=("fedavg", "FedProx (mu=0.01)"), num_rounds=6, num_clients=5):
    rng = np.random.default_rng(0)
    rows = []
    for method in methods:
        for r in range(num_rounds + 1):
            for client in [pd.NA, *range(num_clients)]:
                for split in ("train", "test"):
                    rows.append({"round": r, "client": client, "split": split, "model": "global",
                                 "metric": "accuracy", "value": r / num_rounds * 0.8 + rng.normal(0, 0.05),
                                 "algorithm": method})
    df = pd.DataFrame(rows)
    df["client"] = df["client"].astype("Int64")
    return df


def drawn(ax):
    return len(ax.lines) + len(ax.collections) + len(ax.patches) + len(ax.images)


def check_unchanged(fn, df, *args, **kw):
    before = df.copy(deep=True)
    out = fn(df, *args, **kw)
    pd.testing.assert_frame_equal(df, before)
    return out


# ---------------------------------------------------------------- palette

def test_method_colors_are_distinct_and_shared():
    colors = list(plots.METHOD_COLORS.values())
    assert len(set(colors)) == len(colors)
    for label in ["FedAvg", "FedProx", "SCAFFOLD", "FedNova", "FedDyn", "FedAvgM", "FedAdam", "FedYogi",
                  "FedAdagrad", "Linear probe", "Full", "LoRA", "FFA-LoRA", "BitFit", "Last layers",
                  "None (prototypes)", "Local only", "Centralised"]:
        assert label in plots.METHOD_COLORS
    assert plots.method_color("fedavg") == plots.METHOD_COLORS["FedAvg"]
    assert plots.method_color("FedProx (mu=0.01)") == plots.METHOD_COLORS["FedProx"]
    assert plots.method_color("linear_probe") == plots.METHOD_COLORS["Linear probe"]
    assert plots.method_color("none") == plots.METHOD_COLORS["None (prototypes)"]
    assert plots.canonical_label("ffa_lora") == "FFA-LoRA"
    assert plots.canonical_label("my method") == "my method"


def test_unknown_labels_get_a_stable_colour():
    a = plots.method_color("MyNewMethod")
    assert a == plots.method_color("MyNewMethod")
    assert to_hex(a) == a
    assert plots.method_palette(["FedAvg", "MyNewMethod"]) == {"FedAvg": "#1f77b4", "MyNewMethod": a}


# ---------------------------------------------------------------- partition pictures

@pytest.mark.parametrize("normalize", [False, True])
def test_label_heatmap(counts, normalize):
    ax = check_unchanged(plots.plot_label_heatmap, counts, normalize=normalize)
    assert isinstance(ax, plt.Axes) and drawn(ax) > 0
    assert ax.get_xlabel() == "client" and ax.get_ylabel() == "label"
    mesh = ax.images[0].get_array()
    if normalize:
        assert np.allclose(np.asarray(mesh).reshape(10, 8).sum(axis=0), 1.0)
    else:
        assert np.asarray(mesh).sum() == len(Y)
    _, given = plt.subplots()
    assert plots.plot_label_heatmap(counts, ax=given) is given


def test_label_bars(counts):
    ax = check_unchanged(plots.plot_label_bars, counts)
    assert len(ax.patches) == 8 * 10  # one segment per (client, label)
    tops = {}
    for p in ax.patches:
        x = round(p.get_x() + p.get_width() / 2)
        tops[x] = max(tops.get(x, 0), p.get_y() + p.get_height())
    sizes = counts.groupby("client")["count"].sum()
    assert all(tops[c] == pytest.approx(sizes[c]) for c in sizes.index)
    _, given = plt.subplots()
    assert plots.plot_label_bars(counts, ax=given, normalize=True) is given


@pytest.mark.parametrize("kind", ["heatmap", "bars"])
def test_plot_partitions(kind):
    tables = {f"alpha={a}": partition.label_counts(partition.dirichlet(Y, 6, a, seed=0), Y)
              for a in (0.1, 10)}
    snapshot = {k: v.copy() for k, v in tables.items()}
    axes = plots.plot_partitions(tables, kind=kind)
    assert len(axes) == 2 and all(drawn(ax) > 0 for ax in axes)
    assert [ax.get_title() for ax in axes] == list(tables)
    for k in tables:
        pd.testing.assert_frame_equal(tables[k], snapshot[k])
    _, given = plt.subplots(2, 1)
    assert list(plots.plot_partitions(tables, kind=kind, axes=given)) == list(given)
    with pytest.raises(ValueError, match="axes"):
        plots.plot_partitions(tables, axes=[given[0]])
    with pytest.raises(ValueError, match="kind"):
        plots.plot_partitions(tables, kind="pie")


def test_client_sizes(counts):
    ax = check_unchanged(plots.plot_client_sizes, counts)
    assert sum(p.get_height() for p in ax.patches) == 8  # every client in some bin
    part = partition.quantity_skew(Y, 30, sigma=1.0, seed=0)
    _, given = plt.subplots()
    assert plots.plot_client_sizes(part, ax=given) is given
    assert sum(p.get_height() for p in given.patches) == 30
    assert drawn(plots.plot_client_sizes(part.sizes)) > 0


def test_bad_tables_name_the_argument():
    with pytest.raises(ValueError, match="counts"):
        plots.plot_label_heatmap(pd.DataFrame({"a": [1]}))
    with pytest.raises(TypeError, match="counts"):
        plots.plot_label_bars(np.zeros((3, 3)))


# ---------------------------------------------------------------- sweeps and learning curves

def test_metric_vs():
    rows = [{"alpha": a, "seed": s, "scheme": "dirichlet",
             "js_divergence": partition.heterogeneity(partition.dirichlet(Y, 10, a, seed=s), Y)["js_divergence"]}
            for a in (0.1, 1.0, 10.0) for s in range(3)]
    df = pd.DataFrame(rows)
    ax = check_unchanged(plots.plot_metric_vs, df, "alpha", "js_divergence", hue="scheme", logx=True)
    assert ax.get_xscale() == "log" and len(ax.lines) >= 1
    line = ax.lines[0]
    assert np.allclose(line.get_ydata(), df.groupby("alpha")["js_divergence"].mean().to_numpy())
    _, given = plt.subplots()
    assert plots.plot_metric_vs(df, "alpha", "js_divergence", ax=given) is given
    with pytest.raises(ValueError, match="df"):
        plots.plot_metric_vs(df, "alpha", "missing")


def test_metric_vs_uses_method_colours():
    df = pd.DataFrame({"round": [0, 1, 0, 1], "loss": [1.0, 0.5, 1.0, 0.4],
                       "method": ["FedAvg", "FedAvg", "SCAFFOLD", "SCAFFOLD"]})
    ax = plots.plot_metric_vs(df, "round", "loss", hue="method")
    colours = {to_hex(line.get_color()) for line in ax.lines}
    assert {plots.METHOD_COLORS["FedAvg"], plots.METHOD_COLORS["SCAFFOLD"]} <= colours


def test_learning_curves_pooled_line_and_band():
    df = metrics_table()
    ax = check_unchanged(plots.plot_learning_curves, df, "accuracy", "test", hue="algorithm")
    assert len(ax.lines) == 2 and len(ax.collections) == 2  # a line and a band per method
    line = ax.lines[0]
    pooled = df[(df.algorithm == "fedavg") & (df.split == "test") & df.client.isna()]
    assert np.array_equal(line.get_xdata(), pooled["round"].to_numpy())
    assert np.allclose(line.get_ydata(), pooled["value"].to_numpy())
    assert to_hex(line.get_color()) == plots.METHOD_COLORS["FedAvg"]
    assert to_hex(ax.lines[1].get_color()) == plots.METHOD_COLORS["FedProx"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["FedAvg", "FedProx (mu=0.01)"]
    # the band spans the 10th-90th percentile of the per-client values at each round
    per = df[(df.algorithm == "fedavg") & (df.split == "test") & df.client.notna()]
    lo = per.groupby("round")["value"].quantile(0.1).to_numpy()
    band = ax.collections[0].get_paths()[0].vertices
    assert np.allclose(np.sort(band[:, 1]).min(), lo.min())


def test_learning_curves_options():
    df = metrics_table(methods=("fedavg",))
    ax = plots.plot_learning_curves(df, spread=False)
    assert len(ax.lines) == 1 and len(ax.collections) == 0
    assert ax.get_ylabel() == "test accuracy"
    _, given = plt.subplots()
    assert plots.plot_learning_curves(df, split="train", ax=given, label="FedAvg") is given
    only_clients = df[df.client.notna()]
    ax = plots.plot_learning_curves(only_clients)  # no pooled rows: median client
    assert len(ax.lines) == 1
    with pytest.raises(ValueError, match="metric"):
        plots.plot_learning_curves(df, metric="f1_macro")
    with pytest.raises(ValueError, match="metrics"):
        plots.plot_learning_curves(df.drop(columns="client"))
