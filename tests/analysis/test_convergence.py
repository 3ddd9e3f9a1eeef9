"""flu.convergence against hand computations, scikit-learn, scipy, brute force and flu.run itself."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression

import fedlab_utils as flu
from fedlab_utils import convergence as cv

F64 = torch.float64


def skewed_split(y, num_clients, alpha, seed):
    """Per-class Dirichlet proportions, written out here (independent of flu.partition)."""
    rng = np.random.default_rng(seed)
    parts = [[] for _ in range(num_clients)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = (np.cumsum(rng.dirichlet(alpha * np.ones(num_clients))) * len(idx)).astype(int)[:-1]
        for i, chunk in enumerate(np.split(idx, cuts)):
            parts[i] += chunk.tolist()
    return [np.sort(p) for p in parts]


def standardised(loader):
    X, y = loader(return_X_y=True)
    return (X - X.mean(0)) / X.std(0), y


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (badly so on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def wine():
    X, y = standardised(load_wine)
    parts = skewed_split(y, 4, 0.5, seed=0)       # sizes 69, 88, 11, 10; client 2 lacks class 1
    fed = flu.data.Federation.from_clients([(torch.tensor(X[p]), torch.tensor(y[p])) for p in parts])
    return X, y, parts, fed, flu.models.logistic(13, 3, bias=False, dtype=F64)


def regression_clients(gen, sizes=(8, 12, 20), d=3):
    clients = []
    for i, n in enumerate(sizes):
        X = torch.randn(n, d, generator=gen, dtype=F64) * torch.tensor([1.0, 0.6, 0.3], dtype=F64) + 0.3 * i
        w = torch.tensor([1.0, -2.0, 0.5], dtype=F64) + i
        clients.append((X, X @ w + 0.1 * torch.randn(n, generator=gen, dtype=F64)))
    return clients


# --------------------------------------------------------------------------- diagnostics

def test_round_diagnostics_hand_case():
    grads = {"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "b": torch.tensor([[1.0], [-1.0]])}
    deltas = {"w": torch.tensor([[3.0, 4.0], [0.0, 0.0]]), "b": torch.tensor([[0.0], [1.0]])}
    out = cv.round_diagnostics(torch.tensor([1.0, 2.0]), grads, [0.25, 0.75], deltas,
                               {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([2.0])})
    # grad F = (0.25, 1.5, -0.5): ||.||^2 = 2.5625; sum p ||g_i||^2 = 0.25 * 2 + 0.75 * 5 = 4.25
    assert out == pytest.approx(dict(global_loss=1.75, grad_norm=math.sqrt(2.5625), grad_dissimilarity=4.25 - 2.5625,
                                     b_dissimilarity=math.sqrt(4.25 / 2.5625), client_drift=3.0, update_norm=3.0),
                                rel=1e-12)
    zero = {"w": torch.zeros(2, 2)}
    assert cv.round_diagnostics([0.0, 0.0], zero, [0.5, 0.5], zero, {"w": torch.zeros(2)})["b_dissimilarity"] == 1.0
    with pytest.raises(ValueError, match="losses"):
        cv.round_diagnostics([1.0], grads, [0.25, 0.75], deltas, {"w": torch.zeros(2)})


def test_client_objectives_match_plain_torch(gen):
    clients = [(torch.randn(n, 4, generator=gen, dtype=F64), torch.randint(0, 3, (n,), generator=gen)) for n in (5, 9)]
    fed = flu.data.Federation.from_clients(clients)
    model = flu.models.mlp(4, 6, 3, dtype=F64, seed=1)
    params = {k: v.detach() for k, v in model.named_parameters()}
    losses, grads = cv.client_objectives(model, params, fed, "cross_entropy", l2=0.3)
    for i, (X, y) in enumerate(clients):
        model.zero_grad()
        val = torch.nn.functional.cross_entropy(model(X), y)
        val = val + 0.15 * sum((w ** 2).sum() for w in model.parameters() if w.dim() >= 2)
        val.backward()
        assert float(losses[i]) == pytest.approx(float(val.detach()), rel=1e-13)
        for k, w in model.named_parameters():
            np.testing.assert_allclose(grads[k][i].numpy(), w.grad.numpy(), rtol=1e-12, atol=1e-14)
    p = fed.weights("samples")
    assert cv.objective(model, params, fed, "cross_entropy", 0.3) == pytest.approx(float(p @ losses.numpy()), rel=1e-14)


def test_sigma2_and_G2_equal_brute_force(gen):
    clients = [(torch.randn(n, 3, generator=gen, dtype=F64), torch.randint(0, 2, (n,), generator=gen)) for n in (5, 4)]
    fed = flu.data.Federation.from_clients(clients)
    model = flu.models.mlp(3, 4, 2, dtype=F64, seed=2)
    params = {k: v.detach() for k, v in model.named_parameters()}
    l2, b = 0.2, 2

    def flat_grad(X, y):
        model.zero_grad()
        val = torch.nn.functional.cross_entropy(model(X), y)
        (val + l2 / 2 * sum((w ** 2).sum() for w in model.parameters() if w.dim() >= 2)).backward()
        return torch.cat([w.grad.reshape(-1) for w in model.parameters()]).clone()

    expected, second = [], []
    for X, y in clients:
        full = flat_grad(X, y)
        subsets = list(itertools.combinations(range(len(y)), b))   # every minibatch without replacement
        expected.append(np.mean([float(((flat_grad(X[list(s)], y[list(s)]) - full) ** 2).sum()) for s in subsets]))
        second.append(np.mean([float((flat_grad(X[j:j + 1], y[j:j + 1]) ** 2).sum()) for j in range(len(y))]))
    total, per = cv.sigma2(model, params, fed, "cross_entropy", l2, batch_size=b)
    np.testing.assert_allclose(per, expected, rtol=1e-10)
    assert total == pytest.approx(float(fed.weights("samples") ** 2 @ np.array(expected)), rel=1e-12)
    assert cv.sigma2(model, params, fed, "cross_entropy", l2, batch_size=None)[0] == 0.0
    assert cv.sigma2(model, [params, params], fed, "cross_entropy", l2, batch_size=5)[1].tolist() == [0.0, 0.0]
    assert cv.G2(model, [params], fed, "cross_entropy", l2) == pytest.approx(max(second), rel=1e-10)
    _, grads = cv.client_objectives(model, params, fed, "cross_entropy", l2)
    full_sq = sum((g.reshape(2, -1) ** 2).sum(1) for g in grads.values())
    g2_full = cv.G2(model, params, fed, "cross_entropy", l2, batch_size=None)
    assert g2_full == pytest.approx(float(full_sq.max()), rel=1e-12)


# --------------------------------------------------------------------------- constants

def test_constants_on_a_hand_case():
    # client 0: X^T X / n = diag(0.5, 2);  client 1: X^T X / n = I
    X0, X1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64), torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=F64)
    reg = flu.data.Federation.from_clients([(X0, torch.tensor([1.0, 0.0], dtype=F64)),
                                            (X1, torch.tensor([0.0, 1.0], dtype=F64))])
    c = cv.constants(flu.models.linear(2), reg, "mse", l2=0.1)
    assert c.L_i == pytest.approx((4.1, 2.1)) and c.mu_i == pytest.approx((1.1, 2.1))
    assert (c.L, c.mu, c.kappa) == pytest.approx((4.1, 1.1, 4.1 / 1.1))
    assert (c.L_F, c.mu_F) == pytest.approx((2 * 1.5 + 0.1, 2 * 0.75 + 0.1))   # p = (1/2, 1/2): diag(0.75, 1.5)
    assert c.Gamma > 0 and c.to_dict()["kappa"] == pytest.approx(c.kappa)
    cls = flu.data.Federation.from_clients([(X0, torch.tensor([0, 1])), (X1, torch.tensor([1, 1]))])
    soft = cv.constants(flu.models.logistic(2, 3, bias=False, dtype=F64), cls, "cross_entropy", 0.1, optima=False)
    assert soft.L_i == pytest.approx((4 / 4 + 0.1, 2 / 4 + 0.1)) and soft.mu == 0.1   # lambda_max(X^T X) / (2 n)
    binary = cv.constants(torch.nn.Linear(2, 1, bias=False).double(), cls, "cross_entropy", 0.1, optima=False)
    assert binary.L_i == pytest.approx((4 / 8 + 0.1, 2 / 8 + 0.1))                   # lambda_max(X^T X) / (4 n)


def test_smoothness_bounds_against_hessian_power_iteration(gen, wine):
    X, y, parts, fed, model = wine
    c = cv.constants(model, fed, "cross_entropy", 0.05, optima=False)
    W = {"head.weight": torch.randn(3, 13, generator=gen, dtype=F64)}
    for (Xi, yi), Li in zip(fed.train, c.L_i):
        top = cv.hessian_top_eigenvalue(model, W, Xi, yi, "cross_entropy", 0.05, iters=100)
        assert 0.05 < top <= Li
    # single logit at w = 0: s(1 - s) = 1/4 everywhere, so the bound is attained
    Xb = torch.randn(30, 4, generator=gen, dtype=F64) * torch.tensor([2.0, 1.0, 0.5, 0.2], dtype=F64)
    fb = flu.data.Federation.from_clients([(Xb, torch.randint(0, 2, (30,), generator=gen))])
    mb = flu.models.logistic(4, 1, bias=False, dtype=F64)
    cb = cv.constants(mb, fb, "cross_entropy", 0.01, optima=False)
    zero = {"head.weight": torch.zeros(1, 4, dtype=F64)}
    top = cv.hessian_top_eigenvalue(mb, zero, *fb.train[0], "cross_entropy", 0.01, iters=200)
    assert top == pytest.approx(cb.L, rel=1e-6)
    # least squares: L_i = 2 lambda_max(X^T X / n) + l2 is the Hessian's exact top eigenvalue
    reg = flu.data.Federation.from_clients(regression_clients(gen))
    lin = flu.models.linear(3)
    cr = cv.constants(lin, reg, "mse", 0.01, optima=False)
    for (Xi, yi), Li in zip(reg.train, cr.L_i):
        W = {"head.weight": torch.randn(1, 3, generator=gen, dtype=F64)}
        top = cv.hessian_top_eigenvalue(lin, W, Xi, yi, "mse", 0.01, iters=300)
        assert top == pytest.approx(Li, rel=1e-6)


# --------------------------------------------------------------------------- optima

def test_pooled_optimum_matches_sklearn(wine):
    X, y, parts, fed, model = wine
    l2, n = 0.05, len(y)
    Xp, yp = np.vstack([X[p] for p in parts]), np.concatenate([y[p] for p in parts])
    w, F = cv.optimum(model, fed, "cross_entropy", l2, "samples")
    sk = LogisticRegression(fit_intercept=False, C=1 / (n * l2), tol=1e-12, max_iter=10_000).fit(Xp, yp)
    np.testing.assert_allclose(w["head.weight"].numpy(), sk.coef_, atol=1e-5)
    probs = torch.softmax(torch.tensor(Xp) @ w["head.weight"].T, 1).numpy()
    np.testing.assert_allclose(probs, sk.predict_proba(Xp), atol=1e-6)
    assert F == pytest.approx(cv.objective(model, w, fed, "cross_entropy", l2), rel=1e-13)
    # uniform p_i: per-example weights p_i / n_i through sample_weight (C = 1 / l2)
    wu, _ = cv.optimum(model, fed, "cross_entropy", l2, "uniform")
    sw = np.concatenate([np.full(len(p), 1 / (len(parts) * len(p))) for p in parts])
    sku = LogisticRegression(fit_intercept=False, C=1 / l2, tol=1e-12, max_iter=10_000).fit(Xp, yp, sample_weight=sw)
    np.testing.assert_allclose(wu["head.weight"].numpy(), sku.coef_, atol=1e-5)
    # single-logit binary model against sklearn's binary logistic regression
    Xb, yb = standardised(load_breast_cancer)
    fb = flu.data.Federation.from_clients([(torch.tensor(Xb[:300]), torch.tensor(yb[:300])),
                                           (torch.tensor(Xb[300:]), torch.tensor(yb[300:]))])
    wb, _ = cv.optimum(flu.models.logistic(30, 1, bias=False, dtype=F64), fb, "cross_entropy", 0.01)
    skb = LogisticRegression(fit_intercept=False, C=1 / (len(yb) * 0.01), tol=1e-12, max_iter=10_000).fit(Xb, yb)
    np.testing.assert_allclose(wb["head.weight"].numpy(), skb.coef_, atol=1e-5)


def test_client_optima_against_scipy(wine):
    X, y, parts, fed, model = wine
    l2 = 0.05
    optima = cv.client_optima(model, fed, "cross_entropy", l2)
    assert np.bincount(y[parts[2]], minlength=3)[1] == 0                  # a client without class 1
    for (Xi, yi), (w, F) in zip(fed.train, optima):
        single = flu.data.Federation.from_clients([(Xi, yi)])
        losses, grads = cv.client_objectives(model, w, single, "cross_entropy", l2)
        assert float(grads["head.weight"].norm()) < 1e-9 and float(losses[0]) == pytest.approx(F, rel=1e-13)
        A, t = Xi.numpy(), yi.numpy()

        def fun(v):                                                       # independent numpy softmax CE
            W = v.reshape(3, 13)
            Z = A @ W.T
            lse = logsumexp(Z, axis=1)
            P = np.exp(Z - lse[:, None])
            P[np.arange(len(t)), t] -= 1
            return np.mean(lse - Z[np.arange(len(t)), t]) + l2 / 2 * (W ** 2).sum(), (P.T @ A / len(t) + l2 * W).ravel()
        res = minimize(fun, np.zeros(39), jac=True, method="BFGS", options=dict(gtol=1e-11, maxiter=10_000))
        np.testing.assert_allclose(w["head.weight"].numpy().ravel(), res.x, atol=1e-6)
        assert F == pytest.approx(res.fun, rel=1e-10)


def test_gamma_is_nonnegative_and_zero_for_identical_clients(gen, wine):
    X, y, parts, fed, model = wine
    assert cv.constants(model, fed, "cross_entropy", 0.05).Gamma > 1e-3
    same = flu.data.Federation.from_clients([fed.train[0]] * 3)
    assert abs(cv.constants(model, same, "cross_entropy", 0.05).Gamma) < 1e-12
    reg = regression_clients(gen)
    assert cv.constants(flu.models.linear(3), flu.data.Federation.from_clients(reg), "mse").Gamma > 0
    c = cv.constants(flu.models.linear(3), flu.data.Federation.from_clients([reg[1]] * 2), "mse", l2=0.1)
    assert abs(c.Gamma) < 1e-12


# --------------------------------------------------------------------------- FedAvg's fixed point, FedNova's surrogate

def test_fedavg_fixed_point_matches_the_engine_and_fednova_surrogate(gen):
    clients = regression_clients(gen)
    fed = flu.data.Federation.from_clients(clients)
    model, steps, lr, l2 = flu.models.linear(3), [1, 3, 5], 0.2, 0.01
    p = fed.weights("samples")
    A, b = [X.numpy() for X, _ in clients], [y.numpy() for _, y in clients]
    x_fp, M, rho = cv.fedavg_fixed_point_lsq(A, b, p, steps, lr, l2=l2)
    assert rho < 0.8
    hist = flu.run(model, fed, num_rounds=150, local_steps=steps, client_lr=lr, batch_size=None, loss="mse", l2=l2,
                   eval_every=150, progress=False)
    np.testing.assert_allclose(hist.params["head.weight"].numpy().ravel(), x_fp, atol=1e-9)
    # one local step is gradient descent on F: its fixed point is the exact optimum
    x1, _, _ = cv.fedavg_fixed_point_lsq(A, b, p, 1, lr, l2=l2)
    w_star, F_star = cv.optimum(model, fed, "mse", l2)
    np.testing.assert_allclose(x1, w_star["head.weight"].numpy().ravel(), atol=1e-10)
    # with unequal steps and a small lr, FedAvg goes to FedNova's surrogate optimum, not to w*
    np.testing.assert_allclose(cv.surrogate_weights([0.5, 0.25, 0.25], [1, 2, 4]), [0.25, 0.25, 0.5])
    w_sur, _ = cv.surrogate_optimum(model, fed, "mse", l2, steps)
    x_small, _, _ = cv.fedavg_fixed_point_lsq(A, b, p, steps, 1e-4, l2=l2)
    gap = np.linalg.norm(w_sur["head.weight"].numpy().ravel() - w_star["head.weight"].numpy().ravel())
    assert np.linalg.norm(x_small - w_sur["head.weight"].numpy().ravel()) < 1e-2 * gap


# --------------------------------------------------------------------------- theory curves

def test_li_step_size_schedule(wine):
    c = cv.constants(wine[4], wine[3], "cross_entropy", 0.05, optima=False)
    gamma = cv.li_gamma(c, 5)
    assert gamma == pytest.approx(max(8 * c.kappa, 5) - 1)
    sched = cv.li_step_size(c.mu, gamma, 5)
    assert sched(1, 0) == pytest.approx(2 / (c.mu * (gamma + 1))) and sched(1, 0) <= 1 / (4 * c.L) * (1 + 1e-12)
    assert sched(3, 2) == pytest.approx(2 / (c.mu * (gamma + 2 * 5 + 3)))


def test_li_bound_decays_like_one_over_T_and_bounds_a_real_run(wine):
    X, y, parts, fed, model = wine
    l2, E, R = 0.05, 5, 15
    c = cv.constants(model, fed, "cross_entropy", l2)
    sched = cv.li_step_size(c.mu, cv.li_gamma(c, E), E)
    hist = flu.run(model, fed, num_rounds=R, local_steps=E, client_lr=sched, batch_size=None, l2=l2,
                   record_params=True, progress=False)
    g2 = cv.G2(model, hist.trajectory, fed, "cross_entropy", l2, batch_size=None)
    bound = cv.li_fedavg_bound(c, R, E, G2=g2, dist2=cv.distance2(hist.trajectory[0], c.w_star))
    assert list(bound.columns) == ["round", "bound", "theorem"] and bound["round"].tolist() == list(range(R + 1))
    T = bound["round"].to_numpy() * E
    gamma = bound.attrs["gamma"]
    np.testing.assert_allclose(bound["bound"] * (gamma + T + 1), bound["bound"][0] * (gamma + 1), rtol=1e-12)
    measured = np.array([cv.objective(model, w, fed, "cross_entropy", l2) - c.F_star for w in hist.trajectory])
    assert (measured > 0).all() and (measured < bound["bound"].to_numpy()).all()
    assert measured[-1] < 0.05 * measured[0]                              # and the run does converge
    # partial participation (Scheme I) with minibatch SGD: the bound adds C and the noise term
    run1 = flu.run(model, fed, num_rounds=R, local_steps=E, client_lr=sched, batch_size=8, clients_per_round=2,
                   sampling="li_scheme_1", l2=l2, record_params=True, progress=False, seed=3)
    s2, _ = cv.sigma2(model, run1.trajectory[::5], fed, "cross_entropy", l2, batch_size=8)
    b1 = cv.li_fedavg_bound(c, R, E, G2=cv.G2(model, run1.trajectory[::5], fed, "cross_entropy", l2, batch_size=8),
                            dist2=cv.distance2(run1.trajectory[0], c.w_star), sigma2=s2, participation="li_scheme_1",
                            clients_per_round=2)
    assert b1.attrs["C"] > 0 and b1["theorem"][0].endswith("Theorem 2")
    m1 = np.array([cv.objective(model, w, fed, "cross_entropy", l2) - c.F_star for w in run1.trajectory])
    assert (m1 < b1["bound"].to_numpy()).all()


def test_scaffold_and_fedprox_rates(wine):
    c = cv.constants(wine[4], wine[3], "cross_entropy", 0.05)
    sc = cv.scaffold_rate(c, 50, 5, dist2=1.0, clients_per_round=2, sigma2=0.1)
    assert sc["round"].tolist() == list(range(1, 51)) and np.all(np.diff(sc["bound"]) < 0)
    assert sc.attrs["max_client_lr"] == pytest.approx(min(1 / (81 * c.L * 5), 2 / (15 * c.mu * 4 * 5)))
    L, mu, B, g, K = 2.0, 50.0, 1.5, 0.1, 4
    hand = (1 / mu - g * B / mu - B * 1.1 * math.sqrt(2) / (mu * 2) - L * B * 1.1 / mu ** 2
            - L * 1.21 * B ** 2 / (2 * mu ** 2) - L * B ** 2 * 1.21 / (mu ** 2 * K) * (2 * math.sqrt(8) + 2))
    assert cv.fedprox_rho(L, mu, B, g, K) == pytest.approx(hand, rel=1e-14)
    fp = cv.fedprox_rate(c, 30, mu=200.0, B=1.1, gap0=1.0, clients_per_round=4)
    assert fp["bound"][0] == 1.0 and np.all(np.diff(fp["bound"]) < 0)
    with pytest.raises(ValueError, match="mu"):
        cv.fedprox_rate(c, 30, mu=0.5, B=3.0, gap0=1.0)


def test_bad_inputs_are_named(wine):
    X, y, parts, fed, model = wine
    with pytest.raises(ValueError, match="model"):
        cv.constants(flu.models.mlp(13, 4, 3), fed, "cross_entropy", 0.1)
    with pytest.raises(ValueError, match="model"):
        cv.optimum(flu.models.logistic(13, 3, bias=True), fed, "cross_entropy", 0.1)
    with pytest.raises(ValueError, match="loss"):
        cv.constants(model, fed, "hinge", 0.1)
    reg = flu.data.Federation.from_clients([(torch.randn(4, 13, dtype=F64), torch.randn(4, dtype=F64))])
    with pytest.raises(ValueError, match="loss"):
        cv.constants(model, reg, "cross_entropy", 0.1)
    with pytest.raises(ValueError, match="l2"):
        cv.optimum(model, fed, "cross_entropy", 0.0)
    c = cv.constants(model, fed, "cross_entropy", 0.1)
    with pytest.raises(ValueError, match="weights"):
        cv.li_fedavg_bound(c, 10, 5, G2=1.0, dist2=1.0, participation="li_scheme_2", clients_per_round=2)
    cu = cv.constants(model, fed, "cross_entropy", 0.1, weights="uniform")
    full = cv.li_fedavg_bound(cu, 10, 5, G2=1.0, dist2=1.0)
    two = cv.li_fedavg_bound(cu, 10, 5, G2=1.0, dist2=1.0, participation="li_scheme_2", clients_per_round=2)
    assert (two["bound"] > full["bound"]).all()
    with pytest.raises(ValueError, match="constants"):
        cv.li_fedavg_bound(cv.constants(model, fed, "cross_entropy", 0.1, optima=False), 10, 5, G2=1.0, dist2=1.0)
