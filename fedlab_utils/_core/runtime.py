"""Runtime settings: FAST mode, torch threads for a block, and glibc's allocator thresholds."""
from __future__ import annotations

import contextlib
import ctypes
import os

import torch

from . import checks as chk


def fast_mode() -> bool:
    """True when the environment sets ``FEDLAB_FAST=1`` (CI and quick runs shrink their work)."""
    return os.environ.get("FEDLAB_FAST", "0").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def torch_threads(num_threads: int | None):
    """Run the block with ``torch.set_num_threads(num_threads)`` and restore the previous count
    afterwards (``None``: leave it alone). The workbook's models are tiny: their batched matmuls
    are fastest on one thread, and several threads slow down badly when other processes share
    the cores (measured 10x on a loaded 2-core machine)."""
    if num_threads is None:
        yield
        return
    chk.integer("num_threads", num_threads, low=1)
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_ALLOCATOR_TUNED = []


def tune_allocator() -> bool:
    """Let glibc keep freed buffers for reuse instead of unmapping them (``mallopt``), once per process.

    Each vectorised local step allocates stacked gradients and activations of several MB
    (K clients x parameters); by default glibc serves blocks over 128 KB with a fresh ``mmap`` and
    returns them on free, so every step pays page faults on new memory. Raising the mmap and trim
    thresholds to 64 MB / 256 MB (PyTorch's CPU tuning guide recommends a caching allocator for the
    same reason) measured 1.3-1.7x faster rounds here. Process-wide and harmless: the process may
    hold up to that much freed memory. Set ``FEDLAB_NO_MALLOPT=1`` to skip; a no-op off glibc.
    Returns whether the tuning is in effect.
    """
    if not _ALLOCATOR_TUNED:
        ok = False
        if os.environ.get("FEDLAB_NO_MALLOPT", "0") != "1":
            try:
                libc = ctypes.CDLL("libc.so.6")
                ok = bool(libc.mallopt(-3, 64 << 20)) and bool(libc.mallopt(-1, 256 << 20))  # MMAP, TRIM
            except (OSError, AttributeError):
                ok = False
        _ALLOCATOR_TUNED.append(ok)
    return _ALLOCATOR_TUNED[0]
