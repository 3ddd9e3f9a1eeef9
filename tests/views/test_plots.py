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


# ---------------------------------------------------------------- few-shot plots (notebook 05)

def _boxes_overlap(a, b):
    return min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)


def test_fewshot_reference_bars_end_an_accuracy_axis_at_one():
    from fedlab_utils.views.plots import fewshot as pf

    df = pd.DataFrame({"quantity": ["q", "q", "r"], "source": ["report", "ours: a long label for a bar", "ours"],
                       "value": [0.85, 0.93, 0.28], "method": [None, "Linear probe", "Full"]})
    fig, ax = plt.subplots(figsize=(6, 3))
    pf.plot_reference(df, ax=ax)
    assert ax.get_xlim() == (0.0, 1.0)
    fig.canvas.draw()
    frame = ax.get_window_extent()
    assert all(t.get_window_extent().x1 <= frame.x1 + 1 for t in ax.texts)   # every label inside the axes
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert [p.get_width() for p in hatched] == [0.85]                       # the report's row only
    ratios = pd.DataFrame({"quantity": ["c", "c"], "source": ["report", "ours"], "value": [3.0, 2.2]})
    ax = pf.plot_reference(ratios)
    assert ax.get_xlim()[1] >= 3.0 * 1.5                                     # not an accuracy: room for labels
    assert pf.plot_reference(df, xmax=2.0).get_xlim() == (0.0, 2.0)
    with pytest.raises(ValueError, match="xmax"):
        pf.plot_reference(df, xmax=0)


def test_fewshot_rounds_axes_get_integer_ticks_and_accuracy_ends_at_one():
    from matplotlib.ticker import MaxNLocator

    from fedlab_utils.views.plots import fewshot as pf

    curve = pd.DataFrame({"method": ["Linear probe"] * 6 + ["None (prototypes)"] * 6, "round": list(range(6)) * 2,
                          "accuracy": [0.5, 0.7, 0.9, 0.97, 1.0, 1.0] + [0.9] * 6})
    ax = pf.plot_sweep(curve, "round")
    assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert ax.get_ylim()[1] <= 1.0
    seeds = pd.DataFrame({"method": ["Linear probe"] * 4, "round": [1, 1, 2, 2], "accuracy": [0.9, 1.0, 0.95, 1.0]})
    assert pf.plot_sweep(seeds, "round").get_ylim()[1] <= 1.0                # the band would pass 1.0
    alpha = pd.DataFrame({"method": ["Full"] * 3, "alpha": [0.1, 0.5, 10.0], "accuracy": [0.8, 0.85, 0.9]})
    ax = pf.plot_sweep(alpha, "alpha", logx=True)
    assert not isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.5", "10"]
    errors = pd.DataFrame({"mode": ["lora"] * 3, "local_steps": [1, 5, 20], "relative_error": [1e-16, 1e-3, 5e-3]})
    ax = pf.plot_factor_error(errors)
    assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_fewshot_layer_heatmap_names_layers_by_type():
    import re

    import fedlab_utils as flu
    from fedlab_utils.lessons import fewshot as lf
    from fedlab_utils.views.plots import fewshot as pf

    cnn = flu.models.cnn((1, 8, 8), 10, seed=0)       # Reshape, conv, ReLU, pool, conv, ReLU, pool, flatten, dense, ReLU
    ax = pf.plot_trainable(lf.trainable_table(cnn, lora_rank=2))
    labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert not any(re.fullmatch(r"\s*body\.\d+\s*", s) for s in labels)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1 (body.1)", "conv2 (body.4)", "dense (body.8)",
                                                            "head"]
    mlp = flu.models.mlp(64, [32, 16], 10, seed=0)
    assert lf.layer_names(mlp, ["body.1", "body.3", "head"]) == {"body.1": "dense1 (body.1)",
                                                                  "body.3": "dense2 (body.3)", "head": "head"}
    with pytest.raises(ValueError, match="layers"):
        lf.layer_names(mlp, ["body.7"])
    plain = pd.DataFrame({"mode": ["full"], "layer": ["w"], "params": [3], "trainable": [3]})
    assert [t.get_text() for t in pf.plot_trainable(plain).get_xticklabels()] == ["w"]   # no name column: the path


def test_fewshot_dumbbell_legend_hides_no_client():
    from matplotlib.collections import PathCollection

    from fedlab_utils.views.plots import fewshot as pf

    rows = [dict(client=c, before=0.1 * c, after=min(1.0, 0.1 * c + d), method=m)
            for c in range(10) for m, d in (("Linear probe", 0.2), ("Full", 0.3), ("LoRA", -0.05))]
    fig, ax = plt.subplots(figsize=(5, 4))
    pf.plot_before_after(pd.DataFrame(rows), ax=ax)
    fig.canvas.draw()
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["Linear probe", "Full", "LoRA"]
    assert not _boxes_overlap(legend.get_window_extent(), ax.get_window_extent())
    assert ax.get_xlim()[1] == 1.0                                           # accuracy ends at 1.0
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(dots) == 2 * 3 and not any(c.get_clip_on() for c in dots)    # dots at 1.0 drawn whole
    losses = pd.DataFrame({"client": [0, 1], "before": [2.5, 1.2], "after": [0.4, 1.5]})
    assert pf.plot_before_after(losses).get_xlim()[1] >= 2.5                 # not an accuracy: nothing cut


def test_fewshot_scatter_labels_do_not_overlap():
    from matplotlib.text import Text

    from fedlab_utils.views.plots import fewshot as pf

    summary = pd.DataFrame({"method": ["None (prototypes)", "BitFit", "Linear probe", "FFA-LoRA", "Full"],
                            "bytes_up_per_round": [22968, 30480, 26000, 36240, 4.2e6],
                            "accuracy": [0.880, 0.882, 0.884, 0.879, 1.0]})
    fig, ax = plt.subplots(figsize=(5.5, 4))
    pf.plot_accuracy_vs_cost(summary, ax=ax)
    fig.canvas.draw()
    boxes = [Text.get_window_extent(t) for t in ax.texts]        # the label itself, without its leader line
    assert sorted(t.get_text() for t in ax.texts) == sorted(summary["method"])
    assert not any(_boxes_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    frame = ax.get_window_extent()
    assert all(frame.x0 - 1 <= b.x0 and b.x1 <= frame.x1 + 1 and frame.y0 - 1 <= b.y0 and b.y1 <= frame.y1 + 1
               for b in boxes)
    assert ax.get_ylim()[1] <= 1.0
    # the naive placement (every label up and to the right) overlaps here: the test can fail
    naive = plt.subplots(figsize=(5.5, 4))[1]
    for r in summary.itertuples():
        naive.scatter(r.bytes_up_per_round, r.accuracy)
        naive.annotate(r.method, (r.bytes_up_per_round, r.accuracy), textcoords="offset points", xytext=(5, 4),
                       fontsize=7.5)
    naive.set_xscale("log")
    naive.figure.canvas.draw()
    naive_boxes = [t.get_window_extent() for t in naive.texts]
    assert any(_boxes_overlap(a, b) for i, a in enumerate(naive_boxes) for b in naive_boxes[i + 1:])
