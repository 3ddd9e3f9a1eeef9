"""The round loop against exact references: centralised GD, local GD, the loop backend, replay."""
import copy
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils.algorithms import Algorithm, ClientResult, local_delta, weighted_sum, sgd_step


def make_clients(gen, sizes=(5, 9, 14, 3), d=4, classes=3, dtype=torch.float64, shift=True):
    clients = []
    for i, n in enumerate(sizes):
        X = torch.randn(n, d, generator=gen, dtype=dtype) + (i if shift else 0)
        y = torch.randint(0, classes, (n,), generator=gen)
        clients.append((X, y))
    return clients


def mlp64(d=4, classes=3):
    return flu.models.mlp(d, 6, classes, dtype=torch.float64, seed=3)


def centralised_gd(model, clients, p, steps, lr, l2=0.0, loss="cross_entropy"):
    """Plain PyTorch: gradient descent on sum_i p_i F_i (+ l2/2 ||W||^2)."""
    model = copy.deepcopy(model)
    for _ in range(steps):
        model.zero_grad()
        total = 0
        for (X, y), pi in zip(clients, p):
            out = model(X)
            if loss == "cross_entropy":
                li = torch.nn.functional.cross_entropy(out, y)
            else:
                li = torch.nn.functional.mse_loss(out.squeeze(-1), y)
            total = total + pi * li
        total = total + l2 / 2 * sum((w ** 2).sum() for n, w in model.named_parameters() if w.dim() >= 2)
        total.backward()
        with torch.no_grad():
            for w in model.parameters():
                w -= lr * w.grad
    return dict(model.named_parameters())


@pytest.mark.parametrize("weights", ["samples", "uniform"])
@pytest.mark.parametrize("backend", ["vectorized", "loop"])
@pytest.mark.parametrize("make_model", [mlp64, lambda: flu.models.logistic(4, 3, dtype=torch.float64)])
def test_one_step_fedavg_is_centralised_gd(gen, weights, backend, make_model):
    clients = make_clients(gen)
    fed = flu.data.Federation.from_clients(clients)
    model = make_model()
    hist = flu.run(model, fed, num_rounds=7, local_steps=1, client_lr=0.3, batch_size=None, weights=weights,
                   l2=0.01, backend=backend, progress=False)
    ref = centralised_gd(model, clients, fed.weights(weights), 7, 0.3, l2=0.01)
    for k, v in ref.items():
        torch.testing.assert_close(hist.params[k], v.detach(), atol=1e-10, rtol=0)


def test_identical_clients_equal_local_gd(gen):
    X, y = make_clients(gen, sizes=(12,))[0]
    fed = flu.data.Federation.from_clients([(X, y)] * 4)
    model = mlp64()
    hist = flu.run(model, fed, num_rounds=3, local_steps=4, client_lr=0.2, batch_size=None, progress=False)
    ref = centralised_gd(model, [(X, y)], [1.0], 12, 0.2)
    for k, v in ref.items():
        torch.testing.assert_close(hist.params[k], v.detach(), atol=1e-10, rtol=0)


def test_mse_and_schedule_match_reference(gen):
    X = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.1 * torch.randn(30, generator=gen, dtype=torch.float64)
    fed = flu.data.Federation.from_clients([(X[:10], y[:10]), (X[10:], y[10:])])
    model = flu.models.linear(3)
    sched = lambda rnd, step: 0.1 / rnd
    hist = flu.run(model, fed, num_rounds=3, local_steps=1, client_lr=sched, batch_size=None, loss="mse",
                   progress=False)
    ref = copy.deepcopy(model)
    for rnd in (1, 2, 3):
        ref = flu.models.linear(3)
        ref.load_state_dict({"head.weight": w} if rnd > 1 else model.state_dict())
        w = centralised_gd(ref, [(X[:10], y[:10]), (X[10:], y[10:])], fed.weights(), 1, 0.1 / rnd, loss="mse")[
            "head.weight"].detach()
    torch.testing.assert_close(hist.params["head.weight"], w, atol=1e-12, rtol=0)


@pytest.mark.parametrize("sampling", ["uniform", "li_scheme_1", "li_scheme_2", "poisson"])
def test_backends_agree_float64(gen, sampling):
    clients = make_clients(gen, sizes=(20, 35, 8, 50, 13))
    fed = flu.data.Federation.from_clients(clients, test=clients)
    kw = dict(num_rounds=20, local_steps=[1, 3, 5, 2, 4], client_lr=0.05, batch_size=6, clients_per_round=3,
              sampling=sampling, l2=1e-3, progress=False, seed=4)
    a = flu.run(mlp64(), fed, backend="vectorized", **kw)
    b = flu.run(mlp64(), fed, backend="loop", **kw)
    for k in a.params:
        torch.testing.assert_close(a.params[k], b.params[k], atol=1e-9, rtol=0)
    pd.testing.assert_frame_equal(a.rounds, b.rounds)


def test_backends_agree_float32_cnn(gen):
    clients = [(torch.randn(n, 64, generator=gen), torch.randint(0, 4, (n,), generator=gen)) for n in (9, 17, 30)]
    fed = flu.data.Federation.from_clients(clients)
    model = flu.models.cnn((1, 8, 8), 4, width=4, features=8)
    kw = dict(num_rounds=5, local_steps=[2, 3, 1], client_lr=0.05, batch_size=8, progress=False)
    a = flu.run(model, fed, backend="vectorized", **kw)
    b = flu.run(model, fed, backend="loop", **kw)
    for k in a.params:
        assert a.params[k].dtype == torch.float32
        torch.testing.assert_close(a.params[k], b.params[k], rtol=1e-5, atol=1e-6)


def test_replay_is_bit_identical_and_seed_matters(gen):
    clients = make_clients(gen, sizes=(20, 35, 8, 50, 13))
    fed = flu.data.Federation.from_clients(clients, test=clients)
    kw = dict(num_rounds=6, local_steps=3, client_lr=0.05, batch_size=4, clients_per_round=2, progress=False)
    a = flu.run(mlp64(), fed, seed=7, **kw)
    b = flu.run(mlp64(), fed, seed=7, **kw)
    c = flu.run(mlp64(), fed, seed=8, **kw)
    pd.testing.assert_frame_equal(a.metrics, b.metrics, check_exact=True)
    pd.testing.assert_frame_equal(a.rounds, b.rounds, check_exact=True)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])
    assert any(not torch.equal(a.params[k], c.params[k]) for k in a.params)


def counter_algorithm():
    """A toy algorithm: FedAvg that also counts, per client, the rounds it took part in."""
    def client(batch):
        return ClientResult(local_delta(batch, batch.train()), state={"count": batch.state["count"] + 1})

    def server(srv):
        return sgd_step(srv.params, weighted_sum(srv.delta, srv.weights), srv.server_lr), srv.server_state

    return Algorithm("counter", client, server, init_client=lambda params, options: {"count": torch.zeros(())})


def test_client_state_persists_under_partial_participation(gen):
    fed = flu.data.Federation.from_clients(make_clients(gen, sizes=(5, 6, 7, 8, 9, 10)))
    hist = flu.run(mlp64(), fed, algorithm=counter_algorithm(), num_rounds=9, local_steps=1, clients_per_round=2,
                   progress=False, seed=3)
    counts = hist.client_state["count"]
    expected = torch.zeros(6)
    for rnd in range(1, 10):
        sel, _ = flu.engine.select_clients(6, 2, torch.full((6,), 1 / 6, dtype=torch.float64), "uniform", 3, rnd)
        expected[sel] += 1
    assert torch.equal(counts.float(), expected)
    assert counts.sum() == 18 and (counts > 0).sum() > 2


def test_head_only_mask_keeps_body_and_counts_bytes(gen):
    fed = flu.data.Federation.from_clients(make_clients(gen))
    model = mlp64()
    hist = flu.run(model, fed, num_rounds=3, local_steps=2, finetune="linear_probe", progress=False)
    for k, v in model.named_parameters():
        if k.startswith("body."):
            assert torch.equal(hist.params[k], v.detach())
        else:
            assert not torch.equal(hist.params[k], v.detach())
    head_bytes = sum(v.numel() * 8 for k, v in model.named_parameters() if k.startswith("head."))
    assert (hist.rounds.bytes_up == 4 * head_bytes).all()
    assert (hist.rounds.trainable_params == head_bytes // 8).all()


def test_history_tables_follow_contract(gen, tmp_path):
    clients = make_clients(gen)
    fed = flu.data.Federation.from_clients(clients, test=[(X[:2], y[:2]) for X, y in clients[:3]] + [
        (clients[3][0][:0], clients[3][1][:0])])
    hist = flu.run(mlp64(), fed, num_rounds=4, eval_every=2, record_params=True, progress=False)
    m = hist.metrics
    assert list(m.columns) == ["round", "client", "split", "model", "metric", "value"]
    assert str(m.client.dtype) == "Int64" and m.value.dtype == np.float64
    assert sorted(m["round"].unique()) == [0, 2, 4]
    test_clients = set(m[(m.split == "test")].client.dropna())
    assert test_clients == {0, 1, 2}  # client 3 has an empty test split
    assert list(hist.rounds["round"]) == [1, 2, 3, 4]
    assert len(hist.trajectory) == 5 and set(hist.trajectory[0]) == set(hist.params)
    path = tmp_path / "h.pt"
    hist.save(path)
    torch.load(path, weights_only=True)
    back = flu.History.load(path, model=mlp64())
    pd.testing.assert_frame_equal(back.metrics, m)
    for k in hist.params:
        assert torch.equal(back.model.state_dict()[k], hist.params[k])
    import json
    json.dumps(hist.config)


def test_divergence_names_round(gen):
    fed = flu.data.Federation.from_clients(make_clients(gen, sizes=(30, 30)))
    with pytest.raises(FloatingPointError, match="round"):
        flu.run(flu.models.linear(4, 1, dtype=torch.float64), flu.data.Federation.from_clients(
            [(X * 100, y.double()) for X, y in make_clients(gen, sizes=(30, 30))]),
            num_rounds=50, client_lr=10.0, loss="mse", progress=False)


@pytest.mark.parametrize("kwargs, name", [
    (dict(algorithm="fedsgd"), "algorithm"),
    (dict(loss="hinge"), "loss"),
    (dict(local_steps=[1, 2]), "local_steps"),
    (dict(local_steps=0), "local_steps"),
    (dict(clients_per_round=9), "clients_per_round"),
    (dict(client_lr=0.0), "client_lr"),
    (dict(client_lr=-1), "client_lr"),
    (dict(batch_size=0), "batch_size"),
    (dict(num_rounds=0), "num_rounds"),
    (dict(sampling="bernoulli"), "sampling"),
    (dict(weights="size"), "weights"),
    (dict(mu=0.1), "mu"),
    (dict(backend="gpu"), "backend"),
    (dict(finetune="none"), "finetune"),
    (dict(finetune="last_layers", num_layers=9), "num_layers"),
])
def test_bad_input(gen, kwargs, name):
    fed = flu.data.Federation.from_clients(make_clients(gen))
    with pytest.raises(ValueError, match=name):
        flu.run(mlp64(), fed, progress=False, **{"num_rounds": 1, **kwargs})


def test_bad_federation(gen):
    X, y = make_clients(gen, sizes=(4,))[0]
    with pytest.raises(ValueError, match="client 1"):
        flu.data.Federation.from_clients([(X, y), (X[:0], y[:0])])
    X2 = X.clone()
    X2[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        flu.data.Federation.from_clients([(X2, y)])


def test_diagnostics_match_independent_per_client_computation(gen):
    clients = make_clients(gen)
    fed = flu.data.Federation.from_clients(clients)
    model = mlp64()
    hist = flu.run(model, fed, num_rounds=3, local_steps=2, batch_size=4, l2=0.01, diagnostics=True,
                   record_params=True, progress=False)
    cols = {"global_loss", "grad_norm", "grad_dissimilarity", "b_dissimilarity", "client_drift", "update_norm"}
    assert cols <= set(hist.rounds.columns)
    names = [k for k, _ in model.named_parameters()]
    losses, grads = flu.convergence.client_objectives(model, hist.trajectory[3], fed, "cross_entropy", 0.01,
                                                      names=names)
    p = torch.as_tensor(fed.weights())
    g = {k: torch.tensordot(p, v, dims=1) for k, v in grads.items()}
    norm = float(torch.sqrt(sum((v ** 2).sum() for v in g.values())))
    last = hist.rounds.iloc[-1]
    assert last.global_loss == pytest.approx(float(p @ losses), rel=1e-10)
    assert last.grad_norm == pytest.approx(norm, rel=1e-8)
    zeta2 = float(sum(p[i] * sum(((grads[k][i] - g[k]) ** 2).sum() for k in g) for i in range(4)))
    assert last.grad_dissimilarity == pytest.approx(zeta2, rel=1e-8)
    step = float(torch.sqrt(sum(((hist.trajectory[2][k] - hist.trajectory[3][k]) ** 2).sum() for k in names)))
    assert last.update_norm == pytest.approx(step, rel=1e-10)


# Run in a fresh interpreter (the tuning is process-wide and done once): spy on ctypes.CDLL, then ask
# glibc (mallinfo2().hblks, the number of mmapped blocks) whether a 48 MB malloc gets its own mmap.
# 48 MB is above glibc's largest dynamic mmap threshold (32 MB) and below the tuned one (64 MB).
ALLOCATOR_PROBE = """
import ctypes, json
opened, real_cdll = [], ctypes.CDLL
def spy(name, *args, **kwargs):
    opened.append(str(name))
    return real_cdll(name, *args, **kwargs)
ctypes.CDLL = spy
import fedlab_utils as flu
libc = real_cdll("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def mmapped(size=48 << 20):
    before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    after = libc.mallinfo2().hblks
    libc.free(block)
    return after > before
out = dict(mmapped_before=mmapped(), first=flu.engine.tune_allocator())
out["libc_opened_first"] = sum("libc.so" in name for name in opened)
out["second"] = flu.engine.tune_allocator()
out["libc_opened_second"] = sum("libc.so" in name for name in opened)
out["mmapped_after"] = mmapped()
print(json.dumps(out))
"""


GLIBC = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's")


def allocator_probe(**env):
    done = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@GLIBC
def test_allocator_tuning_keeps_large_blocks_off_mmap_once_per_process():
    got = allocator_probe(FEDLAB_NO_MALLOPT="0")   # anything but "1" tunes
    assert got["mmapped_before"] and got["first"] is True and got["second"] is True
    assert got["libc_opened_first"] == 1 and got["libc_opened_second"] == 1   # mallopt once per process
    assert not got["mmapped_after"]             # 48 MB now comes from the heap: the threshold moved


@GLIBC
def test_allocator_tuning_is_skipped_with_fedlab_no_mallopt():
    got = allocator_probe(FEDLAB_NO_MALLOPT="1")
    assert got["first"] is False and got["second"] is False
    assert got["libc_opened_first"] == 0 and got["libc_opened_second"] == 0   # glibc is never asked
    assert got["mmapped_before"] and got["mmapped_after"]   # large blocks still get their own mmap


@pytest.mark.parametrize("backend", ["vectorized", "loop"])
def test_plain_torch_module_runs(gen, backend):
    clients = [(torch.randn(8, 4, generator=gen), torch.randint(0, 2, (8,), generator=gen)) for _ in range(3)]
    fed = flu.data.Federation.from_clients(clients, test=clients)
    model = torch.nn.Linear(4, 2)
    hist = flu.run(model, fed, num_rounds=2, local_steps=1, client_lr=0.1, batch_size=None, backend=backend,
                   progress=False)
    assert set(hist.params) == {"weight", "bias"} and (hist.metrics["round"] == 0).any()
    assert flu.finetune.prepare(model, "linear_probe").trainable == ("weight", "bias")
    seq = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    probe = flu.run(seq, fed, num_rounds=2, finetune="linear_probe", progress=False, backend=backend)
    assert torch.equal(probe.params["0.weight"], seq[0].weight.detach())


def test_poisson_sampling_draws_each_client_with_probability_q_and_weights_it_p_over_q():
    """Independent Bernoulli(q) selection per client and round, weights p_i / q (unbiased)."""
    from fedlab_utils.engine.sampling import select_clients
    N, k = 10, 3
    p = torch.arange(1, N + 1, dtype=torch.float64)
    p = p / p.sum()
    counts, totals, sizes = torch.zeros(N), torch.zeros(N, dtype=torch.float64), set()
    R = 4000
    for rnd in range(1, R + 1):
        sel, w = select_clients(N, k, p, "poisson", 7, rnd)
        torch.testing.assert_close(w, p[sel] / (k / N), atol=0, rtol=0)
        counts[sel] += 1
        totals[sel] += w
        sizes.add(len(sel))
    q = k / N
    assert (abs(counts / R - q) < 4 * (q * (1 - q) / R) ** 0.5).all()
    torch.testing.assert_close(totals / R, p, atol=0.02, rtol=0)   # E[sum_i w_i 1{i in S}] = p_i
    assert 0 in sizes and len(sizes) > 4                          # the number of clients varies, 0 included
    again = [select_clients(N, k, p, "poisson", 7, r)[0].tolist() for r in (1, 2)]
    assert again == [select_clients(N, k, p, "poisson", 7, r)[0].tolist() for r in (1, 2)]


def test_a_poisson_round_without_clients_is_recorded_and_changes_nothing(gen):
    clients = [(X, y.double()) for X, y in make_clients(gen, sizes=(5, 6, 7))]
    fed = flu.data.Federation.from_clients(clients)
    hist = flu.run(flu.models.linear(4, dtype=torch.float64), fed, num_rounds=30, clients_per_round=1, sampling="poisson", loss="mse",
                   progress=False, record_params=True, seed=1)
    empty = hist.rounds[hist.rounds.clients_selected == 0]["round"].tolist()
    assert empty, "expected a round without clients at q = 1/3 over 30 rounds"
    for r in empty:
        assert torch.equal(hist.trajectory[r]["head.weight"], hist.trajectory[r - 1]["head.weight"])
