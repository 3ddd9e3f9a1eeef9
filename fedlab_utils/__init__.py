"""fedlab_utils: the utility package behind the heterogeneous federated few-shot workbook.

Not SMILELab's ``fedlab`` (``fedlab.utils``). Import as ``import fedlab_utils as flu``.

Sub-packages, in layers (each imports only those above it; docs/architecture.md):
``_core`` -> ``data`` -> ``models`` -> ``algorithms`` / ``systems`` / ``privacy`` -> ``engine``
-> ``analysis`` -> ``lessons`` -> ``views`` (``flower`` beside them). Everything loads on first
use, so ``import fedlab_utils`` is cheap; ``flu.run`` and ``flu.History`` come from ``engine``.
"""
import importlib as _importlib

__version__ = "0.1.0"

# public name -> module (relative to this package) or (module, attribute)
_LAZY = {
    "data": "data", "partition": "data.partition", "fewshot": "data.fewshot",
    "models": "models", "finetune": "models.finetune", "pretrained": "models.pretrained",
    "algorithms": "algorithms", "schedules": "algorithms.schedules",
    "systems": "systems", "privacy": "privacy", "engine": "engine",
    "analysis": "analysis", "evaluation": "analysis.evaluation", "convergence": "analysis.convergence",
    "lessons": "lessons", "views": "views", "plots": "views.plots", "widgets": "views.widgets",
    "flower": "flower", "experiments": "experiments",
    "run": ("engine", "run"), "History": ("engine", "History"), "fast_mode": ("_core.runtime", "fast_mode"),
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if isinstance(target, tuple):
        value = getattr(_importlib.import_module("." + target[0], __name__), target[1])
    else:
        value = _importlib.import_module("." + target, __name__)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
