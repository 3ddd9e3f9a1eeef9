"""Exact fixed-point checks of the federated algorithms on quadratic clients (float64).

Client i holds least-squares data (X_i, y_i) and F_i(w) = mean_j (x_j^T w - y_j)^2
= (w - w_i*)^T A_i (w - w_i*) + const, with A_i = X_i^T X_i / n_i, b_i = X_i^T y_i / n_i and
grad F_i(w) = 2 A_i w - 2 b_i. The optimum of F = sum_i p_i F_i is w* = (sum p_i A_i)^-1 sum p_i b_i.

Local gradient descent (``batch_size=None``) is affine in its starting point, so each round is an
affine map of the server state. Everything on the "closed form" side below is numpy written from
the update rules of the papers; the "simulated" side is ``flu.run``. The two never share code.
"""
import numpy as np
import pytest
import torch

import fedlab_utils as flu

D = 3
SIZES = (12, 20, 8, 30)
STEPS = [1, 3, 5, 8]  # heterogeneous local work


# ------------------------------------------------------------------ the problem (numpy)

def make_problem(seed=1):
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=D)
    clients = []
    for i, n in enumerate(SIZES):
        X = rng.normal(size=(n, D)) * rng.uniform(0.4, 1.2, D) + 0.3 * i
        y = X @ (w0 + rng.normal(size=D)) + 0.1 * rng.normal(size=n)
        clients.append((X, y))
    p = np.array(SIZES, dtype=float) / sum(SIZES)
    A = [X.T @ X / len(y) for X, y in clients]
    b = [X.T @ y / len(y) for X, y in clients]
    return clients, p, A, b


CLIENTS, P, A, B = make_problem()
I = np.eye(D)


def minimiser(s=None):
    """argmin of sum_i p_i s_i F_i (s = 1: the optimum w*)."""
    s = np.ones(len(P)) if s is None else np.asarray(s)
    return np.linalg.solve(sum(pi * si * a for pi, si, a in zip(P, s, A)),
                           sum(pi * si * bi for pi, si, bi in zip(P, s, B)))


W_STAR = minimiser()


def grad(i, w):
    return 2 * A[i] @ w - 2 * B[i]


def local_gd(i, lr, tau, pull=0.0):
    """(P_i, q_i) with y_i = P_i x + q_i: tau GD steps from x on F_i(w) + pull/2 ||w - x||^2.
    One step: w <- (I - lr (2 A_i + pull I)) w + lr pull x + 2 lr b_i."""
    G = I - lr * (2 * A[i] + pull * I)
    Pm, q = I.copy(), np.zeros(D)
    for _ in range(tau):
        Pm, q = G @ Pm + lr * pull * I, G @ q + 2 * lr * B[i]
    return Pm, q


def fedavg_map(lr, steps, pull=0.0):
    """FedAvg / FedProx round x -> sum_i p_i y_i = M x + c (full participation, server_lr 1)."""
    maps = [local_gd(i, lr, t, pull) for i, t in enumerate(steps)]
    return sum(p * m for p, (m, _) in zip(P, maps)), sum(p * q for p, (_, q) in zip(P, maps))


def fednova_map(lr, steps):
    """FedNova round x -> x - tau_eff sum_i p_i (x - y_i) / tau_i, tau_eff = sum_i p_i tau_i."""
    maps = [local_gd(i, lr, t) for i, t in enumerate(steps)]
    tau_eff = float(P @ np.asarray(steps))
    M = I - tau_eff * sum(p / t * (I - m) for p, t, (m, _) in zip(P, steps, maps))
    c = tau_eff * sum(p / t * q for p, t, (_, q) in zip(P, steps, maps))
    return M, c


def fixed_point(M, c):
    return np.linalg.solve(I - M, c)


def spectral_radius(M):
    return float(max(abs(np.linalg.eigvals(M))))


# ------------------------------------------------------------------ the simulation (flu)

FED = flu.data.Federation.from_clients([(torch.tensor(X), torch.tensor(y)) for X, y in CLIENTS])


def simulate(algorithm, rounds, lr, steps=STEPS, **kw):
    """Global iterates x_0 .. x_R of ``flu.run`` (exact local GD), as a (R + 1, D) array."""
    hist = flu.run(flu.models.linear(D), FED, algorithm=algorithm, num_rounds=rounds, local_steps=steps,
                   client_lr=lr, batch_size=None, loss="mse", record_params=True, eval_every=rounds,
                   progress=False, **kw)
    return np.array([t["head.weight"].numpy()[0] for t in hist.trajectory]), hist


def dist(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


# ------------------------------------------------------------------ (a) FedAvg

def test_fedavg_is_the_affine_map_and_converges_to_its_fixed_point_not_the_optimum():
    lr = 0.05
    M, c = fedavg_map(lr, STEPS)
    x_fix = fixed_point(M, c)
    traj, _ = simulate("fedavg", 150, lr)
    # every simulated round is the closed-form affine map applied to the previous iterate
    np.testing.assert_allclose(traj[1:], traj[:-1] @ M.T + c, atol=1e-12, rtol=0)
    assert dist(traj[-1], x_fix) < 1e-10
    # objective inconsistency: heterogeneous steps move the fixed point away from w*
    assert dist(x_fix, W_STAR) > 0.3
    assert dist(traj[-1], W_STAR) > 0.3
    # the linear rate is the spectral radius of M (M = sum_i p_i (I - 2 lr A_i)^tau_i is symmetric,
    # its top eigenvalue simple): ratios of successive distances to the fixed point tend to rho(M)
    err = np.linalg.norm(traj - x_fix, axis=1)
    rho = spectral_radius(M)
    ratios = err[1:] / err[:-1]
    np.testing.assert_allclose(ratios[70:80], rho, atol=1e-6, rtol=0)
    assert abs(ratios[2] - rho) > 1e-3  # early on the other eigen-directions still matter


# ------------------------------------------------------------------ (b) FedNova

def test_fednova_fixed_point_and_it_approaches_the_optimum_as_lr_shrinks():
    errs = {}
    for lr, rounds in ((0.05, 150), (0.02, 300)):
        M, c = fednova_map(lr, STEPS)
        x_fix = fixed_point(M, c)
        traj, _ = simulate("fednova", rounds, lr)
        np.testing.assert_allclose(traj[1:], traj[:-1] @ M.T + c, atol=1e-12, rtol=0)
        errs[lr] = dist(traj[-1], x_fix)
        assert errs[lr] < 1e-10
    # closed form: ||x_fix(lr) - w*|| = O(lr) for FedNova, while FedAvg's stays put
    lrs = [0.04, 0.02, 0.01, 0.005, 0.0025]
    nova = [dist(fixed_point(*fednova_map(lr, STEPS)), W_STAR) for lr in lrs]
    avg = [dist(fixed_point(*fedavg_map(lr, STEPS)), W_STAR) for lr in lrs]
    assert all(a > b for a, b in zip(nova, nova[1:]))
    np.testing.assert_allclose(np.array(nova) / np.array(lrs), nova[-1] / lrs[-1], rtol=0.25)
    assert nova[-1] < 0.02 and min(avg) > 0.4
    # and FedAvg at the same small lr converges towards the tau-weighted minimiser instead
    assert dist(fixed_point(*fedavg_map(1e-4, STEPS)), minimiser(STEPS)) < 1e-3


# ------------------------------------------------------------------ (c) SCAFFOLD

@pytest.mark.parametrize("clients_per_round, rounds", [(None, 120), (2, 200)])
def test_scaffold_reaches_the_optimum_with_heterogeneous_steps(clients_per_round, rounds):
    traj, hist = simulate("scaffold", rounds, 0.05, clients_per_round=clients_per_round, seed=5)
    err = dist(traj[-1], W_STAR)
    assert err < 1e-10
    # at the fixed point each control variate is its client's gradient at w* (c = sum p_i c_i = 0)
    c_i = hist.client_state["c"].numpy()
    np.testing.assert_allclose(c_i, [grad(i, W_STAR) for i in range(len(P))], atol=1e-8, rtol=0)
    # FedAvg with the same clients and sampling does not get there
    fedavg_traj, _ = simulate("fedavg", 40, 0.05, clients_per_round=clients_per_round, seed=5)
    assert dist(fedavg_traj[-1], W_STAR) > 0.05


# ------------------------------------------------------------------ (d) FedDyn

@pytest.mark.parametrize("steps, clients_per_round, rounds", [([1, 2, 1, 2], None, 150), ([2, 2, 2, 2], None, 150),
                                                       ([1, 2, 1, 2], 3, 200)])
def test_feddyn_reaches_the_optimum_with_few_local_steps(steps, clients_per_round, rounds):
    traj, hist = simulate("feddyn", rounds, 0.2, steps=steps, alpha=1.0, clients_per_round=clients_per_round, seed=5)
    err = dist(traj[-1], W_STAR)
    assert err < 1e-10
    g_i = hist.client_state["g"].numpy()
    np.testing.assert_allclose(g_i, [grad(i, W_STAR) for i in range(len(P))], atol=1e-8, rtol=0)
    if len(set(steps)) > 1:  # FedAvg with these steps is inconsistent
        assert dist(fixed_point(*fedavg_map(0.2, steps)), W_STAR) > 0.05


# ------------------------------------------------------------------ (e) FedProx

@pytest.mark.parametrize("mu, rounds", [(0.1, 150), (1.0, 160), (10.0, 360)])  # rho(M) 0.81, 0.83, 0.92
def test_fedprox_converges_to_its_prox_fixed_point(mu, rounds):
    lr = 0.05
    M, c = fedavg_map(lr, STEPS, pull=mu)
    x_fix = fixed_point(M, c)
    traj, _ = simulate("fedprox", rounds, lr, mu=mu)
    np.testing.assert_allclose(traj[1:], traj[:-1] @ M.T + c, atol=1e-12, rtol=0)
    assert dist(traj[-1], x_fix) < 1e-10


def test_fedprox_at_mu_zero_is_fedavg():
    a, _ = simulate("fedprox", 30, 0.05, mu=0.0)
    b, _ = simulate("fedavg", 30, 0.05)
    assert np.array_equal(a, b)
    np.testing.assert_allclose(fixed_point(*fedavg_map(0.05, STEPS, pull=0.0)),
                               fixed_point(*fedavg_map(0.05, STEPS)), atol=0, rtol=0)


@pytest.mark.parametrize("c", [0.5, 1.0])
def test_fedprox_large_mu_tends_to_the_s_weighted_minimiser(c):
    """With client_lr = c / mu, y_i - x = -(s_i / mu) grad F_i(x) + O(1/mu^2), s_i = 1 - (1 - c)^tau_i,
    so the fixed point tends to argmin sum_i p_i s_i F_i: w* only when the s_i are equal (c = 1)."""
    s = 1 - (1 - c) ** np.asarray(STEPS, dtype=float)
    target = minimiser(s)
    mus = [10.0, 100.0, 1000.0, 10000.0]
    d = [dist(fixed_point(*fedavg_map(c / mu, STEPS, pull=mu)), target) for mu in mus]
    assert all(x > y for x, y in zip(d, d[1:]))
    np.testing.assert_allclose(np.array(d) * mus, d[-1] * mus[-1], rtol=0.2)  # O(1/mu)
    assert d[-1] < 1e-3
    if c == 1.0:
        assert dist(target, W_STAR) < 1e-12
    else:
        assert dist(target, W_STAR) > 0.05


# ------------------------------------------------------------------ (f) FedAvgM

@pytest.mark.parametrize("clients_per_round", [None, 2])
def test_fedavgm_without_momentum_is_fedavg(clients_per_round):
    kw = dict(clients_per_round=clients_per_round, seed=3)
    a, _ = simulate("fedavgm", 25, 0.05, server_momentum=0.0, **kw)
    b, _ = simulate("fedavg", 25, 0.05, **kw)
    assert np.array_equal(a, b)


# ------------------------------------------------------------------ (g) server optimisers by hand

def server_rule(name, opts):
    """The pinned server rule as a function of (state, Delta) -> (update, state); x <- x - lr * update."""
    b1, b2, tau, beta = opts.get("beta1"), opts.get("beta2"), opts.get("tau"), opts.get("server_momentum")

    def step(state, delta):
        if name == "fedavgm":
            m = beta * state["m"] + delta
            return m, {"m": m}
        m = b1 * state["m"] + (1 - b1) * delta
        v, d2 = state["v"], delta ** 2
        v = {"fedadam": lambda: b2 * v + (1 - b2) * d2,
             "fedyogi": lambda: v - (1 - b2) * d2 * np.sign(v - d2),
             "fedadagrad": lambda: v + d2}[name]()
        return m / (np.sqrt(v) + tau), {"m": m, "v": v}

    init = {"m": np.zeros(D)} if name == "fedavgm" else {"m": np.zeros(D), "v": np.full(D, tau ** 2)}
    return step, init


DEFAULTS = {"fedavgm": dict(server_momentum=0.9), "fedadam": dict(beta1=0.9, beta2=0.99, tau=1e-3),
            "fedyogi": dict(beta1=0.9, beta2=0.99, tau=1e-3), "fedadagrad": dict(beta1=0.9, beta2=0.99, tau=1e-3)}
DEFAULT_SERVER_LR = {"fedavgm": 1.0, "fedadam": 1e-2, "fedyogi": 1e-2, "fedadagrad": 1e-2}
CUSTOM = {"fedavgm": dict(server_momentum=0.5), "fedadam": dict(beta1=0.5, beta2=0.7, tau=0.05),
          "fedyogi": dict(beta1=0.5, beta2=0.7, tau=0.05), "fedadagrad": dict(beta1=0.5, tau=0.05)}


@pytest.mark.parametrize("custom", [False, True])
@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_server_optimiser_first_rounds_by_hand(name, custom):
    lr, rounds = 0.05, 3
    opts = CUSTOM[name] if custom else {}
    server_lr = 0.3 if custom else None
    traj, _ = simulate(name, rounds, lr, steps=1, server_lr=server_lr, **opts)
    step, state = server_rule(name, {**DEFAULTS[name], **opts})
    eta = server_lr if custom else DEFAULT_SERVER_LR[name]
    x = np.zeros(D)
    expected = [x]
    for _ in range(rounds):
        delta = sum(p * lr * grad(i, x) for i, p in enumerate(P))  # one local GD step: x - y_i = lr grad F_i(x)
        update, state = step(state, delta)
        x = x - eta * update
        expected.append(x)
    np.testing.assert_allclose(traj, np.array(expected), atol=1e-12, rtol=0)
    assert dist(traj[1], traj[0]) > 1e-3
