"""The research playground: sweeps over configurations x seeds, cached run by run on disk.

``flu.experiments.sweep(fn, grid, seeds)`` -> long-form table; :func:`grid` (Cartesian product),
:func:`summary` (mean over seeds, Student-t interval), :func:`export` (CSV), :func:`load`,
:func:`manifests`, :func:`result` and :func:`clear` read or empty the cache (:mod:`.cache`).
Plots: ``flu.plots.plot_sweep``; panel: ``flu.widgets.experiments.sweep_panel``.
"""
from .cache import CacheWarning, default_dir
from .sweeps import clear, export, grid, load, manifests, result, summary, sweep

__all__ = ["CacheWarning", "clear", "default_dir", "export", "grid", "load", "manifests", "result", "summary",
           "sweep"]
