"""flu.lessons.drift (quadratic clients, round maps, Li et al. experiments) and flu.plots.convergence.

Closed forms are checked against hand computations (numpy written here) and against flu.run.
"""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import fedlab_utils as flu  # noqa: E402
from fedlab_utils import convergence as cv  # noqa: E402
from fedlab_utils.lessons import drift  # noqa: E402
from fedlab_utils.views.plots import convergence as pc  # noqa: E402

STEPS = [1, 3, 7]


@pytest.fixture(scope="module")
def q():
    return drift.heterogeneous_quadratics(3, 1.0, sizes=[3, 5, 4])


def mse(X, y, W):
    """mean_j (x_j . w - y_j)^2 for each row w of W (torch's MSE, written out)."""
    return ((np.atleast_2d(W) @ X.T - y) ** 2).mean(1)


def run(q, method, rounds, lr=0.1, steps=STEPS, **kw):
    hist = flu.run(drift.quadratic_model(q), q.federation(), method, num_rounds=rounds, local_steps=steps,
                   client_lr=lr, batch_size=None, loss="mse", record_params=True, eval_every=rounds, progress=False,
                   **kw)
    return np.array([t["head.weight"].numpy().ravel() for t in hist.trajectory]), hist


# ------------------------------------------------------------------ quadratic clients

def test_quadratic_clients_are_re_exported_from_data():
    for name in ("Quadratics", "quadratic_clients", "heterogeneous_quadratics", "rotation"):
        assert getattr(drift, name) is getattr(flu.data.quadratics, name)


def test_quadratic_model_trains_on_the_quadratic(q):
    model = drift.quadratic_model(q)
    assert [n for n, _ in model.named_parameters()] == ["head.weight"]
    assert model.head.weight.dtype == torch.float64 and not model.head.weight.any()
    w = np.array([0.3, -1.2])
    params = {"head.weight": torch.tensor(w).reshape(1, 2)}
    by_hand = sum(p * mse(X, y, w)[0] for p, X, y in zip(q.p, q.X, q.y))
    assert cv.objective(model, params, q.federation(), "mse") == pytest.approx(by_hand, rel=1e-12)
    with pytest.raises(TypeError, match="q must be"):
        drift.quadratic_model(q.federation())


def test_optimum_matches_the_package_solver(q):
    w, F = cv.optimum(drift.quadratic_model(q), q.federation(), "mse")
    np.testing.assert_allclose(w["head.weight"].numpy().ravel(), q.w_star, atol=1e-12)
    assert F == pytest.approx(float(q.values(q.w_star)[0]), rel=1e-12)
    # surrogate weights: the minimiser of sum_i w_i F_i
    wt = cv.surrogate_weights(q.p, STEPS)
    sur, _ = cv.surrogate_optimum(drift.quadratic_model(q), q.federation(), "mse", 0.0, STEPS)
    np.testing.assert_allclose(q.minimiser(wt), sur["head.weight"].numpy().ravel(), atol=1e-12)


def test_objective_grid_equals_the_objective_by_hand(q):
    xlim, ylim = drift.window(np.vstack([q.centers, q.w_star]), 0.2)
    grid = drift.objective_grid(q, xlim, ylim, num=11)
    assert list(grid.columns) == ["w1", "w2", "value"] and len(grid) == 121
    assert grid["w1"].min() == pytest.approx(xlim[0]) and grid["w2"].max() == pytest.approx(ylim[1])
    model, fed = drift.quadratic_model(q), q.federation()
    for k in (0, 17, 60, 120):
        w = grid.iloc[k][["w1", "w2"]].to_numpy(dtype=float)
        by_hand = sum(p * mse(X, y, w)[0] for p, X, y in zip(q.p, q.X, q.y))
        assert grid["value"].iloc[k] == pytest.approx(by_hand, rel=1e-12)
        params = {"head.weight": torch.tensor(w).reshape(1, 2)}
        assert grid["value"].iloc[k] == pytest.approx(cv.objective(model, params, fed, "mse"), rel=1e-12)
    one = drift.objective_grid(q, xlim, ylim, num=5, client=1)
    np.testing.assert_allclose(one["value"], mse(q.X[1], q.y[1], one[["w1", "w2"]].to_numpy()), rtol=1e-12)


def test_window_covers_points_and_is_square():
    xlim, ylim = drift.window([[0.0, 0.0], [2.0, 1.0]], 0.5)
    assert xlim[0] < 0 < 2 < xlim[1] and ylim[0] < 0 < 1 < ylim[1]
    assert xlim[1] - xlim[0] == pytest.approx(ylim[1] - ylim[0])


# ------------------------------------------------------------------ round maps

@pytest.mark.parametrize("method, kw", [("fedavg", {}), ("fedprox", {"mu": 0.7}), ("scaffold", {}),
                                        ("fednova", {})])
def test_round_map_is_exactly_what_flu_run_does(q, method, kw):
    traj, _ = run(q, method, 12, **kw)
    rm = drift.round_map(q, method, STEPS, 0.1, **kw)
    np.testing.assert_allclose(traj, rm.iterate(12), atol=1e-13, rtol=0)
    assert rm.radius < 1


def test_fixed_points_closed_form(q):
    x, M, rho = cv.fedavg_fixed_point_lsq(q.X, q.y, q.p, STEPS, 0.1)
    rm = drift.round_map(q, "fedavg", STEPS, 0.1)
    np.testing.assert_allclose(rm.fixed_point, x, atol=1e-12)
    np.testing.assert_allclose(rm.M, M, atol=1e-14)
    assert rm.radius == pytest.approx(rho, rel=1e-12)
    # one local step is gradient descent on F: no inconsistency; SCAFFOLD is consistent anyway
    np.testing.assert_allclose(drift.round_map(q, "fedavg", 1, 0.1).fixed_point, q.w_star, atol=1e-12)
    np.testing.assert_allclose(drift.round_map(q, "scaffold", STEPS, 0.1).fixed_point, q.w_star, atol=1e-12)
    assert np.linalg.norm(rm.fixed_point - q.w_star) > 0.1
    # FedNova's bias is O(lr), FedAvg's tends to the surrogate optimum's
    nova = [np.linalg.norm(drift.round_map(q, "fednova", STEPS, lr).fixed_point - q.w_star) for lr in (1e-2, 1e-3)]
    assert nova[1] < 0.15 * nova[0]
    sur = q.minimiser(cv.surrogate_weights(q.p, STEPS))
    assert np.linalg.norm(drift.round_map(q, "fedavg", STEPS, 1e-4).fixed_point - sur) < 1e-3
    # FedProx with mu = 0 is FedAvg; server_lr scales the step
    np.testing.assert_allclose(drift.round_map(q, "fedprox", STEPS, 0.1, mu=0.0).M, rm.M)
    half = drift.round_map(q, "fedavg", STEPS, 0.1, server_lr=0.5)
    np.testing.assert_allclose(half.M, 0.5 * np.eye(2) + 0.5 * rm.M, atol=1e-14)
    np.testing.assert_allclose(half.fixed_point, rm.fixed_point, atol=1e-12)


def test_round_map_rate_is_the_spectral_radius(q):
    rm = drift.round_map(q, "fedavg", STEPS, 0.1)
    it = rm.iterate(80)
    d = np.linalg.norm(it - rm.fixed_point, axis=1)
    assert d[80] / d[79] == pytest.approx(rm.radius, rel=1e-6)


def test_fixed_point_tables(q):
    fp = drift.fixed_points(q, local_steps=STEPS, client_lr=0.1, mu=0.5)
    assert fp["method"].tolist() == list(drift.DRIFT_METHODS)
    assert fp["label"].tolist() == ["FedAvg", "FedProx (mu=0.5)", "SCAFFOLD", "FedNova"]
    assert {"w1", "w2", "radius", "dist_to_opt"} <= set(fp.columns)
    assert fp.set_index("method").loc["scaffold", "dist_to_opt"] < 1e-12
    marks = drift.landmarks(q, STEPS)
    assert marks["kind"].tolist() == ["client optimum"] * 3 + ["optimum", "surrogate optimum"]
    np.testing.assert_allclose(marks[["w1", "w2"]].to_numpy()[:3], q.centers)
    sweep = drift.fixed_point_sweep(q, "client_lr", [0.01, 0.1], local_steps=STEPS)
    assert len(sweep) == 8 and list(sweep.columns) == ["method", "label", "client_lr", "dist_to_opt", "radius"]
    ratio = drift.fixed_point_sweep(q, "steps_ratio", [1.0, 4.0], local_steps=2)
    assert ratio["steps_ratio"].unique().tolist() == [1.0, 4.0]
    assert drift.steps_from_ratio(2, 4.0, 3) == [2, 4, 8]
    with pytest.raises(ValueError, match="method"):
        drift.round_map(q, "feddyn")
    with pytest.raises(ValueError, match="local_steps"):
        drift.round_map(q, "fedavg", [1, 0, 2])


def test_trajectory_tables_and_rates(q):
    traj, hist = run(q, "fedavg", 20)
    from_hist = drift.trajectory_table({"FedAvg": hist}, objective=q.values, reference=q.w_star)
    from_list = drift.trajectory_table({"FedAvg": hist.trajectory})
    from_array = drift.trajectory_table({"FedAvg": traj})
    assert list(from_hist.columns) == ["method", "round", "w1", "w2", "loss", "dist"]
    pd.testing.assert_frame_equal(from_list, from_array)
    np.testing.assert_allclose(from_hist["loss"], q.values(traj))
    np.testing.assert_allclose(from_hist["dist"], np.linalg.norm(traj - q.w_star, axis=1))
    fixed = drift.fixed_points(q, ["fedavg"], STEPS, 0.1)
    measured, theory = drift.rate_table(from_hist, fixed)
    np.testing.assert_allclose(measured["dist_fixed"], np.linalg.norm(traj - fixed[["w1", "w2"]].to_numpy(), axis=1))
    assert theory["value"].iloc[-1] == pytest.approx(measured["dist_fixed"].iloc[-1])
    ratios = theory["value"].to_numpy()[1:] / theory["value"].to_numpy()[:-1]
    np.testing.assert_allclose(ratios, fixed["radius"].iloc[0])
    with pytest.raises(ValueError, match="record_params"):
        drift.trajectory_table({"x": flu.run(drift.quadratic_model(q), q.federation(), num_rounds=1, batch_size=None,
                                             loss="mse", progress=False)})


def test_compare_methods_runs_all_four(q):
    df = drift.compare_methods(q, local_steps=STEPS, client_lr=0.1, num_rounds=5, mu=0.5)
    assert df["method"].unique().tolist() == ["FedAvg", "FedProx (mu=0.5)", "SCAFFOLD", "FedNova"]
    assert len(df) == 4 * 6
    for m in drift.DRIFT_METHODS:
        rm = drift.round_map(q, m, STEPS, 0.1, mu=0.5)
        got = df[df["method"] == drift.method_label(m, 0.5)][["w1", "w2"]].to_numpy()
        np.testing.assert_allclose(got, rm.iterate(5), atol=1e-13)


# ------------------------------------------------------------------ logistic regression and Li et al.

@pytest.fixture(scope="module")
def wine():
    return drift.logistic_problem("wine", num_clients=6, alpha=0.5, seed=0)


def test_logistic_problem_and_tables(wine):
    fed, model = wine
    assert fed.num_clients == 6 and int(fed.sizes.sum()) == 178 and int(fed.test_sizes.sum()) == 0
    assert [n for n, _ in model.named_parameters()] == ["head.weight"]
    assert model.head.weight.dtype == torch.float64 and fed.train[0][0].dtype == torch.float64
    c = cv.constants(model, fed, "cross_entropy", 0.1, "uniform")
    table = drift.constants_table(c, sigma2=0.5, G2=2.0)
    assert table["name"].tolist() == ["mu", "L", "kappa", "Gamma", "sigma2", "G2", "F_star", "mu_F", "L_F"]
    assert table.set_index("name").loc["kappa", "value"] == pytest.approx(c.L / c.mu)
    clients = drift.client_table(c, model, fed)
    assert len(clients) == 6 and (clients["gap"] >= -1e-12).all()
    assert float(clients["p"] @ clients["gap"]) == pytest.approx(c.Gamma, rel=1e-9, abs=1e-12)
    # at w* the weighted client gradients cancel, the individual ones do not
    assert clients["grad_norm2_at_opt"].max() > 1e-4
    binary = drift.logistic_problem("breast_cancer", num_clients=3)[1]
    assert binary.head.weight.shape == (1, 30)


def test_closed_form_moments_equal_autograd(wine):
    fed, model = wine
    gen = torch.Generator().manual_seed(0)
    params = {"head.weight": 0.3 * torch.randn(3, 13, generator=gen, dtype=torch.float64)}
    for args in ((model, fed, "cross_entropy"),):
        a = cv._moments(*args[:1], params, *args[1:], 0.1)
        b = cv._moments(*args[:1], params, *args[1:], 0.1, closed_form=False)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-10)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-10)
    fb, mb = drift.logistic_problem("breast_cancer", num_clients=3)
    pb = {"head.weight": 0.1 * torch.randn(1, 30, generator=gen, dtype=torch.float64)}
    for full, slow in zip(cv._moments(mb, pb, fb, "cross_entropy", 0.05),
                          cv._moments(mb, pb, fb, "cross_entropy", 0.05, closed_form=False)):
        np.testing.assert_allclose(full, slow, rtol=1e-10)
    reg = flu.data.Federation.from_clients([(torch.randn(6, 4, generator=gen, dtype=torch.float64),
                                             torch.randn(6, 2, generator=gen, dtype=torch.float64)) for _ in range(2)])
    lin = flu.models.linear(4, 2)
    pl = {"head.weight": torch.randn(2, 4, generator=gen, dtype=torch.float64)}
    for full, slow in zip(cv._moments(lin, pl, reg, "mse", 0.2),
                          cv._moments(lin, pl, reg, "mse", 0.2, closed_form=False)):
        np.testing.assert_allclose(full, slow, rtol=1e-10)


def test_li_experiment_bound_holds_and_tables_are_long(wine):
    fed, model = wine
    table, info = drift.li_experiment(fed, model, l2=0.1, local_steps=3, num_rounds=6)
    assert list(table.columns) == ["round", "iteration", "kind", "value"]
    m = table[table["kind"] == "measured"]["value"].to_numpy()
    b = table[table["kind"] == "bound"]["value"].to_numpy()
    assert len(m) == len(b) == 7 and (m > 0).all() and (m < b).all() and m[-1] < m[0]
    np.testing.assert_allclose(table[table["kind"] == "measured"]["iteration"], np.arange(7) * 3)
    # the measured gap at round 0 is F(0) - F*: log(3) + 0 - F* for a zero model
    assert m[0] == pytest.approx(np.log(3) - info["constants"].F_star, rel=1e-12)
    assert info["theorem"].endswith("Theorem 1") and info["G2"] > 0
    t2, info2 = drift.li_experiment(fed, model, l2=0.1, local_steps=3, num_rounds=4, participation="li_scheme_2",
                                    clients_per_round=3, constants=info["constants"])
    assert info2["bound_attrs"]["C"] > 0 and info2["theorem"].endswith("Theorem 3")
    t3, _ = drift.li_experiment(fed, model, l2=0.1, local_steps=3, num_rounds=4, schedule="constant")
    assert set(t3["kind"]) == {"measured"}
    with pytest.raises(ValueError, match="schedule"):
        drift.li_experiment(fed, model, schedule="cosine")


def test_li_sweep_and_decay(wine):
    df = drift.li_sweep("local_steps", [1, 2], num_clients=6, num_rounds=3, bound=False)
    assert df["setting"].unique().tolist() == ["local_steps=1", "local_steps=2"]
    assert list(df.columns) == ["param", "setting", "round", "iteration", "kind", "value"]
    fed, model = wine
    dec = drift.decay_experiment(fed, model, client_lr=0.3, local_steps=8, num_rounds=15)
    assert dec["setting"].nunique() == 3 and (dec["iteration"] % 8 == 0).all()
    assert dec.groupby("setting")["iteration"].max().tolist() == [120] * 3
    gd, const, decay = (g.to_numpy() for _, g in dec.groupby("setting", sort=False)["value"])
    assert gd[-1] < 1e-5 * gd[0]                      # E = 1: gradient descent converges linearly
    assert abs(const[-1] / const[-2] - 1) < 0.01       # E > 1, constant rate: a floor
    assert decay[-1] < 0.9 * decay[-2] and decay[-1] < const[-1]   # decaying rate: still going down
    # ``round`` counts each run's own rounds: E = 1 does E times as many for the same iterations
    rounds = dec.groupby("setting", sort=False)["round"].max().tolist()
    assert rounds == [120, 15, 15]
    # every=1 keeps every round of the E = 1 run; the shared iterations are the same numbers
    full = drift.decay_experiment(fed, model, client_lr=0.3, local_steps=8, num_rounds=15, every=1)
    gd_rows = full[full["setting"] == dec["setting"].iloc[0]]
    np.testing.assert_array_equal(gd_rows["iteration"], np.arange(121))
    np.testing.assert_array_equal(gd_rows["round"], np.arange(121))
    shared = full[full["iteration"] % 8 == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(shared, dec)
    # per round, E = 8 with a constant rate is ahead of gradient descent at first (eight steps a round)
    e8 = full[full["setting"] == dec["setting"].unique()[1]].set_index("round")["value"]
    assert e8[1] < gd_rows.set_index("round")["value"][1]
    with pytest.raises(ValueError, match="every"):
        drift.decay_experiment(fed, model, local_steps=8, num_rounds=2, every=0)


# ------------------------------------------------------------------ plots

def test_plots_return_axes(q, wine):
    xlim, ylim = drift.window(np.vstack([q.centers, q.w_star]))
    traj = drift.trajectory_table({"FedAvg": drift.round_map(q, "fedavg", STEPS, 0.1).iterate(5)}, reference=q.w_star)
    fixed = drift.fixed_points(q, local_steps=STEPS, client_lr=0.1)
    measured, theory = drift.rate_table(traj, fixed)
    ax = pc.plot_contours(drift.objective_grid(q, xlim, ylim, 9))
    for out in (pc.plot_landmarks(drift.landmarks(q, STEPS), ax=ax), pc.plot_fixed_points(fixed, ax=ax),
                pc.plot_trajectories(traj, ax=ax), pc.plot_distance(measured, theory=theory, y="dist_fixed"),
                pc.plot_fixed_point_sweep(drift.fixed_point_sweep(q, "client_lr", [0.01, 0.1]), "client_lr")):
        assert isinstance(out, matplotlib.axes.Axes)
    fed, model = wine
    c = cv.constants(model, fed, "cross_entropy", 0.1, "uniform")
    assert isinstance(pc.plot_client_bars(drift.client_table(c, model, fed), "gap"), matplotlib.axes.Axes)
    df = pd.DataFrame({"iteration": [0, 1, 2] * 2, "kind": ["measured"] * 3 + ["bound"] * 3,
                       "value": [1.0, 0.5, 0.2, 9.0, 5.0, 3.0], "setting": "FedAvg"})
    ax = pc.plot_suboptimality(df)
    styles = sorted(line.get_linestyle() for line in ax.get_lines())
    assert styles == ["-", "--"] and ax.get_lines()[0].get_color() == flu.plots.method_color("FedAvg")
    assert pc.group_colors(["FedAvg", "FedProx (mu=1)"]) == [flu.plots.method_color("FedAvg"),
                                                             flu.plots.method_color("FedProx")]
    assert len(set(pc.group_colors(["alpha=0.1", "alpha=1", "alpha=10"]))) == 3
    with pytest.raises(ValueError, match="grid"):
        pc.plot_contours(pd.DataFrame({"w1": [0.0]}))
    plt.close("all")
