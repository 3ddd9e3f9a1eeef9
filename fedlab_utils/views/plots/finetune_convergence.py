"""Plots for notebook 09 (convergence of federated few-shot fine-tuning): draw only.

Each ``plot_*(df, *, ax=None, ...)`` takes a long-form DataFrame from
``flu.lessons.finetune_convergence`` and returns the Axes. Measured curves are solid, theory curves
dashed in the same colour and drawn on top (``flu.plots.convergence``'s ``MEASURED_STYLE`` /
``THEORY_STYLE``); methods and modes take their colour from ``method_color`` ("full", "linear_probe",
"LoRA", ...), settings of one sweep a palette (``group_colors``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.lines import Line2D

from ..._core import checks as chk
from ..._core.labels import canonical_label, method_color
from .base import _axes, _need
from .convergence import MEASURED_STYLE, THEORY_STYLE, _log_ticks, group_colors

_STYLE_HANDLES = [Line2D([], [], color="gray", ls=MEASURED_STYLE["ls"], lw=MEASURED_STYLE["lw"]),
                  Line2D([], [], color="gray", ls=THEORY_STYLE["ls"], lw=THEORY_STYLE["lw"])]


def _legend(ax, handles, labels, theory_label=None, **kw):
    if theory_label is not None:
        handles = handles + _STYLE_HANDLES
        labels = labels + ["measured", theory_label]
    ax.legend(handles, labels, fontsize="small", **kw)


def plot_feature_constants(table: pd.DataFrame, columns=("Gamma", "zeta2"), *, ax=None, log: bool = False):
    """Grouped bars: for each feature space (rows of ``flu.convergence.feature_heterogeneity``),
    one bar per constant in ``columns`` (e.g. Gamma = F* - sum_i p_i F_i*, zeta^2 at w*), the value
    written above each bar."""
    columns = list(columns)
    _need(table, "table", ["space", *columns])
    ax = _axes(ax, (6, 3.5))
    x = np.arange(len(table))
    width = 0.8 / max(len(columns), 1)
    colors = group_colors(columns)
    for j, (col, color) in enumerate(zip(columns, colors)):
        vals = table[col].to_numpy(dtype=float)
        bars = ax.bar(x + (j - (len(columns) - 1) / 2) * width, vals, width, color=color, label=col)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                        fontsize="x-small", xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x, table["space"].astype(str))
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize="small")
    return ax


def plot_stationarity(table: pd.DataFrame, *, y: str = "running_mean", rate: pd.DataFrame | None = None,
                      rate_mode: str | None = None, ax=None, logy: bool = True):
    """``y`` (default the running mean of ||grad F(x_r)||^2) per round, one solid line per ``mode``
    (:func:`flu.lessons.finetune_convergence.stationarity`), in the mode's colour; ``rate``
    (``round, bound``, :func:`~flu.lessons.finetune_convergence.nonconvex_rate`) dashed in the
    colour of ``rate_mode`` (default the first mode)."""
    _need(table, "table", ["mode", "round", y])
    ax = _axes(ax, (6, 4))
    handles, labels = [], []
    style = MEASURED_STYLE if rate is not None else {**MEASURED_STYLE, "alpha": 1.0}
    for mode, g in table.groupby("mode", sort=False):
        g = g.sort_values("round")
        g = g[g[y] > 0] if logy else g
        color = method_color(mode)
        ax.plot(g["round"], g[y], marker="o", ms=3, color=color, **style)
        handles.append(Line2D([], [], color=color, lw=MEASURED_STYLE["lw"], marker="o", ms=3))
        labels.append(canonical_label(mode))
    if rate is not None:
        _need(rate, "rate", ["round", "bound"])
        mode = rate_mode if rate_mode is not None else table["mode"].iloc[0]
        ax.plot(rate["round"], rate["bound"], color=method_color(mode), **THEORY_STYLE)
    if logy:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set(xlabel="round $R$", ylabel=y.replace("_", " "))
    _legend(ax, handles, labels, None if rate is None else "theory (constants set to 1)")
    return ax


def plot_accuracy_vs_compute(table: pd.DataFrame, flops: dict, *, ax=None, target: float | None = None):
    """Pooled held-out accuracy against cumulative training GFLOPs (round x ``flops[mode]`` / 1e9),
    one line per mode with a marker per round; ``target`` dotted."""
    _need(table, "table", ["mode", "round", "accuracy"])
    ax = _axes(ax, (6, 4))
    for mode, g in table.groupby("mode", sort=False):
        if mode not in flops:
            chk.fail("flops", f"FLOPs per round for every mode ({mode!r} missing)", sorted(flops))
        g = g.sort_values("round")
        ax.plot(g["round"] * flops[mode] / 1e9, g["accuracy"], "-o", ms=3, color=method_color(mode),
                label=canonical_label(mode))
    if target is not None:
        ax.axhline(target, color="#999999", lw=0.8, ls=":")
    ax.set(xlabel="training GFLOPs (cumulative, body in the loop)", ylabel="query accuracy")
    ax.legend(fontsize="small")
    return ax


def plot_lora_trace(trace: pd.DataFrame, *, ax=None, logy: bool = True):
    """The effective step on W per local step (:func:`flu.lessons.finetune_convergence.lora_trace`):
    ``ratio`` = ||Delta W|| / (lr ||grad_W||) solid, its first-order bound ||A||_2^2 + ||B||_2^2
    dashed, one colour per (mode, lr)."""
    _need(trace, "trace", ["mode", "lr", "step", "ratio", "bound"])
    ax = _axes(ax, (6, 4))
    groups = list(trace.groupby(["mode", "lr"], sort=False))
    names = [f"{canonical_label(m)}, lr={lr:g}" for (m, lr), _ in groups]
    colors = group_colors(names)
    handles = []
    for (key, g), name, color in zip(groups, names, colors):
        g = g.sort_values("step")
        ax.plot(g["step"], g["ratio"], color=color, marker="o", ms=3, **MEASURED_STYLE)
        ax.plot(g["step"], g["bound"], color=color, **THEORY_STYLE)
        handles.append(Line2D([], [], color=color, marker="o", ms=3))
    if logy:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set(xlabel="local step", ylabel=r"$\|\Delta W\| \,/\, (\eta \|\nabla_W f\|)$")
    _legend(ax, handles, names, r"first order $\|A\|_2^2 + \|B\|_2^2$")
    return ax


def plot_lora_sweep(sweep: pd.DataFrame, *, ax=None, y: str = "accuracy"):
    """Final ``y`` (last round of each run) against the client learning rate, one line per label
    skew ``alpha`` (and per ``mode`` when the table has one: LoRA solid, FFA-LoRA dotted)
    (:func:`flu.lessons.finetune_convergence.lora_sweep`); a run that diverged is a cross at the
    bottom of the axes."""
    _need(sweep, "sweep", ["alpha", "client_lr", "round", y, "diverged"])
    ax = _axes(ax, (6, 4))
    sweep = sweep if "mode" in sweep.columns else sweep.assign(mode="lora")
    last = sweep.sort_values("round").groupby(["mode", "alpha", "client_lr"], sort=True).tail(1)
    alphas = sorted(last["alpha"].unique())
    colors = dict(zip(alphas, group_colors([f"alpha={a:g}" for a in alphas])))
    for (mode, alpha), g in last.groupby(["mode", "alpha"], sort=False):
        g = g.sort_values("client_lr")
        ok = ~g["diverged"].to_numpy(dtype=bool)
        color = colors[alpha]
        ax.plot(g["client_lr"][ok], g[y][ok], "-o" if mode == "lora" else ":s", color=color, ms=4,
                label=f"{canonical_label(mode)}, alpha={alpha:g}")
        if (~ok).any():
            ax.scatter(g["client_lr"][~ok], np.zeros((~ok).sum()), marker="x", s=60, color=color, zorder=4,
                       transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set_xscale("log")
    _log_ticks(ax.xaxis)
    ax.set(xlabel="client learning rate", ylabel=f"{y} after the last round")
    ax.legend(fontsize="small", title="x: diverged", title_fontsize="x-small")
    return ax


def plot_curvature(table: pd.DataFrame, *, ax=None):
    """Horizontal bars of the smallest Hessian eigenvalue per setting
    (:func:`flu.lessons.finetune_convergence.curvature_table`, symmetric-log axis): green where no
    negative curvature was found, red where the objective is not convex; the value at each bar."""
    _need(table, "table", ["setting", "lam_min", "convex_here"])
    ax = _axes(ax, (6, 3))
    y = np.arange(len(table))[::-1]
    vals = table["lam_min"].to_numpy(dtype=float)
    colors = np.where(table["convex_here"].to_numpy(dtype=bool), "#2ca02c", "#d62728")
    ax.barh(y, vals, color=colors)
    lin = max(1e-4, float(np.nanmin(np.abs(vals[vals != 0]))) if (vals != 0).any() else 1e-4)
    ax.set_xscale("symlog", linthresh=lin)
    for yy, v in zip(y, vals):
        ax.annotate(f"{v:.2g}", (v, yy), xytext=(3 if v >= 0 else -3, 0), textcoords="offset points",
                    ha="left" if v >= 0 else "right", va="center", fontsize="x-small")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, table["setting"].astype(str))
    ax.set_xlabel(r"smallest Hessian eigenvalue $\lambda_{\min}$ (symlog)")
    return ax


def plot_bound_vs_measured(curves: pd.DataFrame, *, hue: str = "inner_lr", ax=None, logy: bool = True):
    """``value`` per ``round``: rows of ``kind`` "measured" solid, "bound" dashed in the same colour,
    one colour per ``hue`` value (:func:`flu.lessons.finetune_convergence.perfedavg_sweep`)."""
    _need(curves, "curves", [hue, "round", "kind", "value"])
    ax = _axes(ax, (6, 4))
    groups = list(curves.groupby(hue, sort=True))
    names = [f"{hue}={v:.3g}" if isinstance(v, (int, float, np.floating)) else f"{hue}={v}" for v, _ in groups]
    handles = []
    for (_, g), name, color in zip(groups, names, group_colors(names)):
        for kind, style in (("measured", MEASURED_STYLE), ("bound", THEORY_STYLE)):
            s = g[g["kind"] == kind].sort_values("round")
            if logy:
                s = s[s["value"] > 0]
            ax.plot(s["round"], s["value"], color=color, **style)
        handles.append(Line2D([], [], color=color))
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel="round $K$", ylabel="value")
    _legend(ax, handles, names, "bound (theory)")
    return ax


def plot_limits(points: pd.DataFrame, trajectories: pd.DataFrame, *, ax=None):
    """On a 2-D picture (draw the contours and client optima first, ``flu.plots.convergence``):
    each rule's mean trajectory (:func:`flu.lessons.finetune_convergence.participation_points`)
    as a line from x_0 and its limit as a hollow diamond, in the rule's colour; the weighted
    optimum argmin sum_i pi_i F_i as a grey cross."""
    _need(points, "points", ["label", "kind", "w1", "w2"])
    _need(trajectories, "trajectories", ["method", "round", "w1", "w2"])
    ax = _axes(ax, (5, 5))
    names = list(dict.fromkeys(trajectories["method"]))
    for name, color in zip(names, group_colors(names)):
        g = trajectories[trajectories["method"] == name].sort_values("round")
        ax.plot(g["w1"], g["w2"], "-", color=color, lw=1.6, label=name, zorder=4)
        lim = points[(points["kind"] == "limit") & (points["label"] == name)]
        ax.scatter(lim["w1"], lim["w2"], marker="D", s=90, facecolors="none", edgecolors=color, linewidths=2,
                   zorder=7)
    wo = points[points["kind"] == "weighted optimum"]
    ax.scatter(wo["w1"], wo["w2"], marker="X", s=90, color="#666666", zorder=6, label=r"argmin $\sum_i \pi_i F_i$")
    ax.legend(fontsize="small", loc="lower left")
    return ax


def plot_distance(table: pd.DataFrame, *, y: str = "dist_to_opt", hue: str = "rule", ax=None, logy: bool = True):
    """``y`` per round, one line per ``hue`` (:func:`flu.lessons.finetune_convergence.phones_participation`)."""
    _need(table, "table", [hue, "round", y])
    ax = _axes(ax, (6, 4))
    names = list(dict.fromkeys(table[hue]))
    for name, color in zip(names, group_colors(names)):
        g = table[table[hue] == name].sort_values("round")
        g = g[g[y] > 0] if logy else g
        ax.plot(g["round"], g[y], color=color, label=str(name), lw=1.6)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel="round", ylabel=y.replace("_", " "))
    ax.legend(fontsize="small")
    return ax


def plot_block_gradients(table: pd.DataFrame, *, ax=None):
    """Per parameter (:func:`flu.lessons.finetune_convergence.mixed_stationarity`): the gradient norm
    of its own clients' objective (``grad_own``) beside that of F (``grad_all``), log scale, the
    number of clients training it under each pair."""
    _need(table, "table", ["parameter", "clients", "grad_own", "grad_all"])
    ax = _axes(ax, (6, 3.5))
    x = np.arange(len(table))
    colors = group_colors(["own clients' objective", "F (all clients)"])
    ax.bar(x - 0.2, table["grad_own"], 0.4, color=colors[0], label=r"$\|\sum_{i\in S_k} w_i \nabla_k F_i\|$")
    ax.bar(x + 0.2, table["grad_all"], 0.4, color=colors[1], label=r"$\|\nabla_k F\|$")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{p}\n|S_k|={c}" for p, c in zip(table["parameter"], table["clients"])], fontsize="x-small")
    ax.set_ylabel("gradient norm at the end")
    ax.legend(fontsize="small")
    return ax


def plot_report(table: pd.DataFrame, *, ax=None):
    """The report's numbers (black diamonds) beside the measured ones (dots with their range over
    seeds) for the claims on a 0-1 scale (:func:`flu.lessons.finetune_convergence.report_table`);
    a claim with nothing measured shows only the report's value."""
    _need(table, "table", ["claim", "report", "measured", "low", "high"])
    t = table[table["report"] <= 1.0].reset_index(drop=True)
    ax = _axes(ax, (7, 0.5 * len(t) + 1.2))
    y = np.arange(len(t))[::-1]
    ax.scatter(t["report"], y, marker="D", color="black", s=40, zorder=4, label="report")
    ok = t["measured"].notna().to_numpy()
    ax.errorbar(t["measured"][ok], y[ok], xerr=[(t["measured"] - t["low"])[ok], (t["high"] - t["measured"])[ok]],
                fmt="o", color=method_color("linear_probe"), capsize=3, zorder=3,
                label="this workbook (range over seeds)")
    ax.set_yticks(y, t["claim"].astype(str), fontsize="small")
    ax.set_ylim(-0.6, len(t) - 0.4)
    ax.set_xlabel("value")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    return ax
