"""Checks made before round 0: does the data fit the model, is the model's forward replayable,
and do the stacked clients fit in memory (else: how many clients to train at once)."""
from __future__ import annotations

import os

import torch
from torch import nn

from .._core import checks as chk
from ..data.datasets import Federation

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_BATCHNORM = (nn.modules.batchnorm._BatchNorm,)


def check_replayable(model: nn.Module) -> None:
    """Refuse a forward that is random (Dropout in training mode) or that keeps running statistics
    (BatchNorm in training mode, or without running statistics): neither can be replayed bit for
    bit, and BatchNorm's statistics are not parameters that federated averaging could average.
    In evaluation mode (``model.eval()``) Dropout is the identity and BatchNorm applies its fixed
    running statistics, so both train deterministically (their affine parameters train)."""
    for name, module in model.named_modules():
        where = name or type(model).__name__
        if isinstance(module, _DROPOUT) and module.training and module.p > 0:
            chk.fail("model", "a deterministic forward: Dropout draws random masks that flu.run cannot replay "
                     f"(call model.eval() to train with dropout off, or remove it); found {type(module).__name__} "
                     "in training mode at", where)
        if isinstance(module, _BATCHNORM) and (module.training or module.running_mean is None):
            chk.fail("model", "free of BatchNorm in training mode: its running statistics are state that neither "
                     "replays nor averages (call model.eval() to use fixed running statistics, or use GroupNorm / "
                     f"LayerNorm); found {type(module).__name__} at", where)


def check_data(model: nn.Module, federation: Federation, loss: str, dtype: torch.dtype) -> None:
    """Refuse data that do not fit the model, naming the parameter: clients with different feature
    shapes, inputs the model cannot take, labels of shape (n, 1), negative labels or labels
    outside ``[0, num_outputs)``, real-valued targets of the wrong width."""
    splits = {"train": federation.train, "test": federation.test}
    shape = tuple(federation.train[0][0].shape[1:])
    for split, pairs in splits.items():
        for i, (X, y) in enumerate(pairs):
            if len(y) == 0:
                continue
            if tuple(X.shape[1:]) != shape:
                chk.fail("federation", f"clients with one feature shape (client 0 has {shape})",
                         f"client {i} {split} examples of shape {tuple(X.shape[1:])}")
    try:
        with torch.no_grad():
            out = model(federation.train[0][0][:1].to(dtype))
    except Exception as exc:  # the model's own error, reworded with the parameter it concerns
        chk.fail("federation", f"examples the model can take (the model raised {type(exc).__name__}: "
                 f"{str(exc).splitlines()[0][:160]})", f"examples of shape {shape}")
    if out.dim() != 2:
        chk.fail("model", "a module whose output has shape (batch, outputs)", f"output of shape {tuple(out.shape)}")
    C = out.shape[-1]
    for split, pairs in splits.items():
        for i, (X, y) in enumerate(pairs):
            if len(y) == 0:
                continue
            _check_targets(f"federation (client {i} {split} labels)", y, C, loss)


def _check_targets(name: str, y: torch.Tensor, C: int, loss: str) -> None:
    if not y.is_floating_point():
        if y.dim() != 1:
            chk.fail(name, "a 1-D tensor of class labels (use y.reshape(-1))", f"shape {tuple(y.shape)}")
        low, high = int(y.min()), int(y.max())
        if low < 0:
            chk.fail(name, "non-negative class labels", low)
        bound = 2 if C == 1 else C
        if high >= bound and (loss == "cross_entropy" or C > 1):
            chk.fail(name, f"labels in [0, {bound}) for a model with {C} output{'s' if C > 1 else ''}", high)
        return
    if loss == "cross_entropy":
        chk.fail("loss", "'mse' for real-valued targets", loss)
    width = 1 if y.dim() == 1 else int(y.shape[1])
    if y.dim() > 2 or width != C:
        chk.fail(name, f"targets of shape (n,) or (n, {C}) for a model with {C} output(s)", f"shape {tuple(y.shape)}")


# ---------------------------------------------------------------------------------- memory

def available_bytes() -> int:
    """Memory the run may use: ``$FEDLAB_MEMORY_MB`` if set, else half of the memory available now."""
    env = os.environ.get("FEDLAB_MEMORY_MB")
    if env:
        return int(float(env) * 2 ** 20)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemAvailable", info["MemTotal"]) // 2
    except (OSError, KeyError, ValueError, IndexError):
        return (os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2


def activation_bytes(model: nn.Module, example: torch.Tensor) -> int:
    """Bytes of the outputs of every leaf module for one example (what backpropagation keeps)."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def clients_per_chunk(*, per_client: int, shared: int, num_clients: int, num_params: int) -> int:
    """How many clients to train at once so that ``shared + chunk * per_client`` bytes fit; stops
    before round 0 with the estimate when not even one client fits."""
    budget = available_bytes()
    room = budget - shared
    if room < per_client:
        mb = 2 ** 20
        chk.fail("model", f"a run that fits in memory: it needs about {(shared + per_client) / mb:,.0f} MB "
                 f"training one client at a time, and {budget / mb:,.0f} MB are available (set FEDLAB_MEMORY_MB "
                 "to change the budget; use a smaller model or batch_size, or finetune='linear_probe')",
                 f"a model of {num_params:,} parameters")
    return int(max(1, min(num_clients, room // max(per_client, 1))))
