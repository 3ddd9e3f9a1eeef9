"""Fine-tuning modes as parameter masks: which parameters train and travel.

As in Optax's ``masked``/``freeze`` transforms, a mode never changes the optimiser; it only
selects parameter names. The head is task-specific, so it trains in every mode.

==================  ====================================================================
``full``            every parameter
``linear_probe``    the head only; the body is frozen (Kornblith et al. 2019)
``last_layers``     the last ``num_layers`` modules that own parameters (head included)
``bitfit``          the body's biases and the head (Ben Zaken et al. 2022)
==================  ====================================================================
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from . import _checks as chk
from .models import head_prefix, layer_prefixes

MODES = ("full", "linear_probe", "last_layers", "bitfit")
OPTIONS = {"last_layers": {"num_layers": 2}}
ALL_OPTIONS = {name for opts in OPTIONS.values() for name in opts}


@dataclass(frozen=True)
class Plan:
    """The model to train (possibly with adapters added) and the names of its trainable parameters."""

    model: nn.Module
    trainable: tuple
    mode: str
    options: dict


def prepare(model: nn.Module, mode: str = "full", **options) -> Plan:
    """The :class:`Plan` of ``mode`` for ``model``; options (``num_layers``) are checked here."""
    if mode == "none":
        chk.fail("finetune", "a trainable mode: the training-free baseline 'none' is "
                 "flu.fewshot.prototype_classifier, not an flu.run mode", mode)
    chk.option("finetune", mode, MODES)
    allowed = OPTIONS.get(mode, {})
    for key in options:
        if key not in allowed:
            chk.fail(key, f"an option of finetune={mode!r} (options: {sorted(allowed) or 'none'})", options[key])
    opts = {**allowed, **options}
    names = [n for n, _ in model.named_parameters()]
    head = head_prefix(model)
    in_head = [n for n in names if n.startswith(head)]
    if mode == "full":
        chosen = names
    elif mode == "linear_probe":
        chosen = in_head
    elif mode == "bitfit":
        chosen = [n for n in names if n.endswith("bias") or n.startswith(head)]
    else:  # last_layers
        layers = layer_prefixes(model)
        k = chk.integer("num_layers", opts["num_layers"], low=1, high=len(layers))
        keep = tuple(layers[-k:])
        chosen = [n for n in names if n.startswith(keep)]
    return Plan(model, tuple(chosen), mode, opts)
