"""A panel over a cached sweep's table (notebook 12): choose what to plot, redraw the mean-and-band figure.

Nothing is recomputed but :func:`draw_sweep`, a pure function of the table and the choices
(``flu.experiments.summary`` then ``flu.plots.plot_sweep``); the runs come from the cache.
"""
from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt
import pandas as pd

from ..._core import checks as chk
from ...experiments import summary
from ..plots.experiments import plot_sweep
from .common import LAYOUT, STYLE, panel, show


def draw_sweep(table: pd.DataFrame, *, metric: str, x: str = "round", hue: str = "algorithm", where=None,
               confidence: float = 0.95):
    """``summary(table, by=[hue, x], metric=metric, where=where)`` drawn by ``plot_sweep``; returns
    ``(summary, Axes)``."""
    s = summary(table, by=[hue, x], metric=metric, where=where, confidence=confidence)
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    plot_sweep(s, x=x, hue=hue, ax=ax, ylabel=metric,
               title=", ".join(f"{k}={v}" for k, v in (where or {}).items()) or None)
    return s, ax


def sweep_panel(table: pd.DataFrame, *, x: str = "round", hue: str = "algorithm", choose=("metric",),
                where=None) -> W.VBox:
    """A panel: one control per column of ``choose`` (a dropdown for text, a slider that updates
    on release for numbers) over that column's values, and a confidence slider; each change redraws
    :func:`draw_sweep` with the fixed ``where`` and the chosen values."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    choose = [choose] if isinstance(choose, str) else list(choose)
    if "metric" not in choose:
        chk.fail("choose", "a list of columns holding 'metric'", choose)
    missing = [c for c in choose + [x, hue] if c not in table.columns]
    if missing:
        chk.fail("choose", f"columns of the table {list(table.columns)}", missing)
    controls = {}
    for c in choose:
        values = sorted(pd.unique(table[c].dropna()))
        if all(isinstance(v, (int, float)) for v in values):
            controls[c] = W.SelectionSlider(options=values, value=values[0], description=c,
                                            continuous_update=False, style=STYLE, layout=LAYOUT)
        else:
            values = [str(v) for v in values]
            controls[c] = W.Dropdown(options=values, value=values[0], description=c, style=STYLE, layout=LAYOUT)
    controls["confidence"] = W.FloatSlider(value=0.95, min=0.5, max=0.99, step=0.01, description="confidence",
                                           continuous_update=False, style=STYLE, layout=LAYOUT)

    def redraw(confidence, **chosen):
        metric = chosen.pop("metric")
        s, ax = draw_sweep(table, metric=metric, x=x, hue=hue, where={**(where or {}), **chosen},
                           confidence=confidence)
        show(ax.figure)
        return s

    return panel("Sweep: mean over seeds and its confidence band", controls, redraw)
