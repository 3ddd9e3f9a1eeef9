"""Gradient inversion: what one client's gradient reveals about its data.

DLG (Zhu, Liu and Han 2019, "Deep Leakage from Gradients", NeurIPS) optimises dummy inputs x'
and soft labels y' so that their gradient matches the client's,

    min_{x', y'}  D(grad_theta L(f_theta(x'), y'), g),

with D the squared L2 distance (DLG) or 1 - cosine similarity (Geiping et al. 2020, "Inverting
Gradients - How easy is it to break privacy in federated learning?", NeurIPS). iDLG (Zhao, Mopuri
and Bilen 2020) reads the label off the last layer instead: for cross-entropy,
dL/dz_c = softmax_c - 1[c = y] is negative only at the true class, and the last layer's bias
gradient is exactly dL/dz (its weight rows are dL/dz_c a^T with a >= 0 after ReLU), so the most
negative entry is the label; for a batch the ``num_examples`` most negative entries are taken
(right for distinct labels while no class's predicted probabilities sum to 1 over the batch, a
heuristic otherwise, cf. Yin et al. 2021). The gradient is assumed
to be of the mean cross-entropy over the batch (``F.cross_entropy``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._core import checks as chk
from .._core.random import seed_value, stream

ATTACK = 24  # stream purpose of the dummy inputs and labels
LABELS = ("idlg", "optimize")
DISTANCES = ("l2", "cosine")
OPTIMIZERS = ("lbfgs", "adam")


@dataclass(frozen=True)
class Reconstruction:
    """``inputs`` (num_examples, *input_shape), ``labels`` (num_examples,) int64, ``label_probs``
    (num_examples, num_classes): softmax of the optimised labels, or one-hot under iDLG."""

    inputs: torch.Tensor
    labels: torch.Tensor
    label_probs: torch.Tensor


def _targets(model, target, update_lr):
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(target, dict):
        missing = [n for n in names if n not in target]
        if missing:
            chk.fail("target_grads_or_update", "a dict with every trainable parameter of the model",
                     f"missing {missing}")
        grads = [torch.as_tensor(target[n]) for n in names]
    else:
        grads = [torch.as_tensor(g) for g in target]
        if len(grads) != len(params):
            chk.fail("target_grads_or_update", f"{len(params)} tensors (one per trainable parameter)",
                     f"{len(grads)} tensors")
    for n, g, p in zip(names, grads, params):
        if tuple(g.shape) != tuple(p.shape):
            chk.fail("target_grads_or_update", f"shape {tuple(p.shape)} for {n}", tuple(g.shape))
    grads = [g.detach().to(dtype=p.dtype, device=p.device) for g, p in zip(grads, params)]
    if update_lr is not None:  # one local SGD step: update = -lr * grad
        lr = chk.real("update_lr", update_lr, low=0, low_open=True)
        grads = [-g / lr for g in grads]
    return names, params, grads


def idlg_labels(grads, names, num_examples: int, num_classes: int) -> torch.Tensor:
    """iDLG's labels: the ``num_examples`` most negative entries of the last layer's dL/dz (its bias
    gradient, or its weight gradient's row sums when it has no bias)."""
    last = None
    for i, g in enumerate(grads):
        if g.dim() == 2 and g.shape[0] == num_classes:
            last = i
    if last is None:
        chk.fail("model", f"a last layer with a ({num_classes}, d) weight for iDLG's labels", names)
    nxt = last + 1
    if nxt < len(grads) and tuple(grads[nxt].shape) == (num_classes,):
        dz = grads[nxt]
    else:
        dz = grads[last].sum(1)
    k = min(num_examples, num_classes)
    labels = torch.argsort(dz, stable=True)[:k]
    if num_examples > k:  # more examples than classes: repeat the most negative
        labels = torch.cat([labels, labels[: num_examples - k].new_full((num_examples - k,), int(labels[0]))])
    return labels.sort().values.to(torch.int64)


def _distance(dummy, target, kind):
    if kind == "l2":
        return sum(((d - t) ** 2).sum() for d, t in zip(dummy, target))
    dot = sum((d * t).sum() for d, t in zip(dummy, target))
    nd = sum((d * d).sum() for d in dummy).sqrt()
    nt = sum((t * t).sum() for t in target).sqrt()
    return 1 - dot / (nd * nt + 1e-12)


def invert_gradients(model: torch.nn.Module, target_grads_or_update, num_examples: int, num_classes: int,
                     input_shape, *, steps: int = 100, lr: float = 1.0, seed: int = 0,
                     label_strategy: str = "idlg", distance: str = "l2", optimizer: str = "lbfgs",
                     update_lr: float | None = None):
    """``(Reconstruction, losses)``: dummy inputs (and labels) whose gradient matches the target.

    ``target_grads_or_update``: the client's gradients, a dict name -> tensor or a list in
    ``model.parameters()`` order (trainable ones); with ``update_lr`` it is a one-step update
    ``-update_lr * grad`` instead. ``label_strategy``: ``"idlg"`` (labels read off the last layer,
    fixed) or ``"optimize"`` (DLG: soft-label logits optimised with the inputs). ``distance``:
    ``"l2"`` (DLG) or ``"cosine"`` (Geiping et al.). ``optimizer``: ``"lbfgs"`` (DLG; ``steps``
    outer iterations of up to 20 evaluations) or ``"adam"`` (Geiping et al.). Dummies start at
    N(0, 1) from the stream (seed, ATTACK); the model is used, not changed.

    ``losses``: DataFrame with ``step`` and ``loss``: the gradient distance at the start (step 0)
    and after each step (it stops early at a distance of exactly 0).
    """
    import pandas as pd

    num_examples = chk.integer("num_examples", num_examples, low=1)
    num_classes = chk.integer("num_classes", num_classes, low=2)
    input_shape = tuple(int(chk.integer("input_shape", s, low=1)) for s in
                        ((input_shape,) if isinstance(input_shape, int) else input_shape))
    steps = chk.integer("steps", steps, low=1)
    lr = chk.real("lr", lr, low=0, low_open=True)
    seed = seed_value("seed", seed)
    chk.option("label_strategy", label_strategy, LABELS)
    chk.option("distance", distance, DISTANCES)
    chk.option("optimizer", optimizer, OPTIMIZERS)
    names, params, target = _targets(model, target_grads_or_update, update_lr)
    p0 = params[0]

    g = stream(seed, ATTACK)
    x = torch.randn((num_examples, *input_shape), generator=g, dtype=p0.dtype).to(p0.device).requires_grad_(True)
    variables = [x]
    if label_strategy == "idlg":
        labels = idlg_labels(target, names, num_examples, num_classes)
        soft = F.one_hot(labels, num_classes).to(p0.dtype)
        y_logits = None
    else:
        y_logits = torch.randn((num_examples, num_classes), generator=g, dtype=p0.dtype).to(p0.device)
        y_logits.requires_grad_(True)
        variables.append(y_logits)

    def objective():
        probs = soft if y_logits is None else y_logits.softmax(-1)
        out = model(x)
        loss = -(probs * out.log_softmax(-1)).sum(-1).mean()
        dummy = torch.autograd.grad(loss, params, create_graph=True)
        return _distance(dummy, target, distance)

    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(variables, lr=lr, max_iter=20, history_size=100, line_search_fn="strong_wolfe")
    else:
        opt = torch.optim.Adam(variables, lr=lr)

    def closure():  # gradients of the dummies only: the model's .grad stays untouched
        d = objective()
        for v, gv in zip(variables, torch.autograd.grad(d, variables)):
            v.grad = gv
        return d.detach()

    with torch.enable_grad():  # also under a caller's torch.no_grad()
        rows = [(0, float(objective().detach()))]
        for step in range(1, steps + 1):
            if optimizer == "lbfgs":
                opt.step(closure)
            else:
                closure()
                opt.step()
            current = float(objective().detach())
            rows.append((step, current))
            if not math.isfinite(current) or current == 0.0:
                break
    with torch.no_grad():
        probs = soft if y_logits is None else y_logits.softmax(-1)
        rec = Reconstruction(x.detach().clone(), probs.argmax(-1).to(torch.int64), probs.detach().clone())
    return rec, pd.DataFrame(rows, columns=["step", "loss"])


def reconstruction_error(original: torch.Tensor, recovered: torch.Tensor) -> dict:
    """Best-match error of a recovered batch: examples paired by the assignment that minimises the
    total MSE (Hungarian algorithm; a batch's order is not recoverable from its summed gradient).

    Returns ``mse`` (mean over pairs), ``relative_mse`` (mse / variance of ``original``), ``psnr``
    (10 log10(range^2 / mse), range = max - min of ``original``), ``per_example`` MSEs and
    ``order`` (recovered index matched to each original example).
    """
    a = torch.as_tensor(original).detach().double()
    b = torch.as_tensor(recovered).detach().double().to(a.device)
    if a.dim() == 0 or a.shape != b.shape:
        chk.fail("recovered", f"a batch of shape {tuple(a.shape)} (like original)", tuple(b.shape))
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).mean(-1)  # (n, n)
    n = cost.shape[0]
    if n == 1:
        order = [0]
    else:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        order = [int(c) for _, c in sorted(zip(rows, cols))]
    per = torch.stack([cost[i, order[i]] for i in range(n)])
    mse = float(per.mean())
    var = float(a.var(unbiased=False))
    rng = float(a.max() - a.min())
    psnr = math.inf if mse == 0 else 10 * math.log10(rng ** 2 / mse) if rng > 0 else -math.inf
    return {"mse": mse, "relative_mse": mse / var if var > 0 else math.inf, "psnr": psnr,
            "per_example": per.tolist(), "order": order}
