"""Notebooks 00-01's panels: controls wired to the pure functions of ``flu.lessons.explore`` and the
plots of ``flu.plots``. No logic of its own.

Every panel is built the same way (the ipywidgets docs' "Using Interact" pattern): the controls
are mapped explicitly onto the keyword arguments of one callback with
``ipywidgets.interactive_output``; the callback computes (``flu.lessons.explore``), then draws
(``flu.plots``). The callback sees only its arguments and the values bound when the panel was
built, never notebook globals. Sliders that retrain use ``continuous_update=False``.

A panel's attributes (its controls, ``result``, ``seconds``, ``calls``, ``error``) are those of
:func:`flu.widgets.common.panel`.

- :func:`partition_explorer`: scheme, alpha, classes per client, size skew, clients, seed ->
  label heatmap (or bars), client sizes and the heterogeneity metrics.
- :func:`fedavg_panel`: alpha, local steps, clients per round, client learning rate, rounds ->
  FedAvg learning curves (pooled line, 10-90% band over clients), next to IID.
"""
from __future__ import annotations

import functools
import html

import ipywidgets as W
import matplotlib.pyplot as plt
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from ..._core import checks as chk
from ...lessons import explore
from ..plots import base as plots
from .common import LAYOUT, STYLE, int_slider, log_slider, panel, show, show_html


# --------------------------------------------------------------------------- drawing helpers

def draw_partition(counts, metrics: dict, *, kind: str = "heatmap", normalize: bool = False, title: str = ""):
    """Figure for one partition: the label x client table (``kind="heatmap"`` or ``"bars"``) and
    the histogram of client sizes. ``metrics`` (``flu.partition.heterogeneity``) go in the title.
    Returns the Figure."""
    chk.option("kind", kind, ("heatmap", "bars"))
    # Fixed margins instead of constrained layout: a third less drawing time for every redraw.
    fig, (ax_map, ax_size) = plt.subplots(1, 2, figsize=(11, 3.6), width_ratios=[3, 1])
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.14, top=0.9, wspace=0.22 if kind == "heatmap" else 0.3)
    if kind == "heatmap":
        plots.plot_label_heatmap(counts, ax=ax_map, normalize=normalize, annot=False)
    else:
        plots.plot_label_bars(counts, ax=ax_map, normalize=normalize)
        ax_map.xaxis.set_major_locator(MaxNLocator(integer=True))
    plots.plot_client_sizes(counts, ax=ax_size, bins=min(20, max(5, counts["client"].nunique() // 2)))
    head = f"{title}: " if title else ""
    ax_map.set_title(f"{head}JS {metrics['js_divergence']:.3f}, EMD {metrics['emd']:.2f}, "
                     f"effective classes {metrics['effective_classes']:.2f}", fontsize=10)
    ax_size.set_title(f"size Gini {metrics['size_gini']:.2f}, CV {metrics['size_cv']:.2f}", fontsize=10)
    return fig


def metrics_html(metrics: dict, num_classes: int | None = None) -> str:
    """The five headline metrics as a small HTML table (``flu.lessons.explore.metrics_table``)."""
    table = explore.metrics_table(metrics, num_classes)
    rows = "".join(
        f"<tr><td><code>{html.escape(r.metric)}</code></td><td style='text-align:right'>{r.value:.3f}</td>"
        f"<td>{html.escape(r.formula)}</td><td>{html.escape(r.range)}</td><td>{html.escape(r.iid)}</td></tr>"
        for r in table.itertuples())
    return ("<table style='font-size:12px'><tr><th>metric</th><th>value</th><th>formula</th>"
            f"<th>range</th><th>IID</th></tr>{rows}</table>")


def draw_curves(metrics, *, title: str = ""):
    """Figure with test accuracy and train loss per round, one line per ``partition`` (pooled
    over all clients) with a band over the 10th-90th percentile of the clients. Returns the Figure."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 3.6))
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.88 if title else 0.95, wspace=0.2)
    hue = "partition" if "partition" in metrics.columns else None
    plots.plot_learning_curves(metrics, "accuracy", "test", hue=hue, ax=ax_acc)
    plots.plot_learning_curves(metrics, "loss", "train", hue=hue, ax=ax_loss)
    ax_acc.set_ylim(0, 1.02)
    ax_loss.set_yscale("log")
    ax_loss.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax_loss.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax_loss.yaxis.set_minor_formatter(NullFormatter())
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------- partition explorer

def _partition_view(y, num_classes, scheme, alpha, classes_per_client, sigma, num_clients, seed, kind, normalize):
    counts, metrics = explore.partition_summary(
        y, scheme, num_clients=num_clients, alpha=alpha, classes_per_client=classes_per_client,
        sigma=sigma, seed=seed)
    show(draw_partition(counts, metrics, kind=kind, normalize=normalize, title=scheme))
    show_html(metrics_html(metrics, num_classes))
    return counts, metrics


def partition_explorer(y, *, seed: int = 0, scheme: str = "dirichlet", alpha: float = 0.5,
                       num_clients: int = 20, classes_per_client: int = 2, sigma: float = 1.0,
                       kind: str = "heatmap", normalize: bool = False) -> W.VBox:
    """Explore ``flu.partition``'s schemes on labels ``y``: controls ``scheme``, ``alpha`` (log
    scale), ``classes_per_client`` (pathological; shards per client for ``shards``), ``sigma``
    (quantity skew), ``num_clients``, ``seed``, ``kind`` (heatmap or bars), ``normalize``.

    Each change recomputes ``flu.lessons.explore.partition_summary`` and redraws the label table, the
    client-size histogram and the metric table; ``panel.result`` is ``(counts, metrics)``.
    Controls a scheme does not read are greyed out.
    """
    chk.option("scheme", scheme, explore.SCHEMES)
    labels = chk.labels("y", y)
    C = int(labels.max()) + 1
    controls = dict(
        scheme=W.Dropdown(options=explore.SCHEMES, value=scheme, description="scheme", style=STYLE,
                          layout=LAYOUT),
        alpha=log_slider("alpha", alpha, 0.01, 100.0),
        classes_per_client=int_slider("classes_per_client", classes_per_client, 1, C),
        sigma=W.FloatSlider(value=sigma, min=0.0, max=3.0, step=0.1, description="sigma (size skew)",
                            continuous_update=False, style=STYLE, layout=LAYOUT),
        num_clients=int_slider("num_clients", num_clients, 2, 100),
        seed=W.IntText(value=seed, description="seed", style=STYLE, layout=LAYOUT),
        kind=W.ToggleButtons(options=("heatmap", "bars"), value=kind, style={"button_width": "80px"}),
        normalize=W.Checkbox(value=normalize, description="label shares per client", indent=False),
    )

    def grey_out(change=None):
        used = explore.SCHEME_PARAMS[controls["scheme"].value]
        for name in ("alpha", "classes_per_client", "sigma"):
            controls[name].disabled = name not in used

    controls["scheme"].observe(grey_out, "value")
    grey_out()
    return panel("Partition explorer", controls, functools.partial(_partition_view, labels, C))


# --------------------------------------------------------------------------- FedAvg panel

def _fedavg_view(dataset, fixed, alpha, local_steps, clients_per_round, client_lr, num_rounds, iid_reference):
    metrics = explore.fedavg_curves(alpha=alpha, local_steps=local_steps, clients_per_round=clients_per_round,
                                    client_lr=client_lr, num_rounds=num_rounds, dataset=dataset,
                                    iid_reference=iid_reference, **fixed)
    show(draw_curves(metrics, title=f"FedAvg, Dirichlet alpha={alpha:.3g}, local_steps={local_steps}, "
                                     f"clients_per_round={clients_per_round}, client_lr={client_lr:.3g}"))
    return metrics


def fedavg_panel(dataset="digits", *, alpha: float = 0.1, local_steps: int = 10, clients_per_round: int = 5,
                 client_lr: float = 0.1, num_rounds: int = 20, iid_reference: bool = True,
                 num_clients: int = 20, model: str = "mlp", hidden: int = 32, batch_size: int | None = 16,
                 seed: int = 0, controls=None) -> W.VBox:
    """FedAvg on a Dirichlet(alpha) split of ``dataset`` (a name or an ``flu.data.Dataset``):
    controls ``alpha``, ``local_steps``, ``clients_per_round``, ``client_lr``, ``num_rounds``,
    ``iid_reference`` (also train on an IID split with the same settings).

    Each change reruns ``flu.lessons.explore.fedavg_curves`` (``num_clients`` clients, ``model``,
    ``batch_size``, ``seed`` fixed when the panel is built) and redraws test accuracy and train
    loss per round; ``panel.result`` is the metrics table. ``controls`` picks which controls are
    shown (default all); hidden ones keep their values.
    """
    num_clients = chk.integer("num_clients", num_clients, low=2)
    clients_per_round = chk.integer("clients_per_round", clients_per_round, low=1, high=num_clients)
    widgets = dict(
        alpha=log_slider("alpha", alpha, 0.01, 100.0),
        local_steps=int_slider("local_steps", local_steps, 1, 50),
        clients_per_round=int_slider("clients_per_round", clients_per_round, 1, num_clients),
        client_lr=log_slider("client_lr", client_lr, 1e-3, 1.0),
        num_rounds=int_slider("num_rounds", num_rounds, 5, max(50, num_rounds), 5),
        iid_reference=W.Checkbox(value=iid_reference, description="compare with IID", indent=False),
    )
    fixed = dict(num_clients=num_clients, model=model, hidden=hidden, batch_size=batch_size, seed=seed)
    return panel("FedAvg under label skew", widgets, functools.partial(_fedavg_view, dataset, fixed),
                  visible=controls)
