"""Notebook 06's figures and interactive panel: draws and wires only; the compute is ``flu.lessons.personal``.

:func:`draw_groups` draws the per-client before/after scatter of one method for seen and unseen
clients at the step counts the protocol chose; :func:`protocol_html` lays a comparison table out
as HTML; :func:`draw_ecdf` is ``flu.plots.personal.plot_client_ecdf`` with FedAvg + fine-tuning
dashed (its colour is close to FedAvg's). :func:`personal_panel` maps the controls ``shots`` (K),
``alpha``, ``method``, ``inner_steps``, ``inner_lr`` and ``lam`` explicitly onto one callback with
``ipywidgets.interactive_output`` (:func:`flu.widgets.common.panel`); the callback calls
``flu.lessons.personal.scenario`` and draws. It reads only its arguments and the values bound
when the panel was built (``functools.partial``), never notebook globals; sliders use
``continuous_update=False``. ``panel.result`` is the scenario's protocol table.
"""
from __future__ import annotations

import functools

import ipywidgets as W
import matplotlib.pyplot as plt
import pandas as pd
import torch

from ..._core import checks as chk
from ..._core.labels import canonical_label, method_color
from ...lessons import personal as lp
from ..plots import personal as pp
from .common import LAYOUT, STYLE, int_slider, log_slider, panel, show, show_html

DASHED = "FedAvg + fine-tuning"
STATISTICS = ("mean", "median", "worst_10pct", "fraction_hurt", "clients")


# =========================================================================== drawing

def draw_groups(tables: dict, best: dict, method: str, *, title: str = ""):
    """One ``flu.plots.personal.plot_before_after`` per group of ``tables`` (group -> personalize
    table of ``method``, accuracy rows), each at the step count ``best[group]``. Returns the Figure."""
    if not isinstance(tables, dict) or not tables:
        chk.fail("tables", "a non-empty dict group -> personalize table", type(tables).__name__)
    fig, axes = plt.subplots(1, len(tables), figsize=(4.6 * len(tables), 4.4), layout="constrained", squeeze=False)
    for ax, (group, table) in zip(axes[0], tables.items()):
        if group not in best:
            chk.fail("best", f"a step count for every group ({group!r} missing)", sorted(best))
        pp.plot_before_after(table, int(best[group]), ax=ax, method=method)
        ax.set_title(f"{group} clients, {best[group]} steps: " + ax.get_title().split(": ", 1)[-1], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def draw_ecdf(table: pd.DataFrame, metric: str = "accuracy", ax=None):
    """``flu.plots.personal.plot_client_ecdf`` with the curve (and legend entry) of FedAvg +
    fine-tuning dashed, so that it stands apart from FedAvg's. Returns the Axes."""
    from matplotlib.colors import same_color

    ax = pp.plot_client_ecdf(table, metric=metric, ax=ax)
    color = method_color(DASHED)
    legend = ax.get_legend()
    handles = list(getattr(legend, "legend_handles", [])) if legend is not None else []
    for line in list(ax.get_lines()) + handles:
        if hasattr(line, "get_color") and hasattr(line, "set_linestyle") and same_color(line.get_color(), color):
            line.set_linestyle("--")
    return ax


def protocol_html(table: pd.DataFrame, statistics=("mean", "worst_10pct", "fraction_hurt")) -> str:
    """``flu.lessons.personal.pivot`` of a comparison table, as HTML."""
    return lp.pivot(table, statistics).to_html(float_format=lambda v: f"{v:.3g}")


# =========================================================================== panel

def _scenario_view(X, y, fixed, shots, alpha, method, inner_steps, inner_lr, lam):
    sc = lp.scenario(X, y, method=method, shots=shots, alpha=alpha, inner_steps=inner_steps, inner_lr=inner_lr,
                     lam=lam, **fixed)
    knobs = {"inner_steps": inner_steps, "inner_lr": f"{inner_lr:.3g}", "lam": f"{lam:.3g}"}
    used = ", ".join(f"{k}={v}" for k, v in knobs.items() if method in lp.uses(k))
    show(draw_groups(sc.tables, sc.best, method, title=(
        f"{canonical_label(method)}{f' ({used})' if used else ''}: K={shots} per class, "
        f"Dirichlet alpha={alpha:.3g}, {fixed['num_rounds']} rounds")))
    show_html(protocol_html(sc.table))
    return sc.table


def personal_panel(X, y, *, shots: int = 5, alpha: float = 0.3, method: str = "Ditto", inner_steps: int = 1,
                   inner_lr: float = 0.05, lam: float = 0.1, num_clients: int = 20, num_unseen: int = 6,
                   num_rounds: int = 10, local_steps: int = 5, client_lr: float = 0.05, batch_size: int = 16,
                   steps=(0, 1, 5, 10), seed: int = 0, controls=None) -> W.VBox:
    """Personalisation on ``num_clients`` Dirichlet(alpha) clients of (X, y), ``num_unseen`` of
    them held out: controls ``shots`` (K per class), ``alpha`` (log scale), ``method`` (a
    ``flu.lessons.personal.PANEL_METHODS`` label), ``inner_steps`` (FOMAML's inner steps, FedRep's
    head steps), ``inner_lr`` (FOMAML, Per-FedAvg) and ``lam`` (Ditto), each greyed out unless the
    method uses it. Each change reruns ``flu.lessons.personal.scenario`` (an MLP with one hidden
    layer of 64, ``num_rounds`` rounds of ``local_steps`` steps) and redraws the before/after
    scatter of seen and unseen clients and the protocol's numbers; ``panel.result`` is the
    protocol table. ``controls`` picks the shown controls."""
    chk.option("method", method, lp.PANEL_METHODS)
    X = torch.as_tensor(X)
    widgets = dict(
        shots=int_slider("shots (K per class)", shots, 1, 40),
        alpha=log_slider("alpha (Dirichlet)", alpha, 0.03, 100.0),
        method=W.Dropdown(options=list(lp.PANEL_METHODS), value=method, description="method", style=STYLE,
                          layout=LAYOUT),
        inner_steps=int_slider("inner / head steps", inner_steps, 1, 10),
        inner_lr=log_slider("inner_lr (alpha)", inner_lr, 1e-3, 10.0),
        lam=log_slider("lam (Ditto)", lam, 1e-3, 10.0),
    )

    def grey_out(change=None):
        for knob in ("inner_steps", "inner_lr", "lam"):
            widgets[knob].disabled = widgets["method"].value not in lp.uses(knob)

    widgets["method"].observe(grey_out, "value")
    grey_out()
    fixed = dict(num_clients=num_clients, num_unseen=num_unseen, num_rounds=num_rounds, local_steps=local_steps,
                 client_lr=client_lr, lr=client_lr, batch_size=batch_size, eval_every=num_rounds,
                 steps=tuple(steps), seed=seed)
    return panel("Personalisation: one method, seen and unseen clients", widgets,
                 functools.partial(_scenario_view, X, y, fixed), visible=controls)
