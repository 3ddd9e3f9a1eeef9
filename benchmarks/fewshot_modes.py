"""Few-shot fine-tuning modes: seconds and bytes per round, as ratios to the linear probe.

Workload (notebook 05's image task): scikit-learn digits at 28x28, 10 Dirichlet(0.5) clients,
20-shot supports (``flu.fewshot.k_shot``), the committed MNIST-pretrained CNN
(``flu.pretrained.pretrained_cnn``), ``flu.run`` with 5 local steps of minibatch 16 per round.
Every mode runs with the CNN in the loop (no cached features), in the same process, interleaved
over ``--repeats`` (the load of a shared machine moves between calls), and the medians are compared:

- ``s/round``: the engine's median wall-clock seconds per round (all 10 clients, vectorised; the
  evaluation rounds 0 and last are left out);
- ``s/step``: ``flu.lessons.study.time_steps``, one client, a plain PyTorch loop (forward, backward of what
  the mode trains, SGD step), median over timed steps;
- ``est. FLOPs``: ``flu.finetune.cost`` (multiply-adds of Linear and Conv2d layers, x2);
- bytes sent up and down per round (``History.rounds``, float32, all clients).

The cached-features linear probe (the body's 64 features computed once) is a separate row: the
backbone leaves the loop. ``--text`` adds all-MiniLM-L6-v2: one SGD step of full fine-tuning vs the
head alone with the encoder in the loop, and the head on cached embeddings.

    python benchmarks/fewshot_modes.py [--rounds 6] [--repeats 3] [--threads 1] [--text]

Measured on the shared 2-core development machine (torch 2.13 CPU, 1 thread, load average 1-3 from
other jobs, so single timings move by tens of percent), ``--rounds 6 --repeats 3 --text``, 59 s:

    mode        trainable  bytes up/round      bytes down/round     s/round           s/step (1 client)  est. FLOPs
    linear_probe      650      26,000 (1x)         26,000 (1x)      132 ms (1.00x)    2.99 ms (1.00x)    1.00x
    last_layers   101,066   4,042,640 (155x)    4,042,640 (155x)    146 ms (1.10x)    3.47 ms (1.16x)    1.09x
    bitfit            762      30,480 (1.17x)      30,480 (1.17x)   172 ms (1.30x)    5.69 ms (1.90x)    1.90x
    lora (r=4)      7,178     287,120 (11x)     4,040,080 (155x)    132 ms (1.00x)    2.97 ms (0.99x)    1.10x
    ffa_lora (r=4)    906      36,240 (1.39x)      36,240 (1.39x)   121 ms (0.91x)    3.32 ms (1.11x)    1.10x
    full          105,866   4,234,640 (163x)    4,234,640 (163x)    312 ms (2.36x)    6.49 ms (2.17x)    2.90x

    full / linear probe with the CNN in the loop: 2.36x per round (engine), 2.17x per step (plain loop),
    2.90x estimated (the reference document: about 3x).
    Linear probe on cached features: 0.36 ms per step, 8x faster than with the CNN in the loop.
    MiniLM (8 snippets x 48 tokens): full 401 ms, head only 123 ms per step (3.27x); head on cached
    embeddings 0.30 ms (406x faster than the head with MiniLM in the loop).

Bytes are exact; LoRA uploads its factors (11x the probe) but downloads the merged dense layer (155x).
Other runs on the same machine gave full / linear 1.7-2.4x (CNN) and 3.3-4.1x (MiniLM, 3 steps).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
import torch

import fedlab_utils as flu
from fedlab_utils.lessons import fewshot as fw

MODES = ("linear_probe", "last_layers", "bitfit", "lora", "ffa_lora", "full")
OPTIONS = {"lora": {"lora_rank": 4}, "ffa_lora": {"lora_rank": 4}, "last_layers": {"num_layers": 2}}


def image_task(shots: int = 20, alpha: float = 0.5, num_clients: int = 10, seed: int = 0):
    ds = flu.pretrained.load_digits28()
    model = flu.pretrained.pretrained_cnn(num_classes=10)
    few = fw.few_shot_federation(ds.X, ds.y, shots=shots, alpha=alpha, num_clients=num_clients, seed=seed,
                                 shape=ds.shape)
    return ds, model, few.federation


def engine_round(model, fed, mode, rounds, seed):
    """Median seconds of the training rounds (not the evaluated first and last) and bytes per round."""
    hist = flu.run(model, fed, num_rounds=rounds, local_steps=5, client_lr=flu.lessons.study.CLIENT_LR[mode],
                   batch_size=16, finetune=mode, seed=seed, eval_every=rounds, progress=False,
                   **OPTIONS.get(mode, {}))
    seconds = hist.timing.seconds.to_numpy()
    inner = seconds[:-1] if len(seconds) > 2 else seconds
    r = hist.rounds
    return (statistics.median(inner), int(r.bytes_up.iloc[0]), int(r.bytes_down.iloc[0]),
            int(r.trainable_params.iloc[0]), hist.final("accuracy", "query"))


def measure_image(rounds: int, repeats: int, steps: int):
    ds, model, fed = image_task()
    X, y = ds.X[:256], ds.y[:256]
    head_model, Z = fw.cache_body(model, ds.X)
    flu.lessons.study.time_steps(model, X, y, "full", steps=1)          # one-time imports and allocations
    per_round = {m: [] for m in MODES}
    per_step = {m: [] for m in MODES}
    cached = []
    info = {}
    for rep in range(repeats):
        order = MODES[rep % len(MODES):] + MODES[:rep % len(MODES)]   # rotate: no mode always first
        for mode in order:
            sec, up, down, trainable, acc = engine_round(model, fed, mode, rounds, seed=rep)
            per_round[mode].append(sec)
            info[mode] = (up, down, trainable, acc)
            per_step[mode].append(flu.lessons.study.time_steps(model, X, y, mode, steps=steps, batch_size=16, seed=rep))
        cached.append(flu.lessons.study.time_steps(head_model, Z[:256], y, "linear_probe", steps=steps, batch_size=16,
                                           seed=rep))
    rows = []
    for mode in MODES:
        up, down, trainable, acc = info[mode]
        cost = flu.finetune.cost(model, mode, input_shape=(784,), batch_size=16, **OPTIONS.get(mode, {}))
        rows.append(dict(mode=mode, trainable=trainable, bytes_up=up, bytes_down=down,
                         s_round=statistics.median(per_round[mode]), s_step=statistics.median(per_step[mode]),
                         flops=cost["flops_step"], accuracy=acc))
    table = pd.DataFrame(rows).set_index("mode")
    base = table.loc["linear_probe"]
    for col in ("bytes_up", "bytes_down", "s_round", "s_step", "flops"):
        table[col + "_x"] = table[col] / base[col]
    return table, statistics.median(cached)


def measure_text(steps: int, batch_size: int = 8):
    model, tokenize = flu.lessons.study.text_classifier(num_classes=2)
    snippets = flu.pretrained.load_text_snippets(fast=True)
    text = flu.pretrained.load_text_embeddings(fast=True)
    rows = np.arange(64)
    tokens, labels = tokenize([snippets.X[i] for i in rows]), snippets.y[rows]
    full, head = [], []
    for rep in range(3):
        full.append(flu.lessons.study.time_steps(model, tokens, labels, "full", steps=steps, batch_size=batch_size, seed=rep))
        head.append(flu.lessons.study.time_steps(model, tokens, labels, "linear_probe", steps=steps, batch_size=batch_size,
                                         seed=rep))
    cached = flu.lessons.study.time_steps(flu.models.logistic(384, 2), text.X[rows], text.y[rows], "linear_probe",
                                  steps=50, batch_size=batch_size)
    return statistics.median(full), statistics.median(head), cached


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="rounds per engine run (the first and last are evaluated)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per flu.lessons.study.time_steps call")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--text", action="store_true", help="also time MiniLM (loads the encoder, ~10 s)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    table, cached = measure_image(args.rounds, args.repeats, args.steps)
    print(f"Image task: digits28, 10 Dirichlet(0.5) clients, 20-shot, MNIST-pretrained CNN; "
          f"{args.rounds} rounds x 5 local steps of 16, {args.repeats} interleaved repeats, {args.threads} thread(s)\n")
    header = (f"{'mode':14s}{'trainable':>10s}{'bytes up/round':>22s}{'bytes down/round':>22s}"
              f"{'s/round':>18s}{'s/step (1 client)':>22s}{'est. FLOPs':>12s}{'accuracy':>10s}")
    print(header)
    print("-" * len(header))
    for mode, r in table.iterrows():
        print(f"{mode:14s}{r.trainable:>10,.0f}{r.bytes_up:>13,.0f} ({r.bytes_up_x:5.3g}x)"
              f"{r.bytes_down:>13,.0f} ({r.bytes_down_x:5.3g}x){r.s_round * 1e3:>9.1f} ms ({r.s_round_x:4.2f}x)"
              f"{r.s_step * 1e3:>12.2f} ms ({r.s_step_x:4.2f}x){r.flops_x:>11.2f}x{r.accuracy:>10.3f}")
    lp = table.loc["linear_probe", "s_step"]
    print(f"\nfull / linear probe, backbone in the loop: {table.loc['full', 's_round_x']:.2f}x per round (engine), "
          f"{table.loc['full', 's_step_x']:.2f}x per step (plain loop), {table.loc['full', 'flops_x']:.2f}x estimated "
          f"FLOPs (reference document: about 3x)")
    print(f"linear probe on cached features: {cached * 1e3:.3f} ms per step, {lp / cached:.0f}x faster than with "
          f"the CNN in the loop (a separate speed-up: the backbone leaves the loop)")
    if args.text:
        full, head, cached_text = measure_text(max(3, args.steps // 4))
        print(f"\nText: all-MiniLM-L6-v2 + linear head, SGD steps of 8 snippets x 48 tokens, "
              f"median of 3 interleaved repeats")
        print(f"full fine-tuning   {full * 1e3:9.1f} ms per step ({full / head:.2f}x head-only)")
        print(f"head only (MiniLM) {head * 1e3:9.1f} ms per step (1x)")
        print(f"head on cached embeddings {cached_text * 1e3:.3f} ms per step ({head / cached_text:.0f}x faster than "
              "head-only with MiniLM in the loop)")
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
