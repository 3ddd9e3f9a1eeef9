"""Notebook 09's compute (flu.lessons.finetune_convergence) against independent references: numpy
eigenvalues and pooling, finite differences, hand-computed rates and tables, Quadratics' own
minimisers, and flu.run for what the helpers stand for. Small models only (a tiny MLP, 3-4 clients)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import fedlab_utils as flu
from fedlab_utils import convergence as cv
from fedlab_utils.lessons import drift
from fedlab_utils.lessons import finetune_convergence as fc

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def federation(sizes=(9, 12, 7), d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    clients = []
    for i, n in enumerate(sizes):
        X = torch.randn(n, d, generator=g, dtype=F64) + 0.5 * i
        y = torch.randint(0, classes, (n,), generator=g)
        clients.append((X, y))
    return flu.data.Federation.from_clients(clients, test=clients)


def mlp(seed=2):
    return flu.models.mlp(4, [6], 3, dtype=F64, seed=seed)


# ------------------------------------------------------------------ the data picture, pixel space

def test_support_counts_are_per_client_bincounts():
    fed = federation()
    t = fc.support_counts(fed, num_classes=4)
    assert list(t.columns) == ["client", "label", "count"] and len(t) == 3 * 4
    for i, (_, y) in enumerate(fed.train):
        got = t[t.client == i].sort_values("label")["count"].tolist()
        assert got == np.bincount(y.numpy(), minlength=4).tolist()


def test_pixel_body_is_adaptive_average_pooling():
    X = torch.rand(3, 784, generator=torch.Generator().manual_seed(0))
    out = fc.pixel_body(8)(X).numpy()
    img = X.reshape(3, 28, 28).numpy()
    ref = np.zeros((3, 8, 8))
    for i in range(8):                      # adaptive pooling bins: [floor(i n / 8), ceil((i + 1) n / 8))
        for j in range(8):
            r0, r1 = (i * 28) // 8, -((-(i + 1) * 28) // 8)
            c0, c1 = (j * 28) // 8, -((-(j + 1) * 28) // 8)
            ref[:, i, j] = img[:, r0:r1, c0:c1].mean((1, 2))
    np.testing.assert_allclose(out, ref.reshape(3, 64), rtol=1e-6)
    with pytest.raises(ValueError, match="^size"):
        fc.pixel_body(0)


def test_feature_bodies_are_three_spaces_of_64_features():
    model = flu.models.cnn((1, 28, 28), 10, seed=3)
    bodies = fc.feature_bodies(model, seed=1)
    assert list(bodies) == ["pixels (8x8)", "random CNN", "pretrained CNN"]
    assert bodies["pretrained CNN"] is model.body
    X = torch.rand(2, 784, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert all(b(X).shape == (2, 64) for b in bodies.values())
    with pytest.raises(ValueError, match="^model"):
        fc.feature_bodies(nn.Linear(3, 2))


# ------------------------------------------------------------------ linear probe (convex)

def test_probe_experiment_is_li_experiment_and_looseness_is_bound_over_measured():
    probe = cv.probe_problem(None, federation())
    table, info = fc.probe_experiment(probe, l2=0.1, local_steps=2, num_rounds=4, batch_size=4, seed=1)
    ref, _ = drift.li_experiment(probe.federation, probe.model, l2=0.1, local_steps=2, num_rounds=4, batch_size=4,
                                 weights="samples", seed=1, bound_points=3)
    pd.testing.assert_frame_equal(table, ref)
    lo = info["looseness"]
    m = ref[ref.kind == "measured"].set_index("round")["value"]
    b = ref[ref.kind == "bound"].set_index("round")["value"]
    np.testing.assert_allclose(lo["ratio"].to_numpy(), (b / m).loc[lo["round"]].to_numpy())
    with pytest.raises(TypeError, match="^probe"):
        fc.probe_experiment(probe.federation, l2=0.1)


def test_looseness_needs_both_kinds():
    t = pd.DataFrame({"round": [0, 0, 1, 1], "kind": ["measured", "bound", "measured", "bound"],
                      "value": [2.0, 8.0, 1.0, 5.0]})
    lo = fc.looseness(t)
    assert lo["ratio"].tolist() == [4.0, 5.0]
    with pytest.raises(ValueError, match="^table"):
        fc.looseness(t[t.kind == "measured"])


# ------------------------------------------------------------------ the non-convex rate

ARGS = dict(beta=3.0, gap0=2.0, local_steps=4, num_clients=10, sigma2=0.5, G2=1.5, B2=2.0, clients_per_round=5)


def test_rounds_needed_is_the_four_terms():
    eps = 0.3
    b, F, K, N, S, s2, G2, B2 = 3.0, 2.0, 4, 10, 5, 0.5, 1.5, 2.0
    ref = (b * s2 * F / (K * S * eps ** 2) + (1 - S / N) * b * G2 * F / (S * eps ** 2)
           + b * math.sqrt(G2) * F / eps ** 1.5 + (1 + B2) * b * F / eps)
    assert fc.rounds_needed(eps, **ARGS) == pytest.approx(ref, rel=1e-14)


def test_nonconvex_rate_inverts_rounds_needed():
    df = fc.nonconvex_rate(num_rounds=30, **ARGS)
    assert list(df["round"]) == list(range(1, 31)) and (np.diff(df["bound"]) < 0).all()
    for r, e in zip(df["round"], df["bound"]):
        assert fc.rounds_needed(e, **ARGS) == pytest.approx(r, rel=1e-9)
    assert df.attrs["max_client_lr"] == pytest.approx(1 / ((1 + 2.0) * 8 * 3.0 * 4))
    assert sum(df.attrs["terms"].values()) == pytest.approx(30, rel=1e-9)
    # full participation and sigma = 0 leave the drift and smoothness terms
    full = fc.nonconvex_rate(beta=3.0, gap0=2.0, local_steps=4, num_clients=10, num_rounds=5, G2=1.5)
    assert full.attrs["terms"]["noise"] == 0 and full.attrs["terms"]["sampling"] == 0


@pytest.mark.parametrize("kw, name", [(dict(beta=0.0), "beta"), (dict(gap0=-1.0), "gap0"),
                                      (dict(local_steps=0), "local_steps"),
                                      (dict(clients_per_round=11), "clients_per_round"), (dict(G2=-1.0), "G2")])
def test_nonconvex_rate_refusals(kw, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        fc.nonconvex_rate(num_rounds=3, **{**ARGS, **kw})
    with pytest.raises(ValueError, match="^eps"):
        fc.rounds_needed(0.0, **ARGS)


# ------------------------------------------------------------------ diagnostics along a run

def test_diagnostics_runs_start_gradient_and_stationarity():
    fed = federation()
    model = mlp()
    runs = fc.diagnostics_runs(model, fed, ("full", "linear_probe"), num_rounds=3, local_steps=2, client_lr=0.1)
    assert set(runs) == {"full", "linear_probe"}
    # the probe ran on cached body features: its head equals a probe run with the body in the loop
    loop = flu.run(model, fed, finetune="linear_probe", num_rounds=3, local_steps=2, client_lr=0.1, batch_size=None,
                   progress=False)
    torch.testing.assert_close(runs["linear_probe"].params["head.weight"], loop.params["head.weight"],
                               rtol=0, atol=1e-12)
    starts = {}
    for mode, h in runs.items():
        net, data = fc._cached(model, fed, mode)
        starts[mode] = fc.start_gradient(h, net, data)
    # x0 of the full run, by autograd here: ||grad F|| with F = sum_i p_i mean CE
    p = fed.weights()
    params = [t.detach().clone().requires_grad_() for t in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    F = sum(pi * nn.functional.cross_entropy(torch.func.functional_call(model, dict(zip(names, params)), (X,)), y)
            for pi, (X, y) in zip(p, fed.train))
    g = torch.autograd.grad(F, params)
    assert starts["full"]["grad_norm"] == pytest.approx(float(torch.sqrt(sum((t ** 2).sum() for t in g))), rel=1e-10)
    assert starts["full"]["global_loss"] == pytest.approx(float(F.detach()), rel=1e-12)
    table = fc.stationarity(runs, starts)
    full = table[table["mode"] == "full"].reset_index(drop=True)
    assert list(full["round"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(full["grad_norm2"][1:], runs["full"].rounds["grad_norm"] ** 2)
    np.testing.assert_allclose(full["running_mean"], np.cumsum(full["grad_norm2"]) / np.arange(1, 5))
    assert full["accuracy"].notna().all()


def test_milestones_by_hand():
    t = pd.DataFrame({"mode": ["a"] * 4 + ["b"] * 4, "round": [0, 1, 2, 3] * 2,
                      "grad_norm2": [10.0, 5.0, 0.9, 0.5, 4.0, 3.0, 2.0, 1.0],
                      "accuracy": [0.1, 0.5, 0.8, 0.9, 0.2, 0.3, 0.85, 0.86]})
    m = fc.milestones(t, {"a": 2e9, "b": 1e9}, eps_rel=0.1, target=0.8).set_index("mode")
    assert m.loc["a", "rounds_to_eps"] == 2 and np.isnan(m.loc["b", "rounds_to_eps"])
    assert m.loc["a", "rounds_to_target"] == 2 and m.loc["b", "rounds_to_target"] == 2
    assert m.loc["a", "gflops_to_target"] == 4.0 and m.loc["b", "gflops_to_target"] == 2.0
    assert m.loc["b", "final_accuracy"] == 0.86


def test_flops_per_round_is_linear_in_each_clients_batch():
    fed = federation()
    model = mlp()
    got = fc.flops_per_round(model, "full", fed, local_steps=3, batch_size=None)
    ref = sum(3 * flu.finetune.cost(model, "full", input_shape=(4,), batch_size=int(n))["flops_step"]
              for n in fed.sizes)
    assert got == pytest.approx(ref)
    got = fc.flops_per_round(model, "linear_probe", fed, local_steps=2, batch_size=8)
    ref = sum(2 * flu.finetune.cost(model, "linear_probe", input_shape=(4,), batch_size=min(8, int(n)))["flops_step"]
              for n in fed.sizes)
    assert got == pytest.approx(ref)


# ------------------------------------------------------------------ LoRA

def test_lora_trace_first_order_step_and_ffa_lora_exactness():
    fed = federation()
    X, y = fed.train[1]
    model = mlp()
    ffa = fc.lora_trace(model, X, y, lr=1e-3, steps=3, mode="ffa_lora", layer=1, rank=2)
    lora = fc.lora_trace(model, X, y, lr=1e-3, steps=3, mode="lora", layer=1, rank=2)
    # step 0 (B = 0): both move W by -lr G A^T A; by hand with autograd on the dense weight
    plan = flu.finetune.prepare(model, "ffa_lora", seed=0, lora_rank=2)
    lin = plan.model.body[1]
    W = lin.weight.detach().clone().requires_grad_()
    out = plan.model.head(torch.relu(nn.functional.linear(X, W, lin.bias.detach())))
    G = torch.autograd.grad(nn.functional.cross_entropy(out, y), W)[0]
    A = lin.lora_A.detach()
    ref = float((G @ A.T @ A).norm() / G.norm())
    assert ffa["ratio"].iloc[0] == pytest.approx(ref, rel=1e-9)
    assert lora["ratio"].iloc[0] == pytest.approx(ref, rel=1e-9)
    assert ffa["bound"].iloc[0] == pytest.approx(float(torch.linalg.matrix_norm(A, 2) ** 2), rel=1e-12)
    assert (ffa["ratio"] <= ffa["bound"] * (1 + 1e-9)).all()
    assert (ffa["norm_A"] == ffa["norm_A"].iloc[0]).all() and (lora["norm_B"].diff().iloc[1:] != 0).all()
    with pytest.raises(ValueError, match="^mode"):
        fc.lora_trace(model, X, y, lr=0.1, mode="full", layer=1)
    with pytest.raises(ValueError, match="^layer"):
        fc.lora_trace(model, X, y, lr=0.1, layer=2)


def test_lora_trace_blows_up_at_a_large_rate_only_with_both_factors():
    fed = federation()
    X, y = fed.train[1]
    big = dict(lr=30.0, steps=6, layer=1, rank=2)
    lora = fc.lora_trace(mlp(), X, y, mode="lora", **big)
    ffa = fc.lora_trace(mlp(), X, y, mode="ffa_lora", **big)
    assert lora["sq_B"].iloc[-1] > lora["sq_A"].iloc[0]          # B grew past A: the step is B's now
    assert ffa["bound"].nunique() == 1                            # FFA-LoRA's effective step is constant


def hessian_quadratic(eig, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(len(eig), len(eig))))
    H = Q @ np.diag(eig) @ Q.T
    Ht = torch.tensor(H)
    return H, (lambda p: 0.5 * (p["x"] @ Ht @ p["x"]) + (p["y"] ** 2).sum() * 0)


@pytest.mark.parametrize("method", ["exact", "lanczos", "power"])
def test_hessian_extremes_against_eigvalsh(method):
    eig = np.array([-0.7, 0.05, 0.3, 1.0, 2.5, 4.0])
    H, f = hessian_quadratic(eig)
    params = {"x": torch.tensor(np.random.default_rng(1).normal(size=6)), "y": torch.zeros(1, dtype=F64)}
    lo, hi = fc.hessian_extremes(f, params, method=method, iters=400)
    tol = 1e-8 if method != "power" else 1e-3
    assert lo == pytest.approx(-0.7, abs=tol) and hi == pytest.approx(4.0, abs=tol)
    with pytest.raises(ValueError, match="^method"):
        fc.hessian_extremes(f, params, method="qr")


def test_curvature_table_signs():
    fed = federation()
    X, y = fed.train[0]
    table = fc.curvature_table(mlp(), X, y, rank=2).set_index("setting")
    assert list(table.index) == ["linear probe", "FFA-LoRA on the last map", "FFA-LoRA as built", "LoRA",
                                 "last layers (dense + head)"]
    # the probe's Hessian by autograd here: head (W, b) on the frozen features
    model = mlp()
    with torch.no_grad():
        H = model.body(X)
    Wb = torch.cat([model.head.weight.detach().reshape(-1), model.head.bias.detach()])

    def f(v):
        return nn.functional.cross_entropy(H @ v[:18].reshape(3, 6).T + v[18:], y)
    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, Wb))
    assert table.loc["linear probe", "lam_min"] == pytest.approx(float(eig[0]), abs=1e-10)
    assert table.loc["linear probe", "lam_max"] == pytest.approx(float(eig[-1]), rel=1e-9)
    assert table.loc["linear probe", "convex_here"] and table.loc["FFA-LoRA on the last map", "convex_here"]
    assert table.loc["LoRA", "lam_min"] < 0 and not table.loc["LoRA", "convex_here"]
    assert table.loc["linear probe", "params"] == 21


def test_most_skewed_by_hand():
    y = [torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 1, 0]), torch.tensor([2, 2])]
    fed = flu.data.Federation.from_clients([(torch.zeros(len(t), 2), t) for t in y])
    assert fc.most_skewed(fed) == 2


def test_lora_sweep_matches_flu_run_and_records_divergence():
    model = flu.pretrained.pretrained_cnn(num_classes=10)
    kw = dict(shots=1, num_clients=3, query=2, seed=0)
    sweep = fc.lora_sweep(model, [10.0], [0.05, 1000.0], num_rounds=2, local_steps=2, batch_size=None, **kw)
    ok = sweep[sweep.client_lr == 0.05]
    fed = fc.image_inputs(model, 8, alpha=10.0, **kw)
    ref = flu.run(flu.lessons.fewshot.top_model(model, 8), fed, finetune="lora", num_rounds=2, local_steps=2,
                  batch_size=None, client_lr=0.05, record_params=True, progress=False)
    assert ok["accuracy"].iloc[-1] == pytest.approx(ref.final("accuracy", split="query"))
    W = [t["body.8.weight"] for t in ref.trajectory]
    assert ok["dense_update"].tolist() == pytest.approx([0.0] + [float((W[r] - W[r - 1]).norm()) for r in (1, 2)])
    assert not ok["diverged"].any() and sweep[sweep.client_lr == 1000.0]["diverged"].all()
    # the images themselves (k = 0) are hetero_finetune.image_task's federation
    _, images = flu.lessons.hetero_finetune.image_task(alpha=10.0, **kw)
    assert torch.equal(fc.image_inputs(model, 0, alpha=10.0, **kw).train[1][0], images.train[1][0])


def test_scenarios_return_known_results_without_computing():
    key = fc.scenario_key("probe", shots=5, alpha=0.5, l2=0.1, local_steps=5, num_rounds=20, batch_size=16,
                          num_clients=10, query=10, seed=0, heterogeneity=True, bound_points=2)
    sentinel = {"key": key}
    assert fc.probe_scenario(known={key: sentinel}) is sentinel
    key = fc.scenario_key("lora", client_lr=0.1, alpha=0.3, mode="lora", shots=5, steps=5, num_rounds=4,
                          num_clients=10, query=10, seed=0)
    assert fc.lora_scenario(known={key: sentinel}) is sentinel
    assert fc.scenario_key("a", x=0.1 + 0.2) == fc.scenario_key("a", x=0.3)
    key = fc.scenario_key("nonconvex", mode="full", shots=5, alpha=0.5, num_rounds=6, local_steps=5, client_lr=0.02,
                          num_clients=10, query=10, seed=0, beta_examples=48, beta_iters=4)
    assert fc.nonconvex_scenario(known={key: sentinel}) is sentinel     # client_lr None: study.CLIENT_LR["full"]
    with pytest.raises(ValueError, match="^diagnostics"):
        fc.nonconvex_scenario(mode="lora", shots=1, num_clients=3, query=2)


def test_image_report_before_is_the_pretrained_head():
    rep = fc.image_report([0], shots=1, num_clients=3, query=2, num_rounds=1, local_steps=1)
    model, fed = flu.lessons.hetero_finetune.image_task(shots=1, num_clients=3, query=2, seed=0)
    ev = flu.evaluation.evaluate(model, fed)
    before = ev[ev.client.isna() & (ev.split == "query") & (ev.metric == "accuracy")]["value"].iloc[0]
    assert rep["accuracy_before"].iloc[0] == pytest.approx(before)
    assert rep["gain"].iloc[0] == pytest.approx(rep["accuracy_after"].iloc[0] - before)


# ------------------------------------------------------------------ Per-FedAvg

def probe_fed():
    return cv.probe_problem(None, federation(sizes=(8, 10, 6)))


def test_pca_probe_projects_on_principal_directions():
    probe = probe_fed()
    small = fc.pca_probe(probe, 2)
    Z = torch.cat([Z for Z, _ in probe.federation.train])
    Zc = Z - Z.mean(0)
    P = torch.cat([Z for Z, _ in small.federation.train])
    # the projections' variances are the top squared singular values / n, in order
    s = torch.linalg.svdvals(Zc)
    np.testing.assert_allclose((P ** 2).sum(0).numpy(), (s[:2] ** 2).numpy(), rtol=1e-10)
    assert small.num_features == 2 and small.model.head.weight.shape == (3, 2)
    with pytest.raises(ValueError, match="^k"):
        fc.pca_probe(probe, 9)


def test_meta_objective_value_and_gradient_by_finite_differences():
    probe = probe_fed()
    W = torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    val, g2 = fc.meta_objective(probe.model, probe.federation, {"head.weight": W}, 0.2, l2=0.1)
    p = probe.federation.weights()

    def F(W):
        total = 0.0
        for pi, (Z, y) in zip(p, probe.federation.train):
            Wl = W.clone().requires_grad_()
            f = nn.functional.cross_entropy(Z @ Wl.T, y) + 0.05 * (Wl ** 2).sum()
            g = torch.autograd.grad(f, Wl)[0]
            Wa = W - 0.2 * g
            total += pi * float(nn.functional.cross_entropy(Z @ Wa.T, y) + 0.05 * (Wa ** 2).sum())
        return total
    assert val == pytest.approx(F(W), rel=1e-12)
    h = 1e-6
    fd = np.array([(F(W + h * E) - F(W - h * E)) / (2 * h)
                   for E in torch.eye(12, dtype=F64).reshape(12, 3, 4)])
    assert g2 == pytest.approx(float((fd ** 2).sum()), rel=1e-6)
    # alpha = 0: the plain objective F
    assert fc.meta_objective(probe.model, probe.federation, {"head.weight": W}, 0.0, l2=0.1)[0] == pytest.approx(
        cv.objective(probe.model, {"head.weight": W}, probe.federation, l2=0.1), rel=1e-12)


def test_perfedavg_sweep_bound_and_defaults():
    probe = probe_fed()
    w = {"head.weight": torch.zeros(3, 4, dtype=F64)}
    c = cv.perfedavg_constants(probe.model, probe.federation, l2=0.1, params=w, per_example=False)
    c = type(c)(**{**c.__dict__, "rho": 1.0})
    curves, summary = fc.perfedavg_sweep(probe.model, probe.federation, [0.01, 0.05], constants=c, local_steps=2,
                                         num_rounds=3, l2=0.1)
    beta = min(1 / (10 * 2 * (4 * c.L + a * 1.0 * c.B)) for a in (0.01, 0.05))
    assert (summary["client_lr"] == beta).all()
    ref = cv.perfedavg_bound(c, 0.05, beta, 2, 3, gap0=summary["gap0"].iloc[1])
    got = curves[(curves.inner_lr == 0.05) & (curves.kind == "bound")]["value"].to_numpy()
    np.testing.assert_allclose(got, ref["bound"].to_numpy())
    first = curves[(curves.inner_lr == 0.01) & (curves.kind == "measured")]["value"].iloc[0]
    assert first == pytest.approx(fc.meta_objective(probe.model, probe.federation, w, 0.01, l2=0.1)[1], rel=1e-12)
    with pytest.raises(ValueError, match="^inner_lrs"):
        fc.perfedavg_sweep(probe.model, probe.federation, [], constants=c)


# ------------------------------------------------------------------ participation and mixed modes

def test_spread_probabilities():
    np.testing.assert_allclose(fc.spread_probabilities(0.6, 4), [1.0, 0.8, 0.6, 0.4])
    assert (fc.spread_probabilities(0.0, 3) == 1).all()
    with pytest.raises(ValueError, match="^spread"):
        fc.spread_probabilities(1.0, 3)


def test_participation_points_limits_are_the_weighted_minimisers():
    quad = drift.heterogeneous_quadratics(4, spread=1.0)
    q = np.array([1.0, 0.7, 0.4, 0.2])
    points, traj = fc.participation_points(quad, q, local_steps=1, lr=0.05, num_rounds=5)
    lim = points[points.kind == "limit"].set_index("label")[["w1", "w2"]]
    pi = cv.participation_weights(quad.p, q)
    np.testing.assert_allclose(lim.loc["FedAvg, renormalised"], quad.minimiser(pi / pi.sum()), atol=1e-10)
    np.testing.assert_allclose(lim.loc["re-weighted p_i / q_i"], quad.w_star, atol=1e-10)
    np.testing.assert_allclose(lim.loc["FedAvg, everyone"], quad.w_star, atol=1e-10)
    assert set(traj["method"]) == set(lim.index) and traj["round"].max() == 5
    np.testing.assert_allclose(points.attrs["pi"], pi)


def test_engine_participation_mean_is_near_the_closed_form():
    quad = drift.heterogeneous_quadratics(3, spread=1.0)
    q = np.array([1.0, 0.6, 0.3])
    mean, se = fc.engine_participation(quad, q, lr=0.1, num_rounds=6, seeds=range(12))
    _, traj = fc.participation_points(quad, q, lr=0.1, num_rounds=6)
    closed = traj[traj.method == "FedAvg, renormalised"][["w1", "w2"]].to_numpy()
    assert mean.shape == closed.shape
    assert (np.abs(mean - closed) <= 5 * se + 1e-12).all()
    with pytest.raises(ValueError, match="^seeds"):
        fc.engine_participation(quad, q, seeds=[0])


def test_phones_participation_engine_equals_scratch_and_reweighting_is_unbiased():
    probe = probe_fed()
    table, info = fc.phones_participation(probe, [1.0, 0.6, 0.3], l2=0.1, lr=0.3, num_rounds=12, tail=5)
    assert info["engine_vs_scratch"] < 1e-12
    d = flu.systems.profiles("phones", 3, seed=0)["dropout"].to_numpy()
    np.testing.assert_allclose(info["q_complete"], np.array([1.0, 0.6, 0.3]) * (1 - d))
    np.testing.assert_allclose(info["pi"], cv.participation_weights(probe.federation.weights(), info["q_complete"]))
    assert set(table["rule"]) == set(info["tail"]) and table["round"].max() == 12


def test_mixed_stationarity_blocks():
    fed = federation()
    model = fc.bias_free_mlp(4, (5,), 3, seed=1)
    assert all(p.dim() >= 2 for p in model.parameters()) and (model.head.weight == 0).all()
    same, _ = fc.mixed_stationarity(model, fed, ["full"] * 3, num_rounds=5, client_lr=0.2)
    np.testing.assert_allclose(same["grad_own"], same["grad_all"], rtol=1e-12)
    mixed, hist = fc.mixed_stationarity(model, fed, ["full", "linear_probe", "linear_probe"], num_rounds=5,
                                        client_lr=0.2)
    assert mixed.set_index("parameter")["clients"].to_dict() == {"body.0.weight": 1, "head.weight": 3}
    # grad_own of the body: client 0's own gradient at the final model, by autograd here
    params = {k: v.detach().clone().requires_grad_() for k, v in hist.params.items()}
    X, y = fed.train[0]
    f = nn.functional.cross_entropy(torch.func.functional_call(model, params, (X,)), y) + \
        0.005 * sum((v ** 2).sum() for v in params.values())
    g = torch.autograd.grad(f, params["body.0.weight"])[0]
    assert mixed.set_index("parameter").loc["body.0.weight", "grad_own"] == pytest.approx(float(g.norm()), rel=1e-10)
    with pytest.raises(ValueError, match="^modes"):
        fc.mixed_stationarity(model, fed, ["full"], num_rounds=1)


# ------------------------------------------------------------------ report and summary tables

def test_interval_and_report_table():
    assert fc.interval([0.8, 0.9, 0.85]) == pytest.approx((0.85, 0.8, 0.9))
    with pytest.raises(ValueError, match="^values"):
        fc.interval([])
    t = fc.report_table({"image_probe": [0.8, 0.9], "compute_ratio": [2.9]}, notes={"image_probe": "n"})
    assert list(t["claim"]) == list(fc.REPORT["claim"]) and t["report"].tolist() == fc.REPORT["report"].tolist()
    row = t.set_index("claim").loc[fc.REPORT.set_index("key").loc["image_probe", "claim"]]
    assert row["measured"] == pytest.approx(0.85) and row["low"] == 0.8 and row["high"] == 0.9 and row["n"] == 2
    assert row["note"] == "n" and t["measured"].isna().sum() == 3
    with pytest.raises(ValueError, match="^measured"):
        fc.report_table({"nope": [1.0]})


def test_theory_table_checks_its_rows():
    row = {k: "x" for k in fc.THEORY_COLUMNS}
    assert list(fc.theory_table([row]).columns) == fc.THEORY_COLUMNS
    with pytest.raises(ValueError, match=r"^rows\[1\]"):
        fc.theory_table([row, {"method": "y"}])


def test_load_minilm_reads_the_scripts_csv_or_gives_none(tmp_path):
    assert fc.load_minilm(tmp_path / "missing.csv") is None
    table = pd.DataFrame({"mode": ["full", "linear_probe"], "seed": [0, 0], "round": [0, 0], "f1_macro": [0.6, 0.6]})
    table.to_csv(tmp_path / "m.csv", index=False)
    pd.testing.assert_frame_equal(fc.load_minilm(tmp_path / "m.csv"), table)
