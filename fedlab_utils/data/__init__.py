"""Data: datasets, partitions, few-shot sets, synthetic quadratic clients and the federation they
make (imports only ``_core``)."""
from . import fewshot, partition, quadratics
from .datasets import (DATASETS, SPLITS, Dataset, Federation, add_noise, federate, load_dataset, rotate,
                       standardize, synthetic)

__all__ = ["DATASETS", "SPLITS", "Dataset", "Federation", "add_noise", "federate", "fewshot", "load_dataset",
           "partition", "quadratics", "rotate", "standardize", "synthetic"]
