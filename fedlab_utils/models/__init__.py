"""Models with ``.body``/``.head``, fine-tuning modes as parameter masks, the K-client stacked
forward, and pretrained backbones (``flu.models.pretrained``, loaded on first use)."""
import importlib as _importlib

from . import batched, finetune
from .nets import FedModel, Reshape, cnn, head_prefix, layer_prefixes, linear, logistic, mlp, num_params

__all__ = ["FedModel", "Reshape", "batched", "cnn", "finetune", "head_prefix", "layer_prefixes", "linear",
           "logistic", "mlp", "num_params", "pretrained"]


def __getattr__(name):
    if name == "pretrained":
        return _importlib.import_module(".pretrained", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
