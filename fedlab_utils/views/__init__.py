"""Views: ``plots`` (draw long-form tables) and ``widgets`` (wire controls to pure functions).
Loaded on first use; nothing here computes."""
import importlib as _importlib

__all__ = ["plots", "widgets"]


def __getattr__(name):
    if name in __all__:
        return _importlib.import_module("." + name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
