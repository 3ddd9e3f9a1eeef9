"""Plots over long-form DataFrames, one module per topic; each ``plot_*`` returns its Axes.

``base`` (partitions, learning curves, metric sweeps), ``convergence`` (notebooks 02-03),
``practice`` (04), ``fewshot`` (05). The shared ones are also here: ``flu.plots.plot_partitions``.
"""
from . import convergence, fewshot, hetero, personal, practice, systems
from . import finetune_convergence  # noqa: F401  (notebook 09)
from .base import (METHOD_COLORS, canonical_label, method_color, method_palette, plot_client_sizes,
                   plot_label_bars, plot_label_heatmap, plot_learning_curves, plot_metric_vs, plot_partitions)

__all__ = ["METHOD_COLORS", "canonical_label", "convergence", "fewshot", "method_color", "method_palette",
           "plot_client_sizes", "plot_label_bars", "plot_label_heatmap", "plot_learning_curves", "plot_metric_vs",
           "plot_partitions", "practice", "systems"]
from .experiments import plot_sweep  # noqa: F401  (notebook 12)
