"""flu.data.quadratics: least-squares data that realise given quadratic objectives exactly.

Every check is against the quadratic form (w - c_i)^T A_i (w - c_i) or a mean squared error written
out in numpy here, at random points, to 1e-12.
"""
import math

import numpy as np
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils.data import quadratics as fq


def mse(X, y, W):
    """mean_j (x_j . w - y_j)^2 for each row w of W (torch's MSE, written out)."""
    return ((np.atleast_2d(W) @ X.T - y) ** 2).mean(1)


def quadratic_form(W, A, c):
    D = np.atleast_2d(W) - c
    return np.einsum("gj,jk,gk->g", D, A, D)


def random_spd(rng, n, d):
    """n random symmetric positive definite d x d matrices, eigenvalues in [0.1, 5]."""
    Q = np.linalg.qr(rng.normal(size=(n, d, d)))[0]
    eig = rng.uniform(0.1, 5.0, size=(n, d))
    return np.einsum("nij,nj,nkj->nik", Q, eig, Q)


@pytest.mark.parametrize("d, sizes", [(2, [2, 3, 9]), (4, [4, 7]), (5, [5, 5, 6, 20])])
def test_data_reproduce_A_and_c_and_the_objective(d, sizes):
    rng = np.random.default_rng(d)
    A = random_spd(rng, len(sizes), d)
    centers = rng.normal(size=(len(sizes), d))
    q = fq.quadratic_clients(A, centers, sizes)
    assert q.num_clients == len(sizes) and q.dim == d and q.sizes.tolist() == sizes
    np.testing.assert_allclose(q.p, np.array(sizes) / sum(sizes), rtol=1e-15)
    W = rng.normal(scale=2.0, size=(9, d))
    values = q.client_values(W)
    assert values.shape == (len(sizes), 9)
    for i, (X, y, n) in enumerate(zip(q.X, q.y, sizes)):
        assert X.shape == (n, d) and y.shape == (n,)
        np.testing.assert_allclose(X.T @ X / n, A[i], rtol=0, atol=1e-12)
        np.testing.assert_allclose(y, X @ centers[i], rtol=0, atol=1e-12)
        hand = quadratic_form(W, A[i], centers[i])
        np.testing.assert_allclose(mse(X, y, W), hand, rtol=1e-12)
        np.testing.assert_allclose(values[i], hand, rtol=1e-12)
    np.testing.assert_allclose(q.values(W), q.p @ values, rtol=1e-12)


def test_minimiser_zeroes_the_weighted_gradient():
    rng = np.random.default_rng(7)
    A, centers = random_spd(rng, 3, 3), rng.normal(size=(3, 3))
    q = fq.quadratic_clients(A, centers, [3, 6, 4])
    for p in (None, [0.2, 0.5, 0.3]):
        w = q.minimiser(p)
        weights = q.p if p is None else np.array(p)
        grad = sum(pi * 2 * Ai @ (w - ci) for pi, Ai, ci in zip(weights, A, centers))
        np.testing.assert_allclose(grad, 0.0, atol=1e-12)
    np.testing.assert_allclose(q.w_star, q.minimiser(), rtol=0, atol=0)


def test_federation_holds_the_data_as_float64_tensors():
    q = fq.heterogeneous_quadratics(3, 1.0, sizes=[3, 5, 4])
    fed = q.federation()
    assert isinstance(fed, flu.data.Federation) and fed.num_clients == 3
    for (X, y), Xi, yi in zip(fed.train, q.X, q.y):
        assert X.dtype == torch.float64
        np.testing.assert_array_equal(X.numpy(), Xi)
        np.testing.assert_array_equal(y.numpy().ravel(), yi)


def test_rotation_is_a_rotation():
    R = fq.rotation(math.pi / 6)
    np.testing.assert_allclose(R @ R.T, np.eye(2), atol=1e-15)
    np.testing.assert_allclose(R @ [1.0, 0.0], [math.sqrt(3) / 2, 0.5], atol=1e-15)
    np.testing.assert_allclose(fq.rotation(math.pi / 2) @ [1.0, 0.0], [0.0, 1.0], atol=1e-15)


def test_preset_geometry():
    q = fq.heterogeneous_quadratics(4, 2.5, condition=9.0, curvature=2.0, curvature_ratio=4.0)
    np.testing.assert_allclose(np.linalg.norm(q.centers, axis=1), 2.5)
    angles = np.arctan2(q.centers[:, 1], q.centers[:, 0])
    np.testing.assert_allclose(np.cos(angles - (np.pi / 2 + 2 * np.pi * np.arange(4) / 4)), 1.0)
    eig = np.linalg.eigvalsh(q.A)
    np.testing.assert_allclose(eig[:, 1] / eig[:, 0], 9.0)
    np.testing.assert_allclose(eig[:, 1], 2.0 * 4.0 ** (-np.arange(4) / 3))
    assert q.sizes.tolist() == [3, 3, 3, 3]          # default: d + 1 each
    q0 = fq.heterogeneous_quadratics(3, 0.0)
    np.testing.assert_allclose(q0.w_star, 0.0, atol=1e-15)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="A must be positive definite"):
        fq.quadratic_clients([[[1.0, 0.0], [0.0, -1.0]]], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="A must be symmetric"):
        fq.quadratic_clients([[[1.0, 0.5], [0.0, 1.0]]], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="A must be an"):
        fq.quadratic_clients(np.eye(2), [[0.0, 0.0]])
    with pytest.raises(ValueError, match="centers"):
        fq.quadratic_clients(np.eye(2)[None], [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="sizes"):
        fq.quadratic_clients(np.eye(2)[None], [[0.0, 0.0]], sizes=[1])
    with pytest.raises(ValueError, match="spread"):
        fq.heterogeneous_quadratics(3, -1.0)
    q = fq.heterogeneous_quadratics(3, 1.0)
    with pytest.raises(ValueError, match="p must be 3 non-negative numbers summing to 1"):
        q.minimiser([0.5, 0.6, -0.1])
    with pytest.raises(ValueError, match="W must be points with 2 coordinates"):
        q.client_values(np.zeros((4, 3)))
