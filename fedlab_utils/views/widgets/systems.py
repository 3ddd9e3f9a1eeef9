"""Notebook 07's interactive panel: draws and wires only; the compute is ``flu.lessons.systems``.

:func:`draw_scenario` draws one setting (the Gantt chart of a round under the chosen policy,
accuracy against virtual time for it and for ``wait_all``). :func:`systems_panel` maps the
controls ``speed_spread``, ``bandwidth_spread``, ``link_factor``, ``policy``, ``deadline``,
``dropout`` and ``availability`` onto one callback with ``ipywidgets.interactive_output``
(:func:`flu.widgets.common.panel`); the callback calls ``flu.lessons.systems.scenario`` and
``time_to_accuracy`` and draws with ``flu.plots.systems``. It reads only its arguments and the
values bound when the panel was built (``functools.partial``); sliders use
``continuous_update=False``. ``panel.result`` is the time-to-accuracy table.
"""
from __future__ import annotations

import functools

import ipywidgets as W
import matplotlib.pyplot as plt

from ...lessons import systems as ls
from ..plots import systems as ps
from .common import LAYOUT, STYLE, log_slider, panel, show, show_html

DEADLINE_POLICIES = ("deadline", "partial_work")


def draw_scenario(sc: ls.Scenario, *, policy: str, deadline: float | None = None, target: float | None = None,
                  round: int | None = None, title: str = ""):
    """Left: the Gantt chart of ``round`` (None: the first with anyone selected) of the run under
    ``policy``; right: accuracy against virtual time of every run in ``sc`` (``target`` dotted).
    Returns the Figure."""
    fig, (ax_g, ax_a) = plt.subplots(1, 2, figsize=(12, 4.4), width_ratios=[1.25, 1], layout="constrained")
    tl = sc.runs[policy].timeline
    shown = int(tl["round"].min()) if round is None and len(tl) else round
    ps.plot_timeline(tl, shown, deadline=deadline if policy in DEADLINE_POLICIES else None, ax=ax_g)
    ax_g.set_title(f"{policy}: round {shown}", fontsize=9)
    ps.plot_accuracy_vs_time(sc.table, ax=ax_a, target=target)
    ax_a.set_title("test accuracy against virtual time", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _scenario_view(fed, model, fixed, speed_spread, bandwidth_spread, link_factor, policy, deadline, dropout,
                   availability):
    sc = ls.scenario(fed, model, preset=fixed["preset"], speed_spread=speed_spread, bandwidth_spread=bandwidth_spread,
                     link_factor=link_factor, dropout=dropout, availability=availability, policy=policy,
                     deadline=deadline, over_select=fixed["over_select"], profile_seed=fixed["seed"],
                     seed=fixed["seed"], num_rounds=fixed["num_rounds"], clients_per_round=fixed["clients_per_round"])
    tta = ls.time_to_accuracy(sc.table, fixed["target"])
    show(draw_scenario(sc, policy=policy, deadline=deadline, target=fixed["target"], title=(
        f"{fixed['preset']}: speed spread {speed_spread:.2g}, bandwidth spread {bandwidth_spread:.2g}, links / "
        f"{link_factor:.3g}, dropout {dropout:.2g}, available {availability:.2g}"
        + (f", deadline {deadline:.3g} s" if policy in DEADLINE_POLICIES else ""))))
    show_html(tta.to_html(index=False, float_format=lambda v: f"{v:.4g}"))
    return tta


def systems_panel(fed, model, *, preset: str = "phones", speed_spread: float = 0.6, bandwidth_spread: float = 0.8,
                  link_factor: float = 1.0, policy: str = "deadline", deadline: float = 2.0, dropout: float = 0.08,
                  availability: float = 1.0, over_select: float = 1.5, num_rounds: int = 20,
                  clients_per_round: int = 10, target: float = 0.9, seed: int = 0, controls=None) -> W.VBox:
    """Straggler policies on ``preset`` devices for ``fed``'s clients: controls for the spread of
    speeds and bandwidths (sigma of their logs), how many times slower the links are
    (``link_factor``), the ``policy`` (against ``wait_all``), the ``deadline`` (greyed out unless
    a deadline policy), every client's ``dropout`` and the per-round ``availability``
    (Bernoulli; 1: always). Each change reruns ``flu.lessons.systems.scenario`` and redraws the
    Gantt chart and accuracy against virtual time. ``controls`` picks the shown controls."""
    widgets = dict(
        speed_spread=W.FloatSlider(value=speed_spread, min=0.0, max=1.5, step=0.1, description="speed spread (sigma)",
                                   continuous_update=False, style=STYLE, layout=LAYOUT),
        bandwidth_spread=W.FloatSlider(value=bandwidth_spread, min=0.0, max=1.5, step=0.1,
                                       description="bandwidth spread (sigma)", continuous_update=False, style=STYLE,
                                       layout=LAYOUT),
        link_factor=log_slider("links slower by (x)", link_factor, 1.0, 3000.0),
        policy=W.Dropdown(options=list(ls.POLICIES), value=policy, description="policy", style=STYLE, layout=LAYOUT),
        deadline=log_slider("deadline (s)", deadline, 0.1, 100.0, step=0.05),
        dropout=W.FloatSlider(value=dropout, min=0.0, max=0.6, step=0.02, description="dropout (each client)",
                              continuous_update=False, style=STYLE, layout=LAYOUT),
        availability=W.FloatSlider(value=availability, min=0.1, max=1.0, step=0.05,
                                   description="availability (per round)", continuous_update=False, style=STYLE,
                                   layout=LAYOUT),
    )

    def grey_out(change=None):
        widgets["deadline"].disabled = widgets["policy"].value not in DEADLINE_POLICIES

    widgets["policy"].observe(grey_out, "value")
    grey_out()
    fixed = dict(preset=preset, over_select=over_select, num_rounds=num_rounds, clients_per_round=clients_per_round,
                 target=target, seed=seed)
    return panel("System heterogeneity: one policy against wait_all on the virtual clock", widgets,
                 functools.partial(_scenario_view, fed, model, fixed), visible=controls)
