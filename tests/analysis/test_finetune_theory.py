"""Theory of federated fine-tuning in flu.convergence: linear probes on frozen features (convex:
Hessians by autograd, optima by scipy's L-BFGS-B written here in numpy) and Per-FedAvg's
constants and bound (Fallah, Mokhtari and Ozdaglar 2020) on quadratic clients in closed form."""
import dataclasses

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax
from torch import nn

import fedlab_utils as flu
from fedlab_utils import convergence as cv

F64 = torch.float64
L2 = 0.05
K = 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def classification_clients(sizes=(15, 20, 9), d_in=5, seed=0):
    """Shifted Gaussian inputs, labels from a noisy linear rule; the last client lacks class 1."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(K, d_in))
    clients = []
    for i, n in enumerate(sizes):
        X = rng.normal(size=(n, d_in)) + 0.7 * i
        y = np.argmax(X @ W.T + rng.gumbel(size=(n, K)), axis=1)
        if i == len(sizes) - 1:
            y[y == 1] = 2
        clients.append((torch.tensor(X), torch.tensor(y)))
    return flu.data.Federation.from_clients(clients)


def tiny_body(d_in=5, d_out=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d_in, d_out).to(F64)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(d_out, d_in, generator=gen, dtype=F64) / 2)
        lin.bias.copy_(torch.randn(d_out, generator=gen, dtype=F64) / 2)
    return nn.Sequential(lin, nn.Tanh(), nn.Dropout(0.5))


FED = classification_clients()


def softmax_objective(W, Z, y, l2, bias=None):
    """Torch, written here: mean_j [logsumexp(W z_j + b) - (W z_j + b)_{y_j}] + l2/2 ||W||^2."""
    logits = Z @ W.T + (0 if bias is None else bias)
    return (torch.logsumexp(logits, 1) - logits[torch.arange(len(y)), y]).mean() + l2 / 2 * (W ** 2).sum()


# ------------------------------------------------------------------ linear probe: features and convexity

def test_probe_features_are_the_frozen_body_outputs_and_the_body_mode_is_restored():
    body = tiny_body()
    body.train()
    probe = cv.probe_problem(body, FED)
    assert body.training and all(m.training for m in body.modules())
    body.eval()
    with torch.no_grad():
        for (X, _), (Z, _) in zip(FED.train, probe.federation.train):
            assert torch.equal(Z, body(X))
    assert probe.num_features == 4 and probe.federation.num_clients == FED.num_clients
    assert probe.model.head.weight.shape == (K, 4) and probe.model.head.bias is None
    # a full model with this body: its head-only objective is the probe's objective
    full = flu.models.FedModel(body, nn.Linear(4, K, bias=False).to(F64))
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(K, 4, generator=gen, dtype=F64)
    params = {**{k: v.detach() for k, v in full.named_parameters()}, "head.weight": W}
    losses, _ = cv.client_objectives(full, params, FED, l2=L2, names=["head.weight"])
    probe_losses, _ = cv.client_objectives(probe.model, {"head.weight": W}, probe.federation, l2=L2)
    np.testing.assert_allclose(losses.numpy(), probe_losses.numpy(), rtol=1e-13, atol=0)
    # standardisation and an intercept column
    s = cv.probe_problem(body, FED, standardize=True, intercept=True)
    Z = torch.cat([Z for Z, _ in s.federation.train])
    np.testing.assert_allclose(Z[:, :4].mean(0).numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(Z[:, :4].std(0, unbiased=False).numpy(), 1, atol=1e-12)
    assert torch.equal(Z[:, 4], torch.ones(len(Z), dtype=F64)) and s.num_features == 5


@pytest.mark.parametrize("intercept", [False, True])
def test_bias_free_probe_hessian_eigenvalues_are_at_least_l2_and_mu_is_the_smallest(intercept):
    probe = cv.probe_problem(tiny_body(), FED, intercept=intercept)
    c = cv.constants(probe.model, probe.federation, l2=L2)
    assert c.mu == L2 and c.mu_i == (L2,) * FED.num_clients
    d = probe.num_features
    gen = torch.Generator().manual_seed(2)
    points = [torch.randn(K, d, generator=gen, dtype=F64) * s for s in (0.1, 1.0, 3.0)]
    points.append(c.w_star["head.weight"])
    for W in points:
        for i, (Z, y) in enumerate(probe.federation.train):
            H = torch.autograd.functional.hessian(lambda w: softmax_objective(w.reshape(K, d), Z, y, L2), W.reshape(-1))
            eig = torch.linalg.eigvalsh(H)
            assert eig.min() >= L2 - 1e-12
            # softmax: W + 1 v^T leaves the loss unchanged, so l2 is attained (the bound is tight)
            assert abs(float(eig.min()) - L2) < 1e-10
            assert eig.max() <= c.L_i[i] + 1e-12


def test_a_bias_is_not_strongly_convex_and_is_refused():
    probe = cv.probe_problem(tiny_body(), FED)
    Z, y = probe.federation.train[0]
    W = torch.randn(K, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    b = torch.zeros(K, dtype=F64)

    def f(wb):
        return softmax_objective(wb[:K * 4].reshape(K, 4), Z, y, L2, bias=wb[K * 4:])
    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, torch.cat([W.reshape(-1), b])))
    assert abs(float(eig.min())) < 1e-12  # the direction b + t 1: flat, not l2-strongly convex
    with pytest.raises(ValueError, match=r"^model must be bias-free"):
        cv.constants(flu.models.logistic(4, K, bias=True, dtype=F64), probe.federation, l2=L2)


# ------------------------------------------------------------------ linear probe: Gamma against L-BFGS-B

def lbfgs_min(Z, y, a, l2):
    """min_W sum_j a_j [logsumexp(W z_j) - (W z_j)_{y_j}] + l2/2 ||W||^2 by scipy's L-BFGS-B (numpy)."""
    d = Z.shape[1]
    Y = np.eye(K)[y]

    def fg(w):
        W = w.reshape(K, d)
        logits = Z @ W.T
        f = a @ (logsumexp(logits, axis=1) - (logits * Y).sum(1)) + l2 / 2 * w @ w
        g = ((softmax(logits, axis=1) - Y) * a[:, None]).T @ Z + l2 * W
        return f, g.ravel()

    res = minimize(fg, np.zeros(K * d), jac=True, method="L-BFGS-B",
                   options=dict(maxiter=20000, maxcor=30, ftol=1e-16, gtol=1e-13))
    assert np.linalg.norm(fg(res.x)[1]) < 1e-7  # value error <= ||g||^2 / (2 l2) < 1e-12
    return res.fun


@pytest.mark.parametrize("body", [None, "tiny"])
def test_gamma_matches_an_independent_lbfgs_solution(body):
    probe = cv.probe_problem(tiny_body() if body else None, FED)
    data = [(Z.numpy(), y.numpy()) for Z, y in probe.federation.train]
    p = np.array([len(y) for _, y in data], dtype=float)
    p /= p.sum()
    client_min = [lbfgs_min(Z, y, np.full(len(y), 1 / len(y)), L2) for Z, y in data]
    pooled = lbfgs_min(np.vstack([Z for Z, _ in data]), np.concatenate([y for _, y in data]),
                       np.concatenate([np.full(len(y), pi / len(y)) for (_, y), pi in zip(data, p)]), L2)
    c = cv.constants(probe.model, probe.federation, l2=L2)
    assert abs(c.Gamma - (pooled - p @ np.array(client_min))) < 1e-8
    assert abs(c.F_star - pooled) < 1e-8 and c.Gamma > 1e-3


def test_feature_heterogeneity_table():
    bodies = {"pixels": None, "tiny": tiny_body(), "other": tiny_body(seed=5)}
    df = cv.feature_heterogeneity(FED, bodies, L2)
    assert list(df.space) == list(bodies) and list(df.num_features) == [5, 4, 4]
    assert {"mu", "L", "kappa", "mu_F", "L_F", "F_star", "Gamma", "zeta2"} <= set(df.columns)
    # pixel space: the raw inputs with a bias-free head
    raw = cv.constants(flu.models.logistic(5, K, bias=False, dtype=F64), FED, l2=L2)
    row = df.iloc[0]
    assert row.Gamma == pytest.approx(raw.Gamma, abs=1e-12) and row.L == pytest.approx(raw.L, rel=1e-12)
    # zeta2 = sum_i p_i ||grad F_i(w*)||^2, by autograd here
    probe = cv.probe_problem(bodies["tiny"], FED)
    W = cv.constants(probe.model, probe.federation, l2=L2).w_star["head.weight"].clone().requires_grad_()
    p = FED.weights()
    zeta2 = sum(pi * float((torch.autograd.grad(softmax_objective(W, Z, y, L2), W)[0] ** 2).sum())
                for pi, (Z, y) in zip(p, probe.federation.train))
    assert df.iloc[1].zeta2 == pytest.approx(zeta2, rel=1e-8)
    assert (df.mu == L2).all() and (df.Gamma > 0).all()
    with pytest.raises(ValueError, match="^bodies"):
        cv.feature_heterogeneity(FED, {}, L2)
    with pytest.raises(ValueError, match="^l2"):
        cv.feature_heterogeneity(FED, {"pixels": None}, 0.0)  # logistic regression needs l2 > 0


# ------------------------------------------------------------------ Per-FedAvg on quadratic clients

D = 3
SIZES = (6, 9, 12)


def quadratic_clients(seed=4):
    rng = np.random.default_rng(seed)
    return [(X, X @ rng.normal(size=D) * (1 + i) + rng.normal(size=n))
            for i, n in enumerate(SIZES) for X in [rng.normal(size=(n, D)) + 0.5 * i]]


QC = quadratic_clients()
QFED = flu.data.Federation.from_clients([(torch.tensor(X), torch.tensor(y)) for X, y in QC])
QP = np.array(SIZES, dtype=float) / sum(SIZES)


def spectral(M):
    return float(np.abs(np.linalg.eigvalsh(M)).max())


def closed_forms(w, l2=0.0):
    """f_i(w) = mean_j (x_j^T w - y_j)^2 + l2/2 ||w||^2: grad 2 A_i w - 2 b_i + l2 w, Hessian 2 A_i + l2 I."""
    A = [X.T @ X / len(X) for X, _ in QC]
    b = [X.T @ y / len(X) for X, y in QC]
    G = np.array([2 * a @ w - 2 * bi + l2 * w for a, bi in zip(A, b)])
    H = [2 * a + l2 * np.eye(D) for a in A]
    Gbar, Hbar = QP @ G, sum(p * h for p, h in zip(QP, H))
    ex_g = [2 * (X @ w - y)[:, None] * X for X, y in QC]           # per-example loss gradients
    ex_h = [[2 * np.outer(x, x) for x in X] for X, _ in QC]         # per-example loss Hessians
    return dict(gamma_G=np.sqrt(QP @ ((G - Gbar) ** 2).sum(1)),
                gamma_H=np.sqrt(sum(p * spectral(h - Hbar) ** 2 for p, h in zip(QP, H))),
                L=max(spectral(h) for h in H), B=np.linalg.norm(G, axis=1).max(),
                sigma_G=np.sqrt(max(((g - g.mean(0)) ** 2).sum(1).mean() for g in ex_g)),
                sigma_H=np.sqrt(max(np.mean([spectral(h - 2 * a) ** 2 for h in hs]) for hs, a in zip(ex_h, A))))


W0 = np.array([0.3, -0.2, 0.5])


@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_perfedavg_constants_equal_their_closed_forms_on_quadratics(l2):
    model = flu.models.linear(D)
    params = {"head.weight": torch.tensor(W0).reshape(1, D)}
    c = cv.perfedavg_constants(model, QFED, "mse", l2, params=params, per_example_hessians=True)
    ref = closed_forms(W0, l2)
    assert c.hessian == "exact" and c.rho == 0.0
    for name, value in ref.items():
        assert getattr(c, name) == pytest.approx(value, rel=1e-10, abs=1e-10), name
    # power iteration on Hessian-vector products gets the same spectral quantities
    pw = cv.perfedavg_constants(model, QFED, "mse", l2, params=params, hessian="power", iters=200)
    assert pw.hessian == "power" and pw.sigma_H is None
    assert pw.gamma_H == pytest.approx(ref["gamma_H"], rel=1e-8) and pw.L == pytest.approx(ref["L"], rel=1e-8)
    assert pw.gamma_G == pytest.approx(ref["gamma_G"], rel=1e-12)
    # over a trajectory: the max over its points
    W1 = np.array([1.0, 1.0, -2.0])
    traj = [params, {"head.weight": torch.tensor(W1).reshape(1, D)}]
    both = cv.perfedavg_constants(model, QFED, "mse", l2, params=traj)
    assert both.gamma_G == pytest.approx(max(closed_forms(W0, l2)["gamma_G"], closed_forms(W1, l2)["gamma_G"]),
                                         rel=1e-10)
    assert both.B == pytest.approx(max(closed_forms(W0, l2)["B"], closed_forms(W1, l2)["B"]), rel=1e-10)


def test_perfedavg_constants_exact_and_power_agree_on_a_small_network():
    net = flu.models.mlp(D, 4, 2, activation="tanh", dtype=F64, seed=1)
    fed = flu.data.Federation.from_clients([(torch.tensor(X), torch.tensor((y > np.median(y)).astype(np.int64)))
                                            for X, y in QC])
    exact = cv.perfedavg_constants(net, fed, l2=0.01, hessian="exact")
    power = cv.perfedavg_constants(net, fed, l2=0.01, hessian="power", iters=400)
    np.testing.assert_allclose(power.hess_dev, exact.hess_dev, rtol=1e-5)
    np.testing.assert_allclose(power.L_i, exact.L_i, rtol=1e-5)
    np.testing.assert_allclose(power.grad_dev, exact.grad_dev, rtol=1e-12)
    assert exact.rho is None and power.rho is None  # one point: no Lipschitz estimate
    moved = {k: v.detach() + 0.05 for k, v in net.named_parameters()}
    two = cv.perfedavg_constants(net, fed, l2=0.01, params=[dict(net.named_parameters()), moved])
    assert two.rho > 0  # a network's Hessian changes along the way


PF = cv.PerFedAvgConstants(p=(0.25,) * 4, L=2.0, B=1.5, rho=3.0, sigma_G=0.8, sigma_H=0.5, gamma_G=0.4,
                           gamma_H=0.6, L_i=(2.0,) * 4, B_i=(1.5,) * 4, grad_dev=(0.4,) * 4, hess_dev=(0.6,) * 4,
                           hessian="exact")


def floor(constants=PF, inner_lr=0.1, client_lr=0.003, local_steps=3, **kw):
    return cv.perfedavg_bound(constants, inner_lr, client_lr, local_steps, 10, gap0=1.0, **kw).attrs["floor"]


def test_perfedavg_bound_decreases_in_rounds_and_its_floor_grows_with_dissimilarity_and_inner_lr():
    df = cv.perfedavg_bound(PF, 0.1, 0.003, 3, 50, gap0=2.0, batch_size=8, clients_per_round=2)
    assert list(df["round"]) == list(range(1, 51)) and (np.diff(df.bound) < 0).all()
    # the transient is 4 (F(w_0) - F*) / (beta tau K); what stays is the floor
    np.testing.assert_allclose(df.bound - df.attrs["floor"], 4 * 2.0 / (0.003 * 3 * df["round"]), rtol=1e-12)
    assert sum(df.attrs["terms"].values()) == pytest.approx(df.attrs["floor"])
    # the paper's derived constants (Lemmas 4.2-4.4) for these numbers
    alpha, L, B, D_ = 0.1, 2.0, 1.5, 8
    assert df.attrs["L_F"] == pytest.approx(4 * L + alpha * 3.0 * B)
    assert df.attrs["gamma_F2"] == pytest.approx(3 * B ** 2 * alpha ** 2 * 0.36 + 192 * 0.16)
    assert df.attrs["m_F"] == pytest.approx(2 * alpha * L * 0.8 / np.sqrt(D_))
    assert df.attrs["sigma_F2"] == pytest.approx(
        12 * (B ** 2 + 0.64 * (1 / D_ + (alpha * L) ** 2 / D_)) * (1 + 0.25 * alpha ** 2 / (4 * D_)) - 12 * B ** 2)
    for field in ("gamma_G", "gamma_H"):
        values = [floor(dataclasses.replace(PF, **{field: g})) for g in (0.2, 0.4, 0.8)]
        assert values[0] < values[1] < values[2], field
    assert floor(inner_lr=0.05, client_lr=0.003) < floor(inner_lr=0.1, client_lr=0.003) < \
        floor(inner_lr=0.2, client_lr=0.003)
    # more noise with minibatches and fewer clients; none at all for full-batch GD on F with tau = 1
    assert floor(batch_size=4) > floor(batch_size=32) > floor()
    assert floor(clients_per_round=1) > floor(clients_per_round=3) > floor()
    assert floor(local_steps=1, client_lr=0.01) == 0.0


@pytest.mark.parametrize("kw, name", [
    (dict(inner_lr=0.6), "inner_lr"),                       # > 1/L
    (dict(client_lr=0.01), "client_lr"),                    # > 1/(10 tau L_F)
    (dict(batch_size=0), "batch_size"),
    (dict(clients_per_round=5), "clients_per_round"),
    (dict(constants=dataclasses.replace(PF, rho=None)), "rho"),
    (dict(constants=dataclasses.replace(PF, sigma_H=None), batch_size=4), "constants"),
])
def test_perfedavg_bound_refusals(kw, name):
    args = dict(constants=PF, inner_lr=0.1, client_lr=0.003, local_steps=3, num_rounds=5) | kw
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        cv.perfedavg_bound(gap0=1.0, **args)


def test_perfedavg_constants_refusals():
    model = flu.models.linear(D)
    with pytest.raises(ValueError, match="^hessian"):
        cv.perfedavg_constants(model, QFED, "mse", hessian="lanczos")
    with pytest.raises(ValueError, match="^names"):
        cv.perfedavg_constants(model, QFED, "mse", names=["nope"])
    with pytest.raises(ValueError, match="^per_example_hessians"):
        cv.perfedavg_constants(model, QFED, "mse", hessian="power", per_example_hessians=True)
    with pytest.raises(TypeError, match="^constants"):
        cv.perfedavg_bound({"L": 1.0}, 0.1, 0.01, 1, 5, gap0=1.0)
