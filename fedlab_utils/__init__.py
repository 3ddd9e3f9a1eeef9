"""fedlab_utils: the utility package behind the heterogeneous federated few-shot workbook.

Not SMILELab's ``fedlab`` (``fedlab.utils``). Import as ``import fedlab_utils as flu``.
"""
import os as _os

from . import (algorithms, convergence, data, evaluation, fewshot, finetune, history, models, partition, plots,
               pretrained, schedules, study)
from . import (drift, explore, fewshot_widgets, lora_demo, plots_convergence, plots_fewshot, plots_practice, practice,
               widgets)
from .engine import run
from .history import History

__version__ = "0.1.0"


def fast_mode() -> bool:
    """True when the environment sets ``FEDLAB_FAST=1`` (CI and quick runs shrink their work)."""
    return _os.environ.get("FEDLAB_FAST", "0").strip().lower() in ("1", "true", "yes", "on")
