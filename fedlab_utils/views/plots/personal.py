"""Plots of personalisation (Motley, Wu et al. 2022) and few-shot meta-testing: each ``plot_*`` returns its Axes.

They draw long-form tables computed by ``flu.evaluation`` (``personalize``, ``protocol``,
``episodes``) and compute nothing beyond grouping. Methods keep their one colour across the
workbook (``flu._core.labels.method_color``).

- :func:`plot_before_after`: per-client metric after fine-tuning against before, with y = x and the
  fraction of clients hurt.
- :func:`plot_client_ecdf`: the distribution of per-client values, one ECDF per method.
- :func:`plot_accuracy_vs`: mean accuracy against shots or steps, one line per method, with a band.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..._core import checks as chk
from ..._core.labels import canonical_label, method_color, method_palette
from .base import _axes, _need

HURT = "#c0392b"
_LOWER_IS_BETTER = ("loss",)


def _metric_rows(table: pd.DataFrame, name: str, metric: str) -> pd.DataFrame:
    if not isinstance(metric, str):
        raise TypeError(f"metric must be a str, got {type(metric).__name__}")
    sel = table[table["metric"] == metric]
    if sel.empty:
        chk.fail("metric", f"a metric of {name} {sorted(map(str, table['metric'].unique()))}", metric)
    return sel


def plot_before_after(table: pd.DataFrame, steps: int, metric: str = "accuracy", ax=None, method=None):
    """Per-client ``metric`` at steps=0 (x) against after ``steps`` fine-tuning steps (y), from a
    ``flu.evaluation.personalize`` table (columns ``client, steps, metric, value``, one split).

    Points above the dashed line y = x improved (below, for the loss); clients made worse are drawn
    red. The title gives the fraction hurt, |{i: m_i(steps) worse than m_i(0)}| / #clients.
    ``method`` (a label) picks the colour and names the panel.
    """
    _need(table, "table", ["client", "steps", "metric", "value"])
    sel = _metric_rows(table, "table", metric)
    present = sorted(int(s) for s in sel["steps"].unique())
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)) or int(steps) not in present:
        chk.fail("steps", f"a step count of table {present}", steps)
    steps = int(steps)
    if 0 not in present:
        chk.fail("table", "rows at steps=0 (the starting model)", f"steps {present}")
    if sel.duplicated(["client", "steps"]).any():
        chk.fail("table", f"one {metric!r} value per client and step count (select one split first)", "several")
    wide = sel[sel["steps"].isin([0, steps])].pivot(index="client", columns="steps", values="value").dropna()
    before, after = wide[0].to_numpy(dtype=float), wide[steps].to_numpy(dtype=float)
    hurt = after > before if metric in _LOWER_IS_BETTER else after < before
    ax = _axes(ax, (4.5, 4.5))
    color = method_color(method) if method is not None else "#1f77b4"
    ax.scatter(before[~hurt], after[~hurt], s=26, color=color, alpha=0.85, zorder=3,
               label="helped or unchanged")
    ax.scatter(before[hurt], after[hurt], s=26, color=HURT, alpha=0.85, zorder=3, label="hurt")
    both = np.concatenate([before, after])
    lo, hi = float(both.min()), float(both.max())
    pad = 0.03 * (hi - lo) if hi > lo else 0.05
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", color="#555555", lw=1, zorder=1, label="y = x")
    ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad), aspect="equal",
           xlabel=f"{metric.replace('_', ' ')} at 0 steps", ylabel=f"{metric.replace('_', ' ')} after {steps} steps")
    prefix = f"{canonical_label(method)}: " if method is not None else ""
    ax.set_title(f"{prefix}{hurt.mean():.0%} of {len(hurt)} clients hurt", fontsize=9)
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(alpha=0.3)
    return ax


def plot_client_ecdf(table: pd.DataFrame, metric: str = "accuracy", ax=None):
    """Empirical CDF F(v) = |{i: m_i <= v}| / #clients of the per-client ``metric``, one curve per
    method (``table``: long form ``method, client, metric, value``). A curve to the right is better
    for accuracy; its left tail shows the worst clients that a mean hides (Motley)."""
    import seaborn as sns

    _need(table, "table", ["method", "client", "metric", "value"])
    sel = _metric_rows(table, "table", metric).assign(label=lambda d: d["method"].map(canonical_label))
    ax = _axes(ax, (5.5, 4))
    labels = list(dict.fromkeys(sel["label"]))
    sns.ecdfplot(data=sel, x="value", hue="label", hue_order=labels, palette=method_palette(labels), ax=ax)
    legend = ax.get_legend()
    if legend is not None:
        legend.set_title("")
    ax.set(xlabel=f"per-client {metric.replace('_', ' ')}", ylabel="fraction of clients")
    ax.grid(alpha=0.3)
    return ax


def plot_accuracy_vs(table: pd.DataFrame, x: str, ax=None):
    """Mean accuracy against ``x`` (any column: ``shots``, ``steps``), one line per method, with a
    normal 95% band mean -+ 1.96 s / sqrt(n) over the rows at each point (clients or episodes).
    ``table``: long form ``method, <x>, value``; with a ``metric`` column, its accuracy rows."""
    import seaborn as sns

    if not isinstance(x, str):
        raise TypeError(f"x must be a column name (str), got {type(x).__name__}")
    _need(table, "table", ["method", "value"])
    if x not in table.columns:
        chk.fail("x", f"a column of table {list(table.columns)}", x)
    sel = _metric_rows(table, "table", "accuracy") if "metric" in table.columns else table
    sel = sel.assign(label=sel["method"].map(canonical_label))
    labels = list(dict.fromkeys(sel["label"]))
    ax = _axes(ax, (5.5, 4))
    sns.lineplot(data=sel, x=x, y="value", hue="label", hue_order=labels, palette=method_palette(labels),
                 errorbar=("se", 1.96), marker="o", ax=ax)
    legend = ax.get_legend()
    if legend is not None:
        legend.set_title("")
    ax.set(xlabel=x.replace("_", " "), ylabel="accuracy")
    ax.grid(alpha=0.3)
    return ax
