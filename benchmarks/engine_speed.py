"""Engine speed: the per-client loop a user would write vs our loop and vectorised backends.

Workload (issue 8): digits, 100 clients, Dirichlet(0.5), MLP 64-128-10, FedAvg, 5 local steps of
batch 16; then 1000 clients of 50 samples each (synthetic data). All three versions draw the same
minibatch indices (``flu.engine.batch_plan``), so their accuracies are comparable. Reports
median milliseconds per round and ratios measured in this same process (machines are noisy).

    python benchmarks/engine_speed.py [--rounds 20] [--threads 2]

Measured on the 2-core development machine (torch 2.13 CPU, 2 threads, load average 1-1.6),
``--rounds 20``:

    clients version                   ms/round  vs user loop  accuracy
        100 user loop (deepcopy+SGD)     474.4          1.0x     0.837
        100 flu loop backend             427.1          1.1x     0.837
        100 flu vectorized                26.6         17.9x     0.837
        100 vectorized vs flu loop: 16.1x
       1000 user loop (deepcopy+SGD)    4681.1          1.0x     0.201
       1000 flu loop backend            4496.4          1.0x     0.201
       1000 flu vectorized               196.2         23.9x     0.201

Seven runs at 100 clients gave 14.8x to 27.3x, median 18.2x (vectorised 17-28 ms per round; the
user loop moves with the machine's load, 330-490 ms); two runs at 1000 clients 23.9x and 30.6x.
At 1000 clients the synthetic task has only 5 rounds, hence its low accuracy; all three versions
agree on it. The vectorised round is bound by small batched matmuls and the memory traffic of
the stacked gradients (K x parameters).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import fedlab_utils as flu
from fedlab_utils.engine import batch_plan


def user_loop_fedavg(model, fed, num_rounds, local_steps, lr, batch_size, seed=0):
    """What a user writes: deepcopy the global model per client, torch.optim.SGD, average state dicts."""
    sizes = torch.as_tensor(fed.sizes)
    offsets = torch.cumsum(sizes, 0) - sizes
    X = torch.cat([x for x, _ in fed.train])
    Y = torch.cat([y for _, y in fed.train])
    p = torch.as_tensor(fed.weights(), dtype=torch.float32)
    clients = torch.arange(fed.num_clients)
    steps = torch.full((fed.num_clients,), local_steps)
    global_model = copy.deepcopy(model)
    times = []
    for rnd in range(1, num_rounds + 1):
        t0 = time.perf_counter()
        idx, _, _ = batch_plan(sizes, offsets, clients, steps, batch_size, seed, rnd)
        states = []
        for c in range(fed.num_clients):
            local = copy.deepcopy(global_model)
            opt = torch.optim.SGD(local.parameters(), lr=lr)
            b = min(batch_size, int(sizes[c]))
            for t in range(local_steps):
                sel = idx[c, t, :b]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(local(X[sel]), Y[sel]).backward()
                opt.step()
            states.append(local.state_dict())
        avg = {k: sum(p[c] * states[c][k] for c in range(fed.num_clients)) for k in states[0]}
        global_model.load_state_dict(avg)
        times.append(time.perf_counter() - t0)
    Xt, yt = fed.pooled("test")
    with torch.no_grad():
        acc = float((global_model(Xt).argmax(1) == yt).float().mean()) if len(yt) else float("nan")
    return 1000 * statistics.median(times), acc


def flu_run(model, fed, backend, num_rounds, local_steps, lr, batch_size):
    hist = flu.run(model, fed, num_rounds=num_rounds, local_steps=local_steps, client_lr=lr, batch_size=batch_size,
                   backend=backend, eval_every=num_rounds, progress=False)
    return 1000 * hist.timing.seconds.median(), hist.final("accuracy")


def workload(num_clients):
    if num_clients == 100:
        ds = flu.data.load_dataset("digits")
        part = flu.partition.dirichlet(ds.y, num_clients=100, alpha=0.5, seed=0)
        return flu.data.federate(ds.X, ds.y, part, seed=0), 64
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 10, generator=g)
    X = torch.randn(num_clients * 50, 64, generator=g)
    y = (X @ W + 0.5 * torch.randn(len(X), 10, generator=g)).argmax(1)
    part = [range(i * 50, (i + 1) * 50) for i in range(num_clients)]
    return flu.data.federate(X, y, part, test_fraction=0.2, seed=0), 64


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", type=int, nargs="*", default=[100, 1000])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # flu.run tunes glibc's allocator on first use (flu.engine.tune_allocator); do it up front so
    # that the user's loop, measured first, runs under the same allocator settings.
    flu.engine.tune_allocator()
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds, FedAvg, 5 local steps of batch 16")
    print(f"{'clients':>7} {'version':<24} {'ms/round':>9} {'vs user loop':>13} {'accuracy':>9}")
    for n in args.clients:
        fed, d = workload(n)
        model = flu.models.mlp(d, 128, 10, seed=0)
        rounds = args.rounds if n <= 100 else max(5, args.rounds // 4)
        res = {"user loop (deepcopy+SGD)": user_loop_fedavg(model, fed, rounds, 5, 0.05, 16),
               "flu loop backend": flu_run(model, fed, "loop", rounds, 5, 0.05, 16),
               "flu vectorized": flu_run(model, fed, "vectorized", rounds, 5, 0.05, 16)}
        base = res["user loop (deepcopy+SGD)"][0]
        for name, (ms, acc) in res.items():
            print(f"{n:>7} {name:<24} {ms:>9.1f} {base / ms:>12.1f}x {acc:>9.3f}")
        print(f"{n:>7} vectorized vs flu loop: {res['flu loop backend'][0] / res['flu vectorized'][0]:.1f}x")


if __name__ == "__main__":
    main()
