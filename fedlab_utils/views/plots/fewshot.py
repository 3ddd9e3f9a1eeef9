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
- :func:`plot_reference`: our numbers beside the reference document's.
- :func:`plot_step_times`: measured seconds per local step, with ratios.
- :func:`plot_factor_error`: error of naive LoRA factor averaging against local steps.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.patches import FancyBboxPatch

from ..._core import checks as chk
from .base import _axes, _need, canonical_label, method_color

HURT, HELPED = "#c0392b", "#7f7f7f"


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
    with ``trainable`` the count trained in that layer, layers in forward order)."""
    import seaborn as sns

    _need(df, "df", ["mode", "layer", "params", "trainable"])
    layers = list(dict.fromkeys(df["layer"].tolist()))
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
    ax.set(xlabel="layer (forward order; adapters counted in their layer)", ylabel="")
    return ax


_COST_LABELS = {"bytes_up_per_round": "bytes sent up per round (all clients)",
                "bytes_down_per_round": "bytes sent down per round", "flops_step": "estimated FLOPs per local step",
                "seconds_per_step": "measured seconds per local step", "trainable_params": "trainable parameters"}


def plot_accuracy_vs_cost(summary: pd.DataFrame, x: str = "bytes_up_per_round", y: str = "accuracy", *,
                          ax=None, logx: bool = True, annotate: bool = True, label: str = "method"):
    """Scatter of ``y`` against a cost column ``x`` (bytes, FLOPs, seconds, parameters), one point
    and one colour per method (rows with no ``x`` are left out). Up and to the left is better."""
    _need(summary, "summary", [x, y, label])
    sel = summary[summary[x].notna() & summary[y].notna() & (summary[x] > 0 if logx else True)]
    ax = _axes(ax, (5.5, 4))
    for r in sel.itertuples():
        name = getattr(r, label)
        ax.scatter(getattr(r, x), getattr(r, y), s=60, color=method_color(name), label=canonical_label(name),
                   edgecolor="white", zorder=3)
        if annotate:
            ax.annotate(canonical_label(name), (getattr(r, x), getattr(r, y)), textcoords="offset points",
                        xytext=(5, 4), fontsize=7.5)
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=_COST_LABELS.get(x, x.replace("_", " ")), ylabel=y.replace("_", " "))
    ax.grid(alpha=0.3)
    return ax


def plot_sweep(df: pd.DataFrame, x: str, y: str = "accuracy", *, hue: str = "method", ax=None, logx: bool = False,
               reference: dict | None = None, confidence: float = 0.95):
    """``y`` against a swept setting ``x`` (shots K, alpha, rounds), one line per ``hue`` (method).
    Several rows per point (seeds) are drawn as their mean with a Student-t ``confidence`` band.
    ``reference``: ``{label: value}`` horizontal dashed lines (e.g. the reference document's figures)."""
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
    ax.set(xlabel=x.replace("_", " "), ylabel=y.replace("_", " "))
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def plot_before_after(df: pd.DataFrame, *, ax=None, hue: str | None = "method", sort: bool = True):
    """Dumbbell of per-client ``before`` -> ``after`` (``flu.evaluation.before_after`` rows, with a
    ``method`` column when several methods share the plot): a hollow dot before, a filled dot after,
    the segment red where the client got worse. The title gives the fraction of clients hurt."""
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
        ax.scatter(b, yv, s=28, facecolor="white", edgecolor=color, zorder=2)
        ax.scatter(a, yv, s=28, color=color, zorder=3, label=None if name is None else canonical_label(name))
        hurt_text.append(f"{canonical_label(name) + ': ' if name is not None else ''}{worse.mean():.0%} hurt")
    ax.set_yticks(range(len(clients)), [str(c) for c in clients])
    ax.set(xlabel="query accuracy (hollow: before, filled: after)", ylabel="client")
    ax.set_title("; ".join(hurt_text), fontsize=8.5)
    if groups[0][0] is not None:
        ax.legend(fontsize="small", loc="lower left")
    ax.grid(axis="x", alpha=0.3)
    ax.autoscale_view()
    return ax


def plot_reference(df: pd.DataFrame, *, ax=None, value: str = "value", xlabel: str | None = None):
    """Our numbers beside the reference document's: one group of horizontal bars per ``quantity``,
    one bar per row (``source`` names it; rows whose source starts with ``"reference"`` are hatched
    grey, the others take the colour of their ``method`` when the table has that column)."""
    _need(df, "df", ["quantity", "source", value])
    quantities = list(dict.fromkeys(df["quantity"].tolist()))
    most = int(df.groupby("quantity").size().max())
    ax = _axes(ax, (7, 0.32 * len(df) + 0.4 * len(quantities) + 0.8))
    h = 0.84 / most
    for qi, q in enumerate(quantities):
        rows = df[df.quantity == q]
        for j, r in enumerate(rows.itertuples()):
            yv = qi + (j - (len(rows) - 1) / 2) * h
            ref = str(r.source).startswith("reference")
            name = getattr(r, "method", None) if "method" in df.columns else None
            color = "#bbbbbb" if ref else method_color(name if isinstance(name, str) else r.source)
            v = float(getattr(r, value))
            ax.barh(yv, v, height=h * 0.88, color=color, hatch="//" if ref else None,
                    edgecolor="#555555" if ref else "white")
            ax.text(v, yv, f" {v:.2f}  {r.source}", va="center", fontsize=7.5)
    ax.set_yticks(range(len(quantities)), quantities)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel or value.replace("_", " "))
    ax.set_xlim(0, float(df[value].max()) * 1.6)
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
    ax.set(xlabel="local steps in the round", ylabel="||naive - exact|| / ||exact||")
    ax.axhline(floor, color="#999999", ls=":", lw=1)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax
