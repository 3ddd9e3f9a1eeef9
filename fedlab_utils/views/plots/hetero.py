"""Plots of heterogeneity-aware fine-tuning (notebook 08): each ``plot_*(df, *, ax=None, ...)`` returns its Axes.

They draw the tables of ``flu.lessons.hetero_finetune`` and compute nothing beyond grouping.
Modes keep their workbook colours (``method_color``: Full, Last layers, LoRA, Linear probe); a
uniform scheme ("Full (all clients)") takes its mode's colour, each assigned mixture one of
:data:`ASSIGNED_COLORS`, other runs (asynchronous, churn) a stable colour of their own.

- :func:`plot_assignment`: every device's speed and memory, coloured by its assigned mode, with the
  speed thresholds and each mode's memory need.
- :func:`plot_trained_by`: for each layer, how many clients of each mode train it.
- :func:`plot_curves`: accuracy (or F1) against virtual time, bytes or rounds, one line per scheme.
- :func:`plot_cost_bars`: one cost (virtual seconds, bytes, joules) per scheme as bars
  (:func:`bytes_label` writes bytes as kB, MB, GB).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..._core import checks as chk
from ..._core.labels import canonical_label, method_color
from .base import _axes, _need

ASSIGNED_COLORS = ("#c51b7d", "#4d9221", "#2166ac")
OTHER = {"FedAsync": "#e08214", "FedBuff": "#542788"}
UNITS = {"virtual_time": "virtual seconds", "bytes": "bytes (up + down)", "bytes_up": "bytes up",
         "bytes_down": "bytes down", "energy_j": "energy (J)", "round": "round", "accuracy": "query accuracy",
         "f1_macro": "query macro-F1", "time_to_target": "virtual seconds to target"}


def scheme_colors(labels) -> dict:
    """``{label: colour}``: uniform schemes by their mode, assigned mixtures from :data:`ASSIGNED_COLORS`
    in the order given, FedAsync and FedBuff runs from :data:`OTHER`, anything else by ``method_color``."""
    out, k = {}, 0
    for label in dict.fromkeys(labels):
        text = str(label)
        if text.startswith("Assigned"):
            out[label] = ASSIGNED_COLORS[k % len(ASSIGNED_COLORS)]
            k += 1
        elif text.split(" (")[0] in OTHER:
            out[label] = OTHER[text.split(" (")[0]]
        else:
            out[label] = method_color(text)
    return out


def bytes_label(v: float) -> str:
    """``46.6 MB``, ``2.89 GB``, ``286 kB`` (powers of 1000)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.3g} {unit}"
    return f"{v:.0f} B"


def _mode_color(mode: str) -> str:
    return method_color(canonical_label(mode))


def plot_assignment(table: pd.DataFrame, *, thresholds=None, needs: pd.DataFrame | None = None, ax=None,
                    annotate: bool = True, legend: str = "outside"):
    """Each client as a point at (``samples_per_s``, ``memory_mb``), log-log, coloured by its
    ``mode`` (``assignment_table``); a hollow ring marks a client whose memory moved it off its
    speed target. ``thresholds``: the speed tier boundaries (dashed verticals); ``needs``: a
    ``mode_table`` (``mode, memory_mb``), each mode's memory drawn as a dotted horizontal line.
    ``legend``: ``"outside"`` (right of the axes) or a matplotlib location."""
    _need(table, "table", ["client", "samples_per_s", "memory_mb", "mode"])
    ax = _axes(ax, (6.5, 4))
    modes = list(dict.fromkeys(table["mode"]))
    order = list(needs["mode"]) if needs is not None else modes
    for mode in sorted(modes, key=lambda m: order.index(m) if m in order else len(order)):
        g = table[table["mode"] == mode]
        ax.scatter(g["samples_per_s"], g["memory_mb"], s=60, color=_mode_color(mode), edgecolor="white",
                   linewidth=0.8, label=f"{canonical_label(mode)} ({len(g)})", zorder=3)
    if "capped" in table and table["capped"].any():
        c = table[table["capped"]]
        ax.scatter(c["samples_per_s"], c["memory_mb"], s=150, facecolor="none", edgecolor="#222222",
                   linewidth=1.0, label="moved by memory", zorder=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if annotate:
        # client ids beside their points; clients of one memory tier share a row, so alternate above / below
        for k, r in enumerate(table.sort_values("samples_per_s").itertuples()):
            ax.annotate(str(r.client), (r.samples_per_s, r.memory_mb), textcoords="offset points",
                        xytext=(0, 7 if k % 2 == 0 else -7), ha="center", va="bottom" if k % 2 == 0 else "top",
                        fontsize=7, color="#444444")
    if needs is not None:
        _need(needs, "needs", ["mode", "memory_mb"])
        # needs are often close: the largest labelled above its line, the others below theirs, and
        # side by side (one third of the width each), on a white box that hides the lines behind
        for j, r in enumerate(needs.sort_values("memory_mb", ascending=False).itertuples()):
            ax.axhline(r.memory_mb, color=_mode_color(r.mode), ls=":", lw=1.2)
            ax.annotate(f"{canonical_label(r.mode)} needs {r.memory_mb:.3g} MB", (0.01 + 0.33 * (j % 3), r.memory_mb),
                        xycoords=("axes fraction", "data"), textcoords="offset points", xytext=(0, 3 if j == 0 else -3),
                        fontsize=7, color=_mode_color(r.mode), va="bottom" if j == 0 else "top",
                        bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.85))
    if thresholds is not None:
        for j, t in enumerate(np.sort(np.atleast_1d(thresholds))[::-1]):     # fastest first, one line lower each
            ax.axvline(float(t), color="#777777", ls="--", lw=1)
            ax.annotate(f"{float(t):.0f}/s", (float(t), 1.0), xycoords=("data", "axes fraction"),
                        textcoords="offset points", xytext=(2, -2 - 9 * j), fontsize=7, color="#555555", va="top")
    lo = min(table["memory_mb"].min(), needs["memory_mb"].min() if needs is not None else np.inf)
    hi = max(table["memory_mb"].max(), needs["memory_mb"].max() if needs is not None else 0)
    ax.set_ylim(lo / 2.5, hi * 2.5)
    minor = FuncFormatter(lambda v, _: _plain(v) if _plain(v).lstrip("0.")[:1] in ("1", "2", "3", "5") else "")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_minor_formatter(minor)
    if ax.get_ylim()[1] / ax.get_ylim()[0] < 100:          # under two decades: label the minor ticks too
        ax.yaxis.set_minor_formatter(minor)
    else:
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set(xlabel="training speed, full fine-tuning (samples / s)", ylabel="memory for training (MB)")
    ax.legend(fontsize=7.5, title="mode (clients)", title_fontsize=7.5,
              **({"loc": "center left", "bbox_to_anchor": (1.01, 0.5)} if legend == "outside" else {"loc": legend}))
    return ax


def _plain(v, _=None) -> str:
    """A tick label without powers of ten: 30, 100, 0.1, 2048."""
    return f"{v:.0f}" if v >= 1 else f"{v:.2g}"


def plot_trained_by(df: pd.DataFrame, *, ax=None, total: int | None = None):
    """Horizontal stacked bars: for each layer (``trained_by``: ``layer, name, mode, clients``, forward
    order top to bottom) how many clients of each mode train it. Short bars are layers averaged
    over few clients."""
    _need(df, "df", ["name", "mode", "clients"])
    ax = _axes(ax, (6, 0.45 * df["name"].nunique() + 1.2))
    names = list(dict.fromkeys(df["name"]))
    left = np.zeros(len(names))
    for mode, g in df.groupby("mode", sort=False):
        counts = g.set_index("name")["clients"].reindex(names, fill_value=0).to_numpy(dtype=float)
        ax.barh(range(len(names)), counts, left=left, color=_mode_color(mode), label=canonical_label(mode),
                edgecolor="white")
        left += counts
    for y, v in enumerate(left):
        ax.text(v + 0.1, y, f"{int(v)}", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if total is not None:
        ax.axvline(chk.integer("total", total, low=1), color="#777777", ls="--", lw=1)
        ax.set_xlim(0, total * 1.12)
    ax.set(xlabel="clients that train the layer (|S_k|)")
    ax.legend(fontsize=7.5, loc="upper right", frameon=True)
    return ax


def plot_curves(df: pd.DataFrame, x: str = "virtual_time", y: str = "accuracy", *, hue: str = "scheme", ax=None,
                linthresh: float | None = None, styles: dict | None = None, legend: str | None = "lower right"):
    """One line per ``hue`` (markers at evaluated rounds) of ``y`` against ``x``: the long table of
    ``flu.lessons.hetero_finetune.curves``. ``linthresh``: a symlog x axis, linear below it and
    starting at 0 (times or bytes spanning decades, round 0 included). ``styles``:
    ``{label: dict(ls=..., marker=...)}`` overrides; ``legend``: its location, None for none."""
    _need(df, "df", [x, y, hue])
    ax = _axes(ax, (6.5, 4))
    colors = scheme_colors(df[hue])
    for label, g in df.groupby(hue, sort=False):
        g = g.sort_values(x)
        style = dict(marker="o", ms=3.5, lw=1.6)
        style.update((styles or {}).get(label, {}))
        ax.plot(g[x], g[y], color=colors[label], label=label, **style)
    if linthresh is not None:
        ax.set_xscale("symlog", linthresh=chk.real("linthresh", linthresh, low=0.0, low_open=True))
        ax.set_xlim(0, float(df[x].max()) * 1.6)
    if x == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = ax.get_ylim()
    if y in ("accuracy", "f1_macro") and hi > 1.0:
        ax.set_ylim(lo, 1.0)
    ax.set(xlabel=UNITS.get(x, x), ylabel=UNITS.get(y, y))
    ax.grid(alpha=0.3)
    if legend is not None:
        ax.legend(fontsize=7.5, loc=legend)
    return ax


def plot_cost_bars(df: pd.DataFrame, column: str, *, hue: str = "scheme", ax=None, log: bool = False,
                   fmt="{:.3g}"):
    """One horizontal bar per ``hue`` (a ``summary`` table) of ``column``, the value written at its
    end (``fmt``: a format string or a function of the value); ``inf`` (never reached) is written,
    not drawn."""
    _need(df, "df", [hue, column])
    ax = _axes(ax, (4, 0.5 * len(df) + 1))
    colors = scheme_colors(df[hue])
    values = df[column].to_numpy(dtype=float)
    finite = np.where(np.isfinite(values), values, 0.0)
    ax.barh(range(len(df)), finite, color=[colors[h] for h in df[hue]], log=log)
    top = np.nanmax(finite) if len(finite) else 1.0
    show = fmt if callable(fmt) else fmt.format
    for i, v in enumerate(values):
        text = "never" if np.isinf(v) else ("-" if np.isnan(v) else show(v))
        ax.text((finite[i] if finite[i] > 0 else (1 if log else 0)) * (1.05 if log else 1) + (0 if log else 0.01 * top),
                i, text, va="center", fontsize=8)
    ax.set_yticks(range(len(df)), list(df[hue]))
    ax.invert_yaxis()
    if not log:
        ax.set_xlim(0, top * 1.3 if top > 0 else 1)
    else:
        positive = finite[finite > 0]
        if len(positive):
            ax.set_xlim(positive.min() / 3, positive.max() * 8)
    ax.set(xlabel=UNITS.get(column, column))
    return ax
