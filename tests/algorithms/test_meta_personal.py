"""Exact checks of the meta-learning and personalisation algorithms on quadratic clients (float64).

Client i holds least-squares data and F_i(w) = mean_j (x_j^T w - y_j)^2, with Hessian
H_i = 2 X_i^T X_i / n_i and optimum e_i = H_i^-1 (2 X_i^T y_i / n_i), so grad F_i(w) = H_i (w - e_i).
The closed forms below are numpy written from the papers' update rules; ``flu.run`` is the
simulated side. They never share code.
"""
import numpy as np
import pytest
import torch
from torch import nn

import fedlab_utils as flu

D = 3
SIZES = (12, 20, 8, 30)


def make_problem(seed=1):
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=D)
    clients = []
    for i, n in enumerate(SIZES):
        X = rng.normal(size=(n, D)) * rng.uniform(0.4, 1.2, D) + 0.3 * i
        y = X @ (w0 + rng.normal(size=D)) + 0.1 * rng.normal(size=n)
        clients.append((X, y))
    p = np.array(SIZES, dtype=float) / sum(SIZES)
    H = [2 * X.T @ X / len(y) for X, y in clients]
    e = [np.linalg.solve(X.T @ X, X.T @ y) for X, y in clients]
    return clients, p, H, e


CLIENTS, P, H, E = make_problem()
I = np.eye(D)
FED = flu.data.Federation.from_clients([(torch.tensor(X), torch.tensor(y)) for X, y in CLIENTS])


def fedavg_fixed_point(curv, lr, steps):
    """Fixed point of FedAvg with exact local GD on the quadratics (w - e_i)^T C_i (w - e_i) / 2 +
    const (gradient C_i (w - e_i)): sum_i p_i (I - (I - lr C_i)^tau_i) (x - e_i) = 0."""
    M = [I - np.linalg.matrix_power(I - lr * C, t) for C, t in zip(curv, steps)]
    return np.linalg.solve(sum(p * m for p, m in zip(P, M)), sum(p * m @ e for p, m, e in zip(P, M, E)))


def simulate(algorithm, rounds, lr, steps, **kw):
    hist = flu.run(flu.models.linear(D), FED, algorithm=algorithm, num_rounds=rounds, local_steps=steps,
                   client_lr=lr, batch_size=None, loss="mse", record_params=True, eval_every=rounds,
                   progress=False, **kw)
    return np.array([t["head.weight"].numpy()[0] for t in hist.trajectory]), hist


A = 0.05  # inner_lr
B_META = [(I - A * h) @ h @ (I - A * h) for h in H]   # Per-FedAvg's curvatures
C_FO = [h @ (I - A * h) for h in H]                   # Per-FedAvg (FO)'s


def meta_minimiser():
    """argmin sum_i p_i F_i(w - a grad F_i(w)): F_i(w - a H_i (w - e_i)) is the quadratic
    (w - e_i)^T (I - a H_i) H_i (I - a H_i) (w - e_i) / 2 + const."""
    return np.linalg.solve(sum(p * b for p, b in zip(P, B_META)), sum(p * b @ e for p, b, e in zip(P, B_META, E)))


@pytest.mark.parametrize("variant", ["exact", "hf"])
def test_perfedavg_one_step_converges_to_the_meta_objective_minimiser(variant):
    traj, _ = simulate("perfedavg", 300, 0.1, 1, inner_lr=A, variant=variant)
    w = meta_minimiser()
    assert np.linalg.norm(traj[-1] - w) < 1e-8
    # not FedAvg's answer: the meta-objective's minimiser differs from sum p_i F_i's
    w_star = np.linalg.solve(sum(p * h for p, h in zip(P, H)), sum(p * h @ e for p, h, e in zip(P, H, E)))
    assert np.linalg.norm(w - w_star) > 1e-2


def test_perfedavg_local_steps_reach_fedavgs_fixed_point_on_the_meta_curvatures():
    steps = [1, 3, 5, 8]
    traj, _ = simulate("perfedavg", 120, 0.1, steps, inner_lr=A, variant="exact")
    assert np.linalg.norm(traj[-1] - fedavg_fixed_point(B_META, 0.1, steps)) < 1e-8
    assert np.linalg.norm(traj[-1] - meta_minimiser()) > 1e-3   # heterogeneous steps move it


def test_perfedavg_first_order_converges_to_a_different_closed_form_point():
    steps = [1, 3, 5, 8]
    traj, _ = simulate("perfedavg", 120, 0.1, steps, inner_lr=A, variant="fo")
    fo = fedavg_fixed_point(C_FO, 0.1, steps)
    assert np.linalg.norm(traj[-1] - fo) < 1e-8
    assert np.linalg.norm(fo - fedavg_fixed_point(B_META, 0.1, steps)) > 1e-3


def test_perfedavg_hf_is_the_exact_hvp_up_to_rounding_on_a_quadratic():
    a, _ = simulate("perfedavg", 5, 0.1, 2, inner_lr=A, variant="exact")
    b, _ = simulate("perfedavg", 5, 0.1, 2, inner_lr=A, variant="hf", hvp_delta=1e-2)
    np.testing.assert_allclose(a, b, atol=1e-10)


def test_perfedavg_one_round_by_hand_with_minibatches_on_both_backends():
    """With batch_size=b the three gradients use independent minibatches; both backends agree."""
    kw = dict(algorithm="perfedavg", num_rounds=2, local_steps=3, client_lr=0.1, batch_size=4, loss="mse",
              progress=False, inner_lr=A, variant="exact")
    v = flu.run(flu.models.linear(D), FED, backend="vectorized", **kw)
    loop = flu.run(flu.models.linear(D), FED, backend="loop", **kw)
    torch.testing.assert_close(v.params["head.weight"], loop.params["head.weight"], atol=1e-12, rtol=0)
    fo = flu.run(flu.models.linear(D), FED, **{**kw, "variant": "fo"})
    assert not torch.equal(fo.params["head.weight"], v.params["head.weight"])


def test_ditto_personal_models_are_the_regularised_client_optima():
    lam, lr, R = 0.7, 0.05, 6
    traj, hist = simulate("ditto", R, lr, 400, lam=lam)
    x_R = traj[R - 1]  # the global model the clients received in round R
    v = hist.personal_params["head.weight"].numpy()[:, 0]
    for i in range(len(SIZES)):
        want = np.linalg.solve(H[i] + lam * I, H[i] @ E[i] + lam * x_R)
        assert np.linalg.norm(v[i] - want) < 1e-8
    # the global model is FedAvg's, bit for bit
    _, fedavg = simulate("fedavg", R, lr, 400)
    torch.testing.assert_close(hist.params["head.weight"], fedavg.params["head.weight"], atol=0, rtol=0)


def test_ditto_with_lam_zero_is_local_training_and_personal_metrics_are_recorded():
    _, hist = simulate("ditto", 2, 0.1, 1500, lam=0.0)
    v = hist.personal_params["head.weight"].numpy()[:, 0]
    np.testing.assert_allclose(v, np.array(E), atol=1e-8)
    m = hist.metrics
    personal = m[(m.model == "personal") & (m.split == "train") & (m.metric == "loss") & (m["round"] == 2)]
    # each client's personal train loss is its own minimum (the least-squares residual)
    for i, (X, y) in enumerate(CLIENTS):
        r = X @ E[i] - y
        assert abs(float(personal[personal.client == i].value.iloc[0]) - float(np.mean(r ** 2))) < 1e-10


def test_reptile_is_fedavg_bit_for_bit():
    for steps in (1, 4, [1, 3, 5, 8]):
        kw = dict(num_rounds=4, local_steps=steps, client_lr=0.05, batch_size=5, server_lr=0.7, progress=False,
                  loss="mse")
        a = flu.run(flu.models.linear(D), FED, algorithm="reptile", **kw)
        b = flu.run(flu.models.linear(D), FED, algorithm="fedavg", **kw)
        assert torch.equal(a.params["head.weight"], b.params["head.weight"])
        assert a.metrics.equals(b.metrics)


def test_apfl_mix_zero_is_fedavg_and_mix_one_trains_the_personal_model_alone():
    kw = dict(num_rounds=3, local_steps=4, client_lr=0.05, batch_size=None, progress=False, loss="mse")
    a = flu.run(flu.models.linear(D), FED, algorithm="apfl", mix=0.0, **kw)
    b = flu.run(flu.models.linear(D), FED, algorithm="fedavg", **kw)
    torch.testing.assert_close(a.params["head.weight"], b.params["head.weight"], atol=0, rtol=0)
    # mix = 0: the personal model is the global one
    torch.testing.assert_close(a.personal_params["head.weight"][0], a.params["head.weight"], atol=0, rtol=0)
    one = flu.run(flu.models.linear(D), FED, algorithm="apfl", mix=1.0,
                  **{**kw, "num_rounds": 1, "local_steps": 1500, "client_lr": 0.1})
    v = one.personal_params["head.weight"].numpy()[:, 0]
    np.testing.assert_allclose(v, np.array(E), atol=1e-6)   # local GD from x_0 on F_i alone


def test_apfl_one_round_by_hand():
    mix, lr, T = 0.3, 0.05, 3
    hist = flu.run(flu.models.linear(D), FED, algorithm="apfl", mix=mix, num_rounds=1, local_steps=T,
                   client_lr=lr, batch_size=None, loss="mse", progress=False)
    x0 = np.zeros(D)
    ys = []
    for i in range(len(SIZES)):
        w, v = x0.copy(), x0.copy()
        for _ in range(T):
            g_w = H[i] @ (w - E[i])
            g_v = H[i] @ (mix * v + (1 - mix) * w - E[i])
            w, v = w - lr * g_w, v - lr * mix * g_v
        ys.append(w)
        got = hist.personal_params["head.weight"].numpy()[i, 0]
        x1 = sum(p * y for p, y in zip(P, ys)) if i == len(SIZES) - 1 else None
        np.testing.assert_allclose(hist.client_state["personal.head.weight"].numpy()[i, 0], v, atol=1e-12)
    x1 = sum(p * y for p, y in zip(P, ys))
    np.testing.assert_allclose(hist.params["head.weight"].numpy()[0], x1, atol=1e-12)
    np.testing.assert_allclose(hist.personal_params["head.weight"].numpy()[:, 0],
                               mix * hist.client_state["personal.head.weight"].numpy()[:, 0] + (1 - mix) * x1,
                               atol=1e-12)


# ---------------------------------------------------------------- FOMAML

def test_fomaml_one_step_by_hand_on_the_support_query_split():
    a, lr = 0.1, 0.05
    hist = flu.run(flu.models.linear(D), FED, algorithm="fomaml", num_rounds=1, local_steps=2, client_lr=lr,
                   batch_size=None, loss="mse", progress=False, inner_lr=a, inner_steps=2, support_fraction=0.25)
    # the split: support round(f n_i) examples first in the client's seeded permutation
    from fedlab_utils._core.random import SPLIT, stream
    ys = []
    for i, (X, y) in enumerate(CLIENTS):
        n = len(y)
        s = min(max(round(0.25 * n), 1), n - 1)
        perm = torch.randperm(n, generator=stream(0, i, SPLIT)).numpy()
        Xs, ys_, Xq, yq = X[perm[:s]], y[perm[:s]], X[perm[s:]], y[perm[s:]]
        g = lambda w, X_, y_: 2 * X_.T @ (X_ @ w - y_) / len(y_)
        w = np.zeros(D)
        for _ in range(2):
            phi = w.copy()
            for _ in range(2):
                phi = phi - a * g(phi, Xs, ys_)
            w = w - lr * g(phi, Xq, yq)
        ys.append(w)
    np.testing.assert_allclose(hist.params["head.weight"].numpy()[0], sum(p * y for p, y in zip(P, ys)), atol=1e-12)


# ---------------------------------------------------------------- FedRep / FedPer / LG-FedAvg / FedBABU

class TwoLayer(nn.Module):
    """A linear representation x -> B^T x (d -> k) and a head (k -> 1), no biases."""

    def __init__(self, d, k, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.body = nn.Linear(d, k, bias=False, dtype=torch.float64)
        self.head = nn.Linear(k, 1, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.body.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64) / d ** 0.5)
            self.head.weight.copy_(torch.randn(1, k, generator=g, dtype=torch.float64) / k ** 0.5)

    def forward(self, x):
        return self.head(self.body(x))


def principal_angle_distance(U, V):
    """||P_U^perp Q_V||_2 for column spaces (Collins et al. 2021's dist)."""
    Qu, _ = np.linalg.qr(U)
    Qv, _ = np.linalg.qr(V)
    return float(np.linalg.norm((np.eye(len(Qu)) - Qu @ Qu.T) @ Qv, 2))


def linear_representation(N=20, n=40, d=8, k=2, seed=3):
    rng = np.random.default_rng(seed)
    B_star, _ = np.linalg.qr(rng.normal(size=(d, k)))
    clients = []
    for _ in range(N):
        X = rng.normal(size=(n, d))
        clients.append((torch.tensor(X), torch.tensor(X @ B_star @ rng.normal(size=k))))
    return flu.data.Federation.from_clients(clients), B_star


def test_fedrep_recovers_the_shared_subspace_of_a_noiseless_linear_representation():
    fed, B_star = linear_representation()
    model = TwoLayer(8, 2)
    start = principal_angle_distance(model.body.weight.detach().numpy().T, B_star)
    hist = flu.run(model, fed, algorithm="fedrep", num_rounds=60, local_steps=5, head_steps=10, client_lr=0.05,
                   batch_size=None, loss="mse", progress=False, clients_per_round=10, eval_every=60,
                   record_params=True)
    dists = [principal_angle_distance(t["body.weight"].numpy().T, B_star) for t in hist.trajectory]
    assert start > 0.5 and dists[-1] < 0.05 and dists[-1] < dists[len(dists) // 2] < start
    # personal heads fit each client: the personal train loss falls far below the global one
    m = hist.metrics
    last = m[(m["round"] == 60) & (m.split == "train") & (m.metric == "loss") & m.client.isna()]
    assert float(last[last.model == "personal"].value.iloc[0]) < 0.01 * float(last[last.model == "global"].value.iloc[0])


def test_heads_and_bodies_stay_where_each_method_says_and_bytes_count_only_what_travels():
    fed, _ = linear_representation(N=4, n=10)
    model = TwoLayer(8, 2)
    body_bytes, head_bytes = 16 * 8, 2 * 8
    kw = dict(num_rounds=2, local_steps=2, client_lr=0.05, batch_size=None, loss="mse", progress=False)
    runs = {a: flu.run(model, fed, algorithm=a, **kw) for a in ("fedavg", "fedper", "fedrep", "lg_fedavg", "fedbabu")}
    up = {a: int(h.rounds.bytes_up.iloc[0]) for a, h in runs.items()}
    assert up == {"fedavg": 4 * (body_bytes + head_bytes), "fedper": 4 * body_bytes, "fedrep": 4 * body_bytes,
                  "lg_fedavg": 4 * head_bytes, "fedbabu": 4 * body_bytes}
    h0 = model.head.weight.detach()
    for a in ("fedper", "fedrep", "fedbabu"):   # the global head never moves
        assert torch.equal(runs[a].params["head.weight"], h0)
    assert torch.equal(runs["lg_fedavg"].params["body.weight"], model.body.weight.detach())
    assert set(runs["fedper"].personal_params) == {"head.weight"}
    assert set(runs["lg_fedavg"].personal_params) == {"body.weight"}
    assert runs["fedbabu"].personal_params is None and runs["fedavg"].personal_params is None
    assert not (runs["fedbabu"].metrics.model == "personal").any()


def test_personal_state_persists_under_partial_participation_and_resumes_exactly(tmp_path):
    fed, _ = linear_representation(N=6, n=10)
    model = TwoLayer(8, 2)
    kw = dict(algorithm="ditto", lam=0.5, local_steps=2, client_lr=0.05, batch_size=4, loss="mse", progress=False,
              clients_per_round=2)
    one = flu.run(model, fed, num_rounds=1, **kw)
    changed = [i for i in range(6) if not torch.equal(one.personal_params["body.weight"][i], model.body.weight.detach())]
    assert len(changed) == 2   # only the two selected clients moved their personal model
    full = flu.run(model, fed, num_rounds=5, **kw)
    path = tmp_path / "ck.pt"
    flu.run(model, fed, num_rounds=3, checkpoint=path, **kw)
    resumed = flu.run(model, fed, num_rounds=5, checkpoint=path, resume=path, **kw)
    assert resumed.metrics.equals(full.metrics) and resumed.rounds.equals(full.rounds)
    for k in full.personal_params:
        assert torch.equal(resumed.personal_params[k], full.personal_params[k])
    loaded = flu.History.load(path)
    assert torch.equal(loaded.personal_params["head.weight"], full.personal_params["head.weight"])


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("algorithm, options, name", [
    ("fomaml", {"inner_lr": 0.0}, "inner_lr"), ("fomaml", {"inner_steps": 0}, "inner_steps"),
    ("fomaml", {"support_fraction": 1.0}, "support_fraction"),
    ("fomaml", {"support_fraction": 0.0}, "support_fraction"), ("perfedavg", {"inner_lr": -1.0}, "inner_lr"),
    ("perfedavg", {"variant": "second"}, "variant"), ("perfedavg", {"hvp_delta": 0.0}, "hvp_delta"),
    ("ditto", {"lam": -0.1}, "lam"), ("apfl", {"mix": 1.5}, "mix"), ("apfl", {"mix": -0.1}, "mix"),
    ("fedrep", {"head_steps": 0}, "head_steps"), ("fedavg", {"lam": 0.1}, "lam"),
])
def test_bad_options_name_the_parameter(algorithm, options, name):
    with pytest.raises(ValueError, match=name):
        flu.run(flu.models.linear(D), FED, algorithm=algorithm, num_rounds=1, loss="mse", progress=False, **options)


@pytest.mark.parametrize("algorithm", ["fedper", "fedrep", "lg_fedavg", "fedbabu"])
def test_a_method_needing_a_body_head_split_refuses_a_model_without_one(algorithm):
    with pytest.raises(ValueError, match="model"):
        flu.run(flu.models.linear(D), FED, algorithm=algorithm, num_rounds=1, loss="mse", progress=False)
    fed, _ = linear_representation(N=2, n=5)
    with pytest.raises(ValueError, match="body and head"):   # a linear probe trains the head only
        flu.run(flu.models.mlp(8, 4, 1, dtype=torch.float64), fed, algorithm=algorithm, num_rounds=1, loss="mse",
                progress=False, finetune="linear_probe")


def test_meta_and_personal_methods_refuse_lora_and_mixed_modes():
    fed, _ = linear_representation(N=2, n=5)
    model = flu.models.mlp(8, 4, 1, dtype=torch.float64)
    for alg in ("perfedavg", "ditto"):
        with pytest.raises(ValueError, match="finetune"):
            flu.run(model, fed, algorithm=alg, num_rounds=1, loss="mse", progress=False, finetune="lora")
        with pytest.raises(ValueError, match="finetune"):
            flu.run(model, fed, algorithm=alg, num_rounds=1, loss="mse", progress=False, finetune=["full", "linear_probe"])


def test_fomaml_refuses_a_client_too_small_to_split():
    fed = flu.data.Federation.from_clients([(torch.ones(1, D, dtype=torch.float64), torch.ones(1, dtype=torch.float64)),
                                            (torch.ones(3, D, dtype=torch.float64), torch.ones(3, dtype=torch.float64))])
    with pytest.raises(ValueError, match="support_fraction"):
        flu.run(flu.models.linear(D), fed, algorithm="fomaml", num_rounds=1, loss="mse", progress=False)


def test_compressed_uploads_count_only_what_travels():
    fed, _ = linear_representation(N=4, n=10)
    model = TwoLayer(8, 2)
    kw = dict(num_rounds=2, local_steps=2, client_lr=0.05, batch_size=None, loss="mse", progress=False,
              compression=flu.systems.Compression("float16"))
    per = flu.run(model, fed, algorithm="fedper", **kw)
    lg = flu.run(model, fed, algorithm="lg_fedavg", **kw)
    assert int(per.rounds.bytes_up.iloc[0]) == 4 * 16 * 2 and int(lg.rounds.bytes_up.iloc[0]) == 4 * 2 * 2
    topk = flu.run(model, fed, algorithm="fedrep", **{**kw, "compression": flu.systems.Compression("topk", fraction=1.0)})
    plain = flu.run(model, fed, algorithm="fedrep", **{k: v for k, v in kw.items() if k != "compression"})
    assert topk.rounds.bytes_up.equals(plain.rounds.bytes_up)
    assert torch.equal(topk.params["body.weight"], plain.params["body.weight"])


@pytest.mark.parametrize("algorithm, options", [("ditto", {"lam": 0.3}), ("fedrep", {}), ("apfl", {"mix": 0.4}),
                                                ("lg_fedavg", {})])
def test_personal_metrics_equal_personalize_from_the_personal_models_at_step_zero(algorithm, options):
    """The engine's model="personal" rows and flu.evaluation.personalize(start="personal") at
    step 0 evaluate the same per-client models (two code paths)."""
    gen = torch.Generator().manual_seed(5)
    clients = [(torch.randn(n, 4, dtype=torch.float64) + i, torch.randint(0, 3, (n,), generator=gen))
               for i, n in enumerate((12, 7, 15, 9))]
    fed = flu.data.Federation.from_clients(clients, test=[(X[:5], y[:5]) for X, y in clients])
    hist = flu.run(flu.models.mlp(4, 6, 3, dtype=torch.float64), fed, algorithm=algorithm, num_rounds=3,
                   local_steps=3, client_lr=0.1, batch_size=4, progress=False, **options)
    m = hist.metrics
    engine = m[(m["round"] == 3) & (m.model == "personal") & (m.split == "test") & m.client.notna()]
    table = flu.evaluation.personalize(hist, fed, steps=(0,), start="personal")
    for metric in ("loss", "accuracy"):
        a = engine[engine.metric == metric].set_index("client").value.sort_index()
        b = table[table.metric == metric].set_index("client").value.sort_index()
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-12)


@pytest.mark.parametrize("algorithm", ["ditto", "fedrep", "perfedavg", "fomaml"])
def test_meta_and_personal_methods_run_on_the_virtual_clock(algorithm):
    fed, _ = linear_representation(N=4, n=10)
    sim = flu.systems.Simulation(profiles=flu.systems.profiles("phones", 4, seed=0), seed=0)
    hist = flu.run(TwoLayer(8, 2), fed, algorithm=algorithm, num_rounds=2, local_steps=2, client_lr=0.05,
                   batch_size=4, loss="mse", progress=False, systems=sim)
    assert (hist.rounds.virtual_time > 0).all()
    per_client = 16 * 8 if algorithm == "fedrep" else (16 + 2) * 8   # FedRep's head stays
    assert (hist.rounds.bytes_up == hist.rounds.clients_completed * per_client).all()
