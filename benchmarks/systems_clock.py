"""The virtual clock's overhead: flu.run(systems=Simulation(...)) against systems=None.

Workload: the engine benchmark's (benchmarks/engine_speed.py, its ``workload``): digits, 100
Dirichlet(0.5) clients; 1000 synthetic clients of 50 samples each; MLP 64-128-10, FedAvg, 5 local
steps of batch 16, vectorised backend. Each size at 10 % and at full participation, for:

- ``none``: ``systems=None``, the baseline;
- ``ideal``/``phones`` x ``wait_all``/``deadline``: ``Simulation(profiles=profiles(preset, N), ...)``
  (deadline 1 s for ideal, where every time is zero; 2 s for phones, which cuts the slowest ~20 %).

and, with ``systems=None``, ``finetune=assign_modes(profiles("edge_mix", N), ...)`` (full,
last_layers and linear_probe by speed third) against ``finetune="full"``.

Every configuration runs ``--repeats`` times, interleaved (A, B, C, ..., A, B, C, ...) so that
the load of the shared machine hits all of them alike; each run's figure is its median ms per
round over the rounds without evaluation (the last round evaluates), and the table shows the
median over runs, the ratio to the baseline measured in this same process, the median ms per
round spent outside local training (``timing.seconds - timing.local_seconds``: sampling, the
clock, aggregation) and the mean clients whose update reached the server. The phones preset
drops 6-10 % of the clients and the deadline cuts the late ones, who then do not train: its
ratio mixes the clock's cost with less training, so read the "outside training" column too.

    python benchmarks/systems_clock.py [--rounds 10] [--repeats 5] [--threads 2] [--quick] [--profile]

Measured on the 2-core development machine (torch 2.13 CPU, 2 threads), ``--rounds 10 --repeats
5``, 114 s, after the clock draws drop-outs from one stream per round (none at all when nobody can
drop) and builds its timeline rows at once. ms/round is the median over runs; ratio is against
``none`` (against ``finetune=full`` for the mixed modes); "outside" is the median ms per round
outside local training; "done" the mean clients completed per round:

        N     K configuration         ms/round   ratio   outside    done
      100    10 none                       7.2       1    1.3 ms    10.0
      100    10 ideal wait_all            10.5   1.463    2.3 ms    10.0
      100    10 ideal deadline             6.6   0.918    1.9 ms    10.0
      100    10 phones wait_all            7.4   1.029    2.1 ms     9.2
      100    10 phones deadline            8.1   1.130    2.3 ms     8.5
      100    10 finetune=full              6.4       1    1.3 ms    10.0
      100    10 finetune=[edge_mix]       13.6   2.111    1.7 ms    10.0
      100   100 none                      22.2       1    3.1 ms   100.0
      100   100 ideal wait_all            27.2   1.225    4.1 ms   100.0
      100   100 ideal deadline            21.9   0.986    4.2 ms   100.0
      100   100 phones wait_all           22.8   1.028    4.0 ms    92.4
      100   100 phones deadline           21.0   0.948    4.0 ms    85.3
      100   100 finetune=full             25.0       1    3.4 ms   100.0
      100   100 finetune=[edge_mix]       30.9   1.236    4.1 ms   100.0
     1000   100 none                      25.2       1    3.8 ms   100.0
     1000   100 ideal wait_all            25.1   0.998    4.9 ms   100.0
     1000   100 ideal deadline            29.8   1.183    5.7 ms   100.0
     1000   100 phones wait_all           26.0   1.033    4.8 ms    92.5
     1000   100 phones deadline           23.2   0.920    4.7 ms    75.9
     1000   100 finetune=full             29.1       1    4.5 ms   100.0
     1000   100 finetune=[edge_mix]       39.6   1.362    6.5 ms   100.0
     1000  1000 none                     214.5       1   27.8 ms  1000.0
     1000  1000 ideal wait_all           226.3   1.055   36.9 ms  1000.0
     1000  1000 ideal deadline           222.9   1.039   37.3 ms  1000.0
     1000  1000 phones wait_all          200.6   0.935   34.4 ms   921.8
     1000  1000 phones deadline          162.8   0.759   29.7 ms   752.4
     1000  1000 finetune=full            209.1       1   28.7 ms  1000.0
     1000  1000 finetune=[edge_mix]      204.6   0.978   33.9 ms  1000.0

Whole-round ratios of a few milliseconds are noisy (``ideal wait_all`` and ``ideal deadline`` do
the same work, 1.46x and 0.92x at 100 / 10). The steadier column is "outside training": the clock
adds about 1 ms per round at K = 10 and 100 (about 1 ms of 7-25 ms: 4-14 %) and 9 ms at K = 1000
(of 215 ms: 4 %); timed alone, the engine's ``_clocked_selection`` takes 0.47 ms at K = 10 of 100.
Fewer clients train under ``phones`` (drop-outs, deadline), so those rounds can be faster than
``none``. An earlier version, which built a numpy Generator per selected client for its drop-out
draw and one dict per timeline row, cost 0.05-0.1 ms per selected client (60-80 ms at K = 1000).
Mixed modes train one batched call per mode (three here): 1.0-2.1x one mode.

Asynchronous aggregation (``--async-only --rounds 10 --repeats 3``: 30 server updates, phones
profiles, K working clients, medians of 3), events per wall-clock second:

        N     K configuration             updates/s   arrivals/s
      100    10 sync (wait_all)               93.8        937.5
      100    10 fedasync                      92.3         92.2
      100    10 fedbuff (buffer K/2)          21.1        105.5
     1000   100 sync (wait_all)               26.0       2597.3
     1000   100 fedasync                      52.9         52.9
     1000   100 fedbuff (buffer K/2)           2.3        117.2

An asynchronous client restarts alone at its own virtual time, so its training is a batch of
one: 50-120 arrivals per second, against 900-2600 client updates per second when a synchronous
round trains its clients as one stacked computation. (Copying the working clients' updates at
every event, before they were kept by reference, held FedAsync at 15 updates/s at N = 1000.)
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

import fedlab_utils as flu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_speed import workload  # noqa: E402  (the same data as the engine benchmark)


def measure(model, fed, rounds, K, systems=None, finetune="full"):
    """(median ms per round without evaluation, median ms outside local training, mean completed)."""
    hist = flu.run(model, fed, num_rounds=rounds, local_steps=5, client_lr=0.05, batch_size=16,
                   clients_per_round=K, systems=systems, finetune=finetune, eval_every=rounds, progress=False)
    t = hist.timing.iloc[:-1] if rounds > 1 else hist.timing
    ms = 1000 * float(t.seconds.median())
    outside = 1000 * float((t.seconds - t.local_seconds).median())
    return ms, outside, float(hist.rounds.clients_completed.mean())


def configs(model, N, K):
    sim = flu.systems.Simulation
    ideal, phones = flu.systems.profiles("ideal", N, seed=0), flu.systems.profiles("phones", N, seed=0)
    modes = flu.systems.assign_modes(flu.systems.profiles("edge_mix", N, seed=0), model, input_shape=(64,))
    return {
        "none": {},
        "ideal wait_all": dict(systems=sim(profiles=ideal)),
        "ideal deadline": dict(systems=sim(profiles=ideal, policy="deadline", deadline=1.0)),
        "phones wait_all": dict(systems=sim(profiles=phones)),
        "phones deadline": dict(systems=sim(profiles=phones, policy="deadline", deadline=2.0)),
        "finetune=full": dict(finetune="full"),
        "finetune=[edge_mix]": dict(finetune=modes),
    }


def asynchronous(model, fed, N, K, updates, repeats):
    """Server updates (events) per wall-clock second of FedAsync and FedBuff (buffer K/2) on the
    phones profiles, next to synchronous rounds per second with the same clients per round."""
    phones = flu.systems.profiles("phones", N, seed=0)
    cases = {"sync (wait_all)": None,
             "fedasync": flu.systems.Simulation(profiles=phones, aggregation="fedasync"),
             "fedbuff (buffer K/2)": flu.systems.Simulation(profiles=phones, aggregation="fedbuff",
                                                            buffer_size=max(1, K // 2))}
    rates = {name: [] for name in cases}
    for _ in range(repeats):
        for name, sim in cases.items():
            t0 = time.perf_counter()
            hist = flu.run(model, fed, num_rounds=updates, local_steps=5, client_lr=0.05, batch_size=16,
                           clients_per_round=K, systems=sim, eval_every=updates, progress=False)
            rates[name].append((updates / (time.perf_counter() - t0),
                                float(hist.rounds.clients_completed.sum()) / (time.perf_counter() - t0)))
    for name, rs in rates.items():
        ups, arrivals = statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)
        print(f"{N:>5} {K:>5} {name:<22} {ups:>9.1f} updates/s {arrivals:>9.1f} arrivals/s")


BASE = {"ideal wait_all": "none", "ideal deadline": "none", "phones wait_all": "none",
        "phones deadline": "none", "finetune=[edge_mix]": "finetune=full"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds, 2 repeats, 100 clients")
    ap.add_argument("--profile", action="store_true", help="cProfile one phones/deadline run per setting")
    ap.add_argument("--async-only", action="store_true", help="only the asynchronous events per second")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.repeats, args.clients = 3, 2, [100]
    torch.set_num_threads(args.threads)
    flu.engine.tune_allocator()
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds x {args.repeats} runs "
          "(interleaved), FedAvg, MLP 64-128-10, 5 local steps of batch 16")
    print(f"{'N':>5} {'K':>5} {'configuration':<20} {'ms/round':>9} {'ratio':>7} {'outside training':>17} "
          f"{'completed':>10}")
    for N in ([] if args.async_only else args.clients):
        fed, d = workload(N)
        model = flu.models.mlp(d, 128, 10, seed=0)
        for K in (max(1, N // 10), None):
            cases = configs(model, N, K)
            runs = {name: [] for name in cases}
            measure(model, fed, 2, K)  # warm-up: allocator, lazy imports, caches
            for _ in range(args.repeats):
                for name, kw in cases.items():
                    runs[name].append(measure(model, fed, args.rounds, K, **kw))
            med = {name: tuple(statistics.median(r[j] for r in rs) for j in range(3)) for name, rs in runs.items()}
            for name, (ms, outside, done) in med.items():
                ratio = f"{ms / med[BASE[name]][0]:.3f}" if name in BASE else "1"
                print(f"{N:>5} {K or N:>5} {name:<20} {ms:>9.1f} {ratio:>7} {outside:>14.1f} ms {done:>10.1f}")
            if args.profile:
                profile(model, fed, args.rounds, K, cases["phones deadline"])
    print(f"\nasynchronous aggregation, {args.rounds * 3} server updates, median of {args.repeats}:")
    for N in args.clients:
        fed, d = workload(N)
        asynchronous(flu.models.mlp(d, 128, 10, seed=0), fed, N, max(2, N // 10), args.rounds * 3, args.repeats)
    print(f"total {time.perf_counter() - start:.0f} s")


def profile(model, fed, rounds, K, kw):
    import cProfile
    import pstats
    pr = cProfile.Profile()
    pr.enable()
    measure(model, fed, rounds, K, **kw)
    pr.disable()
    print(f"cProfile of one 'phones deadline' run, K = {K}: the package's functions by cumulative time")
    pstats.Stats(pr).sort_stats("cumulative").print_stats(r"fedlab_utils", 20)


if __name__ == "__main__":
    main()
