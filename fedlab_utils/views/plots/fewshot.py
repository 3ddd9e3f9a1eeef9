"""Plots of few-shot fine-tuning (notebook 05): each ``plot_*(df, *, ax=None, ...)`` returns its Axes.

They draw long-form tables that other functions compute (``flu.study.compare_modes``,
``flu.fewshot_widgets``' compute section, ``flu.lora_demo``) and compute nothing beyond grouping.
Methods keep their one colour across the workbook (``flu.plots.method_color``); reference numbers
from elsewhere are drawn hatched or dashed next to ours.

- :func:`plot_protocol`: the few-shot federated protocol as a diagram (no data).
- :func:`plot_support_set`: the K-shot support and the query images of a few clients.
- :func:`plot_support_counts`: support / query counts per client and label.
- :func:`plot_trainable`: which layers each fine-tuning mode trains (and therefore sends).
- :func:`plot_accuracy_vs_cost`: accuracy against bytes or FLOPs, one colour per method.
- :func:`plot_sweep`: accuracy against K, alpha or rounds, one line per method (mean and 95% interval over seeds).
- :func:`plot_before_after`: per-client accuracy before and after fine-tuning (a dumbbell), clients made worse in red.
- :func:`plot_reference`: our numbers beside the report's (the reference figures notebook 05 quotes).
- :func:`plot_step_times`: measured seconds per local step, with ratios.
- :func:`plot_factor_error`: error of naive LoRA factor averaging against local steps.

Axes of accuracy (or macro-F1) end at 1.0; axes of rounds and local steps get integer ticks;
point labels of the scatters are placed so that they do not overlap (:func:`_place_labels`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import MaxNLocator, NullLocator

from ..._core import checks as chk
from .base import _axes, _need, canonical_label, method_color

HURT, HELPED = "#c0392b", "#7f7f7f"
UNIT_METRICS = ("accuracy", "f1_macro", "balanced_accuracy", "client_mean", "client_worst_10pct")
# label offsets (points) tried in order around a point: right-up first, then the other corners and
# sides, each ring farther out (labels beyond the first ring get a leader line to their point)
_OFFSETS = tuple((dx, dy, ha, va) for d in (4, 14, 24, 34, 44) for dx, dy, ha, va in (
    (5, d, "left", "bottom"), (5, -d, "left", "top"), (-5, d, "right", "bottom"), (-5, -d, "right", "top"),
    (0, d + 3, "center", "bottom"), (0, -d - 3, "center", "top"), (d + 4, 0, "left", "center"),
    (-d - 4, 0, "right", "center")))


def _cap_at_one(ax, axis: str, values) -> None:
    """End an accuracy axis at 1.0 (no room for impossible values) when all drawn ``values`` are at
    most 1 (anything else, a loss say, keeps its limits); points drawn at 1.0 are not clipped."""
    values = np.asarray(values, dtype=float)
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if hi > 1.0 and (values.size == 0 or np.nanmax(values) <= 1.0):
        (ax.set_ylim if axis == "y" else ax.set_xlim)(min(lo, 0.99), 1.0)


def _renderer(fig):
    """The figure's renderer, to measure text in pixels where the axes are now. No layout pass (a
    constrained layout costs about a second per call on a busy machine): with a layout engine the
    axes move a little when drawn, so measured gaps carry a margin."""
    return fig.canvas.get_renderer() if hasattr(fig.canvas, "get_renderer") else fig._get_renderer()


def _place_labels(ax, points, texts, *, fontsize: float = 7.5) -> list:
    """Annotate ``points`` (data coordinates) with ``texts`` without overlaps: each label takes the
    first offset of :data:`_OFFSETS` (rings of growing distance) whose box (measured with the
    figure's renderer, plus a 3-pixel margin) overlaps no label placed before it, no other point and
    stays inside the axes; when none fits, the one with the least overlap. A label placed beyond the
    first ring gets a thin leader line to its point. Deterministic (points in the order given).
    Returns the annotations."""
    fig = ax.figure
    renderer = _renderer(fig)
    ax.autoscale_view()
    frame = ax.get_window_extent(renderer)
    xy = ax.transData.transform(np.asarray(points, dtype=float).reshape(-1, 2))
    marker = 5.0 * fig.dpi / 72                                        # about the radius of a scatter dot
    dots = [(x - marker, y - marker, x + marker, y + marker) for x, y in xy]
    placed, out = [], []

    def overlap(a, b):
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    for i, text in enumerate(texts):
        best = None
        for dx, dy, ha, va in _OFFSETS:
            note = ax.annotate(text, points[i], textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                               fontsize=fontsize)
            bb = note.get_window_extent(renderer)
            box = (bb.x0 - 3, bb.y0 - 3, bb.x1 + 3, bb.y1 + 3)
            outside = (max(0.0, frame.x0 - box[0]) + max(0.0, box[2] - frame.x1)
                       + max(0.0, frame.y0 - box[1]) + max(0.0, box[3] - frame.y1))
            score = (sum(overlap(box, o) for o in placed)
                     + sum(overlap(box, d) for j, d in enumerate(dots) if j != i) + 1e3 * outside)
            if best is None or score < best[0]:
                if best is not None:
                    best[1].remove()
                best = (score, note, box)
            else:
                note.remove()
            if score == 0:
                break
        note = best[1]
        dx, dy = note.xyann
        if max(abs(dx), abs(dy)) > 10:        # far from its point: the same label, with a leader line
            note.remove()
            note = ax.annotate(text, points[i], textcoords="offset points", xytext=(dx, dy), ha=note.get_ha(),
                               va=note.get_va(), fontsize=fontsize,
                               arrowprops=dict(arrowstyle="-", lw=0.5, color="#888888", shrinkA=1, shrinkB=4))
        placed.append(best[2])
        out.append(note)
    return out


def plot_protocol(*, ax=None, num_clients: int = 3):
    """The protocol as boxes and arrows: pretrain on the source task, broadcast, K-shot local
    fine-tuning of the mode's parameters, upload, aggregation, evaluation on each client's query set."""
    num_clients = chk.integer("num_clients", num_clients, low=1, high=5)
    ax = _axes(ax, (8, 4))
    ax.set(xlim=(0, 12), ylim=(0, 5.2))
    ax.set_axis_off()

    def box(x, y, text, fc, ec, w=2.4, h=0.95, size=8.5):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.08", fc=fc, ec=ec))
        ax.text(x, y, text, ha="center", va="center", fontsize=size)

    def arrow(a, b, color="#444444"):
        ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="->", color=color, lw=1.3))

    box(1.4, 4.5, "source task\n(MNIST-5k, plenty)", "#eeeeee", "#777777")
    box(1.4, 2.5, "pretrained\nbody g + head h", "#fdebd0", "#b9770e")
    arrow((1.4, 4.0), (1.4, 3.0))
    ax.text(1.5, 3.5, "pretrain\n(done once,\ncommitted)", fontsize=7, va="center")
    box(7.3, 4.5, "server: trainable part x\n(the mode's mask; head always)\nweighted mean of the uploads",
        "#dbe9f6", "#1f77b4", w=4.2, h=1.1, size=8)
    arrow((2.65, 2.6), (5.15, 4.3))
    ax.text(3.1, 3.75, "initialise x", fontsize=7.5, rotation=33)
    xs = np.linspace(4.6, 10.4, num_clients) if num_clients > 1 else np.array([7.3])
    for i, cx in enumerate(xs):
        box(cx, 2.3, f"client {i}: support set\nK per class it holds\n(classes differ: non-IID)", "#e8f6e8",
            "#2ca02c", w=2.3, h=1.05, size=7.5)
        box(cx, 0.55, f"client {i}: query set\n(disjoint, never trained on)", "#f6e8e8", "#a33", w=2.3, h=0.8,
            size=7.5)
        sx = 7.3 + 0.55 * (cx - 7.3)                      # where the arrows meet the server box
        arrow((sx - 0.2, 3.93), (cx - 0.25, 2.85), "#1f77b4")
        arrow((cx + 0.25, 2.85), (sx + 0.2, 3.93), "#2ca02c")
        arrow((cx, 1.76), (cx, 0.97), "#a33")
    ax.text(xs[0] - 0.05, 3.45, "x", color="#1f77b4", fontsize=8, ha="right")
    ax.text(xs[0] + 0.75, 3.2, "x_i", color="#2ca02c", fontsize=8)
    ax.text(xs[0] + 0.1, 1.36, "evaluate before\nand after", color="#a33", fontsize=7, va="center")
    ax.set_title("one round: broadcast x; local steps on the support set; upload x_i (the mode's part);\n"
                 "weighted mean (LoRA: of the products B_i A_i); score every client on its query set", fontsize=8.5)
    return ax


def plot_support_set(gallery: pd.DataFrame, *, ax=None, cmap: str = "gray_r", gap: int = 1):
    """Images of a few clients in one mosaic: one row per client, its support images on the left
    and its query images on the right (``gallery`` from ``flu.fewshot_widgets.support_gallery``:
    columns ``client, split, slot, label, image``). Each image shows its label in the corner."""
    _need(gallery, "gallery", ["client", "split", "slot", "label", "image"])
    if gallery.empty:
        chk.fail("gallery", "a non-empty table of images", "an empty table")
    clients = list(dict.fromkeys(gallery["client"].tolist()))
    splits = list(dict.fromkeys(gallery["split"].tolist()))
    h, w = np.asarray(gallery["image"].iloc[0]).shape
    per = {s: int(gallery.loc[gallery.split == s, "slot"].max()) + 1 for s in splits}
    cols = sum(per.values()) + gap * (len(splits) - 1)
    mosaic = np.full((len(clients) * (h + 1), cols * (w + 1)), np.nan)
    ax = _axes(ax, (min(14, 0.5 * cols + 1), 0.55 * len(clients) + 0.8))
    offset = {}
    start = 0
    for s in splits:
        offset[s] = start
        start += per[s] + gap
    for r in gallery.itertuples():
        row, col = clients.index(r.client), offset[r.split] + int(r.slot)
        mosaic[row * (h + 1): row * (h + 1) + h, col * (w + 1): col * (w + 1) + w] = np.asarray(r.image)
        ax.text(col * (w + 1) + 1, row * (h + 1) + 1, str(r.label), fontsize=6, color="#1f77b4", va="top")
    ax.imshow(mosaic, cmap=cmap, interpolation="nearest")
    ax.set_yticks([i * (h + 1) + h / 2 for i in range(len(clients))], [f"client {c}" for c in clients])
    ax.set_xticks([(offset[s] + per[s] / 2) * (w + 1) for s in splits], list(splits))
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return ax


def plot_support_counts(table: pd.DataFrame, *, ax=None, cmap: str = "Greens"):
    """Heatmap of support examples per client (columns) and label (rows), each cell annotated
    ``support/query`` (``FewShot.table``: ``client, label, available, support, query``)."""
    import seaborn as sns

    _need(table, "table", ["client", "label", "support", "query"])
    s = table.pivot_table(index="label", columns="client", values="support", aggfunc="sum", fill_value=0)
    q = table.pivot_table(index="label", columns="client", values="query", aggfunc="sum", fill_value=0)
    q = q.reindex(index=s.index, columns=s.columns, fill_value=0)
    annot = s.astype(int).astype(str) + "/" + q.astype(int).astype(str)
    annot = annot.where(s > 0, "")
    ax = _axes(ax, (max(5.0, 0.6 * s.shape[1] + 2), 3.8))
    sns.heatmap(s, ax=ax, annot=annot.to_numpy(), fmt="", cmap=cmap, cbar_kws={"label": "support examples"},
                annot_kws={"fontsize": 6})
    ax.set(xlabel="client", ylabel="label", title="support / query examples per client and label")
    return ax


def plot_trainable(df: pd.DataFrame, *, ax=None, cmap: str = "Blues"):
    """Which parameters each mode trains: a mode x layer heatmap of the trained fraction of each
    layer, annotated with the number of trained parameters (``df``: ``mode, layer, params, trainable``
    with ``trainable`` the count trained in that layer, layers in forward order). Layers are labelled
    by the column ``name`` when the table has one (``flu.lessons.fewshot.trainable_table``: e.g.
    ``"conv1 (body.1)"``), else by ``layer``."""
    import seaborn as sns

    _need(df, "df", ["mode", "layer", "params", "trainable"])
    layers = list(dict.fromkeys(df["layer"].tolist()))
    names = (df.drop_duplicates("layer").set_index("layer")["name"].reindex(layers).tolist()
             if "name" in df.columns else layers)
    modes = list(dict.fromkeys(df["mode"].tolist()))
    count = df.pivot_table(index="mode", columns="layer", values="trainable", aggfunc="sum").reindex(
        index=modes, columns=layers)
    total = df.pivot_table(index="mode", columns="layer", values="params", aggfunc="sum").reindex(
        index=modes, columns=layers)
    frac = count / total.replace(0, np.nan)
    annot = count.map(lambda v: "" if pd.isna(v) or v == 0 else (f"{v / 1e3:.1f}k" if v >= 1000 else f"{int(v)}"))
    ax = _axes(ax, (1.1 * len(layers) + 3, 0.45 * len(modes) + 1.5))
    sns.heatmap(frac, ax=ax, annot=annot.to_numpy(), fmt="", cmap=cmap, vmin=0, vmax=1,
                cbar_kws={"label": "share of the layer trained"}, annot_kws={"fontsize": 7}, linewidths=0.5,
                linecolor="#dddddd")
    ax.set_yticks(np.arange(len(modes)) + 0.5, [canonical_label(m) for m in modes], rotation=0)
    ax.set_xticks(np.arange(len(layers)) + 0.5, [str(n) for n in names], rotation=0)
    ax.set(xlabel="layer (forward order; adapters counted in their layer)", ylabel="")
    return ax


_COST_LABELS = {"bytes_up_per_round": "bytes sent up per round (all clients)",
                "bytes_down_per_round": "bytes sent down per round", "flops_step": "estimated FLOPs per local step",
                "seconds_per_step": "measured seconds per local step", "trainable_params": "trainable parameters"}


def plot_accuracy_vs_cost(summary: pd.DataFrame, x: str = "bytes_up_per_round", y: str = "accuracy", *,
                          ax=None, logx: bool = True, annotate: bool = True, label: str = "method"):
    """Scatter of ``y`` against a cost column ``x`` (bytes, FLOPs, seconds, parameters), one point
    and one colour per method (rows with no ``x`` are left out). Up and to the left is better.
    With ``annotate`` each point is labelled, the labels placed so that none overlaps another label
    or a point (:func:`_place_labels`); an accuracy axis ends at 1.0."""
    _need(summary, "summary", [x, y, label])
    sel = summary[summary[x].notna() & summary[y].notna() & (summary[x] > 0 if logx else True)]
    ax = _axes(ax, (5.5, 4))
    for r in sel.itertuples():
        name = getattr(r, label)
        ax.scatter(getattr(r, x), getattr(r, y), s=60, color=method_color(name), label=canonical_label(name),
                   edgecolor="white", zorder=3, clip_on=False)
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=_COST_LABELS.get(x, x.replace("_", " ")), ylabel=y.replace("_", " "))
    if y in UNIT_METRICS:
        ax.autoscale_view()
        _cap_at_one(ax, "y", sel[y])
    if annotate and len(sel):
        _place_labels(ax, sel[[x, y]].to_numpy(dtype=float), [canonical_label(n) for n in sel[label]])
    ax.grid(alpha=0.3)
    return ax


def plot_sweep(df: pd.DataFrame, x: str, y: str = "accuracy", *, hue: str = "method", ax=None, logx: bool = False,
               reference: dict | None = None, confidence: float = 0.95, integer_x: bool | None = None):
    """``y`` against a swept setting ``x`` (shots K, alpha, rounds), one line per ``hue`` (method).
    Several rows per point (seeds) are drawn as their mean with a Student-t ``confidence`` band.
    ``reference``: ``{label: value}`` horizontal dashed lines (e.g. the report's figures).
    ``integer_x``: integer ticks on x (``MaxNLocator(integer=True)``); default: when ``x`` holds
    integers (rounds, shots) on a linear axis. On a log axis up to 8 swept values are the ticks.
    An accuracy or macro-F1 axis ends at 1.0."""
    from scipy import stats

    _need(df, "df", [x, y, hue])
    ax = _axes(ax, (5.5, 4))
    for name, g in df.groupby(hue, sort=False):
        stat = g.groupby(x)[y].agg(["mean", "std", "count"]).sort_index()
        color = method_color(name)
        ax.plot(stat.index, stat["mean"], marker="o", color=color, label=canonical_label(name))
        many = stat["count"] > 1
        if many.any():
            half = stats.t.ppf(0.5 + confidence / 2, (stat["count"] - 1).clip(lower=1)) * stat["std"] / np.sqrt(
                stat["count"])
            half = half.where(many, 0.0).fillna(0.0)
            ax.fill_between(stat.index, stat["mean"] - half, stat["mean"] + half, color=color, alpha=0.18, lw=0)
    for i, (text, value) in enumerate((reference or {}).items()):
        ax.axhline(value, color="#555555", ls="--", lw=1)
        ax.annotate(text, (0.01, value), xycoords=("axes fraction", "data"), fontsize=7.5, va="bottom",
                    color="#555555")
    if logx:
        ax.set_xscale("log")
        swept = np.sort(df[x].dropna().unique())
        if 0 < len(swept) <= 8:        # a few swept values: tick them, as numbers (1, 5, 20), not powers of ten
            ax.set_xticks(swept, [f"{v:g}" for v in swept])
            ax.xaxis.set_minor_locator(NullLocator())
    if integer_x is None:
        integer_x = not logx and pd.api.types.is_integer_dtype(df[x])
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if y in UNIT_METRICS:
        _cap_at_one(ax, "y", df[y])
    ax.set(xlabel=x.replace("_", " "), ylabel=y.replace("_", " "))
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def plot_before_after(df: pd.DataFrame, *, ax=None, hue: str | None = "method", sort: bool = True):
    """Dumbbell of per-client ``before`` -> ``after`` (``flu.evaluation.before_after`` rows, with a
    ``method`` column when several methods share the plot): a hollow dot before, a filled dot after,
    the segment red where the client got worse. The title gives the fraction of clients hurt; the
    legend (several methods) sits outside the axes, right of them, so it hides no client. The
    axis ends at 1.0 when every value is at most 1 (accuracy, F1)."""
    from matplotlib.collections import LineCollection

    _need(df, "df", ["client", "before", "after"])
    groups = list(df.groupby(hue, sort=False)) if hue in df.columns else [(None, df)]
    clients = (df.sort_values("before") if sort else df)["client"].drop_duplicates().tolist()
    row = {c: i for i, c in enumerate(clients)}
    ax = _axes(ax, (5.5, 0.28 * len(clients) + 1.5))
    step = 0.7 / max(1, len(groups))
    hurt_text = []
    for j, (name, g) in enumerate(groups):
        yv = g["client"].map(row).to_numpy(dtype=float) + (j - (len(groups) - 1) / 2) * step
        b, a = g["before"].to_numpy(dtype=float), g["after"].to_numpy(dtype=float)
        worse = a < b
        color = method_color(name) if name is not None else "#1f77b4"
        ax.add_collection(LineCollection([[(b[i], yv[i]), (a[i], yv[i])] for i in range(len(g))],
                                         colors=[HURT if w else HELPED for w in worse], linewidths=1.4, zorder=1))
        ax.scatter(b, yv, s=28, facecolor="white", edgecolor=color, zorder=2, clip_on=False)
        ax.scatter(a, yv, s=28, color=color, zorder=3, label=None if name is None else canonical_label(name),
                   clip_on=False)
        hurt_text.append(f"{canonical_label(name) + ': ' if name is not None else ''}{worse.mean():.0%} hurt")
    ax.set_yticks(range(len(clients)), [str(c) for c in clients])
    ax.set(xlabel="query accuracy (hollow: before, filled: after)", ylabel="client")
    ax.set_title("; ".join(hurt_text), fontsize=8.5)
    if groups[0][0] is not None:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  frameon=False)
    ax.grid(axis="x", alpha=0.3)
    ax.autoscale_view()
    _cap_at_one(ax, "x", df[["before", "after"]])
    return ax


def plot_reference(df: pd.DataFrame, *, ax=None, value: str = "value", xlabel: str | None = None,
                   xmax: float | None = None, hatched=("reference", "report")):
    """Our numbers beside the report's: one group of horizontal bars per ``quantity``, one bar per
    row (``source`` names it; rows whose source starts with one of ``hatched`` are hatched grey, the
    others take the colour of their ``method`` when the table has that column).

    ``xmax``: the axis' end; default 1.0 when every value lies in [0, 1] (accuracy, F1), else 1.6
    times the largest value (room for the labels). A label that would run past the end is written
    inside its bar (measured with the figure's renderer)."""
    _need(df, "df", ["quantity", "source", value])
    quantities = list(dict.fromkeys(df["quantity"].tolist()))
    most = int(df.groupby("quantity").size().max())
    ax = _axes(ax, (7, 0.32 * len(df) + 0.4 * len(quantities) + 0.8))
    h = 0.84 / most
    values = df[value].astype(float)
    if xmax is None:
        xmax = 1.0 if values.between(0, 1).all() else float(values.max()) * 1.6
    xmax = chk.real("xmax", xmax, low=0, low_open=True)
    hatched = (hatched,) if isinstance(hatched, str) else tuple(hatched)
    labels = []
    for qi, q in enumerate(quantities):
        rows = df[df.quantity == q]
        for j, r in enumerate(rows.itertuples()):
            yv = qi + (j - (len(rows) - 1) / 2) * h
            ref = str(r.source).startswith(hatched)
            name = getattr(r, "method", None) if "method" in df.columns else None
            color = "#bbbbbb" if ref else method_color(name if isinstance(name, str) else r.source)
            v = float(getattr(r, value))
            ax.barh(yv, v, height=h * 0.88, color=color, hatch="//" if ref else None,
                    edgecolor="#555555" if ref else "white")
            labels.append((ax.text(v + 0.01 * xmax, yv, f"{v:.2f}  {r.source}", va="center", ha="left",
                                   fontsize=7.5), v, yv))
    ax.set_yticks(range(len(quantities)), quantities)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel or value.replace("_", " "))
    ax.set_xlim(0, xmax)
    fig = ax.figure
    renderer = _renderer(fig)
    right = ax.get_window_extent(renderer).x1
    for text, v, yv in labels:     # a label running past the axis' end goes inside its bar, ending there
        if text.get_window_extent(renderer).x1 > right:
            text.set(x=v - 0.01 * xmax, ha="right", bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none",
                                                              alpha=0.85))
    return ax


def plot_step_times(df: pd.DataFrame, *, ax=None, baseline: str | None = None):
    """Measured seconds per local step as horizontal bars on a log axis (``df``: ``setting,
    seconds`` and optionally ``method`` for the colour); with ``baseline`` (a setting) each bar is
    annotated with its ratio to it."""
    _need(df, "df", ["setting", "seconds"])
    ax = _axes(ax, (7, 0.45 * len(df) + 1))
    base = None
    if baseline is not None:
        match = df.loc[df.setting == baseline, "seconds"]
        if match.empty:
            chk.fail("baseline", f"one of the settings {df.setting.tolist()}", baseline)
        base = float(match.iloc[0])
    for i, r in enumerate(df.itertuples()):
        color = method_color(r.method) if "method" in df.columns else "C0"
        ax.barh(i, r.seconds, color=color)
        note = f" {r.seconds * 1e3:.3g} ms" + (f"  ({r.seconds / base:.3g}x)" if base else "")
        ax.text(r.seconds, i, note, va="center", fontsize=7.5)
    ax.set_yticks(range(len(df)), df["setting"].tolist())
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(df["seconds"].min() / 2, df["seconds"].max() * 30)
    ax.set(xlabel="seconds per local step (median; log scale)")
    return ax


def plot_factor_error(df: pd.DataFrame, *, ax=None, y: str = "relative_error", floor: float = 1e-16):
    """Relative error of averaging LoRA factors separately vs the exact mean of products, against
    local steps, one line per mode (``flu.lora_demo.lora_factor_averaging_error``; layers averaged).
    Values below ``floor`` (rounding) are drawn at the floor."""
    _need(df, "df", ["mode", "local_steps", y])
    ax = _axes(ax, (5.5, 4))
    for mode, g in df.groupby("mode", sort=False):
        line = g.groupby("local_steps")[y].mean().clip(lower=floor)
        ax.plot(line.index, line.to_numpy(), marker="o", color=method_color(mode),
                label=f"{canonical_label(mode)}: mean(B) mean(A)")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="local steps in the round", ylabel="||naive - exact|| / ||exact||")
    ax.axhline(floor, color="#999999", ls=":", lw=1)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax
