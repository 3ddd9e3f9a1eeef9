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

Measured on the shared 2-core development machine (torch 2.13 CPU, 2 threads), ``--rounds 10
--repeats 5``: 1035 s, not the ~5 minutes hoped for, because other engineers' jobs held the
load average at 3-6 on 2 cores (the 1000-client full round took 2.2 s here against 0.28-0.33 s
measured alone a minute later). ms/round is the median over runs; ratio is against ``none``
(against ``finetune=full`` for the mixed modes); "outside" is the median ms per round outside
local training; "done" the mean clients completed per round:

        N     K configuration         ms/round   ratio   outside    done
      100    10 none                      36.1       1    1.5 ms    10.0
      100    10 ideal wait_all            50.8   1.407   11.0 ms    10.0
      100    10 ideal deadline            49.8   1.378    8.6 ms    10.0
      100    10 phones wait_all           58.5   1.620    7.5 ms     9.0
      100    10 phones deadline           41.1   1.138    7.0 ms     8.2
      100    10 finetune=full             54.9       1    1.6 ms    10.0
      100    10 finetune=[edge_mix]       62.8   1.143    2.8 ms    10.0
      100   100 none                      22.4       1    2.9 ms   100.0
      100   100 ideal wait_all            25.4   1.136    6.2 ms   100.0
      100   100 ideal deadline            28.3   1.262    8.0 ms   100.0
      100   100 phones wait_all           29.4   1.315    8.5 ms    92.6
      100   100 phones deadline           26.0   1.161    7.7 ms    85.4
      100   100 finetune=full             26.3       1    3.3 ms   100.0
      100   100 finetune=[edge_mix]       27.5   1.046    3.4 ms   100.0
     1000   100 none                     128.1       1    8.7 ms   100.0
     1000   100 ideal wait_all           138.2   1.079   22.1 ms   100.0
     1000   100 ideal deadline           213.7   1.668   22.0 ms   100.0
     1000   100 phones wait_all          119.8   0.935   21.8 ms    91.5
     1000   100 phones deadline          206.1   1.609   26.6 ms    75.2
     1000   100 finetune=full            293.6       1   33.0 ms   100.0
     1000   100 finetune=[edge_mix]      399.1   1.360   23.2 ms   100.0
     1000  1000 none                    2230.4       1  240.1 ms  1000.0
     1000  1000 ideal wait_all          2020.1   0.906  321.3 ms  1000.0
     1000  1000 ideal deadline          2402.6   1.077  313.3 ms  1000.0
     1000  1000 phones wait_all          2318.0   1.039  299.7 ms   914.5
     1000  1000 phones deadline          1903.8   0.854  297.8 ms   743.7
     1000  1000 finetune=full            2140.7       1  232.6 ms  1000.0
     1000  1000 finetune=[edge_mix]      4118.4   1.924  243.0 ms  1000.0

Under that load the whole-round ratios (0.85x to 1.67x) are mostly noise: ``none`` and
``finetune=full`` are the same run, yet their medians differ by up to 2.3x (1000 / 100). The
steadier column is "outside training": the
clock adds about 5-9 ms per round at 100 clients, 13-18 ms at K = 100 of 1000 and 60-80 ms with
all 1000 clients, i.e. it grows with the clients selected, and the target (under 10 %) is
missed at small rounds and at K = 1000. cProfile (``--profile``) and timing the clock alone
(the engine's ``_clocked_selection``, 30 calls, median) put it at 0.05-0.1 ms per selected
client per round: 1 ms at K = 10, 6-15 ms at K = 100, 90-110 ms at K = 1000 (a round trains in
about 280 ms there when the machine is quiet). Where it goes:

1. the drop-out draws, ``np_stream(sim.seed, round, client, DROPOUT).random()`` once per
   selected client (``engine.clocked.Clocked.play``): building a numpy Generator costs ~50 us,
   80-90 % of the clock's time; drawn even for the ``ideal`` preset, whose drop-out is 0;
2. ``engine.clocked.timeline_rows``: one dict per client and phase, 8-17 ms at K = 1000;
3. once per run, ``check_profiles`` runs twice (``Simulation`` and ``Clocked.build``), 30-100 ms.

The clients' selection, the phase formulas and the policy (``systems.clock.play``) cost well
under 1 ms. Mixed modes train one batched call per mode (three here), 1.05-1.9x one mode.
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
    for N in args.clients:
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
