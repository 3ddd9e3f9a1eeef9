"""Notebook 05's interactive panel: draws and wires only; the compute is ``flu.lessons.fewshot``.

:func:`draw_mode` draws one setting (per-client before/after, accuracy against bytes).
:func:`finetune_panel` maps the controls ``shots`` (K), ``alpha``, ``mode``, ``lora_rank`` and
``num_rounds`` explicitly onto one callback with ``ipywidgets.interactive_output``; the callback
calls ``few_shot_federation`` and ``compare`` (``flu.lessons.fewshot``), then draws with
``flu.plots.fewshot``. It reads only its arguments and the values bound when the panel was built
(``functools.partial``), never notebook globals; sliders use ``continuous_update=False``. The
panel exposes its controls as attributes (``panel.shots.value = 5`` recomputes), ``panel.result``
(the summary table), ``panel.seconds``, ``panel.calls`` and ``panel.error``
(:func:`flu.widgets.common.panel`).
"""
from __future__ import annotations

import functools

import ipywidgets as W
import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import nn

from ..._core import checks as chk
from ...lessons import fewshot as lf
from ...lessons import study
from ...models import finetune
from ..plots import fewshot as pf
from .common import LAYOUT, STYLE, int_slider, log_slider, panel, show, show_html


# =========================================================================== drawing

def draw_mode(summary: pd.DataFrame, dumbbells: pd.DataFrame, *, title: str = ""):
    """Figure for one setting: per-client before/after (``dumbbells``, from
    ``flu.lessons.fewshot.before_after_table``) on the left, query accuracy against bytes sent up per
    round (``summary``, from ``flu.lessons.fewshot.compare``) on the right. Returns the Figure."""
    fig, (ax_ba, ax_cost) = plt.subplots(1, 2, figsize=(11, 4.2), width_ratios=[1.2, 1], layout="constrained")
    pf.plot_before_after(dumbbells, ax=ax_ba)
    pf.plot_accuracy_vs_cost(summary, "bytes_up_per_round", ax=ax_cost)
    ax_cost.set_title("query accuracy vs upload (pretrained head: "
                      f"{float(summary.loc[summary['mode'] == 'pretrained', 'accuracy'].iloc[0]):.2f})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# =========================================================================== panel

def _finetune_view(model, X, y, prefixes, fixed, shots, alpha, mode, lora_rank, num_rounds):
    args = dict(shots=shots, alpha=alpha, num_clients=fixed["num_clients"], seed=fixed["seed"],
                partition_seed=fixed["seed"])
    few = lf.few_shot_federation(X, y, shape=fixed["shape"], **args)
    summary, per_client, _ = lf.compare(model, few.federation, ("none", mode),
                                        inputs=lf.prefix_inputs(prefixes, y, few.federation, **args),
                                        num_rounds=num_rounds, lora_rank=lora_rank, seed=fixed["seed"],
                                        local_steps=fixed["local_steps"])
    dumbbells = lf.before_after_table(per_client, ("none", mode))
    show(draw_mode(summary, dumbbells, title=(
        f"{study.LABELS[mode]}: K={shots} per class, Dirichlet alpha={alpha:.3g}, {num_rounds} rounds"
        + (f", LoRA rank {lora_rank}" if "lora" in mode else ""))))
    cols = ["method", "accuracy", "f1_macro", "fraction_hurt", "trainable_params", "bytes_up_per_round",
            "flops_step", "features"]
    show_html(summary[cols].to_html(index=False, float_format=lambda v: f"{v:.3g}"))
    return summary


def finetune_panel(model: nn.Module, X, y, *, shape=None, shots: int = 20, alpha: float = 0.5,
                   mode: str = "linear_probe", lora_rank: int = 4, num_rounds: int = 5, num_clients: int = 10,
                   local_steps: int = 5, seed: int = 0, prefixes=None, controls=None) -> W.VBox:
    """Few-shot fine-tuning of ``model`` (a pretrained ``.body``/``.head`` model) on Dirichlet
    clients of ``(X, y)``: controls ``shots`` (K), ``alpha`` (log scale), ``mode`` (a
    ``flu.finetune`` mode), ``lora_rank`` (greyed out unless a LoRA mode) and ``num_rounds``.

    Each change reruns ``flu.lessons.fewshot.compare`` for the prototype head and the chosen mode
    (each on the outputs of the body modules it leaves frozen, computed once for all of ``X`` when
    the panel is built, or passed as ``prefixes``, a ``flu.lessons.fewshot.Prefixes`` of ``model``
    on ``X``) and redraws per-client before/after and accuracy vs bytes; ``panel.result`` is the
    summary table.
    ``controls`` picks the shown controls.
    """
    chk.option("mode", mode, finetune.MODES)
    X = torch.as_tensor(X)
    prefixes = prefixes if prefixes is not None else lf.Prefixes(model, X)
    prefixes(lf.frozen_prefix(model, "linear_probe"))          # the default's features, once
    widgets = dict(
        shots=int_slider("shots (K per class)", shots, 1, 50),
        alpha=log_slider("alpha", alpha, 0.03, 100.0),
        mode=W.Dropdown(options=[(study.LABELS[m], m) for m in study.MODES if m != "none"],
                        value=mode, description="mode", style=STYLE, layout=LAYOUT),
        lora_rank=int_slider("lora_rank", lora_rank, 1, 32),
        num_rounds=int_slider("num_rounds", num_rounds, 1, 30),
    )

    def grey_out(change=None):
        widgets["lora_rank"].disabled = "lora" not in widgets["mode"].value

    widgets["mode"].observe(grey_out, "value")
    grey_out()
    fixed = dict(shape=shape, num_clients=num_clients, seed=seed, local_steps=local_steps)
    return panel("Few-shot fine-tuning: one mode against the prototype head", widgets,
                 functools.partial(_finetune_view, model, X, y, prefixes, fixed), visible=controls)
