"""Multi-seed sweeps (notebook 12): the mean over seeds as a line, its confidence interval as a band.

Draw only: the numbers come from ``flu.experiments.summary`` (columns ``mean``, ``ci_low``,
``ci_high``, ``n``).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..._core import checks as chk
from ..._core.labels import method_color
from .base import _need


def plot_sweep(summary: pd.DataFrame, *, x: str = "round", hue: str = "algorithm", col: str | None = None,
               ax=None, band: bool = True, ylabel: str | None = None, title: str | None = None):
    """Mean over seeds against ``x``, one line per ``hue`` value, with the ``ci_low``..``ci_high``
    band; with ``col``, one panel per value of that column (returns an array of Axes, else one Axes).

    Each (``col``, ``hue``, ``x``) must name one row: a column that still varies raises ValueError
    naming it (filter the summary, or pass it as ``hue``/``col``).
    """
    _need(summary, "summary", [x, hue, col, "mean", "ci_low", "ci_high"])
    keys = [c for c in (col, hue, x) if c is not None]
    if summary.duplicated(keys).any():
        other = [c for c in summary.columns if c not in keys + ["n", "mean", "std", "sem", "ci_low", "ci_high"]
                 and summary[c].nunique(dropna=False) > 1]
        chk.fail("summary", f"one row per {keys} (filter the columns that still vary: {other})",
                 f"{int(summary.duplicated(keys).sum())} repeated rows")
    panels = [None] if col is None else list(pd.unique(summary[col]))
    if ax is None:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 0.6, 3.6), sharey=True,
                                 layout="constrained", squeeze=False)
        axes = axes[0]
    else:
        axes = np.atleast_1d(ax)
        if len(axes) != len(panels):
            chk.fail("ax", f"{len(panels)} Axes (one per {col} value)", len(axes))
    for a, panel in zip(axes, panels):
        part = summary if panel is None else summary[summary[col] == panel]
        for name, rows in part.groupby(hue, sort=False):
            rows = rows.sort_values(x)
            color = method_color(str(name))
            n = int(rows["n"].min()) if "n" in rows else None
            label = f"{name}" + (f" (n={n})" if n else "")
            a.plot(rows[x], rows["mean"], color=color, label=label, lw=1.6)
            if band:
                a.fill_between(rows[x], rows["ci_low"], rows["ci_high"], color=color, alpha=0.2, lw=0)
        a.set(xlabel=x, ylabel=ylabel or "mean over seeds",
              title=title if panel is None else f"{col} = {panel}")
        a.grid(alpha=0.3)
    axes[0].legend(fontsize="small", title=hue)
    return axes[0] if col is None else axes
