"""One seeded stream for every random draw in the package.

A stream is named by a seed and a tuple of integer keys, e.g. ``(seed, round, client, purpose)``;
the keys are mixed with splitmix64 into one 63-bit state. Every stochastic function derives its
streams from here, so a run is replayable bit for bit and changing one knob (another round, one
more client) never reshuffles the draws of the others. Nothing here touches global RNG state.
"""
from __future__ import annotations

import numpy as np
import torch

from . import checks as chk

_MASK64 = (1 << 64) - 1
SEED_BOUND = 1 << 63

# purposes: the last key of a stream, so that two uses of one (round, client) never collide
SAMPLE, BATCH, LORA, PARTITION, SPLIT, FEWSHOT, INIT, DROPOUT = range(1, 9)
DATA = 9    # generated data and feature noise (flu.data.synthetic, flu.data.add_noise)
PROBE = 10  # random starting vectors of analysis probes (power iteration)
COMPRESS = 11  # stochastic rounding of uploads (flu.systems.Compression, QSGD)
PROFILE, AVAILABILITY = 12, 13  # device profiles and availability draws (flu.systems)
PRIVACY = 14  # differential-privacy noise (flu.privacy.DPFedAvg in flu.run)


def seed_value(name: str, seed) -> int:
    """``seed`` checked as an int in [0, 2**63)."""
    return chk.integer(name, seed, low=0, high=SEED_BOUND - 1)


def mix(seed: int, *keys: int) -> int:
    """The 63-bit state of the stream ``(seed, *keys)`` (splitmix64 mixing)."""
    h = (int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK64
    for k in keys:
        h = ((h ^ (int(k) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) * 0xBF58476D1CE4E5B9) & _MASK64
        h ^= h >> 31
    return h & (SEED_BOUND - 1)


def stream(seed: int, *keys: int) -> torch.Generator:
    """A fresh torch generator for the stream ``(seed, *keys)``."""
    return torch.Generator().manual_seed(mix(seed, *keys))


def np_stream(seed: int, *keys: int) -> np.random.Generator:
    """The numpy generator of the same stream ``(seed, *keys)`` (for numpy-side draws)."""
    return np.random.default_rng(mix(seed, *keys))
