"""Convergence: measurable quantities (drift, dissimilarity, constants) and theory curves.

Objective (as in ``flu.run``): F(x) = sum_i p_i F_i(x), F_i = mean loss on client i's training
data + l2/2 ||W||^2 over weight tensors (dim >= 2; biases are not penalised).

- **Diagnostics** (any model): :func:`client_objectives` (exact F_i and grad F_i per client),
  :func:`round_diagnostics` (the per-round numbers ``flu.run(..., diagnostics=True)`` records),
  :func:`sigma2`, :func:`G2`, :func:`hessian_top_eigenvalue`.
- **Constants and optima** for the convex models of the theory: bias-free linear models with
  L2-regularised softmax / single-logit logistic regression or least squares (``loss="mse"``):
  :func:`constants`, :func:`optimum`, :func:`client_optima`, :func:`surrogate_optimum`.
- **Linear probes** on a frozen body are convex problems of the same kind: :func:`probe_problem`
  (features cached once, a bias-free head), :func:`feature_heterogeneity` (mu, L, Gamma of the
  same clients in several feature spaces).
- **Theory curves**, DataFrames ``round, bound, theorem`` to draw dashed next to measured ones:
  :func:`li_fedavg_bound`, :func:`scaffold_rate`, :func:`fedprox_rate`, :func:`perfedavg_bound`
  (with :func:`perfedavg_constants`); and the closed-form fixed point of local-GD FedAvg on least
  squares, :func:`fedavg_fixed_point_lsq`.
- **Participation** in closed form on least squares (from ``participation``):
  :func:`participation_weights`, :func:`participation_fixed_point`, :func:`reweighted_fixed_point`,
  :func:`mean_trajectory`, :func:`local_maps`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
import torch
from scipy.special import expit, log_softmax
from torch import nn
from torch.func import functional_call

from .._core import checks as chk
from .._core.losses import sample_losses
from .._core.random import PROBE, seed_value, stream
from ..models import nets as _nets
from ..engine.diagnostics import _flat, round_diagnostics  # noqa: F401  (flu.convergence.round_diagnostics)
from .participation import (FixedPoint, local_maps, mean_trajectory, participation_fixed_point,  # noqa: F401
                            participation_weights, reweighted_fixed_point)

_NEWTON_TOL, _NEWTON_MAX = 1e-10, 100


# ----------------------------------------------------------------------- diagnostics (any model)

_sample_losses = sample_losses


def _penalised(names, params):
    return [k for k in names if params[k].dim() >= 2]


def client_objectives(model, params, federation, loss="cross_entropy", l2=0.0, *, names=None):
    """Exact client objectives F_i(x) (penalised) and full-batch gradients grad F_i(x).

    ``params``: name -> tensor (all of the model's parameters); ``names``: the parameters to
    differentiate (the trainable ones; default all), l2 applies to those of dim >= 2, as in
    ``flu.run``. Returns ``losses`` (N,) float64 and ``grads``: name -> (N, ...) tensor.
    A plain per-client loop (reference path, for diagnostics and theory).
    """
    names = list(params) if names is None else list(names)
    dtype = next(iter(params.values())).dtype
    losses, rows = [], []
    for X, y in federation.train:
        leaves = {k: params[k].detach().clone().requires_grad_() for k in names}
        out = functional_call(model, {**params, **leaves}, (X.to(dtype),))
        val = _sample_losses(out, y, loss).mean()
        if l2:
            val = val + l2 / 2 * sum((leaves[k] ** 2).sum() for k in _penalised(names, params))
        gs = torch.autograd.grad(val, [leaves[k] for k in names], allow_unused=True)
        rows.append([torch.zeros_like(leaves[k]) if g is None else g for k, g in zip(names, gs)])
        losses.append(float(val.detach()))
    grads = {k: torch.stack([r[j] for r in rows]).detach() for j, k in enumerate(names)}
    return torch.tensor(losses, dtype=torch.float64), grads


def objective(model, params, federation, loss="cross_entropy", l2=0.0, weights="samples") -> float:
    """F(x) = sum_i p_i F_i(x) (penalised), in float64."""
    losses, _ = client_objectives(model, params, federation, loss, l2)
    return float(torch.as_tensor(_weights(federation, weights)) @ losses)


def _linear_moments(model, params, federation, loss, l2):
    """:func:`_moments` in closed form for a bias-free linear model (None for any other model):
    the per-example gradient of example j is r_j x_j^T + l2 W with r_j = softmax(W x_j) - e_{y_j}
    (softmax), sigmoid(w.x_j) - y_j (one logit) or 2/m (W x_j - t_j) (least squares)."""
    try:
        pb = _problem(model, federation, loss, l2)
    except ValueError:
        return None
    if set(params) != {pb.name}:
        return None
    W = params[pb.name].detach().to(torch.float64).numpy().reshape(-1, pb.X[0].shape[1] if pb.X else 0)
    full, var = [], []
    for X, T in zip(pb.X, pb.T):
        Z = X @ W.T
        if pb.kind == "softmax":
            R = np.exp(log_softmax(Z, axis=1)) - np.eye(W.shape[0])[T]
        elif pb.kind == "binary":
            R = expit(Z) - T.reshape(-1, 1)
        else:
            R = 2.0 / pb.m * (Z - T)
        G = (R[:, :, None] * X[:, None, :]).reshape(len(X), -1)
        mean = G.mean(0)
        full.append(float(((mean + pb.l2 * W.reshape(-1)) ** 2).sum()))
        var.append(float(((G - mean) ** 2).sum(1).mean()))
    return np.array(full), np.array(var)


def _moments(model, params, federation, loss, l2, per_example=True, chunk=256, closed_form=True):
    """Per client: ||grad F_i||^2 and the per-example gradient variance S_i^2 = mean_j ||g_j - grad F_i||^2
    (per-example gradients by batched backward passes over chunks of examples, or in closed form
    for a bias-free linear model; S_i^2 = 0 if not ``per_example``)."""
    if closed_form and per_example:
        fast = _linear_moments(model, params, federation, loss, l2)
        if fast is not None:
            return fast
    if not per_example:
        _, grads = client_objectives(model, params, federation, loss, l2)
        G = _flat(grads, federation.num_clients)
        return (G * G).sum(1).numpy(), np.zeros(federation.num_clients)
    names = list(params)
    dtype = next(iter(params.values())).dtype
    pen = set(_penalised(names, params))
    full, var = [], []
    for X, y in federation.train:
        rows = []
        for s in range(0, len(X), chunk):
            leaves = {k: params[k].detach().clone().requires_grad_() for k in names}
            out = functional_call(model, {**params, **leaves}, (X[s:s + chunk].to(dtype),))
            per = _sample_losses(out, y[s:s + chunk], loss)
            eye = torch.eye(len(per), dtype=per.dtype)
            gs = torch.autograd.grad(per, [leaves[k] for k in names], grad_outputs=eye, is_grads_batched=True,
                                     allow_unused=True)
            rows.append(torch.cat([(torch.zeros(len(per), *leaves[k].shape, dtype=dtype) if g is None else g)
                                   .add(l2 * params[k] if k in pen else 0).reshape(len(per), -1)
                                   for k, g in zip(names, gs)], 1).detach().to(torch.float64))
        g = torch.cat(rows)
        mean = g.mean(0)
        full.append(float(mean @ mean))
        var.append(float(((g - mean) ** 2).sum(1).mean()))
    return np.array(full), np.array(var)


def _fpc(n, batch_size):
    """(n - b) / (b (n - 1)): variance factor of a mean of b draws without replacement from n."""
    if batch_size is None:
        return np.zeros(len(n))
    b = np.minimum(batch_size, n).astype(np.float64)
    return np.where(n > 1, (n - b) / (b * np.maximum(n - 1, 1)), 0.0)


def _as_list(params):
    return [params] if isinstance(params, dict) else list(params)


def sigma2(model, params, federation, loss="cross_entropy", l2=0.0, batch_size=16, weights="samples"):
    """Minibatch gradient noise: ``(sum_i p_i^2 sigma_i^2, sigma_i^2 per client)``.

    sigma_i^2 = E||g_b - grad F_i(x)||^2 for the mean gradient g_b of b examples drawn without
    replacement from n_i (as ``flu.run`` draws them): exactly (n_i - b)/(b (n_i - 1)) S_i^2 with
    S_i^2 = (1/n_i) sum_j ||grad f_j - grad F_i||^2 (0 when n_i <= b or ``batch_size=None``).
    The weighted sum is the first term of B in Li et al. 2020 (ICLR), Theorem 1. ``params`` may
    be one dict or a list of them (a trajectory): sigma_i^2 is then the max over it, an estimate
    of the uniform bound of their Assumption 3.
    """
    n = federation.sizes
    per = np.max([_fpc(n, batch_size) * _moments(model, q, federation, loss, l2)[1]
                  for q in _as_list(params)], axis=0)
    p = _weights(federation, weights)
    return float((p ** 2) @ per), per


def G2(model, trajectory, federation, loss="cross_entropy", l2=0.0, batch_size=1) -> float:
    """Estimate of G^2 (Li et al. 2020, ICLR, Assumption 4: E||g_{i,b}(w)||^2 <= G^2).

    G^2 = max over the points w of ``trajectory`` (a params dict or a list, e.g.
    ``History.trajectory``) of max_i E||g_{i,b}(w)||^2 = ||grad F_i(w)||^2 + sigma_i^2(w), the mean
    squared norm of the stochastic gradient of batch size b (default 1: per-example gradients
    grad f_j + l2 W, the largest; ``None``: full batch). An estimate only: the assumption is over all
    iterates, local ones included, and the trajectory holds the global models.
    """
    n, best = federation.sizes, 0.0
    for w in _as_list(trajectory):
        full, var = _moments(model, w, federation, loss, l2, per_example=batch_size is not None)
        best = max(best, float((full + _fpc(n, batch_size) * var).max()))
    return best


def hessian_top_eigenvalue(model, params, X, y, loss="cross_entropy", l2=0.0, iters=50, seed=0) -> float:
    """Largest-magnitude eigenvalue of the Hessian of mean loss + l2/2 ||W||^2 on (X, y) at ``params``
    (the top one for a convex objective), by power iteration on Hessian-vector products
    (double backward). A diagnostic of local curvature only, not a smoothness constant."""
    iters = chk.integer("iters", iters, low=1)
    names = list(params)
    leaves = {k: params[k].detach().clone().requires_grad_() for k in names}
    val = _sample_losses(functional_call(model, leaves, (X.to(leaves[names[0]].dtype),)), y, loss).mean()
    val = val + l2 / 2 * sum((leaves[k] ** 2).sum() for k in _penalised(names, params))
    g = torch.autograd.grad(val, [leaves[k] for k in names], create_graph=True)
    gen = stream(seed_value("seed", seed), PROBE)
    v = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in g]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u ** 2).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(g, [leaves[k] for k in names], grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(v, hv)))
        v = [h.detach() for h in hv]
    return lam


# ----------------------------------------------------------------------- convex models: data and solver

def _weights(federation, weights):
    if isinstance(weights, str):
        return federation.weights(weights)
    p = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(p) != federation.num_clients or (p < 0).any() or abs(p.sum() - 1) > 1e-9:
        chk.fail("weights", f"'samples', 'uniform' or {federation.num_clients} non-negative numbers summing to 1",
                 weights)
    return p


def _linear_head(model):
    """(weight name, in_features, out_features) of a bias-free linear model, else ValueError('model')."""
    if isinstance(model, nn.Linear):
        lin, prefix = model, ""
    elif isinstance(getattr(model, "head", None), nn.Linear) and isinstance(getattr(model, "body", None),
                                                                         (nn.Flatten, nn.Identity)):
        lin, prefix = model.head, "head."
    else:
        chk.fail("model", "a bias-free linear model (flu.models.logistic/linear(..., bias=False) or "
                 "nn.Linear(bias=False)) for the convex theory", type(model).__name__)
    if lin.bias is not None or [n for n, _ in model.named_parameters()] != [prefix + "weight"]:
        chk.fail("model", "bias-free (bias=False): the theory's strong convexity comes from l2 on W",
                 "a model with a bias")
    return prefix + "weight", lin.in_features, lin.out_features


@dataclass(frozen=True)
class _Problem:
    kind: str               # "softmax", "binary" or "least_squares"
    name: str               # the weight's parameter name
    X: list                 # per client (n_i, d) float64
    T: list                 # labels (n_i,) int for logistic; targets (n_i, m) for least squares
    m: int
    l2: float


def _problem(model, federation, loss, l2) -> _Problem:
    name, d, m = _linear_head(model)
    chk.option("loss", loss, ("cross_entropy", "mse"))
    l2 = chk.real("l2", l2, low=0)
    kind = "least_squares" if loss == "mse" else ("binary" if m == 1 else "softmax")
    Xs, Ts = [], []
    for i, (X, y) in enumerate(federation.train):
        Xn = X.reshape(len(X), -1).to(torch.float64).numpy()
        if Xn.shape[1] != d:
            chk.fail("federation", f"inputs with {d} features (the model's in_features)",
                     f"{Xn.shape[1]} at client {i}")
        if loss == "cross_entropy":
            if y.is_floating_point():
                chk.fail("loss", "'mse' for real-valued targets", loss)
            t = y.numpy().astype(np.int64)
            if t.size and (t.min() < 0 or t.max() >= max(m, 2)):
                chk.fail("federation", f"labels in [0, {max(m, 2) - 1}] for a {m}-output model",
                         f"{t.max()} at client {i}")
        elif not y.is_floating_point() and m > 1:
            t = np.eye(m)[y.numpy()]
        else:
            t = y.to(torch.float64).numpy()
            t = np.broadcast_to(t.reshape(len(t), -1), (len(t), m)).copy()
        Xs.append(Xn)
        Ts.append(t)
    return _Problem(kind, name, Xs, Ts, m, l2)


def _fgh(pb, W, X, T, a, order=2):
    """Value, gradient (m, d) and Hessian (m d, m d) of sum_j a_j loss_j(W) + l2/2 ||W||^2 (numpy)."""
    l2, pen = pb.l2, pb.l2 / 2 * (W ** 2).sum()
    if pb.kind == "least_squares":
        R = X @ W.T - T
        f = a @ (R ** 2).mean(1) + pen
        g = 2 / pb.m * (R * a[:, None]).T @ X + l2 * W
        H = np.kron(np.eye(pb.m), 2 / pb.m * (X.T * a) @ X) + l2 * np.eye(W.size) if order > 1 else None
    elif pb.kind == "binary":
        z = X @ W[0]
        f = a @ (np.logaddexp(0, z) - T * z) + pen
        s = expit(z)
        g = ((a * (s - T)) @ X)[None] + l2 * W
        H = (X.T * (a * s * (1 - s))) @ X + l2 * np.eye(W.size) if order > 1 else None
    else:
        logp = log_softmax(X @ W.T, axis=1)
        P, Y = np.exp(logp), np.eye(W.shape[0])[T]
        f = -a @ logp[np.arange(len(T)), T] + pen
        g = ((P - Y) * a[:, None]).T @ X + l2 * W
        H = None
        if order > 1:
            S = a[:, None, None] * (P[:, :, None] * np.eye(W.shape[0]) - P[:, :, None] * P[:, None, :])
            # sum_j S_j (x) x_j x_j^T as one matrix product (a 3-operand einsum over j has no BLAS path)
            K, d = W.shape
            H = ((S[:, :, :, None] * X[:, None, None, :]).reshape(len(X), K * K * d).T @ X).reshape(K, K, d, d)
            H = H.transpose(0, 2, 1, 3).reshape(W.size, W.size) + l2 * np.eye(W.size)
    return float(f), g, H


def _solve(pb, X, T, a):
    """argmin and min of sum_j a_j loss_j + l2/2 ||W||^2: least squares in closed form (minimum-norm
    lstsq when l2 = 0), logistic by damped Newton in float64 to ||grad|| < 1e-10."""
    d = X.shape[1]
    if pb.kind == "least_squares":
        w = np.sqrt(a / pb.m)[:, None]
        A = np.vstack([w * X, math.sqrt(pb.l2 / 2) * np.eye(d)])
        W = np.linalg.lstsq(A, np.vstack([w * T, np.zeros((d, pb.m))]), rcond=None)[0].T
        return W, _fgh(pb, W, X, T, a, order=0)[0]
    if pb.l2 <= 0:
        chk.fail("l2", "> 0 for logistic regression (a client may be separable or lack classes: no minimiser)", pb.l2)
    W = np.zeros((max(pb.m, 1), d))
    f, g, H = _fgh(pb, W, X, T, a)
    for _ in range(_NEWTON_MAX):
        gn = np.linalg.norm(g)
        if gn < _NEWTON_TOL:
            break
        step = np.linalg.solve(H, g.ravel()).reshape(W.shape)
        slope, t = float((g * step).sum()), 1.0
        while t > 1e-12:
            f_new, g_new, _ = _fgh(pb, W - t * step, X, T, a, order=1)
            if f_new <= f - 1e-4 * t * slope or np.linalg.norm(g_new) < gn:
                break
            t /= 2
        else:
            break
        W = W - t * step
        f, g, H = _fgh(pb, W, X, T, a)
    if np.linalg.norm(g) > 1e-8:
        raise RuntimeError(f"Newton's method stopped at gradient norm {np.linalg.norm(g):.2e}")
    return W, f


def _pooled_solve(pb, p):
    a = np.concatenate([np.full(len(X), pi / len(X)) for X, pi in zip(pb.X, p)])
    return _solve(pb, np.vstack(pb.X), np.concatenate(pb.T), a)


def _as_params(pb, W):
    return {pb.name: torch.as_tensor(W, dtype=torch.float64)}


def optimum(model, federation, loss="cross_entropy", l2=0.0, weights="samples"):
    """``(w*, F*)``: the minimiser (name -> float64 tensor) and minimum of F = sum_i p_i F_i for a
    bias-free linear model. Least squares: closed form; logistic (needs l2 > 0): Newton's method
    to ||grad F|| < 1e-10. ``weights`` may also be an explicit p (N,)."""
    pb = _problem(model, federation, loss, l2)
    W, f = _pooled_solve(pb, _weights(federation, weights))
    return _as_params(pb, W), f


def client_optima(model, federation, loss="cross_entropy", l2=0.0):
    """``[(w_i*, F_i*)]``: each client's own minimiser and minimum, by the same solver (works
    when a client lacks classes, unlike scikit-learn)."""
    pb = _problem(model, federation, loss, l2)
    out = []
    for X, T in zip(pb.X, pb.T):
        W, f = _solve(pb, X, T, np.full(len(X), 1.0 / len(X)))
        out.append((_as_params(pb, W), f))
    return out


# ----------------------------------------------------------------------- constants

@dataclass(frozen=True)
class Constants:
    """Smoothness/convexity constants of F = sum_i p_i F_i (see :func:`constants`)."""

    kind: str
    l2: float
    p: tuple
    mu: float                  # min_i mu_i: every F_i is mu-strongly convex (Li et al. Assumption 2)
    L: float                   # max_i L_i: every F_i is L-smooth (Assumption 1)
    mu_i: tuple
    L_i: tuple
    mu_F: float                # strong convexity of F itself
    L_F: float                 # smoothness (bound) of F itself
    F_star: float | None = None
    client_F_star: tuple | None = None
    Gamma: float | None = None  # F* - sum_i p_i F_i* >= 0 (Li et al. 2020, ICLR, heterogeneity)
    w_star: dict | None = field(default=None, compare=False, repr=False)

    @property
    def kappa(self) -> float:
        return self.L / self.mu if self.mu > 0 else math.inf

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "w_star"}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()} | {"kappa": self.kappa}


def constants(model, federation, loss="cross_entropy", l2=0.0, weights="samples", *, optima=True) -> Constants:
    """Constants of the convex theory for a bias-free linear model (else ValueError naming ``model``).

    - logistic (``cross_entropy``): mu_i = l2 (strong convexity from the penalty only); with
      softmax over K outputs L_i = lambda_max(X_i^T X_i)/(2 n_i) + l2 (since lambda_max(diag(s) - s s^T)
      <= 1/2), for a single binary logit L_i = lambda_max(X_i^T X_i)/(4 n_i) + l2 (s(1-s) <= 1/4).
    - least squares (``mse``, m outputs, mean over outputs, no 1/2): the Hessian is
      (2/m) X_i^T X_i / n_i + l2, so mu_i, L_i = 2 lambda_min, 2 lambda_max of X_i^T X_i/(m n_i) + l2 (exact).
    - mu = min_i mu_i, L = max_i L_i: Li et al. 2020 (ICLR) Assumptions 1-2 need each F_i
      L-smooth and mu-strongly convex; mu_F, L_F are the same bounds for F itself.
    - with ``optima``: F*, w*, F_i* and Gamma = F* - sum_i p_i F_i* (exact solvers, see :func:`optimum`).

    A model with a bias is refused: the bias is not penalised (as in ``flu.run``), so F_i is not
    strongly convex along it (softmax: adding t 1 to the bias changes nothing). Linear probes on
    frozen features: :func:`probe_problem` (``intercept=True`` for a penalised bias).
    """
    pb = _problem(model, federation, loss, l2)
    p = _weights(federation, weights)
    scale = {"softmax": 0.5, "binary": 0.25, "least_squares": 2.0 / pb.m}[pb.kind]
    grams = [X.T @ X / len(X) for X in pb.X]
    eig = [np.linalg.eigvalsh(G) for G in grams]
    eF = np.linalg.eigvalsh(sum(pi * G for pi, G in zip(p, grams)))
    L_i = tuple(float(scale * e[-1] + pb.l2) for e in eig)
    if pb.kind == "least_squares":
        mu_i, mu_F = tuple(float(max(scale * e[0], 0.0) + pb.l2) for e in eig), float(max(scale * eF[0], 0) + pb.l2)
    else:
        mu_i, mu_F = (pb.l2,) * len(eig), pb.l2
    extra = {}
    if optima:
        W, F_star = _pooled_solve(pb, p)
        cl = [_solve(pb, X, T, np.full(len(X), 1.0 / len(X)))[1] for X, T in zip(pb.X, pb.T)]
        extra = dict(F_star=F_star, client_F_star=tuple(cl), Gamma=max(F_star - float(p @ np.array(cl)), 0.0),
                     w_star=_as_params(pb, W))
    return Constants(pb.kind, pb.l2, tuple(p.tolist()), min(mu_i), max(L_i), mu_i, L_i, mu_F,
                     float(scale * eF[-1] + pb.l2), **extra)


def distance2(params, w_star) -> float:
    """||params - w*||^2 over the names of ``w_star`` (e.g. E||w_1 - w*||^2 of a deterministic start)."""
    return float(sum(((params[k].to(torch.float64) - v.to(torch.float64)) ** 2).sum() for k, v in w_star.items()))


# ----------------------------------------------------------------------- linear probes on frozen features

@dataclass(frozen=True)
class Probe:
    """A linear probe's convex problem: the frozen body's features of every client (computed once)
    and a head-only model on them (see :func:`probe_problem`)."""

    federation: object          # flu.data.Federation of float64 features (train and test)
    model: nn.Module            # flu.models.logistic / linear (bias-free, float64): Flatten body + Linear head
    num_features: int
    mean: torch.Tensor | None = field(default=None, repr=False)   # standardisation, if any
    scale: torch.Tensor | None = field(default=None, repr=False)


def _body_of(body):
    if body is None:
        return nn.Flatten()
    if not isinstance(body, nn.Module):
        raise TypeError(f"body must be an nn.Module (or None for the identity), got {type(body).__name__}")
    inner = getattr(body, "body", None)
    return inner if isinstance(inner, nn.Module) and isinstance(getattr(body, "head", None), nn.Module) else body


@torch.no_grad()
def _features(body, X, chunk):
    dtype = next((t.dtype for t in body.parameters()), X.dtype if X.is_floating_point() else torch.float64)
    out = [body(X[s:s + chunk].to(dtype)).flatten(1) for s in range(0, max(len(X), 1), chunk)]  # empty: one call
    return torch.cat(out).to(torch.float64)


def probe_problem(body, federation, num_classes: int | None = None, *, standardize: bool = False,
                  intercept: bool = False, chunk: int = 1024) -> Probe:
    """Linear probing (Kornblith et al. 2019) as a convex federated problem: z = body(x) frozen,
    the head z -> W z trained. Returns a :class:`Probe` whose ``federation`` holds every client's
    features (train and test, float64, computed once under ``torch.no_grad`` with the body in eval
    mode, restored after) and whose ``model`` is a bias-free head on them, so :func:`constants`,
    :func:`optimum`, :func:`client_optima` and ``flu.run`` apply unchanged.

    ``body``: an nn.Module (a model with ``.body``/``.head`` gives its body) or None for the
    identity (pixel space). Integer labels give ``flu.models.logistic(d, K, bias=False)`` with K =
    ``num_classes`` (default: the largest label + 1; ``num_classes=1`` is a single binary logit),
    real targets ``flu.models.linear(d, m, bias=False)`` (``loss="mse"``).

    Convexity: with l2 > 0 each F_i(W) = mean_j loss(W z_j) + l2/2 ||W||^2 is l2-strongly convex,
    because the loss part is convex in W. For softmax the bound is tight: adding one vector v to
    every class row leaves the logits' differences, hence the loss, unchanged, so the Hessian has
    eigenvalue exactly l2 along 1 v^T and ``constants(...).mu = l2`` is the smallest eigenvalue.
    A head with a bias is *not* strongly convex in the bias (``flu.run`` penalises weights only), so
    ``constants`` refuses it; ``intercept=True`` appends a constant feature 1 instead, a bias that
    the l2 penalty covers (mu = l2 again). ``standardize``: z <- (z - mean) / std with the pooled
    training features' mean and std (std 0 -> 1), to compare feature spaces on one scale.
    """
    chunk = chk.integer("chunk", chunk, low=1)
    net = _body_of(body)
    modes = [m.training for m in net.modules()]
    net.eval()
    try:
        fed = federation.map(lambda i, X: _features(net, X, chunk), name=f"{federation.name}:features")
    finally:
        for m, was in zip(net.modules(), modes):
            m.training = was
    mean = scale = None
    if standardize:
        Z = torch.cat([Z for Z, _ in fed.train])
        mean, scale = Z.mean(0), Z.std(0, unbiased=False)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        fed = fed.map(lambda i, Z: (Z - mean) / scale)
    if intercept:
        fed = fed.map(lambda i, Z: torch.cat([Z, torch.ones(len(Z), 1, dtype=Z.dtype)], 1))
    d = int(fed.train[0][0].shape[1])
    y = fed.train[0][1]
    if y.is_floating_point():
        m = 1 if y.dim() == 1 else int(y.shape[1])
        model = _nets.linear(d, m, bias=False, dtype=torch.float64)
    else:
        top = max(int(t.max()) for _, t in (*fed.train, *fed.test) if len(t))
        K = top + 1 if num_classes is None else chk.integer("num_classes", num_classes, low=1)
        if K < top + 1 and not (K == 1 and top <= 1):
            chk.fail("num_classes", f">= {top + 1} (the largest label + 1), or 1 for binary labels", num_classes)
        model = _nets.logistic(d, K, bias=False, dtype=torch.float64)
    return Probe(fed, model, d, mean, scale)


def feature_heterogeneity(federation, bodies: dict, l2: float, loss: str = "cross_entropy", weights="samples", *,
                          num_classes: int | None = None, standardize: bool = False, intercept: bool = False):
    """The convex constants of the same clients' linear probe in several feature spaces.

    ``bodies``: name -> body (nn.Module, or None for pixel space), e.g. ``{"pixels": None,
    "random CNN": flu.models.cnn(...).body, "pretrained CNN": flu.pretrained.pretrained_cnn().body}``.
    One row per space: ``space, num_features, mu, L, kappa, mu_F, L_F, F_star, Gamma, zeta2`` from
    :func:`constants` on :func:`probe_problem`'s features, with Gamma = F* - sum_i p_i F_i* (Li et
    al. 2020, ICLR) and zeta2 = sum_i p_i ||grad F_i(w*)||^2, the gradient dissimilarity at the
    optimum (Koloskova et al. 2020, ICML, zeta_*^2): both are small when one head fits every
    client's features. The scale of the features moves L and Gamma too: ``standardize=True`` puts
    every space on unit variance per feature.
    """
    if not isinstance(bodies, dict) or not bodies:
        chk.fail("bodies", "a non-empty dict name -> body (nn.Module or None)", bodies)
    rows = []
    for name, body in bodies.items():
        probe = probe_problem(body, federation, num_classes, standardize=standardize, intercept=intercept)
        c = constants(probe.model, probe.federation, loss, l2, weights)
        pb = _problem(probe.model, probe.federation, loss, l2)
        W = c.w_star[pb.name].numpy().reshape(-1, probe.num_features)
        g2 = [float((_fgh(pb, W, X, T, np.full(len(X), 1.0 / len(X)), order=1)[1] ** 2).sum())
              for X, T in zip(pb.X, pb.T)]
        rows.append(dict(space=str(name), num_features=probe.num_features, mu=c.mu, L=c.L, kappa=c.kappa,
                         mu_F=c.mu_F, L_F=c.L_F, F_star=c.F_star, Gamma=c.Gamma, zeta2=float(np.array(c.p) @ g2)))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------- theory curves

def _frame(rounds, bound, theorem):
    return pd.DataFrame({"round": np.asarray(rounds, dtype=np.int64), "bound": np.asarray(bound, np.float64),
                         "theorem": theorem})


def li_gamma(constants: Constants, local_steps: int) -> float:
    """gamma = max(8 kappa, E) - 1 of Li et al. 2020 (ICLR), Theorem 1 (in its proof's indexing)."""
    return max(8 * constants.kappa, chk.integer("local_steps", local_steps, low=1)) - 1.0


def li_step_size(mu: float, gamma: float, local_steps: int):
    """The schedule of Li et al. 2020 (ICLR), Theorems 1-3: eta_t = 2 / (mu (gamma + t)) with t = 1, 2, ...
    counting local SGD iterations, as a ``client_lr`` callable for ``flu.run``: round r (from 1),
    step s (from 0) is iteration t = (r - 1) E + s + 1. Counting from 1 keeps the proof's
    conditions eta_1 <= 1/(4L) and eta_t <= 2 eta_{t+E}; :func:`li_fedavg_bound` holds with this
    schedule only (and gamma from :func:`li_gamma`)."""
    mu = chk.real("mu", mu, low=0, low_open=True)
    gamma = chk.real("gamma", gamma, low=0)
    E = chk.integer("local_steps", local_steps, low=1)

    def li_schedule(rnd, step):
        return 2.0 / (mu * (gamma + (rnd - 1) * E + step + 1))
    return li_schedule


def li_fedavg_bound(constants: Constants, num_rounds: int, local_steps: int, *, G2: float, dist2: float,
                    sigma2: float = 0.0, participation: str = "full", clients_per_round: int | None = None):
    """Li, Huang, Yang, Wang, Zhang 2020 (ICLR), "On the Convergence of FedAvg on Non-IID Data",
    Theorem 1 (full participation), Theorem 2 (``li_scheme_1``: K clients with replacement by p_k,
    plain mean) and Theorem 3 (``li_scheme_2``: K uniform without replacement, balanced p_k = 1/N).

    Assumptions: every F_k L-smooth and mu-strongly convex (:func:`constants`), E||g_k - grad F_k||^2
    <= sigma_k^2 and E||g_k||^2 <= G^2 at every iterate (:func:`sigma2`, :func:`G2`), E local
    SGD steps with the schedule of :func:`li_step_size`. With kappa = L/mu, gamma = max(8 kappa, E) - 1,
    B = sum_k p_k^2 sigma_k^2 + 6 L Gamma + 8 (E-1)^2 G^2 (``sigma2`` is the weighted sum), and
    C = 4/K E^2 G^2 (Scheme I) or (N-K)/(N-1) 4/K E^2 G^2 (Scheme II), after R rounds (T = R E iterations)

        E[F(w)] - F* <= kappa / (gamma + T + 1) * (2 (B + C) / mu + mu (gamma + 1) / 2 ||w_1 - w*||^2),

    the paper's kappa/(gamma' + T' - 1)(2B/mu + mu gamma'/2 E||w_1 - w*||^2) with gamma' = gamma + 1
    and w_{T'} the model after T' - 1 = T iterations. ``dist2`` = ||w_1 - w*||^2 (:func:`distance2`).
    """
    R = chk.integer("num_rounds", num_rounds, low=0)
    E = chk.integer("local_steps", local_steps, low=1)
    chk.option("participation", participation, ("full", "li_scheme_1", "li_scheme_2"))
    if constants.Gamma is None or not constants.mu > 0:
        chk.fail("constants", "computed with optima=True and mu > 0 (l2 > 0 for logistic regression)", constants)
    p, mu, L = np.array(constants.p), constants.mu, constants.L
    N, G2, C = len(p), chk.real("G2", G2, low=0), 0.0
    if participation != "full":
        K = chk.integer("clients_per_round", clients_per_round, low=1, high=N)
        C = 4.0 / K * E ** 2 * G2
        if participation == "li_scheme_2":
            if not np.allclose(p, 1.0 / N, rtol=0, atol=1e-12):
                chk.fail("weights", "'uniform' (balanced p_k = 1/N) for li_scheme_2 (Li et al. 2020, Theorem 3)",
                         f"p = {np.round(p, 4).tolist()}")
            C *= (N - K) / (N - 1) if N > 1 else 0.0
    gamma = li_gamma(constants, E)
    B = chk.real("sigma2", sigma2, low=0) + 6 * L * constants.Gamma + 8 * (E - 1) ** 2 * G2
    rounds = np.arange(R + 1)
    dist2 = chk.real("dist2", dist2, low=0)
    bound = L / mu / (gamma + rounds * E + 1) * (2 * (B + C) / mu + mu * (gamma + 1) / 2 * dist2)
    thm = {"full": "Theorem 1", "li_scheme_1": "Theorem 2", "li_scheme_2": "Theorem 3"}[participation]
    df = _frame(rounds, bound, f"Li et al. 2020 (ICLR) {thm}")
    df.attrs.update(gamma=gamma, kappa=L / mu, B=B, C=C)
    return df


def scaffold_rate(constants: Constants, num_rounds: int, local_steps: int, *, dist2: float,
                  clients_per_round: int | None = None, sigma2: float = 0.0, server_lr: float = 1.0,
                  control_dist2: float = 0.0):
    """Karimireddy et al. 2020 (ICML), "SCAFFOLD", Theorem III (strongly convex; Theorem VII in the
    appendix), **main terms only, with the absolute constants hidden in O~ set to 1**:

        E[f(x_R)] - f* ~ sigma^2 / (mu R K S) (1 + S / eta_g^2) + mu D^2 exp(-min(S/(30 N), mu/(162 L)) R)

    for rounds R >= 1, D^2 = ||x_0 - x*||^2 + 1/(2 N L^2) sum_i ||c_i^0 - grad f_i(x*)||^2
    (``dist2``, ``control_dist2``), K local steps, S of N clients sampled uniformly per round.
    Assumptions: f = (1/N) sum_i f_i (uniform weights), each f_i mu-strongly convex and L-smooth,
    stochastic gradients with variance <= sigma^2 (``sigma2``: a per-client bound, e.g. the max of
    :func:`sigma2`'s per-client values), server_lr eta_g >= 1, client_lr <= min(1/(81 L K eta_g),
    S/(15 mu N K eta_g)) (``attrs['max_client_lr']``), x_R a weighted average of the iterates.
    """
    R = chk.integer("num_rounds", num_rounds, low=1)
    K = chk.integer("local_steps", local_steps, low=1)
    mu, L, N = constants.mu, constants.L, len(constants.p)
    S = N if clients_per_round is None else chk.integer("clients_per_round", clients_per_round, low=1, high=N)
    eta_g = chk.real("server_lr", server_lr, low=1)
    D2 = chk.real("dist2", dist2, low=0) + chk.real("control_dist2", control_dist2, low=0) / (2 * N * L ** 2)
    rounds = np.arange(1, R + 1)
    bound = (chk.real("sigma2", sigma2, low=0) / (mu * rounds * K * S) * (1 + S / eta_g ** 2)
             + mu * D2 * np.exp(-min(S / (30 * N), mu / (162 * L)) * rounds))
    df = _frame(rounds, bound, "Karimireddy et al. 2020 (ICML) Theorem III, main terms")
    df.attrs.update(max_client_lr=min(1 / (81 * L * K * eta_g), S / (15 * mu * N * K * eta_g)),
                    min_rounds=max(162 * L / mu, 30 * N / S))
    return df


def fedprox_rho(L: float, mu: float, B: float, gamma: float = 0.0, clients_per_round: int = 1,
                L_minus: float = 0.0) -> float:
    """rho of Li et al. 2020 (MLSys), "Federated Optimization in Heterogeneous Networks", Theorem 4:
    with mu_bar = mu - L_minus > 0 (mu the proximal weight, -L_minus a lower bound on the Hessians)

        rho = 1/mu - gamma B/mu - B (1+gamma) sqrt(2) / (mu_bar sqrt(K)) - L B (1+gamma) / (mu_bar mu)
              - L (1+gamma)^2 B^2 / (2 mu_bar^2) - L B^2 (1+gamma)^2 / (mu_bar^2 K) (2 sqrt(2K) + 2)."""
    K = chk.integer("clients_per_round", clients_per_round, low=1)
    mb = chk.real("mu", mu, low=0, low_open=True) - L_minus
    if mb <= 0:
        chk.fail("mu", f"> L_minus = {L_minus} (mu_bar = mu - L_minus > 0)", mu)
    g1 = 1 + gamma
    return (1 / mu - gamma * B / mu - B * g1 * math.sqrt(2) / (mb * math.sqrt(K)) - L * B * g1 / (mb * mu)
            - L * g1 ** 2 * B ** 2 / (2 * mb ** 2) - L * B ** 2 * g1 ** 2 / (mb ** 2 * K) * (2 * math.sqrt(2 * K) + 2))


def fedprox_rate(constants: Constants, num_rounds: int, *, mu: float, B: float, gap0: float, gamma: float = 0.0,
                 clients_per_round: int | None = None, L_minus: float = 0.0):
    """FedProx expected decrease (Li et al. 2020, MLSys, Theorem 4) turned into a rate.

    Theorem 4: if every F_k is L-smooth, grad^2 F_k >= -L_minus I, the local problems are solved
    gamma-inexactly, B(w^t) <= B (:func:`round_diagnostics`' ``b_dissimilarity``) and rho > 0
    (:func:`fedprox_rho`), then E[f(w^{t+1})] <= f(w^t) - rho ||grad f(w^t)||^2 (K devices sampled
    with replacement by p_k, plain mean). **Our step, not the paper's**: F is mu_F-strongly convex,
    so ||grad f||^2 >= 2 mu_F (f - f*) and the gap contracts by (1 - 2 mu_F rho) per round from
    ``gap0`` = f(w^0) - f*. Raises ValueError naming ``mu`` when rho <= 0 (increase mu).
    """
    R = chk.integer("num_rounds", num_rounds, low=0)
    K = len(constants.p) if clients_per_round is None else chk.integer("clients_per_round", clients_per_round, low=1)
    rho = fedprox_rho(constants.L, mu, chk.real("B", B, low=1), chk.real("gamma", gamma, low=0, high=1, high_open=True),
                      K, L_minus)
    if rho <= 0:
        chk.fail("mu", f"large enough that rho > 0 (rho = {rho:.3g} for B = {B:g}, K = {K})", mu)
    rounds = np.arange(R + 1)
    df = _frame(rounds, chk.real("gap0", gap0, low=0) * max(0.0, 1 - 2 * constants.mu_F * rho) ** rounds,
                "Li et al. 2020 (MLSys) Theorem 4 + strong convexity")
    df.attrs.update(rho=rho)
    return df


# ----------------------------------------------------------------------- Per-FedAvg (Fallah et al. 2020)

EXACT_HESSIAN_MAX = 256  # trainable parameters up to which hessian="auto" forms Hessians exactly


@dataclass(frozen=True)
class PerFedAvgConstants:
    """The constants of Fallah, Mokhtari and Ozdaglar 2020 (NeurIPS), Assumptions 4.2-4.5, for
    the client objectives f_i (see :func:`perfedavg_constants`)."""

    p: tuple
    L: float                    # max_i ||H_i||_2: smoothness (Assumption 4.2), estimated at the points
    B: float                    # max_i ||grad f_i||: bounded gradients (Assumption 4.2)
    rho: float | None           # Hessian Lipschitz constant (Assumption 4.3); None when unknown
    sigma_G: float              # per-example gradient noise (Assumption 4.4)
    sigma_H: float | None       # per-example Hessian noise (Assumption 4.4); None unless computed
    gamma_G: float              # gradient dissimilarity (Assumption 4.5)
    gamma_H: float              # Hessian dissimilarity (Assumption 4.5)
    L_i: tuple
    B_i: tuple
    grad_dev: tuple             # ||grad f_i - grad f|| per client (max over the points)
    hess_dev: tuple             # ||H_i - H||_2 per client (max over the points)
    hessian: str                # "exact" or "power"

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self)
                for v in [getattr(self, f.name)]}


def _flat_objective(model, params, names, loss, l2):
    """(theta0, f): the ``names`` parameters as one vector theta0 and f(theta, X, y, penalty) =
    mean loss (+ l2/2 ||W||^2 over the weight tensors among ``names``) with them taken from theta."""
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]
    pen = set(_penalised(names, params))
    fixed = {k: v.detach() for k, v in params.items() if k not in names}

    def f(theta, X, y, penalty=True):
        leaves = {k: t.reshape(s) for k, t, s in zip(names, torch.split(theta, sizes), shapes)}
        val = _sample_losses(functional_call(model, {**fixed, **leaves}, (X.to(theta.dtype),)), y, loss).mean()
        if penalty and l2:
            val = val + l2 / 2 * sum((leaves[k] ** 2).sum() for k in pen)
        return val

    return torch.cat([params[k].detach().reshape(-1) for k in names]), f


def _hessian(f):
    """Hessian in the first argument by reverse-over-reverse (torch.func.hessian's forward mode
    would load TorchScript decompositions, slowly and with deprecation warnings)."""
    return torch.func.jacrev(torch.func.jacrev(f))


def _one(f):
    """f on one example (for torch.func.vmap over examples), without the penalty."""
    return lambda theta, x, t: f(theta, x.unsqueeze(0), t.unsqueeze(0), False)


def _example_gradient_variance(f, theta, X, y, chunk):
    """S^2 = (1/n) sum_j ||grad l_j - mean_k grad l_k||^2 (two passes over chunks of examples)."""
    g1 = torch.func.vmap(torch.func.grad(_one(f)), in_dims=(None, 0, 0))
    parts = [g1(theta, X[s:s + chunk], y[s:s + chunk]).detach().to(torch.float64) for s in range(0, len(X), chunk)]
    mean = sum(G.sum(0) for G in parts) / len(X)
    return float(sum(((G - mean) ** 2).sum() for G in parts) / len(X))


def _example_hessian_variance(f, theta, X, y, H, chunk):
    """(1/n) sum_j ||grad^2 l_j - H||_2^2 for H the mean loss's Hessian (exact per-example Hessians)."""
    h1 = torch.func.vmap(_hessian(_one(f)), in_dims=(None, 0, 0))
    total = 0.0
    for s in range(0, len(X), chunk):
        dev = h1(theta, X[s:s + chunk], y[s:s + chunk]).detach().to(torch.float64) - H
        total += float((torch.linalg.eigvalsh((dev + dev.transpose(1, 2)) / 2).abs().amax(1) ** 2).sum())
    return total / len(X)


def _spectral_norm(matvec, dim, iters, tol, gen, dtype):
    """||A||_2 of a symmetric A given v -> A v: power iteration on A^2 (robust to A's eigenvalues
    of both signs); returns ||A v|| at the last unit v, which tends to ||A||_2 from below. Stops
    after ``iters`` steps or when the estimate changes by at most ``tol`` (relative)."""
    v = torch.randn(dim, generator=gen, dtype=torch.float64).to(dtype)
    v = v / v.norm()
    est = 0.0
    for _ in range(iters):
        u = matvec(v)
        prev, est = est, float(u.norm())
        w = matvec(u)
        if float(w.norm()) == 0.0 or abs(est - prev) <= tol * est:
            return est
        v = w / w.norm()
    return est


def _norm2(H):
    return float(torch.linalg.eigvalsh((H + H.T) / 2).abs().max()) if H.numel() else 0.0


def perfedavg_constants(model, federation, loss="cross_entropy", l2=0.0, weights="samples", *, params=None,
                        names=None, hessian="auto", per_example=True, per_example_hessians=False, iters=100,
                        tol=1e-10, seed=0, chunk=256) -> PerFedAvgConstants:
    """Estimate, at ``params``, the constants of Per-FedAvg's analysis (Fallah, Mokhtari and
    Ozdaglar 2020, NeurIPS, "Personalized Federated Learning with Theoretical Guarantees: A
    Model-Agnostic Meta-Learning Approach", Section 4) for the client objectives f_i (mean loss +
    l2/2 ||W||^2, as ``flu.run``) and f = sum_i p_i f_i (the paper has p_i = 1/n):

    - Assumption 4.2: f_i L-smooth with ||grad f_i|| <= B: ``L`` = max_i ||H_i||_2, ``B`` = max_i ||grad f_i||;
    - Assumption 4.3: H_i rho-Lipschitz: ``rho`` = 0 for least squares on a bias-free linear model
      (constant Hessian), else the largest ||H_i(a) - H_i(b)||_2 / ||a - b|| between consecutive
      points of a ``params`` trajectory (exact mode; a lower estimate), else None;
    - Assumption 4.4: per-example noise ``sigma_G``^2 = max_i (1/n_i) sum_j ||grad l_j - grad f_i||^2
      and, with ``per_example_hessians``, ``sigma_H``^2 = max_i (1/n_i) sum_j ||grad^2 l_j - grad^2 f_i||_2^2;
    - Assumption 4.5: ``gamma_G``^2 = sum_i p_i ||grad f_i - grad f||^2 (the ``grad_dissimilarity``
      that ``flu.run(..., diagnostics=True)`` records) and ``gamma_H``^2 = sum_i p_i ||H_i - H||_2^2,
      H = sum_i p_i H_i, in the paper's mean-square form; ``grad_dev``, ``hess_dev`` hold the per-client norms.

    The paper's constants hold for every w; these are their values at ``params`` (a dict of all the
    model's parameters, default the model's own, or a list of them, e.g. ``History.trajectory``: the
    max over the points). ``names``: the parameters differentiated (default all; e.g. the head's
    for a linear probe). ``hessian``: "exact" forms each H_i (reverse-over-reverse autodiff),
    "power" uses power iteration on Hessian-vector products (at most ``iters`` steps from a seeded
    start, fewer once the estimate moves by <= ``tol`` relative; for models with many parameters),
    "auto" is exact up to 256 parameters. Spectral norms are of symmetric matrices
    (||A||_2 = max |eigenvalue|).
    """
    points = [dict(model.named_parameters())] if params is None else _as_list(params)
    if not points or not all(isinstance(w, dict) for w in points):
        chk.fail("params", "a dict name -> tensor or a non-empty list of them", type(params).__name__)
    names = list(points[0]) if names is None else list(names)
    missing = [k for k in names if k not in points[0]]
    if missing or not names:
        chk.fail("names", f"a non-empty list of parameter names from {sorted(points[0])}", names)
    chk.option("loss", loss, ("cross_entropy", "mse"))
    l2 = chk.real("l2", l2, low=0)
    chk.option("hessian", hessian, ("auto", "exact", "power"))
    iters, chunk = chk.integer("iters", iters, low=1), chk.integer("chunk", chunk, low=1)
    tol = chk.real("tol", tol, low=0)
    p = _weights(federation, weights)
    dim = sum(points[0][k].numel() for k in names)
    mode = ("exact" if dim <= EXACT_HESSIAN_MAX else "power") if hessian == "auto" else hessian
    if per_example_hessians and mode != "exact":
        chk.fail("per_example_hessians", "False unless the Hessians are exact (hessian='exact', or 'auto' with "
                 f"<= {EXACT_HESSIAN_MAX} parameters)", per_example_hessians)
    gen = stream(seed_value("seed", seed), PROBE)
    N = federation.num_clients
    B_i, L_i, gdev, hdev, sG, sH = (np.zeros(N) for _ in range(6))
    gamma_G2 = gamma_H2 = 0.0
    rho, prev = None, None
    try:
        _linear_head(model)
        if loss == "mse":
            rho = 0.0
    except ValueError:
        pass
    for w in points:
        theta0, f = _flat_objective(model, w, names, loss, l2)
        theta = theta0.clone().requires_grad_()
        grads, graphs = [], []
        for X, y in federation.train:
            g = torch.autograd.grad(f(theta, X, y), theta, create_graph=mode == "power")[0]
            graphs.append(g)
            grads.append(g.detach().to(torch.float64))
        G = torch.stack(grads)
        Gbar = torch.as_tensor(p) @ G
        dev = (G - Gbar).norm(dim=1).numpy()
        B_i = np.maximum(B_i, G.norm(dim=1).numpy())
        gdev = np.maximum(gdev, dev)
        gamma_G2 = max(gamma_G2, float(p @ dev ** 2))
        if mode == "exact":
            Hs = torch.stack([_hessian(f)(theta0, X, y).detach().to(torch.float64)
                              for X, y in federation.train])
            Hs = (Hs + Hs.transpose(1, 2)) / 2
            Hbar = torch.tensordot(torch.as_tensor(p), Hs, dims=1)
            hd = np.array([_norm2(H - Hbar) for H in Hs])
            L_i = np.maximum(L_i, [_norm2(H) for H in Hs])
            if prev is not None and rho != 0.0:
                step = float((theta0.to(torch.float64) - prev[0]).norm())
                if step > 0:
                    rho = max(rho or 0.0, max(_norm2(a - b) for a, b in zip(Hs, prev[1])) / step)
            prev = (theta0.to(torch.float64), Hs)
            if per_example_hessians:
                eye = torch.eye(dim, dtype=torch.float64)
                pen = torch.cat([torch.full((w[k].numel(),), float(w[k].dim() >= 2)) for k in names]).to(torch.float64)
                for i, (X, y) in enumerate(federation.train):
                    H_loss = Hs[i] - l2 * eye * pen
                    sH[i] = max(sH[i], _example_hessian_variance(f, theta0, X, y, H_loss, chunk))
        else:
            g_bar = sum(float(pi) * g for pi, g in zip(p, graphs))

            def hvp(g, v):
                return torch.autograd.grad(g, theta, v, retain_graph=True)[0]

            hd = np.array([_spectral_norm(lambda v, g=g: hvp(g, v) - hvp(g_bar, v), dim, iters, tol,
                                           gen, theta.dtype)
                           for g in graphs])
            L_i = np.maximum(L_i, [_spectral_norm(lambda v, g=g: hvp(g, v), dim, iters, tol, gen, theta.dtype)
                                   for g in graphs])
        hdev = np.maximum(hdev, hd)
        gamma_H2 = max(gamma_H2, float(p @ hd ** 2))
        if per_example:
            for i, (X, y) in enumerate(federation.train):
                sG[i] = max(sG[i], _example_gradient_variance(f, theta0, X, y, chunk))
    return PerFedAvgConstants(tuple(p.tolist()), float(L_i.max()), float(B_i.max()), rho, math.sqrt(sG.max()),
                              math.sqrt(sH.max()) if per_example_hessians else None, math.sqrt(gamma_G2),
                              math.sqrt(gamma_H2), tuple(L_i.tolist()), tuple(B_i.tolist()), tuple(gdev.tolist()),
                              tuple(hdev.tolist()), mode)


def perfedavg_bound(constants: PerFedAvgConstants, inner_lr: float, client_lr: float, local_steps: int,
                    num_rounds: int, *, gap0: float, batch_size: int | None = None,
                    clients_per_round: int | None = None, rho: float | None = None):
    """Per-FedAvg's stationarity bound (Fallah, Mokhtari and Ozdaglar 2020, NeurIPS, Theorem 4.5)
    on the meta-objective F(w) = sum_i p_i f_i(w - alpha grad f_i(w)), per round K = 1..R:

        (1/(tau K)) sum_{k<K} sum_{t<tau} E||grad F(w_bar_{k+1,t})||^2
            <= 4 (F(w_0) - F*) / (beta tau K) + floor,

    with alpha = ``inner_lr`` <= 1/L, beta = ``client_lr`` <= 1/(10 tau L_F), tau = ``local_steps``,
    k = ``clients_per_round`` of n clients sampled uniformly (r n in the paper), and the paper's
    derived constants (Lemmas 4.2-4.4), for minibatches of D = ``batch_size`` examples for the
    inner gradient, the outer gradient and the Hessian (D_in = D_o = D_h, as ``flu.run`` draws them):

    - L_F = 4 L + alpha rho B: F_i is L_F-smooth (Lemma 4.2);
    - m_F = 2 alpha L sigma_G / sqrt(D): bias of the stochastic meta-gradient (Lemma 4.3);
    - sigma_F^2 = 12 (B^2 + sigma_G^2 (1/D + (alpha L)^2 / D)) (1 + sigma_H^2 alpha^2 / (4 D)) - 12 B^2:
      its variance (Lemma 4.3); sigma_F = m_F = 0 for full batches (``batch_size=None``);
    - gamma_F^2 = 3 B^2 alpha^2 gamma_H^2 + 192 gamma_G^2: dissimilarity of the meta-gradients (Lemma 4.4).

    The theorem states the rest as O(1) (...); **our explicit form, absolute constants set to 1**:

        floor = beta L_F (sigma_F^2 / k + (n - k) / (k (n - 1)) gamma_F^2)        (noise of one round's average)
              + beta^2 tau (tau - 1) L_F^2 (sigma_F^2 + gamma_F^2)                 (local drift, none for tau = 1)
              + m_F^2                                                            (bias of the inner minibatch)

    (the sampling term is the variance of a mean of k of the n meta-gradients drawn without
    replacement). ``gap0`` >= F(w_0) - F* (e.g. F(w_0) for a non-negative loss); ``rho``
    overrides ``constants.rho`` (required when that is None). Returns ``round, bound, theorem``
    with attrs ``L_F, m_F, sigma_F2, gamma_F2, floor, max_client_lr`` and ``terms`` (the floor's three parts).
    Raises ValueError naming ``inner_lr`` or ``client_lr`` outside the theorem's conditions.
    """
    if not isinstance(constants, PerFedAvgConstants):
        raise TypeError(f"constants must be a PerFedAvgConstants (flu.convergence.perfedavg_constants), "
                        f"got {type(constants).__name__}")
    L, B = constants.L, constants.B
    alpha = chk.real("inner_lr", inner_lr, low=0, low_open=True)
    if alpha > 1 / L:
        chk.fail("inner_lr", f"<= 1/L = {1 / L:.4g} (Theorem 4.5 needs alpha in (0, 1/L])", inner_lr)
    tau = chk.integer("local_steps", local_steps, low=1)
    R = chk.integer("num_rounds", num_rounds, low=1)
    rho = constants.rho if rho is None else chk.real("rho", rho, low=0)
    if rho is None:
        chk.fail("rho", "a number >= 0 (a Hessian Lipschitz constant: constants.rho is unknown)", rho)
    L_F = 4 * L + alpha * rho * B
    beta = chk.real("client_lr", client_lr, low=0, low_open=True)
    max_lr = 1 / (10 * tau * L_F)
    if beta > max_lr * (1 + 1e-12):
        chk.fail("client_lr", f"<= 1/(10 tau L_F) = {max_lr:.4g} (Theorem 4.5)", client_lr)
    n = len(constants.p)
    k = n if clients_per_round is None else chk.integer("clients_per_round", clients_per_round, low=1, high=n)
    if batch_size is None:
        sigma_F2 = m_F = 0.0
    else:
        D = chk.integer("batch_size", batch_size, low=1)
        if constants.sigma_H is None:
            chk.fail("constants", "computed with per_example_hessians=True (sigma_H) for a minibatch bound",
                     "sigma_H = None")
        sG2, sH2 = constants.sigma_G ** 2, constants.sigma_H ** 2
        sigma_F2 = 12 * (B ** 2 + sG2 * (1 / D + (alpha * L) ** 2 / D)) * (1 + sH2 * alpha ** 2 / (4 * D)) - 12 * B ** 2
        m_F = 2 * alpha * L * constants.sigma_G / math.sqrt(D)
    gamma_F2 = 3 * B ** 2 * alpha ** 2 * constants.gamma_H ** 2 + 192 * constants.gamma_G ** 2
    sampling = (n - k) / (k * (n - 1)) if n > 1 else 0.0
    terms = dict(noise=beta * L_F * (sigma_F2 / k + sampling * gamma_F2),
                 drift=beta ** 2 * tau * (tau - 1) * L_F ** 2 * (sigma_F2 + gamma_F2), bias=m_F ** 2)
    floor = sum(terms.values())
    rounds = np.arange(1, R + 1)
    df = _frame(rounds, 4 * chk.real("gap0", gap0, low=0) / (beta * tau * rounds) + floor,
                "Fallah et al. 2020 (NeurIPS) Theorem 4.5, O(1) = 1")
    df.attrs.update(L_F=L_F, m_F=m_F, sigma_F2=sigma_F2, gamma_F2=gamma_F2, floor=floor, max_client_lr=max_lr,
                    terms=terms)
    return df


# ----------------------------------------------------------------------- objective inconsistency

def surrogate_weights(p, local_steps, *, client_lr: float | None = None, mu: float = 0.0) -> np.ndarray:
    """FedNova's surrogate weights (Wang et al. 2020, NeurIPS, "Tackling the Objective Inconsistency
    Problem", Theorem 1): w_i = p_i ||a_i||_1 / sum_j p_j ||a_j||_1 with ||a_i||_1 = tau_i for local
    SGD, and sum_{k<tau_i} (1 - lr mu)^k for FedProx local steps (``mu`` > 0 needs ``client_lr``).
    FedAvg then converges to a stationary point of F~ = sum_i w_i F_i, not of F."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    tau = np.broadcast_to(np.asarray(local_steps, dtype=np.float64), p.shape)
    if (tau < 1).any():
        chk.fail("local_steps", "positive step counts", local_steps)
    a = tau
    if mu:
        r = 1 - chk.real("client_lr", client_lr, low=0, low_open=True) * mu
        a = (1 - r ** tau) / (1 - r)
    return p * a / (p @ a)


def surrogate_optimum(model, federation, loss="cross_entropy", l2=0.0, local_steps=1, weights="samples"):
    """``(x~*, F~*)``: the minimiser of FedNova's surrogate objective (:func:`surrogate_weights`),
    by :func:`optimum`'s solvers."""
    return optimum(model, federation, loss, l2, surrogate_weights(_weights(federation, weights), local_steps))


def fedavg_fixed_point_lsq(A_list, b_list, p, local_steps, lr: float, *, l2: float = 0.0, server_lr: float = 1.0):
    """Fixed point of full-participation, full-batch FedAvg on least squares (numpy, independent of the engine).

    Client i minimises F_i(x) = ||A_i x - b_i||^2 / n_i + l2/2 ||x||^2 (``loss="mse"``, bias-free
    one-output linear model): H_i = 2 A_i^T A_i / n_i + l2 I, c_i = 2 A_i^T b_i / n_i. tau_i GD steps
    from x give y_i = P_i x + q_i, P_i = (I - lr H_i)^tau_i, q_i = lr sum_{s<tau_i} (I - lr H_i)^s c_i,
    and the server step x <- x - server_lr sum_i p_i (x - y_i) is the affine map x -> M x + c.
    Returns ``(x_fixed, M, spectral_radius)``; iterates converge to x_fixed iff the radius < 1.
    """
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(p) != len(A_list):
        chk.fail("p", f"one weight per client ({len(A_list)})", p)
    tau = np.broadcast_to(np.asarray(local_steps, dtype=np.int64), p.shape)
    maps = local_maps(A_list, b_list, [int(t) for t in tau], lr, l2=l2)
    I = np.eye(len(maps[0][1]))
    P_sum = sum(pi * P for pi, (P, _) in zip(p, maps))
    q_sum = sum(pi * q for pi, (_, q) in zip(p, maps))
    M = (1 - server_lr * p.sum()) * I + server_lr * P_sum
    c = server_lr * q_sum
    x = np.linalg.solve(I - M, c)
    return x, M, float(np.max(np.abs(np.linalg.eigvals(M))))
