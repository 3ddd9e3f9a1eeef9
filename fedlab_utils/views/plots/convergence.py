"""Plots for client drift and convergence theory (notebooks 02 and 03).

Each ``plot_*(df, *, ax=None, ...)`` takes a long-form DataFrame from ``flu.drift`` /
``flu.convergence`` and returns the Axes; nothing is computed beyond pivoting. Colours come
from ``flu.plots.method_color`` (one colour per method or setting across the workbook); theory
curves are dashed and drawn on top of the solid measured ones, in the same colour, and the legend
says which line style is which.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib import ticker
from matplotlib.lines import Line2D
import numpy as np
import pandas as pd

from ..._core import checks as chk
from .base import _axes, _need, method_color

#: measured curves: solid, a little transparent, under the theory; theory: dashed, opaque, on top
MEASURED_STYLE = dict(ls="-", lw=1.8, alpha=0.55, zorder=2)
THEORY_STYLE = dict(ls=(0, (5, 2.5)), lw=1.7, alpha=1.0, zorder=3)
#: markers telling the settings of one panel apart when their curves lie close together
SETTING_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

LANDMARK_STYLE = {
    "client optimum": dict(marker="o", color="#555555", s=45, zorder=5),
    "optimum": dict(marker="*", color="black", s=220, zorder=6),
    "surrogate optimum": dict(marker="P", color="#444444", s=110, zorder=6),
}


def group_colors(names) -> list:
    """One colour per group name: ``method_color`` when every name is a known method (possibly with
    settings in parentheses, "FedProx (mu=0.1)"), else seaborn's colorblind palette in order (settings
    of one sweep, e.g. "alpha=0.1", "alpha=1", should be told apart, not hashed to look-alikes)."""
    from .base import METHOD_COLORS, canonical_label
    import seaborn as sns

    names = list(names)
    known = [n is not None and canonical_label(str(n).split(" (")[0]) in METHOD_COLORS for n in names]
    if all(known):
        return [method_color(n) for n in names]
    return sns.color_palette("colorblind", max(len(names), 1)).as_hex()[:len(names)] if len(names) <= 10 else \
        sns.color_palette("husl", len(names)).as_hex()


def plot_contours(grid: pd.DataFrame, *, ax=None, levels: int = 14, log: bool = True, cmap: str = "Greys",
                  filled: bool = True, alpha: float = 0.55, colors: str = "#777777", linewidths: float = 0.6):
    """Contours of ``value`` over ``w1, w2`` (:func:`flu.drift.objective_grid`); ``log`` spaces the
    levels geometrically between the grid's minimum and maximum (the levels of a quadratic bowl);
    ``filled=False`` draws only the lines, in ``colors``."""
    _need(grid, "grid", ["w1", "w2", "value"])
    table = grid.pivot_table(index="w2", columns="w1", values="value")
    Z = table.to_numpy()
    lo, hi = float(np.nanmin(Z)), float(np.nanmax(Z))
    if log:
        span = max(hi - lo, 1e-12)
        lv = lo + np.geomspace(span * 1e-3, span, chk.integer("levels", levels, low=2))
        lv = np.concatenate([[lo], lv])
    else:
        lv = levels
    ax = _axes(ax, (5, 5))
    X, Y = np.meshgrid(table.columns.to_numpy(), table.index.to_numpy())
    if filled:
        ax.contourf(X, Y, Z, levels=lv, cmap=cmap, alpha=alpha)
    ax.contour(X, Y, Z, levels=lv, colors=colors, linewidths=linewidths)
    ax.set(xlabel="$w_1$", ylabel="$w_2$", aspect="equal")
    return ax


def plot_landmarks(points: pd.DataFrame, *, ax=None, annotate: bool = True):
    """Markers for the rows of :func:`flu.drift.landmarks` (``label, kind, w1, w2``): client optima
    (grey dots, numbered), the optimum w* (black star), the surrogate optimum (plus)."""
    _need(points, "points", ["label", "kind", "w1", "w2"])
    ax = _axes(ax, (5, 5))
    for kind, g in points.groupby("kind", sort=False):
        style = LANDMARK_STYLE.get(kind, dict(marker="D", color="#333333", s=50, zorder=5))
        ax.scatter(g["w1"], g["w2"], label=kind, edgecolors="white", linewidths=0.8, **style)
        if annotate and kind == "client optimum":
            for k, r in enumerate(g.itertuples()):
                ax.annotate(f"$c_{k}$", (r.w1, r.w2), textcoords="offset points", xytext=(6, 5), fontsize=10)
    return ax


def plot_fixed_points(fixed: pd.DataFrame, *, ax=None, label_col: str = "label"):
    """Hollow diamonds at each method's fixed point (:func:`flu.drift.fixed_points`), in its colour."""
    _need(fixed, "fixed", [label_col, "w1", "w2"])
    ax = _axes(ax, (5, 5))
    for r in fixed.itertuples():
        name = getattr(r, label_col)
        ax.scatter([r.w1], [r.w2], marker="D", s=90, facecolors="none", edgecolors=method_color(name),
                   linewidths=2.0, zorder=7, label=f"{name} fixed point")
    return ax


def plot_trajectories(traj: pd.DataFrame, *, ax=None, hue: str = "method", markevery: int = 1):
    """The iterates w_0, w_1, ... of each method (:func:`flu.drift.trajectory_table`) as a line with
    small markers, one colour per method, the start marked with a square."""
    _need(traj, "traj", [hue, "round", "w1", "w2"])
    ax = _axes(ax, (5, 5))
    for name, g in traj.groupby(hue, sort=False):
        g = g.sort_values("round")
        color = method_color(name)
        ax.plot(g["w1"], g["w2"], "-o", color=color, ms=3, lw=1.6, markevery=markevery, label=str(name), zorder=4)
    first = traj.sort_values("round").iloc[0]
    ax.scatter([first["w1"]], [first["w2"]], marker="s", color="black", s=30, zorder=6, label="start $w_0$")
    return ax


def plot_distance(traj: pd.DataFrame, *, theory: pd.DataFrame | None = None, y: str = "dist", hue: str = "method",
                  ax=None, logy: bool = True, legend: bool | None = None):
    """``y`` (e.g. ||w_t - fixed point||) per round, one solid line per ``hue`` group; ``theory``
    (columns ``hue, round, value``, e.g. C rho^t) dashed in the same colours, drawn on top
    (``THEORY_STYLE``; the measured lines under them are a little transparent, ``MEASURED_STYLE``).
    ``legend`` (default: when ``theory`` is given) names the groups and the two line styles,
    "measured" and "theory $C\\rho^t$"."""
    _need(traj, "traj", [hue, "round", y])
    ax = _axes(ax, (6, 4))
    handles, labels = [], []
    style = MEASURED_STYLE if theory is not None else {**MEASURED_STYLE, "alpha": 1.0}   # faded only under theory
    for name, g in traj.groupby(hue, sort=False):
        g = g[g[y] > 0] if logy else g          # exact zeros (already at the point) have no log
        color = method_color(name)
        ax.plot(g["round"], g[y], color=color, label=str(name), **style)
        handles.append(Line2D([], [], color=color, lw=MEASURED_STYLE["lw"]))
        labels.append(str(name))
    if theory is not None:
        _need(theory, "theory", [hue, "round", "value"])
        for name, g in theory.groupby(hue, sort=False):
            g = g[g["value"] > 0] if logy else g
            ax.plot(g["round"], g["value"], color=method_color(name), label="_theory", **THEORY_STYLE)
    if logy and any(line.get_xydata().size for line in ax.get_lines()):
        ax.set_yscale("log")
    ax.set(xlabel="round", ylabel=y.replace("_", " "))
    if legend if legend is not None else theory is not None:
        handles += [Line2D([], [], color="gray", ls=MEASURED_STYLE["ls"], lw=MEASURED_STYLE["lw"])]
        labels += ["measured"]
        if theory is not None:
            handles += [Line2D([], [], color="gray", ls=THEORY_STYLE["ls"], lw=THEORY_STYLE["lw"])]
            labels += [r"theory $C\rho^t$"]
        ax.legend(handles, labels, fontsize="small")
    return ax


def _log_ticks(axis) -> None:
    """Major ticks at 1, 2, 5 x 10^k labelled as plain numbers (iterations, rounds), minor ticks
    unlabelled: matplotlib's default labels the minor ticks of an axis spanning under a decade,
    and those labels ("2x10^1 3x10^1 4x10^1") run into each other."""
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(ticker.LogLocator(base=10, subs=np.arange(2, 10) * 1.0))
    axis.set_minor_formatter(ticker.NullFormatter())


def coinciding(df: pd.DataFrame, *, x: str = "iteration", hue: str = "setting", kind: str = "measured",
               rtol: float = 1e-9) -> list:
    """Groups of ``hue`` values whose ``kind`` curves coincide: the same ``x`` values and ``value``
    equal to ``rtol``. A list of lists of names (each with at least two), in order of appearance."""
    _need(df, "df", [x, "kind", "value", hue])
    curves = []
    for name, g in df[df["kind"] == kind].groupby(hue, sort=False):
        g = g.sort_values(x)
        curves.append((name, g[x].to_numpy(dtype=float), g["value"].to_numpy(dtype=float)))
    groups, seen = [], set()
    for i, (a, xa, va) in enumerate(curves):
        if a in seen:
            continue
        same = [a] + [b for b, xb, vb in curves[i + 1:] if b not in seen and xb.shape == xa.shape
                      and np.array_equal(xa, xb) and np.allclose(va, vb, rtol=rtol, atol=0)]
        if len(same) > 1:
            groups.append(same)
            seen.update(same)
    return groups


def plot_suboptimality(df: pd.DataFrame, *, x: str = "iteration", hue: str | None = "setting", ax=None,
                       loglog: bool = True, legend: bool = True, markers: bool | None = None):
    """F(w_t) - F* against ``x`` (``iteration`` = local SGD steps t, or ``round``): rows of ``kind``
    ``"measured"`` solid, ``"bound"`` dashed in the same colour (:func:`flu.drift.li_experiment`,
    :func:`flu.drift.li_sweep`). Round 0 is left out on log axes.

    ``markers`` (default: when there are several ``hue`` groups) gives each group its own marker
    (``SETTING_MARKERS``, filled on the measured curve, hollow on the bound, staggered along the
    line), so that curves lying on top of each other stay distinguishable; measured curves that
    coincide exactly (:func:`coinciding`) get a note "curves coincide: ..." in the corner. A log
    ``x`` axis is labelled at 1, 2, 5 x 10^k only."""
    _need(df, "df", [x, "kind", "value", hue])
    ax = _axes(ax, (6, 4))
    groups = [(None, df)] if hue is None else list(df.groupby(hue, sort=False))
    colors = group_colors([name for name, _ in groups])
    markers = len(groups) > 1 if markers is None else bool(markers)
    handles, labels = [], []
    for k, ((name, g), color) in enumerate(zip(groups, colors)):
        marker = SETTING_MARKERS[k % len(SETTING_MARKERS)] if markers else None
        mark = dict(marker=marker, ms=5, markevery=(0.03 + 0.04 * k / max(len(groups), 1), 0.12)) if markers else {}
        for kind, ls, lw in (("measured", "-", 1.8), ("bound", "--", 1.4)):
            s = g[g["kind"] == kind].sort_values(x)
            if loglog:
                s = s[(s[x] > 0) & (s["value"] > 0)]
            if len(s):
                hollow = dict(markerfacecolor="white") if (markers and kind == "bound") else {}
                ax.plot(s[x], s["value"], ls=ls, lw=lw, color=color, **mark, **hollow,
                        label=(None if name is None or kind != "measured" else str(name)))
        if name is not None:
            handles.append(Line2D([], [], color=color, ls="-", lw=1.8, marker=marker, ms=5))
            labels.append(str(name))
    if loglog:
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_ticks(ax.xaxis)
    ax.set(xlabel="local iterations $t$" if x == "iteration" else x, ylabel="$F(w_t) - F^*$")
    if hue is not None and len(groups) > 1:
        same = coinciding(df, x=x, hue=hue)
        if same:
            ax.text(0.02, 0.02, "\n".join("curves coincide: " + " = ".join(map(str, grp)) for grp in same),
                    transform=ax.transAxes, fontsize="small", va="bottom", ha="left",
                    bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))
    if legend and hue is not None:
        if (df["kind"] == "bound").any():
            handles += [Line2D([], [], color="gray", ls="-"), Line2D([], [], color="gray", ls="--")]
            labels += ["measured", "bound (theory)"]
        ax.legend(handles, labels, fontsize="small")
    return ax


def plot_fixed_point_sweep(sweep: pd.DataFrame, param: str, *, y: str = "dist_to_opt", ax=None,
                           logx: bool = True, logy: bool = True, floor: float = 1e-12):
    """``y`` (distance of the fixed point to w*, or ``radius``) against ``param`` per method
    (:func:`flu.drift.fixed_point_sweep`). On a log axis, values below ``floor`` (exact zeros up to
    rounding, e.g. SCAFFOLD's distance) are drawn at the floor with hollow markers and the label
    says so."""
    _need(sweep, "sweep", ["label", param, y])
    ax = _axes(ax, (6, 4))
    for name, g in sweep.groupby("label", sort=False):
        vals = g[y].to_numpy(dtype=float)
        color = method_color(name)
        low = logy & (vals < floor)
        label = str(name) + (f" (< {floor:.0e}: exact)" if low.all() else "")
        ax.plot(g[param], np.where(low, floor, vals) if logy else vals, "-", color=color, label=label)
        ax.scatter(g[param][~low], vals[~low], color=color, s=16, zorder=3)
        if low.any():
            ax.scatter(g[param][low], np.full(low.sum(), floor), facecolors="none", edgecolors=color, s=30, zorder=3)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=param.replace("_", " "), ylabel=y.replace("_", " "))
    return ax


def plot_client_bars(clients: pd.DataFrame, y: str, *, ax=None, color: str = "#4c72b0"):
    """One bar per client of column ``y`` of a per-client table (:func:`flu.drift.client_table`),
    with the ``p``-weighted mean as a dashed line when the table has a ``p`` column."""
    _need(clients, "clients", ["client", y])
    ax = _axes(ax, (6, 3))
    ax.bar(clients["client"], clients[y], color=color)
    if "p" in clients.columns:
        mean = float(clients["p"] @ clients[y])
        ax.axhline(mean, color="black", ls="--", lw=1.2, label=f"weighted mean {mean:.3g}")
        ax.legend(fontsize="small")
    ax.set(xlabel="client", ylabel=y.replace("_", " "))
    ax.set_xticks(clients["client"])
    return ax
