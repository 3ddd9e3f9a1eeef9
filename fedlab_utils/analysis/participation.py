"""Heterogeneous participation and partial work on quadratic clients, in closed form (numpy only).

Clients hold least-squares data (A_i, b_i) (n_i x d inputs, n_i targets) and
F_i(x) = ||A_i x - b_i||^2 / n_i + l2/2 ||x||^2, the ``loss="mse"`` objective of a bias-free
one-output linear model (``flu.models.linear``), with Hessian H_i = 2 A_i^T A_i / n_i + l2 I.
tau_i full-batch gradient steps of size lr from x give y_i = P_i x + q_i, with
P_i = (I - lr H_i)^tau_i and q_i = lr sum_{s < tau_i} (I - lr H_i)^s (2 A_i^T b_i / n_i).

**Bernoulli availability** (``flu.systems.Bernoulli(q)`` with ``"ideal"`` profiles and
``clients_per_round=None``: every available client takes part and completes; the engine's
``_clocked_selection`` renormalises p over them and skips the update when nobody is available):
client i is in the round's set S independently with
probability q_i; the server averages the clients of S with p_i renormalised over S,
x <- x - server_lr sum_{i in S} (p_i / p_S) (x - y_i), p_S = sum_{i in S} p_i, and leaves x
unchanged when S is empty. A round is the random affine map x -> M_S x + c_S with

    M_S = I - server_lr sum_{i in S} (p_i / p_S) (I - P_i),    c_S = server_lr sum_{i in S} (p_i / p_S) q_i,

drawn independently of x, so E[x_{r+1}] = E[M] E[x_r] + E[c]: the mean iterate converges to
(I - E[M])^-1 E[c] when the spectral radius of E[M] is < 1 (the iterates keep fluctuating
around it). M_S and c_S are linear in the aggregation weights w_i(S) = 1{i in S} p_i / p_S, so
the expectation over the 2^N sets reduces to the expected weights
pi_i = E[w_i(S)] = sum_S Pr(S) w_i(S) (:func:`participation_weights`, enumerated exactly). With
one local step, y_i - x = -lr grad F_i(x) and the mean converges to argmin sum_i pi_i F_i: the
clients that are more often available weigh more (the participation bias; Cho et al. 2022,
"Towards understanding biased client selection"; Wang and Ji 2022, "A unified analysis of
federated learning with arbitrary client participation").

**Unbiased re-weighting** w_i(S) = 1{i in S} p_i / q_i (not renormalised): E[w_i(S)] = p_i, so
E[M] and E[c] are full-participation FedAvg's; with one local step the mean iterate reaches
w* = argmin sum_i p_i F_i (:func:`reweighted_fixed_point`).

**Partial work** (fixed unequal local steps tau_i, full participation) is
``flu.convergence.fedavg_fixed_point_lsq``; ``local_steps`` may also be per client here.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._core import checks as chk

MAX_ENUMERATED = 16  # clients whose 2^N participation sets are enumerated


class FixedPoint(NamedTuple):
    """Mean dynamics E[x_{r+1}] = M E[x_r] + c of a randomised round, and where it converges."""

    x: np.ndarray               # (I - M)^-1 c
    M: np.ndarray               # E[M_S] (d, d)
    c: np.ndarray               # E[c_S] (d,)
    spectral_radius: float      # of M: the mean converges iff < 1, at this linear rate
    weights: np.ndarray         # expected aggregation weights E[w_i(S)] (N,)


def _clients(A_list, b_list):
    if len(A_list) == 0 or len(A_list) != len(b_list):
        chk.fail("b_list", f"one target vector per client ({len(A_list)} in A_list, at least one)", len(b_list))
    As, bs = [], []
    for i, (A, b) in enumerate(zip(A_list, b_list)):
        A, b = np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64).reshape(-1)
        if A.ndim != 2 or len(A) == 0 or len(b) != len(A) or not (np.isfinite(A).all() and np.isfinite(b).all()):
            chk.fail(f"A_list[{i}]", "a finite (n_i, d) matrix with n_i >= 1 matching its n_i targets",
                     f"shape {A.shape} with {len(b)} targets")
        if A.shape[1] != np.asarray(A_list[0]).shape[1]:
            chk.fail(f"A_list[{i}]", f"{np.asarray(A_list[0]).shape[1]} columns (as client 0)", A.shape)
        As.append(A)
        bs.append(b)
    return As, bs


def _steps(local_steps, N):
    vals = list(local_steps) if isinstance(local_steps, (list, tuple, np.ndarray)) else [local_steps] * N
    if len(vals) != N or not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) and t >= 1
                                 for t in vals):
        chk.fail("local_steps", f"an int >= 1 or {N} of them (one per client)", local_steps)
    return np.array(vals, dtype=np.int64)


def _probabilities(name, value, N, *, positive=False):
    vals = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * N
    try:
        arr = np.array(vals, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.full(0, np.nan)
    ok = arr.shape == (N,) and np.isfinite(arr).all() and ((arr > 0) if positive else (arr >= 0)).all()
    if not (ok and (arr <= 1).all()):
        chk.fail(name, f"a probability in {'(0, 1]' if positive else '[0, 1]'} or {N} of them (one per client)",
                 value)
    return arr


def _population(p, N):
    arr = np.asarray(p, dtype=np.float64).reshape(-1)
    if arr.shape != (N,) or not np.isfinite(arr).all() or (arr <= 0).any() or abs(arr.sum() - 1) > 1e-9:
        chk.fail("p", f"{N} positive weights summing to 1", p)
    return arr


def local_maps(A_list, b_list, local_steps, lr: float, *, l2: float = 0.0):
    """``[(P_i, q_i)]``: tau_i full-batch GD steps of size ``lr`` on F_i from x end at P_i x + q_i
    (F_i, P_i, q_i as in the module docstring; ``local_steps`` an int or one per client)."""
    As, bs = _clients(A_list, b_list)
    tau = _steps(local_steps, len(As))
    lr = chk.real("lr", lr, low=0, low_open=True)
    l2 = chk.real("l2", l2, low=0)
    d = As[0].shape[1]
    eye = np.eye(d)
    maps = []
    for A, b, t in zip(As, bs, tau):
        step = eye - lr * (2 * A.T @ A / len(A) + l2 * eye)
        P, q = eye.copy(), np.zeros(d)
        for _ in range(int(t)):
            q = step @ q + lr * 2 * A.T @ b / len(A)
            P = step @ P
        maps.append((P, q))
    return maps


def participation_weights(p, q) -> np.ndarray:
    """pi_i = E[1{i in S} p_i / p_S]: client i's expected weight when each client is available
    independently with probability q_i and the server renormalises p over the available ones
    (0 when nobody is). Exact, by enumerating the 2^N sets (N <= 16). sum_i pi_i = 1 - prod_i (1 - q_i).
    With one local step the mean iterate converges to argmin sum_i pi_i F_i, e.g.
    ``flu.convergence.optimum(model, federation, weights=pi / pi.sum())``."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    N = len(p)
    p = _population(p, N)
    q = _probabilities("q", q, N)
    if N > MAX_ENUMERATED:
        chk.fail("p", f"at most {MAX_ENUMERATED} clients (the 2^N participation sets are enumerated)", f"{N} clients")
    sets = (np.arange(2 ** N)[:, None] >> np.arange(N)) & 1
    prob = np.prod(np.where(sets == 1, q, 1 - q), axis=1)
    mass = sets @ p
    w = np.divide(sets * p, mass[:, None], out=np.zeros(sets.shape), where=mass[:, None] > 0)
    return prob @ w


def _affine(maps, weights, server_lr):
    """E[M], E[c] of x -> x - server_lr sum_i w_i (x - P_i x - q_i) for expected weights w."""
    d = len(maps[0][1])
    eye = np.eye(d)
    M = eye - server_lr * sum(w * (eye - P) for w, (P, _) in zip(weights, maps))
    c = server_lr * sum(w * qv for w, (_, qv) in zip(weights, maps))
    return M, c


def _fixed(M, c, weights):
    eye = np.eye(len(c))
    radius = float(np.max(np.abs(np.linalg.eigvals(M))))
    x = np.linalg.solve(eye - M, c)
    return FixedPoint(x, M, c, radius, np.asarray(weights, dtype=np.float64))


def participation_fixed_point(A_list, b_list, p, q, local_steps, lr: float, *, l2: float = 0.0,
                              server_lr: float = 1.0) -> FixedPoint:
    """Where the mean iterate of FedAvg under Bernoulli availability converges (module docstring):
    ``x = (I - E[M])^-1 E[c]`` with E[M] = I - server_lr sum_i pi_i (I - P_i), E[c] = server_lr
    sum_i pi_i q_i and pi from :func:`participation_weights`. This is ``flu.run(...,
    batch_size=None, loss="mse", systems=flu.systems.Simulation(profiles=flu.systems.profiles("ideal", N),
    availability=flu.systems.Bernoulli(q)))`` with ``weights`` giving p: the mean over system seeds
    of its iterates tends to ``x``. ``q`` all 1 is :func:`flu.convergence.fedavg_fixed_point_lsq`.
    Raises ValueError naming ``q`` if every q_i is 0 (nothing ever moves)."""
    maps = local_maps(A_list, b_list, local_steps, lr, l2=l2)
    pi = participation_weights(p, q)
    if not pi.sum() > 0:
        chk.fail("q", "positive for at least one client", q)
    M, c = _affine(maps, pi, chk.real("server_lr", server_lr, low=0, low_open=True))
    return _fixed(M, c, pi)


def reweighted_fixed_point(A_list, b_list, p, q, local_steps, lr: float, *, l2: float = 0.0,
                           server_lr: float = 1.0) -> FixedPoint:
    """The unbiased re-weighted rule x <- x - server_lr sum_{i in S} (p_i / q_i) (x - y_i) under
    Bernoulli availability q_i > 0 (not renormalised; an empty round leaves x). E[1{i in S} p_i / q_i] = p_i,
    so E[M], E[c] and the mean's limit are those of full-participation FedAvg; with
    ``local_steps=1`` it is w* = argmin sum_i p_i F_i (the iterates still fluctuate around it)."""
    maps = local_maps(A_list, b_list, local_steps, lr, l2=l2)
    N = len(maps)
    p = _population(p, N)
    _probabilities("q", q, N, positive=True)
    M, c = _affine(maps, p, chk.real("server_lr", server_lr, low=0, low_open=True))
    return _fixed(M, c, p)


def mean_trajectory(fixed_point: FixedPoint, x0, num_rounds: int) -> np.ndarray:
    """E[x_0], ..., E[x_R] (an (R + 1, d) array) from E[x_{r+1}] = M E[x_r] + c with a
    deterministic start ``x0``: the transient is M^r (x0 - x)."""
    R = chk.integer("num_rounds", num_rounds, low=0)
    x = np.asarray(x0, dtype=np.float64).reshape(-1)
    if x.shape != fixed_point.c.shape:
        chk.fail("x0", f"a vector of {len(fixed_point.c)} numbers", x0)
    out = [x]
    for _ in range(R):
        x = fixed_point.M @ x + fixed_point.c
        out.append(x)
    return np.array(out)
