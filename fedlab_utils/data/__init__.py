"""Data: datasets, partitions, few-shot sets and the federation they make (imports only ``_core``)."""
from . import fewshot, partition
from .datasets import (DATASETS, SPLITS, Dataset, Federation, add_noise, federate, load_dataset, rotate,
                       standardize, synthetic)

__all__ = ["DATASETS", "SPLITS", "Dataset", "Federation", "add_noise", "federate", "fewshot", "load_dataset",
           "partition", "rotate", "standardize", "synthetic"]
