"""Widget panels: controls wired to pure functions (``interactive_output``), one module per topic.

``heterogeneity`` (notebooks 00-01: partition explorer, FedAvg panel), ``fewshot`` (05); ``common``
holds what every panel shares (the wiring, sliders, rendering).
"""
from . import common, fewshot, heterogeneity, personal, systems
from .heterogeneity import draw_curves, draw_partition, fedavg_panel, metrics_html, partition_explorer

__all__ = ["common", "draw_curves", "draw_partition", "fedavg_panel", "fewshot", "heterogeneity", "metrics_html",
           "partition_explorer", "personal", "systems"]
from . import experiments  # noqa: F401  (notebook 12)
from . import finetune_convergence  # noqa: F401  (notebook 09)
