"""flu.lessons.privacy (notebook 10): the leak, DP-FedAvg runs, accounting, the DP noise term in
Li et al.'s bound and the aggregation costs, against Opacus, closed forms and hand computations."""
import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils import convergence as cv
from fedlab_utils.lessons import drift
from fedlab_utils.lessons import privacy as lp

DELTA = 1e-5


@pytest.fixture(scope="module")
def small_task():
    return lp.digits_task(shots=2, alpha=1.0, num_clients=10, seed=0)


@pytest.fixture(scope="module")
def leak():
    task = lp.digits_task(shots=1, alpha=10.0, num_clients=20, seed=0)
    X, y = lp.distinct_first(*task.federation.train[0])
    return flu.models.mlp(64, 32, 10, seed=0), X, y


@pytest.fixture(scope="module")
def wine():
    fed, model = drift.logistic_problem("wine", num_clients=5, alpha=0.5, seed=0)
    return fed, model, cv.constants(model, fed, "cross_entropy", 0.1, "uniform")


# ------------------------------------------------------------------ task

def test_digits_task_holds_out_a_test_set_no_client_has(small_task):
    ds = lp.pixels()
    assert float(ds.X.min()) == 0.0 and float(ds.X.max()) == 1.0
    fed = small_task.federation
    held = sum(len(y) for _, y in fed.train) + sum(len(y) for _, y in fed.test)
    assert len(small_task.y_test) == round(0.2 * len(ds.y))
    assert held + len(small_task.y_test) == len(ds.y)             # every digit once: a client's or the test set's
    test_rows = {tuple(r) for r in small_task.X_test.numpy().round(6).tolist()}
    client_rows = {tuple(r) for X, _ in (*fed.train, *fed.test) for r in X.numpy().round(6).tolist()}
    assert len(test_rows & client_rows) <= 5                      # only duplicated images of the data set
    again = lp.digits_task(shots=2, alpha=1.0, num_clients=10, seed=0)
    assert torch.equal(again.X_test, small_task.X_test)
    assert not torch.equal(lp.digits_task(shots=2, alpha=1.0, num_clients=10, seed=1).X_test, small_task.X_test)


def test_digits_task_rejects_a_bad_test_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        lp.digits_task(test_fraction=1.0)
    with pytest.raises(ValueError, match="y must be"):
        lp.digits_task(torch.zeros(5, 64), torch.zeros(4, dtype=torch.int64))


def test_accuracy_counts_argmax_hits():
    model = flu.models.logistic(2, 2, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    X = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [1.0, 4.0]])
    assert lp.accuracy(model, X, torch.tensor([0, 1, 1, 0])) == 0.5
    with pytest.raises(TypeError, match="model"):
        lp.accuracy("model", X, torch.tensor([0, 1, 1, 0]))


# ------------------------------------------------------------------ the leak

def test_client_update_is_gradient_descent_by_hand(leak):
    model, X, y = leak
    upd = lp.client_update(model, X[:3], y[:3], local_steps=3, lr=0.2)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    for _ in range(3):
        out = torch.func.functional_call(model, params, (X[:3],))
        g = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y[:3]), list(params.values()))
        params = {k: (v - 0.2 * gi).detach().requires_grad_(True) for (k, v), gi in zip(params.items(), g)}
    for k, v in model.named_parameters():
        torch.testing.assert_close(upd[k], params[k].detach() - v.detach(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="local_steps"):
        lp.client_update(model, X, y, local_steps=0)


def test_protect_clips_and_adds_noise_of_std_z_times_clip():
    g = torch.Generator().manual_seed(3)
    upd = {"a": torch.randn(200, 50, generator=g, dtype=torch.float64), "b": torch.randn(50, generator=g,
                                                                                          dtype=torch.float64)}
    norm = math.sqrt(sum(float((v ** 2).sum()) for v in upd.values()))
    same = lp.protect(upd)
    assert all(torch.equal(same[k], upd[k]) for k in upd)
    clipped = lp.protect(upd, clip=norm / 4)
    for k in upd:
        torch.testing.assert_close(clipped[k], upd[k] / 4)
    noised = lp.protect(upd, clip=2.0, noise_multiplier=0.5, seed=7)
    scale = min(1.0, 2.0 / norm)
    noise = torch.cat([(noised[k] - scale * upd[k]).reshape(-1) for k in upd])
    assert float(noise.std()) == pytest.approx(0.5 * 2.0, rel=0.05)
    assert abs(float(noise.mean())) < 0.05
    again = lp.protect(upd, clip=2.0, noise_multiplier=0.5, seed=7)
    other = lp.protect(upd, clip=2.0, noise_multiplier=0.5, seed=8)
    assert torch.equal(again["a"], noised["a"]) and not torch.equal(other["a"], noised["a"])
    with pytest.raises(ValueError, match="clip"):
        lp.protect(upd, clip=-1.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        lp.protect(upd, noise_multiplier=1.0)          # clip inf with noise: infinite std
    with pytest.raises(ValueError, match="update"):
        lp.protect({})


def test_attack_recovers_one_digit_and_noise_hides_it(leak):
    model, X, y = leak
    a = lp.attack(model, X[:1], y[:1], steps=150)
    assert int(a.recovered_labels[0]) == int(y[0])
    assert a.error["relative_mse"] < 0.05
    assert a.noise_norm == 0.0 and a.update_norm > 0
    hidden = lp.attack(model, X[:1], y[:1], clip=0.1, noise_multiplier=1.0, steps=30)
    assert hidden.error["relative_mse"] > 0.5
    assert hidden.noise_norm == pytest.approx(0.1 * math.sqrt(sum(p.numel() for p in model.parameters())), rel=0.1)
    assert float(hidden.recovered.min()) >= 0.0 and float(hidden.recovered.max()) <= 1.0   # clamped to the pixels
    with pytest.raises(ValueError, match="X must be"):
        lp.attack(model, X[0], y[:1])
    with pytest.raises(ValueError, match="bounds"):
        lp.attack(model, X[:1], y[:1], bounds=(1.0, 0.0))


def test_distinct_first_puts_one_of_each_label_first():
    X = torch.arange(6, dtype=torch.float32)[:, None]
    Xo, yo = lp.distinct_first(X, torch.tensor([3, 3, 1, 3, 2, 1]))
    assert yo.tolist() == [3, 1, 2, 3, 3, 1] and Xo[:, 0].tolist() == [0, 2, 4, 1, 3, 5]


def test_reconstruction_table_and_gallery(leak):
    model, X, y = leak
    prot = {"none": (math.inf, 0.0), "noise": (0.1, 0.5)}
    table, attacks = lp.reconstruction_table(model, X, y, shots=(1, 2), local_steps=(1,), protections=prot, steps=10,
                                             return_attacks=True)
    assert len(table) == 4 and set(attacks) == {(k, 1, p) for k in (1, 2) for p in prot}
    assert list(table.columns) == ["shots", "local_steps", "protection", "clip", "noise_multiplier", "update_norm",
                                   "noise_norm", "relative_mse", "psnr", "labels_right"]
    row = table[(table.shots == 2) & (table.protection == "noise")].iloc[0]
    assert row.relative_mse == attacks[(2, 1, "noise")].error["relative_mse"]
    assert table[table.protection == "none"].labels_right.all()            # iDLG: distinct labels, no noise
    assert (table[table.protection == "none"].noise_norm == 0).all()
    gal = lp.gallery({"two": attacks[(2, 1, "none")]})
    assert len(gal) == 4 and set(gal.kind) == {"original", "recovered"}
    assert gal.image.iloc[0].shape == (8, 8)
    np.testing.assert_array_equal(gal[gal.kind == "original"].image.iloc[1], X[1].reshape(8, 8).numpy())
    with pytest.raises(ValueError, match="protections"):
        lp.reconstruction_table(model, X, y, protections={"bad": 0.1})
    with pytest.raises(ValueError, match="shots"):
        lp.reconstruction_table(model, X, y, shots=(20,))
    with pytest.raises(ValueError, match="attacks"):
        lp.gallery({})


# ------------------------------------------------------------------ DP-FedAvg runs

def test_runs_table_reads_epsilon_and_clip_of_each_round(small_task):
    model = flu.models.mlp(64, 8, 10, seed=0)
    dp = flu.privacy.DPFedAvg(clip=0.5, noise_multiplier=3.0, delta=DELTA)
    runs = {"plain": lp.train(model, small_task.federation, None, num_rounds=3, local_steps=2),
            "dp": lp.train(model, small_task.federation, dp, num_rounds=3, local_steps=2)}
    t = lp.runs_table(runs, small_task.X_test, small_task.y_test)
    assert len(t) == 8 and list(t.columns) == ["label", "round", "accuracy", "epsilon", "clip"]
    d = t[t.label == "dp"].set_index("round")
    for r in (1, 2, 3):
        assert d.loc[r, "epsilon"] == flu.privacy.epsilon(3.0, 1.0, r, DELTA)
    assert d.loc[0, "epsilon"] == 0 and (d["clip"] == 0.5).all()
    plain = t[t.label == "plain"].set_index("round")
    assert np.isinf(plain.loc[1:, "epsilon"]).all() and plain["clip"].isna().all()
    assert plain.loc[0, "accuracy"] == lp.accuracy(model, small_task.X_test, small_task.y_test)
    assert plain.loc[3, "accuracy"] == lp.accuracy(runs["plain"].model, small_task.X_test, small_task.y_test)
    with pytest.raises(ValueError, match="runs"):
        lp.runs_table({}, small_task.X_test, small_task.y_test)


def test_privacy_utility_reports_the_runs_epsilon():
    t = lp.privacy_utility(((1.0, 2),), (0.0, 3.0), clip=0.5, num_clients=10, num_rounds=2, local_steps=2, hidden=8)
    assert list(t.noise_multiplier) == [0.0, 3.0]
    assert math.isinf(t.epsilon.iloc[0]) and t.epsilon.iloc[1] == flu.privacy.epsilon(3.0, 1.0, 2, DELTA)
    assert t.noise_std.tolist() == [0.0, 3.0 * 0.5 / 10]
    assert t.accuracy.between(0, 1).all()
    with pytest.raises(ValueError, match="tasks"):
        lp.privacy_utility((0.5,), (0.0,), num_clients=10, num_rounds=1)


# ------------------------------------------------------------------ accounting

def test_epsilon_curve_equals_opacus_at_every_round():
    curve = lp.epsilon_curve(3.0, 0.05, 30, DELTA, every=10)
    assert curve["round"].tolist() == [10, 20, 30]
    for r, eps in zip(curve["round"], curve["epsilon"]):
        assert eps == flu.privacy.epsilon(3.0, 0.05, int(r), DELTA)
    assert lp.epsilon_curve(3.0, 0.05, 25, DELTA, every=10)["round"].tolist() == [10, 20, 25]


def test_epsilon_curve_without_sampling_is_the_gaussian_closed_form():
    from opacus.accountants import RDPAccountant

    a = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    for z, T in ((1.5, 7), (4.0, 300)):
        expected = np.min(T * a / (2 * z ** 2) + np.log((a - 1) / a) - (np.log(DELTA) + np.log(a)) / (a - 1))
        assert lp.epsilon_curve(z, 1.0, T, DELTA, every=T).epsilon.iloc[-1] == pytest.approx(expected, rel=1e-12)
    assert np.isinf(lp.epsilon_curve(0.0, 0.5, 3, DELTA).epsilon).all()


@pytest.mark.parametrize("kwargs, name", [(dict(noise_multiplier=-1.0), "noise_multiplier"),
                                          (dict(sample_rate=0.0), "sample_rate"), (dict(rounds=0), "rounds"),
                                          (dict(delta=1.0), "delta"), (dict(every=0), "every")])
def test_epsilon_curve_names_a_bad_argument(kwargs, name):
    args = dict(noise_multiplier=1.0, sample_rate=0.5, rounds=3, delta=DELTA) | kwargs
    with pytest.raises(ValueError, match=name):
        lp.epsilon_curve(**args)


def test_epsilon_table_and_client_budgets_match_flu_privacy():
    t = lp.epsilon_table((2.0,), (1.0,), (10, 20), delta=DELTA)
    assert t.epsilon.tolist() == [flu.privacy.epsilon(2.0, 1.0, T, DELTA) for T in (10, 20)]
    b = lp.client_budgets(2.0, 20, DELTA, clip_shares=(1.0, 0.5), round_shares=(0.25,))
    assert b.lever.tolist() == ["clip", "clip", "rounds"]
    assert b.epsilon.tolist() == pytest.approx([flu.privacy.epsilon(2.0, 1.0, 20, DELTA),
                                                flu.privacy.epsilon(4.0, 1.0, 20, DELTA),
                                                flu.privacy.epsilon(2.0, 1.0, 5, DELTA)], rel=1e-12)
    with pytest.raises(ValueError, match="clip_shares"):
        lp.client_budgets(2.0, 20, DELTA, clip_shares=(0.0,))
    with pytest.raises(ValueError, match="noise_multiplier"):
        lp.client_budgets(0.0, 20, DELTA)


# ------------------------------------------------------------------ DP noise in Li et al.'s bound

def test_noise_term_is_the_recursion_by_iteration(wine):
    _, _, c = wine
    E, R, V = 3, 6, 0.7
    lr = cv.li_step_size(c.mu, cv.li_gamma(c, E), E)
    N, by_round = 0.0, [0.0]
    for t in range(1, R * E + 1):                       # iteration t uses eta_t; noise after t = rE
        N = (1 - lr((t - 1) // E + 1, (t - 1) % E) * c.mu) * N + (V if t % E == 0 else 0.0)
        if t % E == 0:
            by_round.append(c.L / 2 * N)
    np.testing.assert_allclose(lp.noise_term(c, R, E, V), by_round, rtol=1e-12)
    # telescoping: prod_{t=a}^{b} (1 - 2/(gamma + t)) = (gamma + a - 2)(gamma + a - 1) / ((gamma + b - 1)(gamma + b))
    g = cv.li_gamma(c, E)
    two = lp.noise_term(c, 2, E, V)[2] / (c.L / 2)
    assert two == pytest.approx(V * (1 + (g + E - 1) * (g + E) / ((g + 2 * E - 1) * (g + 2 * E))), rel=1e-12)
    assert not lp.noise_term(c, 4, E, 0.0).any()
    with pytest.raises(ValueError, match="variance"):
        lp.noise_term(c, 2, E, -1.0)


def test_update_norms_recompute_each_clients_update(wine):
    fed, model, _ = wine
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    norms = lp.update_norms(model, fed, [start, start], local_steps=2, client_lr=0.3)
    assert norms["round"].tolist() == [1] * fed.num_clients
    for i, (X, y) in enumerate(fed.train):
        upd = lp.client_update(model, X, y, local_steps=2, lr=0.3)
        assert norms.norm[i] == pytest.approx(math.sqrt(sum(float((v ** 2).sum()) for v in upd.values())), rel=1e-10)


def test_dp_li_experiment_adds_the_noise_term_to_li_et_al(wine):
    fed, model, c = wine
    R, E = 4, 2
    table, info = lp.dp_li_experiment(fed, model, l2=0.1, local_steps=E, num_rounds=R, noise_multipliers=(0.0, 1.0),
                                      seeds=(0, 1), constants=c)
    li, _ = drift.li_experiment(fed, model, l2=0.1, local_steps=E, num_rounds=R, batch_size=None, bound=False,
                                constants=c)
    clean = table[(table.noise_multiplier == 0) & (table.kind == "measured")]["value"].to_numpy()
    np.testing.assert_array_equal(clean, li[li.kind == "measured"]["value"].to_numpy())
    d = sum(p.numel() for p in model.parameters())
    V = d * (1.0 * info["clip"] / fed.num_clients) ** 2
    term = table[(table.noise_multiplier == 1.0) & (table.kind == "noise term")]["value"].to_numpy()
    np.testing.assert_allclose(term, lp.noise_term(c, R, E, V), rtol=1e-12)
    li_bound = cv.li_fedavg_bound(c, R, E, G2=info["G2"], dist2=cv.distance2(
        {k: torch.zeros_like(v) for k, v in c.w_star.items()}, c.w_star))["bound"].to_numpy()
    bound = table[(table.noise_multiplier == 1.0) & (table.kind == "bound")]["value"].to_numpy()
    np.testing.assert_allclose(bound, li_bound + term, rtol=1e-12)
    assert info["max_update_norm"][1.0] <= info["clip"]
    assert info["epsilon"][1.0] == flu.privacy.epsilon(1.0, 1.0, R, DELTA)
    measured = table[(table.noise_multiplier == 1.0) & (table.kind == "measured")]["value"].to_numpy()
    assert (measured <= bound).all()
    with pytest.raises(ValueError, match="seeds"):
        lp.dp_li_experiment(fed, model, num_rounds=2, seeds=(), constants=c)


# ------------------------------------------------------------------ aggregation

def test_aggregation_costs_three_ways(leak):
    g = torch.Generator().manual_seed(0)
    ups = [torch.randn(300, generator=g) for _ in range(5)]
    costs, tr = lp.aggregation_costs(ups, dropped=(2,))
    assert costs.method.tolist() == ["plaintext", "masking", "CKKS"]
    c = costs.set_index("method")
    assert c.loc["plaintext", "bytes"] == 4 * 300 * 4 and c.loc["plaintext", "vs_plaintext"] == 1.0
    assert c.loc["masking", "bytes"] == tr["masking"]["bytes"] and c.loc["CKKS", "bytes"] == tr["CKKS"]["bytes"]
    assert c.loc["masking", "max_error"] <= 4 * 2.0 ** -25
    assert c.loc["CKKS", "max_error"] <= tr["CKKS"]["error_bound"]
    assert tr["masking"]["dropped"] == [2] and tr["CKKS"]["clients"] == 4
    with pytest.raises(ValueError, match="updates"):
        lp.aggregation_costs([ups[0]])


def test_masked_uploads_look_uniform_and_raw_values_do_not():
    g = torch.Generator().manual_seed(1)
    ups = [0.01 * torch.randn(2000, generator=g) for _ in range(3)]
    _, tr = flu.privacy.secure_sum(ups, seed=0)
    vals = lp.masked_values(tr)
    assert set(vals.client) == {0, 1, 2} and vals.value.between(0, 1).all()
    assert (vals[vals.client == 0].value.to_numpy() == tr["masked"][0].astype(np.float64) / 2.0 ** 64).all()
    assert (lp.uniformity(vals).p_value > 1e-4).all()
    skewed = pd.DataFrame({"client": 0, "value": np.linspace(0.0, 0.1, 500)})
    assert lp.uniformity(skewed).p_value.iloc[0] < 1e-6
    assert len(lp.masked_values(tr, [1], limit=10)) == 10
    with pytest.raises(ValueError, match="transcript"):
        lp.masked_values({})
    with pytest.raises(ValueError, match="clients"):
        lp.masked_values(tr, [7])
