"""Per-example losses and classification metrics shared by training, evaluation and analysis."""
from __future__ import annotations

import torch

LOSSES = ("cross_entropy", "mse")


def sample_losses(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-example loss, shape ``out.shape[:-1]``.

    ``cross_entropy``: softmax cross-entropy (binary cross-entropy on the logit for a one-output
    model); ``mse``: torch's mean squared error per example, the mean over outputs (no 1/2);
    integer labels with a multi-output model are one-hot encoded.
    """
    if loss == "cross_entropy":
        if out.shape[-1] == 1:
            return torch.nn.functional.binary_cross_entropy_with_logits(
                out[..., 0], y.to(out.dtype), reduction="none")
        flat = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
        return flat.reshape(y.shape)
    if not y.is_floating_point() and out.shape[-1] > 1:
        target = torch.nn.functional.one_hot(y, out.shape[-1]).to(out.dtype)
    else:
        target = y.to(out.dtype)
    if target.dim() == out.dim() - 1:
        target = target.unsqueeze(-1)
    return ((out - target) ** 2).mean(-1)


def predictions(out: torch.Tensor) -> torch.Tensor:
    """Predicted class: the sign of a single logit, else the argmax."""
    return (out[..., 0] > 0).long() if out.shape[-1] == 1 else out.argmax(-1)


def predictions_correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (predictions(out) == y).to(torch.float64)


def f1_macro(out: torch.Tensor, y: torch.Tensor) -> float:
    """Macro-averaged F1 over the classes present in ``y`` or predicted (scikit-learn's definition)."""
    pred = predictions(out)
    C = max(int(out.shape[-1]), 2)
    conf = torch.bincount(y * C + pred, minlength=C * C).reshape(C, C).to(torch.float64)
    tp = conf.diag()
    support, predicted = conf.sum(1), conf.sum(0)
    present = (support + predicted) > 0
    f1 = torch.where(present, 2 * tp / (support + predicted).clamp(min=1), torch.zeros_like(tp))
    return float(f1[present].mean())
