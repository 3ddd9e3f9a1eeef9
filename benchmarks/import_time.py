"""What `import fedlab_utils` costs, against `import torch` measured in the same run.

Each statement runs in a fresh interpreter (cold module cache, warm file cache), several times;
the medians are printed with the difference to `import torch`. Target: `import fedlab_utils`
and the first `flu.run` at most 1 s more than torch alone (plots, widgets, seaborn, scipy and
transformers load on first use only).

    .venv/bin/python benchmarks/import_time.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

STATEMENTS = {
    "python (nothing)": "pass",
    "import torch": "import torch",
    "import fedlab_utils": "import fedlab_utils",
    "... + flu.run, flu.History": "import fedlab_utils as flu; flu.run; flu.History",
    "... + flu.data, flu.partition": "import fedlab_utils as flu; flu.run; flu.data.load_dataset; flu.partition",
    "... + flu.plots (matplotlib, seaborn)": "import fedlab_utils as flu; flu.plots",
    "... + flu.widgets (ipywidgets)": "import fedlab_utils as flu; flu.widgets",
}


def seconds(statement: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, env={"MPLBACKEND": "Agg", "PATH": ""})
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    for statement in STATEMENTS.values():  # warm the file cache once
        seconds(statement)
    medians = {}
    for label, statement in STATEMENTS.items():
        medians[label] = statistics.median(seconds(statement) for _ in range(args.repeats))
    torch_s = medians["import torch"]
    print(f"median of {args.repeats} fresh interpreters each\n")
    print(f"{'statement':40s} {'seconds':>8s} {'vs torch':>9s}")
    for label, s in medians.items():
        print(f"{label:40s} {s:8.2f} {s - torch_s:+9.2f}")
    extra = medians["... + flu.run, flu.History"] - torch_s
    print(f"\nimport fedlab_utils + flu.run costs {extra:+.2f} s over import torch "
          f"({'within' if extra <= 1.0 else 'over'} the 1 s target)")
    return medians


if __name__ == "__main__":
    main()
