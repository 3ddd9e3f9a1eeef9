"""The compute behind one notebook each: returns DataFrames, draws nothing.

``explore`` (01), ``drift`` (02, 03), ``practice`` (04), ``study``, ``fewshot`` and ``lora_demo`` (05),
``personal`` (06), ``systems`` (07), ``hetero_finetune`` (08), ``finetune_convergence`` (09), ``privacy`` (10).
Loaded on first use.
"""
import importlib as _importlib

__all__ = ["drift", "explore", "fewshot", "finetune_convergence", "hetero_finetune", "lora_demo", "personal", "practice", "privacy", "study",
           "systems"]


def __getattr__(name):
    if name in __all__:
        return _importlib.import_module("." + name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
