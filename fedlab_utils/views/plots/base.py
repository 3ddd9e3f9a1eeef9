"""Plots over long-form DataFrames: each ``plot_*(data, *, ax=None, ...)`` returns its Axes.

They compute nothing beyond pivoting and grouping: the tables come from ``flu.partition`` and
``History.metrics``. One colour per method across every notebook: ``METHOD_COLORS`` holds the
canonical labels, ``method_color`` also accepts code names ("fedavg", "linear_probe") and labels
with settings ("FedProx (mu=0.01)"); any other label gets a stable colour of its own. The
backend and theme are the notebook's choice (nothing here calls ``matplotlib.use`` or
``sns.set_theme``).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..._core import checks as chk
from ..._core.labels import METHOD_COLORS, canonical_label, method_color, method_palette  # noqa: F401

def _axes(ax, figsize=(6, 4)):
    return plt.subplots(figsize=figsize)[1] if ax is None else ax


def _need(df, name: str, columns) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c is not None and c not in df.columns]
    if missing:
        chk.fail(name, f"a DataFrame with columns {list(columns)}", f"columns {list(df.columns)}")


def _table(counts, index: str, columns: str, normalize: bool) -> pd.DataFrame:
    _need(counts, "counts", ["client", "label", "count"])
    table = counts.pivot_table(index=index, columns=columns, values="count", aggfunc="sum", fill_value=0)
    if normalize:
        axis = 0 if index == "label" else 1
        table = table.div(table.sum(axis=axis).replace(0, 1), axis=1 - axis)
    return table


def plot_label_heatmap(counts: pd.DataFrame, *, ax=None, normalize: bool = False, annot=None,
                       cmap: str = "viridis", **kw):
    """Label x client heatmap of a ``flu.partition.label_counts`` table (``normalize``: each
    client's label shares). ``annot`` defaults to writing the numbers when there are <= 200 cells."""
    table = _table(counts, "label", "client", normalize)
    ax = _axes(ax, (max(4.0, 0.35 * table.shape[1] + 2), 3.5))
    if annot is None:
        annot = table.size <= 200
    # imshow, not sns.heatmap: the same picture at a fraction of the cost (widgets redraw it live)
    values = table.to_numpy(dtype=float)
    image = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest", **kw)
    ax.figure.colorbar(image, ax=ax, label="share" if normalize else "samples")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index])
    if annot:
        hi = np.nanmax(values) if values.size else 0
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize="x-small",
                    color="white" if v < 0.5 * hi else "black")
    ax.set(xlabel="client", ylabel="label")
    return ax


def plot_label_bars(counts: pd.DataFrame, *, ax=None, normalize: bool = False, palette=None,
                    legend: bool = True, width: float = 0.8):
    """One stacked bar per client, a segment per label (Flower Datasets' label distribution plot)."""
    table = _table(counts, "client", "label", normalize)
    ax = _axes(ax, (max(5.0, 0.3 * len(table) + 2), 3.5))
    colors = sns.color_palette(palette or ("tab10" if table.shape[1] <= 10 else "husl"), table.shape[1])
    bottom = np.zeros(len(table))
    for color, label in zip(colors, table.columns):
        ax.bar(table.index, table[label], width, bottom=bottom, color=color, label=str(label))
        bottom = bottom + table[label].to_numpy()
    ax.set(xlabel="client", ylabel="share of samples" if normalize else "samples")
    if legend:
        ax.legend(title="label", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize="small")
    return ax


def plot_partitions(counts_by_name: dict, *, kind: str = "heatmap", axes=None, **kw) -> np.ndarray:
    """Several partitions side by side, one panel per ``{name: label_counts table}`` entry.

    ``kind`` is ``"heatmap"`` or ``"bars"``; ``axes`` (as many as entries) or a new row of panels.
    Returns the array of Axes (``axes[0].figure`` is the figure).
    """
    chk.option("kind", kind, ("heatmap", "bars"))
    if not isinstance(counts_by_name, dict) or not counts_by_name:
        chk.fail("counts_by_name", "a non-empty dict {name: label_counts DataFrame}", counts_by_name)
    if axes is None:
        n = len(counts_by_name)
        axes = plt.subplots(1, n, figsize=(4.5 * n, 3.8), squeeze=False, layout="constrained")[1]
    axes = np.asarray(axes, dtype=object).ravel()
    if len(axes) != len(counts_by_name):
        chk.fail("axes", f"{len(counts_by_name)} Axes, one per partition", f"{len(axes)} Axes")
    draw = plot_label_heatmap if kind == "heatmap" else plot_label_bars
    for ax, (name, counts) in zip(axes, counts_by_name.items()):
        draw(counts, ax=ax, **kw)
        ax.set_title(str(name))
    return axes


def plot_client_sizes(data, *, ax=None, bins="auto", color=None, **kw):
    """Histogram of samples per client, from a ``label_counts`` table, a table with a ``size``
    column, a Partition (its ``.sizes``) or an array of sizes."""
    if isinstance(data, pd.DataFrame):
        if "size" in data.columns:
            sizes = data["size"].to_numpy()
        else:
            _need(data, "data", ["client", "count"])
            sizes = data.groupby("client")["count"].sum().to_numpy()
    else:
        sizes = np.asarray(getattr(data, "sizes", data))
        if sizes.ndim != 1 or sizes.size == 0:
            chk.fail("data", "a label_counts table, a Partition or a 1-D array of sizes", data)
    ax = _axes(ax)
    sns.histplot(x=sizes, bins=bins, ax=ax, color=color, **kw)
    ax.set(xlabel="samples per client", ylabel="clients")
    return ax


def plot_metric_vs(df: pd.DataFrame, x: str, y: str, *, hue=None, style=None, ax=None,
                   logx: bool = False, logy: bool = False, errorbar="sd", marker="o", **kw):
    """Line plot of ``y`` against ``x`` for sweeps (e.g. ``js_divergence`` vs ``alpha``).

    Repeated rows at one ``x`` (seeds) are drawn as their mean with a +-1 sd band (``errorbar``).
    A non-numeric ``hue`` (method labels) takes the method palette.
    """
    _need(df, "df", [x, y, hue, style])
    ax = _axes(ax)
    if hue is not None and "palette" not in kw and not pd.api.types.is_numeric_dtype(df[hue]):
        kw["palette"] = method_palette(df[hue].unique())
    sns.lineplot(data=df, x=x, y=y, hue=hue, style=style, ax=ax, errorbar=errorbar, marker=marker, **kw)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=x.replace("_", " "), ylabel=y.replace("_", " "))
    return ax


def plot_learning_curves(metrics: pd.DataFrame, metric: str = "accuracy", split: str = "test", *,
                         model: str | None = "global", hue: str | None = None, ax=None,
                         spread: bool = True, quantiles=(0.1, 0.9), label: str | None = None):
    """Pooled ``metric`` per round from a ``History.metrics``-style table, one line per ``hue`` group.

    The line is the pooled row (``client`` <NA>; mean over repeated rows such as seeds, or the
    median client when no pooled row exists). With ``spread`` a band covers the ``quantiles``
    (default 10th-90th percentile) of the per-client values at each round. Colours come from
    ``method_color`` of the group name; ``model=None`` keeps every model.
    """
    _need(metrics, "metrics", ["round", "client", "split", "metric", "value", hue])
    lo, hi = (chk.real("quantiles", q, low=0, high=1) for q in quantiles)
    keep = (metrics["metric"] == metric) & (metrics["split"] == split)
    if model is not None and "model" in metrics.columns:
        keep &= metrics["model"] == model
    sel = metrics[keep]
    if sel.empty:
        have = metrics[["metric", "split"]].drop_duplicates().astype(str).agg("/".join, axis=1).tolist()
        chk.fail("metric", f"recorded for split={split!r}, model={model!r} (have {have})", metric)
    ax = _axes(ax)
    groups = [(label, sel)] if hue is None else list(sel.groupby(hue, sort=False))
    for i, (name, g) in enumerate(groups):
        color = method_color(name) if hue is not None else f"C{i}"
        pooled = g[g["client"].isna()]
        per_client = g[g["client"].notna()]
        line = (pooled if len(pooled) else per_client).groupby("round")["value"]
        line = line.mean() if len(pooled) else line.median()
        ax.plot(line.index, line.to_numpy(), color=color,
                label=None if name is None else canonical_label(name))
        if spread and len(per_client):
            band = per_client.groupby("round")["value"].quantile([lo, hi]).unstack()
            ax.fill_between(band.index, band[lo], band[hi], color=color, alpha=0.2, linewidth=0)
    ax.set(xlabel="round", ylabel=f"{split} {metric}".replace("_", " "))
    if hue is not None or label is not None:
        ax.legend(title=hue)
    return ax
