"""Heterogeneous participation in closed form (flu.convergence) against an exact enumeration of
the 2^N participation sets written here in numpy, and against flu.run itself: full-batch local GD
on least squares (F_i(w) = mean_j (x_j^T w - y_j)^2, Hessian 2 A_i, A_i = X_i^T X_i / n_i) with
Bernoulli availability, averaged over 200 system seeds."""
import itertools

import numpy as np
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils import convergence as cv

D = 2
SIZES = (6, 9, 12)
Q = np.array([0.9, 0.5, 0.25])       # availability probabilities
SEEDS = 200


def make_problem(seed=4):
    rng = np.random.default_rng(seed)
    clients = []
    for n in SIZES:
        X = rng.normal(size=(n, D))
        clients.append((X, X @ (np.array([1.0, -1.0]) + 1.5 * rng.normal(size=D)) + 0.1 * rng.normal(size=n)))
    return clients


CLIENTS = make_problem()
XS, YS = [X for X, _ in CLIENTS], [y for _, y in CLIENTS]
P = np.array(SIZES, dtype=float) / sum(SIZES)
A = [X.T @ X / len(X) for X in XS]
B = [X.T @ y / len(X) for X, y in CLIENTS]
I = np.eye(D)
N = len(SIZES)
FED = flu.data.Federation.from_clients([(torch.tensor(X), torch.tensor(y)) for X, y in CLIENTS])
PROFILES = flu.systems.profiles("ideal", N)


def minimiser(weights):
    return np.linalg.solve(sum(w * a for w, a in zip(weights, A)), sum(w * b for w, b in zip(weights, B)))


W_STAR = minimiser(P)


def local_gd(i, lr, tau):
    """y_i = P_i x + q_i after tau GD steps w <- w - lr (2 A_i w - 2 b_i)."""
    G = I - 2 * lr * A[i]
    Pm, q = I.copy(), np.zeros(D)
    for _ in range(tau):
        Pm, q = G @ Pm, G @ q + 2 * lr * B[i]
    return Pm, q


def enumerated(lr, steps, rule="renormalised", server_lr=1.0):
    """E[M_S], E[c_S] over the 2^N availability sets S, each map built from the round's rule."""
    steps = np.broadcast_to(steps, (N,))
    maps = [local_gd(i, lr, int(t)) for i, t in enumerate(steps)]
    EM, Ec = np.zeros((D, D)), np.zeros(D)
    for S in itertools.product([0, 1], repeat=N):
        S = np.array(S, dtype=bool)
        prob = np.prod(np.where(S, Q, 1 - Q))
        M, c = I.copy(), np.zeros(D)
        if S.any():
            w = P * S / (P * S).sum() if rule == "renormalised" else P * S / Q
            M = I - server_lr * sum(wi * (I - Pm) for wi, (Pm, _) in zip(w, maps))
            c = server_lr * sum(wi * q for wi, (_, q) in zip(w, maps))
        EM, Ec = EM + prob * M, Ec + prob * c
    return EM, Ec


def seeds_mean(algorithm, rounds, lr, steps, x0=None):
    """Mean and standard error over SEEDS system seeds of flu.run's final iterate (start x0, default 0)."""
    model = flu.models.linear(D)
    if x0 is not None:
        with torch.no_grad():
            model.head.weight.copy_(torch.as_tensor(x0).reshape(1, D))
    finals = []
    for s in range(SEEDS):
        sim = flu.systems.Simulation(profiles=PROFILES, availability=flu.systems.Bernoulli(Q.tolist()), seed=s)
        hist = flu.run(model, FED, algorithm=algorithm, num_rounds=rounds, local_steps=steps,
                       client_lr=lr, batch_size=None, loss="mse", systems=sim, eval_every=rounds, progress=False)
        finals.append(hist.params["head.weight"].numpy()[0])
    finals = np.array(finals)
    return finals.mean(0), finals.std(0, ddof=1) / np.sqrt(SEEDS)


def transient(EM, Ec, rounds, x0=None):
    """max |E[x_R] - lim E[x_r]| from the start x0 (default 0)."""
    x = np.zeros(D) if x0 is None else np.asarray(x0, dtype=float)
    for _ in range(rounds):
        x = EM @ x + Ec
    return np.abs(x - np.linalg.solve(I - EM, Ec)).max()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ closed forms against enumeration

@pytest.mark.parametrize("lr, steps, server_lr", [(0.3, 2, 1.0), (0.1, [1, 3, 5], 1.0), (0.2, 1, 0.6)])
def test_closed_forms_equal_the_enumerated_expectations(lr, steps, server_lr):
    for rule, fn in (("renormalised", cv.participation_fixed_point), ("reweighted", cv.reweighted_fixed_point)):
        EM, Ec = enumerated(lr, steps, rule, server_lr)
        fp = fn(XS, YS, P, Q, steps, lr, server_lr=server_lr)
        np.testing.assert_allclose(fp.M, EM, atol=1e-13, rtol=0)
        np.testing.assert_allclose(fp.c, Ec, atol=1e-13, rtol=0)
        np.testing.assert_allclose(fp.x, np.linalg.solve(I - EM, Ec), atol=1e-12, rtol=0)
        assert fp.spectral_radius == pytest.approx(max(abs(np.linalg.eigvals(EM))), abs=1e-13)
    # the expected weights: pi_i = E[1{i in S} p_i / p_S], sum = P(S non-empty)
    pi = cv.participation_weights(P, Q)
    brute = sum(np.prod(np.where(S, Q, 1 - Q)) * np.array(S) * P / max(P @ np.array(S), 1e-300)
                for S in itertools.product([0, 1], repeat=N))
    np.testing.assert_allclose(pi, brute, atol=1e-15, rtol=0)
    assert pi.sum() == pytest.approx(1 - np.prod(1 - Q), abs=1e-15)
    # clients available more often weigh more than their p_i; the unbiased rule keeps p
    assert pi[0] / P[0] > pi[1] / P[1] > pi[2] / P[2]
    np.testing.assert_array_equal(cv.reweighted_fixed_point(XS, YS, P, Q, 1, lr).weights, P)


def test_one_local_step_converges_to_the_participation_weighted_minimiser():
    pi = cv.participation_weights(P, Q)
    for lr in (0.05, 0.3):
        assert np.abs(cv.participation_fixed_point(XS, YS, P, Q, 1, lr).x - minimiser(pi)).max() < 1e-12
        assert np.abs(cv.reweighted_fixed_point(XS, YS, P, Q, 1, lr).x - W_STAR).max() < 1e-12
    assert np.abs(minimiser(pi) - W_STAR).max() > 0.2  # the participation bias is not small here


def test_full_availability_is_fedavg_and_mean_trajectory_is_the_mean_map():
    steps, lr = [1, 3, 5], 0.1
    x_full, M_full, rho_full = cv.fedavg_fixed_point_lsq(XS, YS, P, steps, lr)
    fp = cv.participation_fixed_point(XS, YS, P, 1.0, steps, lr)
    np.testing.assert_allclose(fp.x, x_full, atol=1e-13, rtol=0)
    np.testing.assert_allclose(fp.M, M_full, atol=1e-15, rtol=0)
    traj = cv.mean_trajectory(fp, np.ones(D), 4)
    np.testing.assert_allclose(traj[3], fp.M @ traj[2] + fp.c, atol=1e-15, rtol=0)
    assert traj.shape == (5, D) and np.array_equal(traj[0], np.ones(D))


# ------------------------------------------------------------------ against flu.run

def test_partial_work_under_full_participation_reaches_its_closed_form_fixed_point():
    steps, lr, rounds = [1, 3, 5], 0.1, 150
    hist = flu.run(flu.models.linear(D), FED, num_rounds=rounds, local_steps=steps, client_lr=lr, batch_size=None,
                   loss="mse", eval_every=rounds, progress=False)
    final = hist.params["head.weight"].numpy()[0]
    maps = [local_gd(i, lr, t) for i, t in enumerate(steps)]
    x_hand = np.linalg.solve(I - sum(p * m for p, (m, _) in zip(P, maps)), sum(p * q for p, (_, q) in zip(P, maps)))
    x_pkg = cv.participation_fixed_point(XS, YS, P, 1.0, steps, lr).x
    assert np.abs(final - x_hand).max() < 1e-10
    assert np.abs(x_pkg - x_hand).max() < 1e-12
    assert np.abs(x_hand - W_STAR).max() > 0.05  # unequal work moves the fixed point off w*


def test_bernoulli_availability_mean_iterate_over_200_seeds():
    lr, steps, rounds = 0.3, 2, 6
    fp = cv.participation_fixed_point(XS, YS, P, Q, steps, lr)
    mean, se = seeds_mean("fedavg", rounds, lr, steps)
    assert transient(fp.M, fp.c, rounds) < 0.02 * se.min()  # the mean has reached its limit
    assert np.all(np.abs(mean - fp.x) < 3 * se), (mean, fp.x, se)
    # the test can fail: full participation's fixed point is many standard errors away
    x_full, _, _ = cv.fedavg_fixed_point_lsq(XS, YS, P, steps, lr)
    assert np.all(np.abs(mean - x_full) > 8 * se)


def _reweighted_server(srv):
    w = srv.p / torch.as_tensor(Q, dtype=srv.p.dtype)[srv.clients]
    return flu.algorithms.sgd_step(srv.params, flu.algorithms.weighted_sum(srv.delta, w), srv.server_lr), \
        srv.server_state


REWEIGHTED = flu.algorithms.Algorithm(
    "reweighted", lambda batch: flu.algorithms.ClientResult(flu.algorithms.local_delta(batch, batch.train())),
    _reweighted_server)


def test_unbiased_reweighting_reaches_the_optimum_over_200_seeds():
    """Started where FedAvg under the same availability settles (its biased fixed point), the
    re-weighted rule moves the mean iterate to w*."""
    lr, rounds = 0.3, 6
    fp = cv.reweighted_fixed_point(XS, YS, P, Q, 1, lr)
    biased = cv.participation_fixed_point(XS, YS, P, Q, 1, lr).x
    assert np.abs(fp.x - W_STAR).max() < 1e-12
    mean, se = seeds_mean(REWEIGHTED, rounds, lr, 1, x0=biased)
    assert transient(fp.M, fp.c, rounds, biased) < 0.1 * se.min()
    assert np.all(np.abs(mean - W_STAR) < 3 * se), (mean, W_STAR, se)
    assert np.all(np.abs(biased - W_STAR) > 4 * se)  # where it started is many standard errors away


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize("call, name", [
    (lambda: cv.participation_fixed_point(XS, YS, P, [0.5, 1.2, 0.5], 1, 0.1), "q"),
    (lambda: cv.participation_fixed_point(XS, YS, P, 0.0, 1, 0.1), "q"),
    (lambda: cv.reweighted_fixed_point(XS, YS, P, [0.5, 0.0, 0.5], 1, 0.1), "q"),
    (lambda: cv.participation_fixed_point(XS, YS, [0.5, 0.5, 0.5], Q, 1, 0.1), "p"),
    (lambda: cv.participation_fixed_point(XS, YS, P, Q, [1, 2], 0.1), "local_steps"),
    (lambda: cv.participation_fixed_point(XS, YS, P, Q, 0, 0.1), "local_steps"),
    (lambda: cv.participation_fixed_point(XS, YS, P, Q, 1, -0.1), "lr"),
    (lambda: cv.participation_fixed_point(XS, YS[:2], P, Q, 1, 0.1), "b_list"),
    (lambda: cv.participation_weights(np.full(17, 1 / 17), 0.5), "p"),
    (lambda: cv.mean_trajectory(cv.reweighted_fixed_point(XS, YS, P, Q, 1, 0.1), [0.0], 3), "x0"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()
