"""The package's layers, read from its source with ``ast`` (docs/architecture.md).

Every import, at module level or inside a function (lazy), must go to a layer the importer may
use, and no two modules may import each other, directly or through others.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fedlab_utils"

BELOW_ENGINE = {"_core", "data", "models", "algorithms", "systems", "privacy"}
ALLOWED = {
    "_core": set(),
    "data": {"_core"},
    "models": {"_core", "data"},
    "algorithms": {"_core", "models"},
    "systems": {"_core", "data", "models"},
    "privacy": {"_core", "data", "models"},
    "engine": BELOW_ENGINE,
    "analysis": BELOW_ENGINE | {"engine"},
    "lessons": BELOW_ENGINE | {"engine", "analysis", "experiments"},
    "experiments": BELOW_ENGINE | {"engine", "analysis", "lessons"},
    "views": BELOW_ENGINE | {"engine", "analysis", "lessons", "experiments"},
    "flower": BELOW_ENGINE | {"engine", "analysis", "lessons", "experiments"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name: str) -> bool:
    base = PKG.parent / Path(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(path: Path):
    """(line, imported module) for every import of the package in ``path``, lazy ones included."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fedlab_utils":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "fedlab_utils":
                target = node.module
            else:
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if _exists(sub) else target


def _graph():
    graph = {}
    for path in sorted(PKG.rglob("*.py")):
        graph[_module_name(path)] = (path, sorted(set(_imports(path))))
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_sits_in_a_known_layer():
    unknown = sorted({_layer(m) for m in _graph()} - set(ALLOWED) - {None})
    assert not unknown, f"sub-packages missing from the layer table: {unknown}"


def test_imports_follow_the_layer_table():
    bad = []
    for module, (path, imports) in _graph().items():
        src = _layer(module)
        if src is None:  # the top-level __init__ may name every layer (it loads them lazily)
            continue
        for line, target in imports:
            dst = _layer(target)
            if dst is None:
                bad.append(f"{path.relative_to(PKG.parent)}:{line} imports the top-level package")
            elif dst != src and dst not in ALLOWED[src]:
                bad.append(f"{path.relative_to(PKG.parent)}:{line} ({src}) imports {target} ({dst})")
    assert not bad, "imports against the layer table:\n" + "\n".join(bad)


def _cycle(graph):
    edges = {m: {t for _, t in imps if t in graph and t != m} for m, (_, imps) in graph.items()}
    state = {}

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t, stack)
                if found:
                    return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m, [])
            if found:
                return found
    return None


def test_no_import_cycles_lazy_or_not():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": (None, [(1, "b")]), "b": (None, [(1, "c")]), "c": (None, [(3, "a")]), "d": (None, [])}
    assert _cycle(graph) == ["a", "b", "c", "a"]


def _loaded_after(statement: str) -> set:
    code = (f"import sys; {statement}; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


HEAVY = {"matplotlib", "seaborn", "scipy", "ipywidgets", "transformers", "sentence_transformers", "flwr", "opacus",
         "sklearn"}


@pytest.mark.parametrize("statement", ["import fedlab_utils", "import fedlab_utils as flu; flu.run; flu.History",
                                       "import fedlab_utils as flu; flu.data; flu.models; flu.algorithms"])
def test_heavy_libraries_load_on_first_use_only(statement):
    loaded = _loaded_after(statement) & HEAVY
    assert not loaded, f"{statement!r} loads {sorted(loaded)}"


def test_public_names_resolve():
    code = ("import fedlab_utils as flu\n"
            "names = ['run', 'History', 'data', 'partition', 'models', 'finetune', 'fewshot', 'algorithms',\n"
            "         'evaluation', 'convergence', 'systems', 'privacy', 'plots', 'widgets', 'flower', 'fast_mode']\n"
            "missing = [n for n in names if getattr(flu, n, None) is None]\n"
            "assert not missing, missing\n"
            "assert flu.partition is flu.data.partition and flu.finetune is flu.models.finetune\n"
            "assert callable(flu.plots.plot_partitions) and callable(flu.widgets.partition_explorer)\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "MPLBACKEND": "Agg"})
