"""Flower bridge speed: ``flu.run`` vs the same run on Flower's simulation engine.

Workload (issue 19): digits, 100 clients, Dirichlet(0.5), MLP 64-128-10, FedAvg, 5 local steps
of batch 16, every client every round; on Flower one virtual SuperNode per client (Flower's
usual mapping), Ray actors of one CPU each. Optionally 1000 clients of 50 synthetic samples
(``--clients 100 1000``). Reports the median milliseconds per round, the ratio Flower / flu.run,
and Flower's start-up (Ray, the actors, their first import of torch and the package) apart:
start-up = wall time - rounds x median round. Also the in-process bridge (the same ServerApp
and ClientApp, no Ray) and the final parameters' max |difference| from flu.run (the runs are
the same computation).

    python benchmarks/flower_speed.py [--rounds 10] [--threads 1] [--clients 100]

Measured on the 2-core development machine (torch 2.13 CPU, flwr 1.42.0, ray 2.55.1, 1 thread,
shared with other jobs, load average 3-4), ``--rounds 10``:

    clients version                       ms/round start-up s vs flu.run max|diff|
        100 flu.run (vectorized)              48.9        0.4         1x   0.0e+00
        100 flu.flower inprocess             706.4        0.1        14x   3.0e-08
        100 flu.flower simulation (Ray)     3438.7      100.7        70x   3.0e-08

One run (2026-11-30). Flower's simulation engine took 70x flu.run's time per round here, under
the 150x that issue 19 expected; both sides slow down with the machine's load (flu.run alone
ran at 27 ms per round with 2 threads at load 1-1.6, benchmarks/engine_speed.py), so the ratio
moves with it. Flower's start-up (Ray with 2 one-CPU actors, each importing torch and the
package) was 100 s here, 25 s of it ``ray.init``. 1000 clients (``--clients 1000``) were not
measured: about 10x the messages per round.

A second run after the engine's hand-written chain step (``--threads 2``, load average about 1):

        100 flu.run (vectorized)              12.9        0.2         1x   0.0e+00
        100 flu.flower inprocess             511.1        0.0        40x   3.0e-08
        100 flu.flower simulation (Ray)      914.6       30.5        71x   4.5e-08

Both sides ran 3-4x faster on the quieter machine and the ratio stayed at 71x, still under 150x.

The per-round cost on Flower is the message traffic (each SuperNode gets x and returns its
delta through Ray's object store and the in-memory SuperLink, which polls every 0.1 s) and a
ClientApp call per client; flu.run trains the 100 clients as one stacked computation.
"""
from __future__ import annotations

import argparse
import time

import torch

import fedlab_utils as flu
from engine_speed import workload  # the engine benchmark's data (benchmarks/ is on sys.path)


def timed(fn):
    t0 = time.perf_counter()
    hist = fn()
    wall = time.perf_counter() - t0
    ms = 1000 * hist.timing.seconds.median()
    return hist, ms, wall - len(hist.timing) * ms / 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clients", type=int, nargs="*", default=[100])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flu.flower.require_flower("simulation")
    import flwr
    import ray
    print(f"torch {torch.__version__}, flwr {flwr.__version__}, ray {ray.__version__}, {args.threads} thread(s), "
          f"{args.rounds} rounds, FedAvg, 5 local steps of batch 16, one SuperNode per client")
    print(f"{'clients':>7} {'version':<28} {'ms/round':>9} {'start-up s':>10} {'vs flu.run':>10} {'max|diff|':>9}")
    for n in args.clients:
        fed = workload(n)
        model = flu.models.mlp(64, 128, 10, seed=0)
        kw = dict(num_rounds=args.rounds, local_steps=5, client_lr=0.05, batch_size=16, eval_every=args.rounds,
                  progress=False, seed=0)
        runs = {"flu.run (vectorized)": lambda: flu.run(model, fed, "fedavg", **kw),
                "flu.flower inprocess": lambda: flu.flower.run(model, fed, "fedavg", engine="inprocess",
                                                               supernodes=n, **kw),
                "flu.flower simulation (Ray)": lambda: flu.flower.run(model, fed, "fedavg", engine="simulation",
                                                                      supernodes=n, **kw)}
        ref = None
        for name, fn in runs.items():
            hist, ms, startup = timed(fn)
            if ref is None:
                ref, base = hist, ms
            diff = max((hist.params[k] - ref.params[k]).abs().max().item() for k in ref.params)
            print(f"{n:>7} {name:<28} {ms:>9.1f} {startup:>10.1f} {ms / base:>9.0f}x {diff:>9.1e}", flush=True)


if __name__ == "__main__":
    main()
