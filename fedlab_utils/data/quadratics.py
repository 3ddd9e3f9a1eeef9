"""Synthetic quadratic clients realised as least-squares data (the clients of notebook 02).

Client i has the quadratic objective

    F_i(w) = (w - c_i)^T A_i (w - c_i),        grad F_i(w) = 2 A_i (w - c_i),

with its own optimum c_i and curvature A_i (symmetric positive definite), realised as
least-squares data so that training a bias-free linear model with mean squared error trains on it
exactly: n_i inputs X_i with X_i^T X_i / n_i = A_i and targets y_i = X_i c_i, so that
mean_j (x_j^T w - y_j)^2 = F_i(w) (torch's mean squared error, no 1/2). Near its minimiser every
smooth objective looks like this, which is why quadratics are the standard model of client drift
(Charles & Konecny 2021, AISTATS; Wang et al. 2020, NeurIPS).

:func:`quadratic_clients` builds them from (A_i, c_i); :func:`heterogeneous_quadratics` is the
workbook's preset (optima on a circle of radius ``spread``, ellipses of different orientation and
size). The matching model (``flu.models.linear``) is ``flu.lessons.drift.quadratic_model``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._core import checks as chk
from .datasets import Federation

__all__ = ["Quadratics", "heterogeneous_quadratics", "quadratic_clients", "rotation"]


@dataclass(frozen=True, eq=False)
class Quadratics:
    """N quadratic clients F_i(w) = (w - c_i)^T A_i (w - c_i) and their least-squares data.

    ``A`` (N, d, d), ``centers`` (N, d) the client optima c_i, ``X``/``y`` per-client numpy data
    (X_i^T X_i / n_i = A_i, y_i = X_i c_i). ``p`` are the sample weights n_i / n of ``flu.run``'s
    default ``weights="samples"``.
    """

    A: np.ndarray
    centers: np.ndarray
    X: tuple
    y: tuple

    @property
    def num_clients(self) -> int:
        return len(self.centers)

    @property
    def dim(self) -> int:
        return self.centers.shape[1]

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(y) for y in self.y], dtype=np.int64)

    @property
    def p(self) -> np.ndarray:
        n = self.sizes.astype(np.float64)
        return n / n.sum()

    def federation(self) -> Federation:
        """The clients as an ``flu.data.Federation`` (float64 tensors, all data trains)."""
        return Federation.from_clients(
            [(torch.as_tensor(X), torch.as_tensor(y)) for X, y in zip(self.X, self.y)], name="quadratics")

    def weights(self, p=None) -> np.ndarray:
        """``p`` checked to be client weights on the simplex, or the sample weights :attr:`p`."""
        return self.p if p is None else _simplex("p", p, self.num_clients)

    def minimiser(self, p=None) -> np.ndarray:
        """argmin_w sum_i p_i F_i(w) = (sum_i p_i A_i)^-1 sum_i p_i A_i c_i (``p`` default: sample weights;
        pass surrogate weights for FedNova's F~)."""
        p = self.weights(p)
        H = np.einsum("i,ijk->jk", p, self.A)
        return np.linalg.solve(H, np.einsum("i,ijk,ik->j", p, self.A, self.centers))

    @property
    def w_star(self) -> np.ndarray:
        """The optimum w* of F = sum_i p_i F_i."""
        return self.minimiser()

    def client_values(self, W) -> np.ndarray:
        """F_i(w) for points W (G, d): an (N, G) array, from the quadratic form."""
        W = np.atleast_2d(np.asarray(W, dtype=np.float64))
        if W.shape[-1] != self.dim:
            chk.fail("W", f"points with {self.dim} coordinates", W.shape)
        D = W[None, :, :] - self.centers[:, None, :]
        return np.einsum("igj,ijk,igk->ig", D, self.A, D)

    def values(self, W, p=None) -> np.ndarray:
        """F(w) = sum_i p_i F_i(w) for points W (G, d): a (G,) array."""
        return self.weights(p) @ self.client_values(W)


def _simplex(name, p, n):
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(p) != n or (p < 0).any() or abs(p.sum() - 1) > 1e-9:
        chk.fail(name, f"{n} non-negative numbers summing to 1", p.tolist())
    return p


def _orthonormal_columns(n: int, d: int) -> np.ndarray:
    """(n, d) with orthonormal columns: the first d DCT-II basis vectors (deterministic)."""
    j = np.arange(n) + 0.5
    Q = np.stack([np.cos(np.pi * j * k / n) for k in range(d)], axis=1)
    return Q / np.linalg.norm(Q, axis=0)


def quadratic_clients(A, centers, sizes=None) -> Quadratics:
    """Least-squares data with exactly the quadratic objectives F_i(w) = (w - c_i)^T A_i (w - c_i).

    ``A``: (N, d, d) symmetric positive definite matrices; ``centers``: (N, d) client optima;
    ``sizes``: examples per client (default d + 1 each; at least d). Client i's inputs are
    X_i = sqrt(n_i) Q A_i^{1/2} with Q (n_i, d) orthonormal columns, so X_i^T X_i / n_i = A_i, and
    its targets y_i = X_i c_i (no residual: F_i(c_i) = 0).
    """
    A = np.asarray(A, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    if A.ndim != 3 or A.shape[1] != A.shape[2]:
        chk.fail("A", "an (N, d, d) array of matrices", A.shape)
    N, d = A.shape[:2]
    if centers.shape != (N, d):
        chk.fail("centers", f"an array of shape ({N}, {d}), one optimum per client", centers.shape)
    if not np.allclose(A, A.transpose(0, 2, 1), atol=1e-12):
        chk.fail("A", "symmetric matrices", "a non-symmetric matrix")
    eig, vec = np.linalg.eigh(A)
    if (eig <= 0).any():
        chk.fail("A", "positive definite matrices (every client strongly convex)", f"eigenvalues {eig.min():.3g}")
    sizes = np.full(N, d + 1) if sizes is None else np.asarray(sizes)
    if sizes.shape != (N,) or not np.issubdtype(sizes.dtype, np.integer) or (sizes < d).any():
        chk.fail("sizes", f"{N} integers >= {d} (the dimension)", sizes.tolist())
    Xs, ys = [], []
    for Ai_eig, Ai_vec, c, n in zip(eig, vec, centers, sizes):
        root = (Ai_vec * np.sqrt(Ai_eig)) @ Ai_vec.T
        X = math.sqrt(n) * _orthonormal_columns(int(n), d) @ root
        Xs.append(X)
        ys.append(X @ c)
    return Quadratics(A, centers, tuple(Xs), tuple(ys))


def rotation(angle: float) -> np.ndarray:
    """The 2-D rotation matrix by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def heterogeneous_quadratics(num_clients: int = 3, spread: float = 1.0, *, condition: float = 5.0,
                             curvature: float = 1.0, curvature_ratio: float = 3.0, sizes=None) -> Quadratics:
    """The workbook's heterogeneous 2-D clients (deterministic).

    Client i's optimum c_i = spread (cos theta_i, sin theta_i), theta_i = pi/2 + 2 pi i / N (a
    circle of radius ``spread`` around the origin; 0 is IID in the optima). Its curvature
    A_i = s_i R(phi_i) diag(1, 1/condition) R(phi_i)^T: an ellipse of axis ratio sqrt(condition)
    with its long axis at phi_i = theta_i + pi/4, and scale s_i from ``curvature`` down to
    ``curvature / curvature_ratio`` (geometrically over the clients), so the clients differ in
    optimum, orientation and stiffness. ``sizes`` as in :func:`quadratic_clients` (default equal).
    """
    N = chk.integer("num_clients", num_clients, low=1)
    spread = chk.real("spread", spread, low=0)
    condition = chk.real("condition", condition, low=1)
    curvature = chk.real("curvature", curvature, low=0, low_open=True)
    ratio = chk.real("curvature_ratio", curvature_ratio, low=1)
    theta = np.pi / 2 + 2 * np.pi * np.arange(N) / N
    scales = curvature * ratio ** (-np.arange(N) / max(N - 1, 1))
    A = np.stack([s * rotation(t + np.pi / 4) @ np.diag([1.0, 1.0 / condition]) @ rotation(t + np.pi / 4).T
                  for s, t in zip(scales, theta)])
    centers = spread * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return quadratic_clients(A, centers, sizes)
