"""Plots of privacy (notebook 10): each ``plot_*(df, *, ax=None, ...)`` returns its Axes.

They draw the tables of ``flu.lessons.privacy`` and compute nothing beyond pivoting and grouping.

- :func:`plot_gallery`: originals above their reconstructions, one block per attack, one mosaic.
- :func:`plot_reconstruction_error`: relative MSE of the reconstructions against K, one line per protection.
- :func:`plot_lines`: any column against another, one line per label (accuracy, epsilon or the
  clip against rounds).
- :func:`plot_privacy_utility`: accuracy against epsilon, one line per task; runs without privacy
  (epsilon = inf) as dashed horizontal lines.
- :func:`plot_bound`: measured suboptimality, bound and the DP noise term against rounds.
- :func:`plot_histograms`: distributions of ``value`` per group (masked uploads against the raw update).
- :func:`plot_costs`: a column of the aggregation cost table per method, as bars on a log axis.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..._core import checks as chk
from .base import _axes, _need

COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
          "#64b5cd")
KIND_STYLE = {"measured": dict(ls="-", marker="o", ms=3), "bound": dict(ls="--"), "noise term": dict(ls=":", lw=2.0)}
AXIS_LABELS = {"round": "round", "accuracy": "held-out test accuracy", "epsilon": r"$\varepsilon$ (at $\delta$)",
               "clip": "clip norm $C$", "relative_mse": "relative MSE of the reconstruction",
               "shots": "K: examples in the update", "value": "value", "bytes": "bytes sent (all clients, both ways)",
               "server_s": "server seconds", "client_s": "seconds per client"}


def palette(labels) -> dict:
    """``{label: colour}`` in order of first appearance, from :data:`COLORS`."""
    labels = list(dict.fromkeys(labels))
    return {label: COLORS[k % len(COLORS)] for k, label in enumerate(labels)}


def plot_gallery(gallery: pd.DataFrame, *, ax=None, cmap: str = "gray_r", gap: int = 2):
    """One mosaic, one block per ``attack`` side by side: its originals in the top row, the
    reconstructions below (``flu.lessons.privacy.gallery``: columns ``attack, kind, slot, label,
    image``), the attack's name under its block and each image's label in its corner."""
    _need(gallery, "gallery", ["attack", "kind", "slot", "label", "image"])
    if gallery.empty:
        chk.fail("gallery", "a non-empty table of images", "an empty table")
    bad = sorted(set(gallery["kind"]) - {"original", "recovered"})
    if bad:
        chk.fail("gallery", "kind values 'original' and 'recovered'", bad)
    attacks = list(dict.fromkeys(gallery["attack"].tolist()))
    h, w = np.asarray(gallery["image"].iloc[0]).shape
    width = {a: int(gallery.loc[gallery.attack == a, "slot"].max()) + 1 for a in attacks}
    start, col = {}, 0
    for a in attacks:
        start[a] = col
        col += width[a] + gap
    cols = col - gap
    mosaic = np.full((2 * (h + 1), cols * (w + 1)), np.nan)
    ax = _axes(ax, (min(14, 0.5 * cols + 1.5), 2.4))
    for r in gallery.itertuples():
        top = 0 if r.kind == "original" else h + 1
        left = (start[r.attack] + int(r.slot)) * (w + 1)
        mosaic[top:top + h, left:left + w] = np.asarray(r.image)
        ax.text(left + 0.1, top + 0.1, str(r.label), fontsize=6, va="top", color="#1f77b4")
    ax.imshow(mosaic, cmap=cmap, interpolation="nearest", vmin=float(np.nanmin(mosaic)), vmax=float(np.nanmax(mosaic)))
    ax.set_xticks([(start[a] + width[a] / 2) * (w + 1) - 0.5 for a in attacks], attacks, fontsize=8)
    ax.set_yticks([h / 2, h + 1 + h / 2], ["original", "recovered"], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return ax


def plot_reconstruction_error(table: pd.DataFrame, *, x: str = "shots", hue: str = "protection", ax=None,
                              legend: bool = True):
    """``relative_mse`` against ``x`` (log y), one line per ``hue``; a dotted line at 1 (no better
    than the mean image). Rows of one ``flu.lessons.privacy.reconstruction_table`` setting
    (filter ``local_steps`` first: several rows per point are averaged)."""
    _need(table, "table", [x, hue, "relative_mse"])
    ax = _axes(ax, (5, 3.6))
    colors = palette(table[hue])
    for label, g in table.groupby(hue, sort=False):
        g = g.groupby(x, sort=True)["relative_mse"].mean()
        ax.plot(g.index, np.maximum(g.to_numpy(), 1e-6), marker="o", color=colors[label], label=str(label))
    ax.axhline(1.0, color="#555555", ls=":", lw=1.2)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=AXIS_LABELS.get(x, x), ylabel=AXIS_LABELS["relative_mse"])
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize="small")
    return ax


def plot_lines(df: pd.DataFrame, x: str = "round", y: str = "accuracy", *, hue: str = "label", ax=None,
               logx: bool = False, logy: bool = False, legend: bool = True, markers: bool = False, colors=None):
    """``y`` against ``x``, one line per value of ``hue`` (non-finite ``y`` skipped)."""
    _need(df, "df", [x, y, hue])
    ax = _axes(ax, (6, 4))
    colors = palette(df[hue]) if colors is None else colors
    for label, g in df.groupby(hue, sort=False):
        g = g.sort_values(x)
        g = g[np.isfinite(g[y].to_numpy(dtype=float))]
        ax.plot(g[x], g[y], color=colors.get(label, "#333333"), lw=1.6, label=str(label),
                marker="o" if markers else None, ms=3)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if x == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=AXIS_LABELS.get(x, x), ylabel=AXIS_LABELS.get(y, y))
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize="small")
    return ax


def plot_privacy_utility(df: pd.DataFrame, *, ax=None, by=("alpha", "shots"), legend: bool = True):
    """Accuracy against epsilon (log x), one line per task (``by`` columns), points labelled by the
    noise multiplier; rows with epsilon = inf (no privacy) as a dashed horizontal line of the
    task's colour (``flu.lessons.privacy.privacy_utility``)."""
    by = list(by)
    _need(df, "df", [*by, "noise_multiplier", "epsilon", "accuracy"])
    ax = _axes(ax, (6, 4))
    keys = list(dict.fromkeys(df[by].itertuples(index=False, name=None)))
    colors = {k: COLORS[i % len(COLORS)] for i, k in enumerate(keys)}
    for key, g in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        name = ", ".join(f"{c}={v:g}" if isinstance(v, (int, float)) else f"{c}={v}" for c, v in zip(by, key))
        finite = g[np.isfinite(g["epsilon"].to_numpy(dtype=float))].sort_values("epsilon")
        ax.plot(finite["epsilon"], finite["accuracy"], marker="o", color=colors[key], label=name)
        for r in finite.itertuples():
            ax.annotate(f"z={r.noise_multiplier:g}", (r.epsilon, r.accuracy), xytext=(3, 3), textcoords="offset points",
                        fontsize=6.5, color=colors[key])
        for acc in g.loc[~np.isfinite(g["epsilon"].to_numpy(dtype=float)), "accuracy"]:
            ax.axhline(float(acc), color=colors[key], ls="--", lw=1.0)
    ax.set_xscale("log")
    ax.set(xlabel=AXIS_LABELS["epsilon"], ylabel=AXIS_LABELS["accuracy"])
    ax.grid(True, which="both", alpha=0.3)
    if legend:
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="#555555", ls="--", lw=1.0))
        labels.append("no privacy (same task)")
        ax.legend(handles, labels, fontsize="small")
    return ax


def plot_bound(table: pd.DataFrame, *, ax=None, hue: str = "noise_multiplier",
               kinds=("measured", "bound", "noise term"), legend: bool = True, colors=None):
    """``value`` against ``round`` (log y) for each ``hue`` (colour; ``colors`` maps values to
    colours) and ``kind`` (line style: measured solid, bound dashed, noise term dotted),
    ``flu.lessons.privacy.dp_li_experiment``'s table. Values <= 0 are not drawn."""
    _need(table, "table", ["round", "kind", "value", hue])
    ax = _axes(ax, (6, 4))
    colors = palette(table[hue]) if colors is None else {v: colors[v] for v in dict.fromkeys(table[hue])}
    for (label, kind), g in table.groupby([hue, "kind"], sort=False):
        if kind not in kinds:
            continue
        g = g[(g["value"] > 0) & np.isfinite(g["value"])].sort_values("round")
        if g.empty:
            continue
        ax.plot(g["round"], g["value"], color=colors[label], **KIND_STYLE.get(kind, {}))
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="round", ylabel=r"$F(w_r) - F^\star$")
    ax.grid(True, which="both", alpha=0.3)
    if legend:
        handles = [Line2D([], [], color=c, lw=2, label=f"{hue.replace('_', ' ')} {v:g}" if isinstance(v, (int, float))
                          else str(v)) for v, c in colors.items()]
        handles += [Line2D([], [], color="#555555", label=k, **KIND_STYLE.get(k, {})) for k in kinds
                    if k in set(table["kind"])]
        ax.legend(handles=handles, fontsize="small", ncol=2)
    return ax


def plot_histograms(df: pd.DataFrame, *, value: str = "value", hue: str = "what", ax=None, bins: int = 40,
                    legend: bool = True, density: bool = True):
    """Histograms of ``value``, one (step outline) per value of ``hue``."""
    _need(df, "df", [value, hue])
    ax = _axes(ax, (5, 3.5))
    colors = palette(df[hue])
    lo, hi = float(df[value].min()), float(df[value].max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    for label, g in df.groupby(hue, sort=False):
        ax.hist(g[value].to_numpy(dtype=float), bins=edges, histtype="step", lw=1.6, color=colors[label],
                label=str(label), density=density)
    ax.set(xlabel=AXIS_LABELS.get(value, value), ylabel="density" if density else "count")
    if legend:
        ax.legend(fontsize="small")
    return ax


def plot_costs(costs: pd.DataFrame, column: str = "bytes", *, ax=None, log: bool = True):
    """``column`` of ``flu.lessons.privacy.aggregation_costs``'s table per ``method`` as horizontal
    bars (log axis when ``log``), each annotated with its value."""
    _need(costs, "costs", ["method", column])
    ax = _axes(ax, (5, 2.6))
    vals = costs[column].to_numpy(dtype=float)
    y = np.arange(len(costs))
    colors = palette(costs["method"])
    ax.barh(y, np.where(vals > 0, vals, np.nan), color=[colors[m] for m in costs["method"]], height=0.6)
    for k, v in enumerate(vals):
        if v > 0 and math.isfinite(v):
            ax.text(v, k, f" {v:.3g}", va="center", fontsize=7)
    ax.set_yticks(y, list(costs["method"]))
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.set(xlabel=AXIS_LABELS.get(column, column))
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return ax
