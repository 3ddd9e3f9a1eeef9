"""Every federated algorithm on the shared workload: engine speed, and time to a target accuracy.

Workload (as in benchmarks/engine_speed.py): digits, 100 clients, Dirichlet(0.5) (the alphas of
part 2 vary it), MLP 64-128-10, all clients every round, 5 local steps of batch 16, client_lr 0.05,
each algorithm with its package defaults (FedProx with mu=1, ``flu.lessons.practice.DEFAULT_OPTIONS``).

1. Speed: ms per round of ``flu.run(backend="loop")`` (our per-client reference) and
   ``backend="vectorized"`` per algorithm, measured in this same process, with their ratio and
   the vectorised cost relative to FedAvg's (median over rounds, best of several passes).
2. Time to accuracy: ``flu.lessons.practice.sweep`` over algorithms x alphas x seeds (vectorised, no
   diagnostics), then rounds, seconds and megabytes (up + down) to reach each of ``--targets``
   (pooled test accuracy): the mean over the seeds that got there, "(k/n)" when only k of n
   seeds did, "-" when none did within ``--rounds``.

    python benchmarks/algorithms.py                       # about 8 min on a loaded 2-core machine
    python benchmarks/algorithms.py --rounds 40 --alphas 0.1 1 --seeds 0 --speed-rounds 5   # quick look
    python benchmarks/algorithms.py --skip-speed --algorithms fedavg scaffold --targets 0.85

Flags: --rounds (rounds per run of part 2), --alphas, --seeds, --targets, --algorithms,
--speed-rounds and --repeats (part 1: the median of that many rounds, the best of that many passes
over all algorithms), --threads (torch threads), --skip-speed, --skip-accuracy.

Measured on a loaded 2-core machine (load average 2-4.5 from other work during the run, so
single timings move by up to 2x; the loop and vectorised timings of one algorithm are taken
back to back, so their ratio is the robust figure),
torch 2.13.0 CPU, 1 thread, ``python benchmarks/algorithms.py`` (defaults: 80 rounds, alphas
0.1 0.5 1, seeds 0 1, targets 0.8 0.9, 5 rounds x 3 passes per backend), 7 min 40 s in all:

    1. ms per round, Dirichlet 0.5: median of 5 rounds, best of 3 passes
                     loop  vectorized  speed-up  vs FedAvg
    FedAvg         285.80       32.56      8.78       1.00
    FedProx (mu=1) 315.42       48.41      6.52       1.49
    SCAFFOLD       308.40       50.74      6.08       1.56
    FedNova        351.41       37.48      9.38       1.15
    FedDyn         438.99       65.69      6.68       2.02
    FedAvgM        358.53       42.34      8.47       1.30
    FedAdam        348.39       32.48     10.73       1.00
    FedYogi        326.50       31.30     10.43       0.96
    FedAdagrad     288.67       39.36      7.33       1.21

    2. rounds to 0.8 | 0.9 test accuracy (mean of 2 seeds; every run reached both within 80 rounds)
                   alpha=0.1    alpha=0.5    alpha=1
    FedAvg          10 | 28      10 | 26     10 | 22
    FedProx (mu=1)  12 | 30      12 | 29     11 | 24
    SCAFFOLD        10 | 26      11 | 25     10 | 22
    FedNova         10 | 28      10 | 26     10 | 22
    FedDyn           4 | 10       4 |  8      4 |  8
    FedAvgM          6 | 12       6 | 10      6 | 10
    FedAdam          8 | 18      10 | 17      8 | 15
    FedYogi          8 | 19      10 | 16      8 | 16
    FedAdagrad      16 | 40      19 | 42     18 | 34

       megabytes (up + down) to 0.8 | 0.9
    FedAvg          81 | 211     81 | 200    77 | 169
    FedProx (mu=1)  88 | 231     88 | 223    85 | 185
    SCAFFOLD       154 | 407    169 | 384   154 | 338
    FedNova         81 | 211     81 | 200    77 | 169
    FedDyn          31 |  73     35 |  65    31 |  58
    FedAvgM         42 |  88     42 |  81    42 |  77
    FedAdam         58 | 142     73 | 131    65 | 115
    FedYogi         58 | 146     73 | 127    65 | 119
    FedAdagrad     123 | 311    146 | 319   138 | 265

       seconds to 0.9 (wall clock, training + evaluation; noisy under this load)
    FedAvg 1.8 1.8 2.0 | FedProx 3.7 3.6 3.4 | SCAFFOLD 1.4 2.0 3.2 | FedNova 1.7 1.6 1.0 |
    FedDyn 0.6 1.5 1.1 | FedAvgM 0.9 0.6 0.7 | FedAdam 1.5 1.2 1.2 | FedYogi 1.5 1.1 1.4 |
    FedAdagrad 3.7 3.6 2.4

       test accuracy after 80 rounds: 0.946-0.962 for FedAvg, FedProx, SCAFFOLD, FedNova, FedDyn;
       0.968-0.973 for FedAvgM, FedAdam, FedYogi; 0.947-0.954 for FedAdagrad.

Reading: the vectorised engine is 6-11x faster than the per-client loop for every algorithm.
With 100 clients of about 14 training examples each, every client is label-skewed at all three
alphas, so alpha moves the rounds little. FedNova equals FedAvg (equal local steps). SCAFFOLD
saves at most 2 rounds and sends twice the bytes per round, so it needs about twice FedAvg's
bytes. FedDyn and FedAvgM reach both targets first, in rounds and in bytes; FedAdagrad with the
default server_lr 1e-2 is the slowest.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

import fedlab_utils as flu
from fedlab_utils.lessons import practice

WORKLOAD = dict(num_clients=100, local_steps=5, batch_size=16, client_lr=0.05, hidden=128)


def speed(algorithms, rounds: int, repeats: int) -> pd.DataFrame:
    """ms per round of the loop and vectorised backends for each algorithm (alpha 0.5, seed 0): the
    median over ``rounds`` rounds, and the minimum of that over ``repeats`` passes that go through
    every algorithm and backend in turn (so a burst of load from other processes hits one pass,
    not one algorithm)."""
    fed = practice.federation(0.5, 0, num_clients=WORKLOAD["num_clients"])
    ms = {}
    for _ in range(repeats):
        for name in algorithms:
            options = practice.DEFAULT_OPTIONS.get(name, {})
            for backend in ("loop", "vectorized"):
                model = flu.models.mlp(64, WORKLOAD["hidden"], 10, seed=0)
                hist = flu.run(model, fed, name, num_rounds=rounds, local_steps=WORKLOAD["local_steps"],
                               client_lr=WORKLOAD["client_lr"], batch_size=WORKLOAD["batch_size"], backend=backend,
                               eval_every=rounds, progress=False, seed=0, **options)
                key = (practice.label(name, options), backend)
                ms[key] = min(ms.get(key, float("inf")), 1000 * hist.timing["seconds"].median())
    out = pd.Series(ms).unstack()[["loop", "vectorized"]]
    out = out.reindex([practice.label(a, practice.DEFAULT_OPTIONS.get(a, {})) for a in algorithms])
    out["speed-up"] = out["loop"] / out["vectorized"]
    base = out["vectorized"].get("FedAvg", out["vectorized"].iloc[0])
    out["vs FedAvg"] = out["vectorized"] / base
    out.index.name = None
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=80, help="rounds per run of the time-to-accuracy sweep")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.9], help="pooled test accuracies to reach")
    ap.add_argument("--algorithms", nargs="+", default=list(practice.ALGORITHMS), choices=list(practice.ALGORITHMS))
    ap.add_argument("--speed-rounds", type=int, default=5, help="rounds timed per backend, algorithm and pass")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the algorithms in part 1 (minimum kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this model)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 160)
    print(f"torch {torch.__version__}, {args.threads} thread(s); digits, {WORKLOAD['num_clients']} clients, "
          f"MLP 64-{WORKLOAD['hidden']}-10, {WORKLOAD['local_steps']} local steps of batch {WORKLOAD['batch_size']}, "
          f"client_lr {WORKLOAD['client_lr']}")

    if not args.skip_speed:
        t0 = time.perf_counter()
        table = speed(args.algorithms, args.speed_rounds, args.repeats)
        print(f"\n1. ms per round, Dirichlet 0.5: median of {args.speed_rounds} rounds, best of {args.repeats} passes "
              f"(speed-up = loop / vectorized, same process; {time.perf_counter() - t0:.0f} s)")
        print(table.to_string(float_format=lambda v: f"{v:.2f}"))

    if not args.skip_accuracy:
        t0 = time.perf_counter()
        df = practice.sweep(args.algorithms, args.alphas, args.seeds, num_rounds=args.rounds, diagnostics=False,
                            cache=False, num_threads=None, progress=True, **WORKLOAD)
        print(f"\n2. time to accuracy within {args.rounds} rounds, mean over seeds {args.seeds} "
              f"('-': not reached, '(k/n)': k of n seeds reached it; sweep {time.perf_counter() - t0:.0f} s)")
        for target in args.targets:
            tta = practice.time_to_accuracy(df, target)
            for title, table in (("rounds", practice.time_to_accuracy_table(tta, "rounds")),
                                 ("seconds (wall clock, training + evaluation)",
                                  practice.time_to_accuracy_table(tta, "seconds", fmt="{:.1f}")),
                                 ("megabytes (up + down)",
                                  practice.time_to_accuracy_table(tta, "bytes", fmt="{:.0f}", scale=1e-6))):
                print(f"\n{title} to {target:g} test accuracy:")
                print(table.to_string())
        final = practice.final_values(df, ["test_accuracy"]).groupby(["label", "alpha"], sort=False)["test_accuracy"]
        final = final.mean().unstack("alpha")
        final.columns = [f"alpha={a:g}" for a in final.columns]
        final.index.name = None
        print(f"\ntest accuracy after {args.rounds} rounds:")
        print(final.map(lambda v: f"{v:.3f}").to_string())


if __name__ == "__main__":
    main()
