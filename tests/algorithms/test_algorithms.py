"""Algorithms and schedules: rules checked round by round against numpy written from the papers,
backends agreeing, bytes, options and bad input. Fixed points are in test_fixed_points.py."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils import algorithms as algs
from fedlab_utils import schedules

LABELS = {"fedavg": "FedAvg", "fedprox": "FedProx", "scaffold": "SCAFFOLD", "fednova": "FedNova",
          "feddyn": "FedDyn", "fedavgm": "FedAvgM", "fedadam": "FedAdam", "fedyogi": "FedYogi",
          "fedadagrad": "FedAdagrad", "reptile": "Reptile", "fomaml": "FedMeta (FOMAML)", "perfedavg": "Per-FedAvg",
          "fedper": "FedPer", "fedrep": "FedRep", "fedbabu": "FedBABU", "lg_fedavg": "LG-FedAvg", "ditto": "Ditto",
          "apfl": "APFL"}


def test_registry_names_labels_and_docs():
    assert set(algs.REGISTRY) == set(LABELS)
    for name, build in algs.REGISTRY.items():
        alg = build()
        assert isinstance(alg, algs.Algorithm)
        assert alg.name == name and alg.label == LABELS[name]
        assert algs.get(name).name == name
        doc = build.__doc__
        assert doc and any(year in doc for year in ("2017", "2018", "2019", "2020", "2021", "2022")), name
    assert algs.fedprox().options.as_dict() == {"mu": 0.01}
    assert algs.feddyn().options.as_dict() == {"alpha": 0.01}
    assert algs.fedavgm().options.as_dict() == {"server_momentum": 0.9}
    for name in ("fedadam", "fedyogi", "fedadagrad"):
        alg = algs.REGISTRY[name]()
        assert alg.options.as_dict() == {"beta1": 0.9, "beta2": 0.99, "tau": 1e-3} and alg.default_server_lr == 1e-2
    assert algs.scaffold().broadcast == ("c",)


# ------------------------------------------------------------------ least squares by hand

D = 3
SIZES = (6, 9, 14, 5, 11)
STEPS = [1, 4, 2, 3, 4]


def lsq_clients(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(SIZES):
        X = rng.normal(size=(n, D)) + 0.4 * i
        out.append((X, X @ rng.normal(size=D) + 0.1 * rng.normal(size=n)))
    return out


CLIENTS = lsq_clients()
A = [X.T @ X / len(y) for X, y in CLIENTS]
B = [X.T @ y / len(y) for X, y in CLIENTS]
FED = flu.data.Federation.from_clients([(torch.tensor(X), torch.tensor(y)) for X, y in CLIENTS])


def grad(i, w):
    return 2 * A[i] @ w - 2 * B[i]


def hand_lr(rnd, t):
    """The schedule used below, written out: inverse_time(0.08, 0.2, local_steps=4)."""
    return 0.08 / (1 + 0.2 * ((rnd - 1) * 4 + t))


SCHEDULE = schedules.inverse_time(0.08, 0.2, local_steps=4)


def local_gd(i, x, rnd, shift=0.0, pull=0.0):
    """STEPS[i] GD steps from x on F_i(w) + <shift, w> + pull/2 ||w - x||^2; returns (y, sum of lrs)."""
    w = x.copy()
    for t in range(STEPS[i]):
        w = w - hand_lr(rnd, t) * (grad(i, w) + shift + pull * (w - x))
    return w, sum(hand_lr(rnd, t) for t in range(STEPS[i]))


def population(weights):
    n = np.array(SIZES, dtype=float)
    return n / n.sum() if weights == "samples" else np.full(len(n), 1 / len(n))


def selection(rnd, k, p, sampling, seed):
    """Clients of a round from the engine's sampler (tested in test_engine); weights by hand."""
    if k is None:
        return list(range(len(p))), p
    sel, _ = flu.engine.select_clients(len(p), k, torch.tensor(p), sampling, seed, rnd)
    sel = sel.tolist()
    w = p[sel] / p[sel].sum() if sampling == "uniform" else p[sel] * len(p) / k
    return sel, w


def run_lsq(name, rounds, k, sampling="uniform", weights="samples", seed=2, **kw):
    hist = flu.run(flu.models.linear(D), FED, algorithm=name, num_rounds=rounds, local_steps=STEPS,
                   client_lr=SCHEDULE, batch_size=None, loss="mse", clients_per_round=k, sampling=sampling,
                   weights=weights, record_params=True, eval_every=rounds, progress=False, seed=seed, **kw)
    return np.array([t["head.weight"].numpy()[0] for t in hist.trajectory]), hist


PARTICIPATION = [(None, "uniform", "samples"), (3, "uniform", "samples"), (3, "li_scheme_2", "samples"),
                 (None, "uniform", "uniform")]


@pytest.mark.parametrize("k, sampling, weights", PARTICIPATION)
def test_scaffold_rounds_by_hand(k, sampling, weights):
    rounds, server_lr, seed = 4, 0.8, 2
    traj, hist = run_lsq("scaffold", rounds, k, sampling, weights, seed, server_lr=server_lr)
    p = population(weights)
    x, c, ci = np.zeros(D), np.zeros(D), np.zeros((len(p), D))
    expected = [x]
    for rnd in range(1, rounds + 1):
        sel, w = selection(rnd, k, p, sampling, seed)
        step, dc = np.zeros(D), np.zeros(D)
        for i, wi in zip(sel, w):
            y, lr_sum = local_gd(i, x, rnd, shift=c - ci[i])
            new = ci[i] - c + (x - y) / lr_sum          # option II
            step += wi * (x - y)
            dc += p[i] * (new - ci[i])                 # population weights
            ci[i] = new
        x, c = x - server_lr * step, c + dc
        expected.append(x)
    np.testing.assert_allclose(traj, expected, atol=1e-12, rtol=0)
    np.testing.assert_allclose(hist.client_state["c"].numpy(), ci, atol=1e-12, rtol=0)
    K = len(SIZES) if k is None else k
    assert (hist.rounds.bytes_up == 2 * K * D * 8).all()     # delta_i and c_i+ - c_i
    assert (hist.rounds.bytes_down == 2 * K * D * 8).all()   # x and c


@pytest.mark.parametrize("k, sampling, weights", PARTICIPATION)
def test_feddyn_rounds_by_hand(k, sampling, weights):
    rounds, alpha, seed = 4, 0.5, 2
    traj, hist = run_lsq("feddyn", rounds, k, sampling, weights, seed, alpha=alpha)
    p = population(weights)
    x, h, g = np.zeros(D), np.zeros(D), np.zeros((len(p), D))
    expected = [x]
    for rnd in range(1, rounds + 1):
        sel, w = selection(rnd, k, p, sampling, seed)
        ys = {}
        for i in sel:
            ys[i], _ = local_gd(i, x, rnd, shift=-g[i], pull=alpha)
            g[i] = g[i] - alpha * (ys[i] - x)
        h = h - alpha * sum(p[i] * (ys[i] - x) for i in sel)
        if sampling == "uniform":  # weights sum to 1: the paper's theta = mean_k theta_k - h / alpha
            x = sum(wi * ys[i] for i, wi in zip(sel, w)) - h / alpha
        else:                      # li_scheme_2: x - (sum_i w_i (x - y_i) + h / alpha)
            x = x - (sum(wi * (x - ys[i]) for i, wi in zip(sel, w)) + h / alpha)
        expected.append(x)
    np.testing.assert_allclose(traj, expected, atol=1e-12, rtol=0)
    np.testing.assert_allclose(hist.client_state["g"].numpy(), g, atol=1e-12, rtol=0)
    K = len(SIZES) if k is None else k
    assert (hist.rounds.bytes_up == K * D * 8).all() and (hist.rounds.bytes_down == K * D * 8).all()


def test_feddyn_is_the_paper_with_uniform_weights():
    """Acar et al. 2021, Algorithm 1 verbatim (m clients, all active, p_i = 1/m)."""
    alpha, m = 0.3, len(SIZES)
    hist = flu.run(flu.models.linear(D), FED, algorithm="feddyn", alpha=alpha, num_rounds=3, local_steps=STEPS,
                   client_lr=SCHEDULE, batch_size=None, loss="mse", weights="uniform", progress=False)
    theta, h, grads = np.zeros(D), np.zeros(D), np.zeros((m, D))
    for t in range(1, 4):
        thetas = []
        for k in range(m):
            th = local_gd(k, theta, t, shift=-grads[k], pull=alpha)[0]
            grads[k] = grads[k] - alpha * (th - theta)
            thetas.append(th)
        h = h - alpha / m * sum(th - theta for th in thetas)
        theta = np.mean(thetas, axis=0) - h / alpha
    np.testing.assert_allclose(hist.params["head.weight"].numpy()[0], theta, atol=1e-12, rtol=0)


@pytest.mark.parametrize("k, sampling, weights", PARTICIPATION)
def test_fednova_rounds_by_hand(k, sampling, weights):
    rounds, server_lr, seed = 4, 0.9, 2
    traj, hist = run_lsq("fednova", rounds, k, sampling, weights, seed, server_lr=server_lr)
    p = population(weights)
    x = np.zeros(D)
    expected = [x]
    for rnd in range(1, rounds + 1):
        sel, w = selection(rnd, k, p, sampling, seed)
        d, tau_eff = np.zeros(D), 0.0
        for i, wi in zip(sel, w):
            y, a = local_gd(i, x, rnd)           # a = ||eta a_i||_1, the sum of the step sizes
            d += wi * (x - y) / a
            tau_eff += wi * a
        x = x - server_lr * tau_eff * d
        expected.append(x)
    np.testing.assert_allclose(traj, expected, atol=1e-12, rtol=0)
    K = len(SIZES) if k is None else k
    assert (hist.rounds.bytes_up == K * D * 8 + K * 8).all()


def test_fednova_constant_lr_is_the_tau_rule():
    """Constant rate: x <- x - tau_eff sum_i p_i (x - y_i) / tau_i with tau_eff = sum_i p_i tau_i."""
    hist = flu.run(flu.models.linear(D), FED, algorithm="fednova", num_rounds=2, local_steps=STEPS,
                   client_lr=0.05, batch_size=None, loss="mse", record_params=True, progress=False)
    p, x = population("samples"), np.zeros(D)
    for _ in range(2):
        ys = []
        for i in range(len(p)):
            y = x.copy()
            for _ in range(STEPS[i]):
                y = y - 0.05 * grad(i, y)
            ys.append(y)
        x = x - (p @ STEPS) * sum(pi * (x - y) / t for pi, y, t in zip(p, ys, STEPS))
    np.testing.assert_allclose(hist.params["head.weight"].numpy()[0], x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("k, sampling, weights", PARTICIPATION[:2])
def test_fedprox_rounds_by_hand(k, sampling, weights):
    rounds, mu, seed = 3, 0.7, 2
    traj, _ = run_lsq("fedprox", rounds, k, sampling, weights, seed, mu=mu)
    p = population(weights)
    x = np.zeros(D)
    expected = [x]
    for rnd in range(1, rounds + 1):
        sel, w = selection(rnd, k, p, sampling, seed)
        x = sum(wi * local_gd(i, x, rnd, pull=mu)[0] for i, wi in zip(sel, w))
        expected.append(x)
    np.testing.assert_allclose(traj, expected, atol=1e-12, rtol=0)


def test_fedprox_default_mu_is_not_fedavg():
    a, _ = run_lsq("fedprox", 2, None)
    b, _ = run_lsq("fedavg", 2, None)
    assert 1e-8 < np.abs(a - b).max() < 1e-2


def test_server_state_travels_and_adaptive_state_does_not():
    for name in ("fedavgm", "fedadam", "fedprox", "fedavg"):
        _, hist = run_lsq(name, 2, 3)
        assert (hist.rounds.bytes_up == 3 * D * 8).all() and (hist.rounds.bytes_down == 3 * D * 8).all()


# ------------------------------------------------------------------ both backends, every algorithm

def classification_clients(gen, sizes=(20, 35, 8, 50, 13), d=4, classes=3):
    return [(torch.randn(n, d, generator=gen, dtype=torch.float64) + i, torch.randint(0, classes, (n,), generator=gen))
            for i, n in enumerate(sizes)]


OPTIONS = {"fedprox": dict(mu=0.1), "feddyn": dict(alpha=0.1), "fedavgm": dict(server_momentum=0.5),
           "fedadam": dict(tau=0.01), "fedyogi": dict(tau=0.01), "fedadagrad": dict(tau=0.01)}


@pytest.mark.parametrize("name", sorted(LABELS))
def test_backends_agree_float64(gen, name):
    fed = flu.data.Federation.from_clients(classification_clients(gen))
    kw = dict(algorithm=name, num_rounds=20, local_steps=[1, 3, 5, 2, 4], client_lr=0.05, batch_size=6,
              clients_per_round=3, progress=False, seed=4, eval_every=20, **OPTIONS.get(name, {}))
    model = flu.models.mlp(4, 5, 3, dtype=torch.float64, seed=3)
    a = flu.run(model, fed, backend="vectorized", **kw)
    b = flu.run(model, fed, backend="loop", **kw)
    stays = {"head": "head.", "body": "body.", "": None}[algs.get(name).stays]  # never moves globally
    for k in a.params:
        torch.testing.assert_close(a.params[k], b.params[k], atol=1e-9, rtol=0)
        assert torch.equal(a.params[k], dict(model.named_parameters())[k]) == (stays is not None and k.startswith(stays))
    for k in a.client_state:
        torch.testing.assert_close(a.client_state[k], b.client_state[k], atol=1e-9, rtol=0)
    pd.testing.assert_frame_equal(a.rounds, b.rounds)


@pytest.mark.parametrize("name", ["scaffold", "feddyn"])
def test_client_state_is_flat_per_client_and_persists(name):
    _, hist = run_lsq(name, 3, 2, seed=1)
    key = "c" if name == "scaffold" else "g"
    state = hist.client_state[key]
    assert state.shape == (len(SIZES), D) and state.dtype == torch.float64
    seen = set()
    for rnd in range(1, 4):
        seen |= set(flu.engine.select_clients(len(SIZES), 2, torch.ones(len(SIZES)) / len(SIZES), "uniform", 1,
                                              rnd)[0].tolist())
    for i in range(len(SIZES)):
        assert bool(state[i].abs().sum() > 0) == (i in seen)


def test_flatten_roundtrip_keeps_names_shapes_dtypes():
    params = {"a": torch.arange(6.0, dtype=torch.float64).reshape(2, 3), "b": torch.ones(4, dtype=torch.float32)}
    vec = algs.flatten(params)
    assert vec.shape == (10,)
    back = algs.unflatten(vec, params)
    for k in params:
        assert back[k].dtype == params[k].dtype and torch.equal(back[k], params[k])
    stacked = {k: torch.stack([v, 2 * v]) for k, v in params.items()}
    flat = algs.flatten_stacked(stacked)
    assert flat.shape == (2, 10)
    back = algs.unflatten(flat, params, stacked=True)
    for k in params:
        assert torch.equal(back[k], stacked[k].to(params[k].dtype))


# ------------------------------------------------------------------ options and bad input

@pytest.mark.parametrize("kwargs, name", [
    (dict(algorithm="fedprox", mu=-0.1), "mu"),
    (dict(algorithm="feddyn", alpha=0.0), "alpha"),
    (dict(algorithm="feddyn", alpha=-1.0), "alpha"),
    (dict(algorithm="fedavgm", server_momentum=1.0), "server_momentum"),
    (dict(algorithm="fedavgm", server_momentum=-0.5), "server_momentum"),
    (dict(algorithm="fedadam", beta1=1.0), "beta1"),
    (dict(algorithm="fedyogi", beta2=-0.1), "beta2"),
    (dict(algorithm="fedadagrad", tau=0.0), "tau"),
    (dict(algorithm="fedadam", tau=-1e-3), "tau"),
    (dict(algorithm="fedprox", alpha=0.1), "alpha"),
    (dict(algorithm="scaffold", mu=0.1), "mu"),
    (dict(algorithm="fedadam", server_momentum=0.9), "server_momentum"),
    (dict(algorithm="fedprox", mu=float("nan")), "mu"),
    (dict(algorithm="fedsgd"), "algorithm"),
    (dict(algorithm="FedProx"), "algorithm"),
    (dict(algorithm="fedavg", server_lr=0.0), "server_lr"),
])
def test_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        flu.run(flu.models.linear(D), FED, num_rounds=1, loss="mse", progress=False, **kwargs)


def test_option_errors_name_the_algorithm():
    with pytest.raises(ValueError, match="fedprox"):
        flu.run(flu.models.linear(D), FED, algorithm="fedprox", alpha=0.1, num_rounds=1, loss="mse", progress=False)


# ------------------------------------------------------------------ schedules

def test_schedule_values():
    assert flu.schedules is schedules
    c = schedules.constant(0.1)
    assert c(1, 0) == 0.1 and c(50, 7) == 0.1
    s = schedules.step_decay(0.1, every=3, factor=0.5)
    assert [s(r, 0) for r in range(1, 8)] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    assert s(4, 9) == 0.05
    it = schedules.inverse_time(0.2, 0.5)
    assert it(1, 3) == 0.2 and it(3, 0) == 0.2 / 2
    it = schedules.inverse_time(0.2, 0.5, local_steps=4)
    assert it(1, 0) == 0.2 and it(2, 1) == 0.2 / (1 + 0.5 * 5)
    li = schedules.li_decay(mu=0.5, gamma=8.0, local_steps=4)
    for rnd, step in [(1, 0), (1, 3), (2, 0), (7, 2)]:
        t = (rnd - 1) * 4 + step
        assert li(rnd, step) == 2 / (0.5 * (8.0 + t))
        assert math.isclose(schedules.inverse_time(2 / (0.5 * 8.0), 1 / 8.0, local_steps=4)(rnd, step),
                            li(rnd, step), rel_tol=1e-14)
    curve = li.curve(3, 4)
    assert curve.shape == (3, 4) and np.all(np.diff(curve.ravel()) < 0)


def test_schedule_names_are_recorded():
    names = {schedules.constant(0.1): "constant(lr=0.1)",
             schedules.step_decay(0.1, 10, 0.5): "step_decay(lr=0.1, every=10, factor=0.5)",
             schedules.inverse_time(0.1, 0.01): "inverse_time(lr0=0.1, decay=0.01)",
             schedules.li_decay(1.0, 20, 5): "li_decay(mu=1, gamma=20, local_steps=5)"}
    for sched, name in names.items():
        assert sched.__name__ == name and repr(sched) == name
    hist = flu.run(flu.models.linear(D), FED, num_rounds=2, local_steps=2, loss="mse", progress=False,
                   client_lr=schedules.step_decay(0.05, 1, 0.5))
    assert hist.config["client_lr"] == "step_decay(lr=0.05, every=1, factor=0.5)"
    import json
    json.dumps(hist.config)


def test_schedule_drives_the_engine():
    """A per-round schedule equals running each round with its own constant rate."""
    sched = schedules.step_decay(0.05, every=1, factor=0.5)
    a = flu.run(flu.models.linear(D), FED, num_rounds=3, local_steps=STEPS, client_lr=sched, batch_size=None,
                loss="mse", progress=False, record_params=True)
    x = np.zeros(D)
    p = population("samples")
    for rnd in (1, 2, 3):
        lr = 0.05 * 0.5 ** (rnd - 1)
        ys = []
        for i in range(len(p)):
            y = x.copy()
            for _ in range(STEPS[i]):
                y = y - lr * grad(i, y)
            ys.append(y)
        x = p @ np.array(ys)
        np.testing.assert_allclose(a.trajectory[rnd]["head.weight"].numpy()[0], x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("build, kwargs, name", [
    (schedules.constant, dict(lr=0.0), "lr"),
    (schedules.constant, dict(lr=float("inf")), "lr"),
    (schedules.step_decay, dict(lr=0.1, every=0, factor=0.5), "every"),
    (schedules.step_decay, dict(lr=0.1, every=2, factor=1.5), "factor"),
    (schedules.step_decay, dict(lr=0.1, every=2, factor=0.0), "factor"),
    (schedules.inverse_time, dict(lr0=-1.0, decay=0.1), "lr0"),
    (schedules.inverse_time, dict(lr0=1.0, decay=-0.1), "decay"),
    (schedules.inverse_time, dict(lr0=1.0, decay=0.1, local_steps=0), "local_steps"),
    (schedules.li_decay, dict(mu=0.0, gamma=10, local_steps=5), "mu"),
    (schedules.li_decay, dict(mu=1.0, gamma=-1, local_steps=5), "gamma"),
    (schedules.li_decay, dict(mu=1.0, gamma=10, local_steps=0), "local_steps"),
])
def test_schedule_bad_arguments(build, kwargs, name):
    with pytest.raises(ValueError, match=name):
        build(**kwargs)


def test_schedule_bad_calls():
    with pytest.raises(ValueError, match="round"):
        schedules.constant(0.1)(0, 0)
    with pytest.raises(ValueError, match="step"):
        schedules.constant(0.1)(1, -1)
    with pytest.raises(TypeError, match="local_steps"):
        schedules.li_decay(1.0, 10, None)
    # an iteration counter shorter than the local work would repeat across rounds
    with pytest.raises(ValueError, match="step"):
        flu.run(flu.models.linear(D), FED, num_rounds=1, local_steps=STEPS, loss="mse", progress=False,
                client_lr=schedules.li_decay(1.0, 10, local_steps=2))
