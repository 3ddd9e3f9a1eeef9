"""Plots for convergence in practice (notebook 04): curves with bands over seeds, and time to accuracy.

Each ``plot_*(df, *, ax=None, ...)`` takes a table from ``flu.practice`` (:func:`~flu.practice.sweep`,
:func:`~flu.practice.time_to_accuracy`) and returns the Axes; nothing is computed beyond
grouping over seeds. One colour per method (``flu.plots.method_color`` of the ``label``); when a
table holds several Dirichlet ``alpha`` values they are told apart by line style.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..._core import checks as chk
from .base import _axes, _need, canonical_label, method_color

BANDS = ("sd", "range", None)
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")

# Axis labels of the metrics of ``flu.practice.sweep``.
METRIC_LABELS = {
    "test_accuracy": "test accuracy", "test_loss": "test loss", "train_loss": "train loss",
    "train_accuracy": "train accuracy", "global_loss": r"global loss $F(x)$",
    "grad_norm": r"gradient norm $\|\nabla F(x)\|$", "grad_dissimilarity": r"dissimilarity $\zeta^2$",
    "b_dissimilarity": r"B-dissimilarity $B(x)$", "client_drift": r"client drift (mean $\|x - y_i\|$)",
    "update_norm": r"server step $\|x^{t} - x^{t+1}\|$", "bytes": "bytes (cumulative)",
    "seconds": "seconds (cumulative)",
}


def _hue(df):
    return "label" if "label" in df.columns else "algorithm"


def plot_bands(df: pd.DataFrame, metric: str = "test_accuracy", *, ax=None, band: str | None = "sd",
               logy: bool = False, legend: bool = True, linewidth: float = 1.6):
    """``metric`` per round of a :func:`flu.practice.sweep` table: the mean over seeds, one line per
    method (``label``), with a band of mean +- 1 sd (``band="sd"``) or min-max (``"range"``) over
    seeds (``None``: no band). Several ``alpha`` values get one line style each.

    With ``logy`` (and positive values) the mean and sd are taken over log10 of the values: the
    line is the geometric mean and the sd band is multiplicative, so it never dips below zero.
    """
    _need(df, "df", ["round", "metric", "value", "seed", "alpha", _hue(df)])
    if band not in BANDS:
        chk.fail("band", "'sd', 'range' or None", band)
    sel = df[df["metric"] == metric]
    if sel.empty:
        chk.fail("metric", f"one of the metrics in df ({sorted(df['metric'].unique())})", metric)
    ax = _axes(ax)
    hue = _hue(df)
    alphas = sorted(sel["alpha"].unique())
    geometric = logy and bool((sel["value"] > 0).all())
    if geometric:
        sel = sel.assign(value=np.log10(sel["value"]))
    back = (lambda v: 10.0 ** v) if geometric else (lambda v: v)
    for name, g in sel.groupby(hue, sort=False):
        color = method_color(name)
        for k, a in enumerate(alphas):
            per_round = g[g["alpha"] == a].groupby("round")["value"]
            mean = per_round.mean()
            if mean.empty:
                continue
            text = canonical_label(name) + (f", alpha={a:g}" if len(alphas) > 1 else "")
            ax.plot(mean.index, back(mean.to_numpy()), color=color, ls=LINESTYLES[k % len(LINESTYLES)],
                    lw=linewidth, label=text)
            if band == "sd":
                sd = per_round.std(ddof=1).fillna(0.0)
                lo, hi = mean - sd, mean + sd
            elif band == "range":
                lo, hi = per_round.min(), per_round.max()
            else:
                continue
            ax.fill_between(mean.index, back(lo.to_numpy()), back(hi.to_numpy()), color=color, alpha=0.18,
                            linewidth=0)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel="round", ylabel=METRIC_LABELS.get(metric, metric.replace("_", " ")))
    if legend:
        ax.legend(fontsize="small")
    return ax


def plot_diagnostics(df: pd.DataFrame, metrics=("test_accuracy", "global_loss", "grad_norm", "client_drift",
                                                "grad_dissimilarity", "b_dissimilarity"),
                     *, axes=None, band: str | None = "sd", logy=("global_loss", "grad_norm", "grad_dissimilarity"),
                     ncols: int = 3) -> np.ndarray:
    """One :func:`plot_bands` panel per metric (a grid of ``ncols`` columns unless ``axes`` is
    given); ``logy`` names the metrics drawn on a log scale. The legend is on the first panel.
    Returns the array of Axes."""
    metrics = list(metrics)
    if not metrics:
        chk.fail("metrics", "a non-empty list of metric names", metrics)
    if axes is None:
        nrows = -(-len(metrics) // ncols)
        axes = plt.subplots(nrows, min(ncols, len(metrics)), figsize=(4.2 * min(ncols, len(metrics)), 3.2 * nrows),
                            squeeze=False, layout="constrained")[1]
    axes = np.asarray(axes, dtype=object).ravel()
    if len(axes) < len(metrics):
        chk.fail("axes", f"at least {len(metrics)} Axes, one per metric", f"{len(axes)} Axes")
    for i, (ax, m) in enumerate(zip(axes, metrics)):
        plot_bands(df, m, ax=ax, band=band, logy=m in logy, legend=i == 0)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    return axes


def plot_time_to_accuracy(tta: pd.DataFrame, value: str = "rounds", *, ax=None, logx: bool = True,
                          legend: bool = True):
    """Time to accuracy against the Dirichlet ``alpha`` from :func:`flu.practice.time_to_accuracy`.

    ``value`` is ``rounds``, ``bytes`` or ``seconds``. Filled markers: the mean over the seeds that
    reached the target, with a bar from their minimum to their maximum. A hollow marker: no seed
    reached the target within the run, drawn at the mean of what the runs spent (``max_<value>``;
    for rounds that is the common budget, drawn as a dashed line). Lines join the filled markers of a method. Bytes are drawn in
    megabytes (1e6 bytes).
    """
    chk.option("value", value, ("rounds", "bytes", "seconds"))
    budget = "max_round" if value == "rounds" else f"max_{value}"
    _need(tta, "tta", ["alpha", "reached", value, budget, _hue(tta)])
    ax = _axes(ax)
    hue = _hue(tta)
    scale = 1e-6 if value == "bytes" else 1.0
    tta = tta.assign(**{value: tta[value] * scale, budget: tta[budget] * scale})
    top = float(tta[budget].max())
    for k, (name, g) in enumerate(tta.groupby(hue, sort=False)):
        color, marker = method_color(name), MARKERS[k % len(MARKERS)]
        xs, ys, lo, hi, miss = [], [], [], [], []
        for a, ga in g.groupby("alpha"):
            ok = ga[ga["reached"]]
            if ok.empty:
                miss.append((a, float(ga[budget].mean())))
                continue
            xs.append(a)
            ys.append(ok[value].mean())
            lo.append(ok[value].mean() - ok[value].min())
            hi.append(ok[value].max() - ok[value].mean())
        ax.errorbar(xs, ys, yerr=[lo, hi], color=color, marker=marker, capsize=3, lw=1.6,
                    label=canonical_label(name))
        if miss:
            ax.scatter([m[0] for m in miss], [m[1] for m in miss], marker=marker, facecolors="none",
                       edgecolors=color, s=60, zorder=5)
    missed = tta[~tta["reached"].astype(bool)]
    if len(missed) and tta[budget].nunique() == 1:      # one budget for every run (rounds): a line
        ax.axhline(top, color="gray", ls="--", lw=1)
        ax.annotate("budget (hollow: not reached)", (0.01, top), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(2, -11), fontsize=8, color="gray")
    elif len(missed):
        ax.annotate("hollow: not reached (at what the run spent)", (0.01, 0.97), xycoords="axes fraction",
                    va="top", fontsize=8, color="gray")
    if logx:
        ax.set_xscale("log")
    target = tta["target"].iloc[0] if "target" in tta.columns and len(tta) else None
    what = {"rounds": "rounds", "bytes": "MB sent (up + down)", "seconds": "seconds"}[value]
    ax.set(xlabel=r"Dirichlet $\alpha$ (right: closer to IID)",
           ylabel=f"{what} to {target:g} accuracy" if target is not None else f"{what} to target")
    if legend:
        ax.legend(fontsize="small")
    return ax


def plot_final_vs_alpha(final: pd.DataFrame, metric: str, *, ax=None, logx: bool = True, logy: bool = False,
                        legend: bool = True):
    """Last-round ``metric`` (:func:`flu.practice.final_values`) against ``alpha``: the mean over
    seeds with a min-max bar, one line per method."""
    _need(final, "final", ["alpha", metric, _hue(final)])
    ax = _axes(ax)
    for k, (name, g) in enumerate(final.groupby(_hue(final), sort=False)):
        s = g.groupby("alpha")[metric]
        mean = s.mean()
        ax.errorbar(mean.index, mean.to_numpy(), yerr=[(mean - s.min()).to_numpy(), (s.max() - mean).to_numpy()],
                    color=method_color(name), marker=MARKERS[k % len(MARKERS)], capsize=3, lw=1.6,
                    label=canonical_label(name))
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=r"Dirichlet $\alpha$", ylabel=METRIC_LABELS.get(metric, metric.replace("_", " ")) + " (last round)")
    if legend:
        ax.legend(fontsize="small")
    return ax
