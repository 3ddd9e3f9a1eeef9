"""Notebook 06's compute: meta-learning and personalisation (tables in, tables out; draws nothing).

Every random draw comes from the package's seeded streams (``flu.run``, ``flu.fewshot``, and the
client roles here from the stream (seed, roles, SPLIT)); the same arguments give the same tables.

- :func:`image_task`, :func:`text_task`: the two few-shot tasks (8x8 digits with Dirichlet label
  skew; frozen MiniLM embeddings with movies as clients and an MLP the server pretrains on the
  other movies), each a :class:`Task` (federation, starting model, support/query table).
- :func:`global_vs_local`: FedAvg's global model against local-only training, per client.
- :func:`perfedavg_local`, :func:`meta_round_map`, :func:`maml_minimiser`, :func:`adapted_values`,
  :func:`adapted_grid`, :func:`meta_fixed_points`, :func:`inner_outer`: Per-FedAvg on quadratic
  clients in numpy, from the paper's update rule (``flu.run(..., algorithm="perfedavg")`` matches it).
- :data:`METHODS`, :func:`method_options`, :func:`uses`, :func:`train_method`, :func:`what_travels`:
  the methods of the comparison, the panel's knobs, and what each method trains, keeps and sends.
- :func:`assign_roles`, :func:`method_tables`, :func:`comparison_table`, :func:`compare`,
  :func:`pivot`, :func:`at_chosen_steps`: the personalisation protocol of Motley (Wu et al. 2022)
  over methods, on seen and unseen clients, and its tables.
- :func:`meta_train`, :func:`meta_test`: N-way K-shot episodes on novel classes after federated
  meta-training on the base classes only.
- :func:`scenario`: the interactive panel's one computation (``flu.widgets.personal``).
- :func:`load_minilm_personal`: the committed rows with the MiniLM encoder fine-tuned in the loop
  (``data/minilm_personal.csv``, written by ``scripts/minilm_personal.py``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._core import checks as chk
from .._core.random import SPLIT, np_stream, seed_value
from ..algorithms import get as get_algorithm
from ..analysis import evaluation as ev
from ..data import datasets as fdata
from ..data import fewshot as fshot
from ..data import partition as fpart
from ..data.quadratics import Quadratics
from ..engine.runner import run
from ..models import nets, pretrained
from . import fewshot as lf
from . import hetero_finetune as hf
from . import drift

__all__ = ["COMPARISON_COLUMNS", "EPISODE_COLUMNS", "FAST_METHODS", "METHODS", "MINILM_CSV", "PANEL_METHODS",
           "Comparison", "Scenario", "Task", "adapted_grid", "adapted_values", "assign_roles", "at_chosen_steps",
           "compare", "comparison_table", "global_vs_local", "image_task", "inner_outer", "load_minilm_personal",
           "maml_minimiser", "meta_fixed_points", "meta_round_map", "meta_test", "meta_train", "method_options",
           "VARIANTS", "method_tables", "perfedavg_local", "pivot", "scenario", "text_task", "train_method", "uses",
           "what_travels"]

_ROLES = 61  # stream key of the validation / test roles (purpose SPLIT)


# ============================================================================ the two tasks

@dataclass(frozen=True)
class Task:
    """A few-shot task: ``fed`` (support / query per client), the starting ``model`` (a
    ``.body``/``.head`` MLP), the ``table`` of what each client holds (client, label, available,
    support, query) and a ``name``."""

    fed: fdata.Federation
    model: nn.Module
    table: pd.DataFrame
    name: str


def image_task(*, shots: int = 5, alpha: float = 0.3, num_clients: int = 30, hidden: int = 64,
               seed: int = 0) -> Task:
    """scikit-learn's 8x8 digits (``flu.data.load_dataset("digits")``) over ``num_clients``
    Dirichlet(``alpha``) clients, ``shots`` (K) support digits per class each client holds and the
    rest its query (``flu.lessons.fewshot.few_shot_federation``, partition and support seeded by
    ``seed``); the model ``flu.models.mlp(64, hidden, 10, seed=seed)``, untrained."""
    ds = fdata.load_dataset("digits")
    few = lf.few_shot_federation(ds.X, ds.y, shots=shots, alpha=alpha, num_clients=num_clients, seed=seed,
                                 partition_seed=seed)
    model = nets.mlp(64, hidden, 10, seed=seed)
    return Task(few.federation, model, few.table, f"digits, {shots}-shot, Dirichlet({alpha:g})")


def _pretrain(model: nn.Module, X, y, steps: int, lr: float) -> nn.Module:
    """``steps`` full-batch gradient steps on the cross-entropy of (X, y) (deterministic)."""
    model = copy.deepcopy(model)
    params = list(model.parameters())
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(X), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
    return model


def text_task(*, num_clients: int = 20, shots: int = 4, hidden: int = 32, pretrain_steps: int = 300,
              pretrain_lr: float = 0.5, seed: int = 0) -> Task:
    """Rotten Tomatoes snippets as frozen all-MiniLM-L6-v2 embeddings (384-d), each movie a client
    (``flu.lessons.hetero_finetune.text_task``: the ``num_clients`` movies with the most snippets,
    ``shots`` support snippets per label and movie, the rest their query). The model is
    ``flu.models.mlp(384, hidden, 2, seed=seed)`` pretrained by the server on every snippet of the
    *other* movies (its own data, never a client's): ``pretrain_steps`` full-batch gradient steps
    at ``pretrain_lr``. A body (one hidden layer) and a head, so the head/body methods apply."""
    pretrain_steps = chk.integer("pretrain_steps", pretrain_steps, low=0)
    pretrain_lr = chk.real("pretrain_lr", pretrain_lr, low=0, low_open=True)
    task = hf.text_task(num_clients=num_clients, shots=shots, seed=seed)
    text = pretrained.load_text_embeddings(fast=True)
    other = ~torch.as_tensor(np.isin(np.asarray(text.groups), task.movies))
    model = _pretrain(nets.mlp(384, hidden, 2, seed=seed), text.X[other], text.y[other], pretrain_steps, pretrain_lr)
    rows = [(i, int(c), int((y == c).sum()) + int((yq == c).sum()), int((y == c).sum()), int((yq == c).sum()))
            for i, ((_, y), (_, yq)) in enumerate(zip(task.fed.train, task.fed.test)) for c in (0, 1)]
    table = pd.DataFrame(rows, columns=["client", "label", "available", "support", "query"])
    return Task(task.fed, model, table, f"movies, {shots}-shot per label")


def global_vs_local(model: nn.Module, fed: fdata.Federation, **train) -> pd.DataFrame:
    """Per client: ``classes`` held, ``support`` and ``query`` sizes, the query accuracy of
    FedAvg's global model (``global``, ``flu.run(model, fed, **train)``) and of training alone
    (``local``, ``flu.evaluation.local_only(model, fed, **train)``, the same steps), and
    ``gap = global - local`` (negative: the client is worse off with the federation)."""
    train.setdefault("progress", False)
    hist = run(model, fed, **train)
    glob = ev.evaluate(hist.model, fed)
    local = ev.local_only(model, fed, **train)
    acc = {name: t[(t.metric == "accuracy") & t.client.notna()].set_index("client")["value"]
           for name, t in (("global", glob), ("local", local))}
    out = pd.DataFrame({"classes": [len(torch.unique(y)) for _, y in fed.train],
                        "support": fed.sizes, "query": fed.test_sizes})
    out = out.join(pd.DataFrame(acc)).rename_axis("client").reset_index()
    out = out.dropna(subset=["global", "local"]).reset_index(drop=True)
    out["gap"] = out["global"] - out["local"]
    return out


# ============================================================================ Per-FedAvg on quadratics

VARIANTS = ("exact", "hf", "fo")


def _check_quadratics(q) -> Quadratics:
    if not isinstance(q, Quadratics):
        raise TypeError(f"q must be a flu.data.quadratics.Quadratics, got {type(q).__name__}")
    return q


def perfedavg_local(q: Quadratics, i: int, x, *, local_steps: int = 5, client_lr: float = 0.1,
                    inner_lr: float = 0.2, variant: str = "exact", hvp_delta: float = 1e-3) -> np.ndarray:
    """Client ``i``'s ``local_steps`` Per-FedAvg steps from ``x`` on F_i(w) = (w - c_i)^T A_i (w - c_i)
    (Fallah et al. 2020, Algorithm 1, full batch), with H_i = 2 A_i and grad F_i(w) = H_i (w - c_i):

        phi = w - a grad F_i(w),   g = grad F_i(phi),   w <- w - b (g - a H_i g)

    a = ``inner_lr``, b = ``client_lr``; ``variant`` "exact" as written, "hf" with H_i g replaced
    by (grad F_i(w + d g) - grad F_i(w - d g)) / (2 d), d = ``hvp_delta``, "fo" without it."""
    q = _check_quadratics(q)
    i = chk.integer("i", i, low=0, high=q.num_clients - 1)
    tau = chk.integer("local_steps", local_steps, low=1)
    b = chk.real("client_lr", client_lr, low=0, low_open=True)
    a = chk.real("inner_lr", inner_lr, low=0, low_open=True)
    chk.option("variant", variant, VARIANTS)
    d = chk.real("hvp_delta", hvp_delta, low=0, low_open=True)
    H, c = 2 * q.A[i], q.centers[i]

    def grad(v):
        return H @ (v - c)

    w = np.asarray(x, dtype=np.float64).reshape(-1).copy()
    for _ in range(tau):
        g = grad(w - a * grad(w))
        if variant == "exact":
            g = g - a * H @ g
        elif variant == "hf":
            g = g - a * (grad(w + d * g) - grad(w - d * g)) / (2 * d)
        w = w - b * g
    return w


def _fedavg_local(q, i, x, tau, b):
    H, c = 2 * q.A[i], q.centers[i]
    w = np.asarray(x, dtype=np.float64).copy()
    for _ in range(tau):
        w = w - b * H @ (w - c)
    return w


META_METHODS = ("fedavg",) + tuple(f"perfedavg_{v}" for v in VARIANTS)


def _label(method: str) -> str:
    return "FedAvg" if method == "fedavg" else f"Per-FedAvg ({method.split('_')[1]})"


def meta_round_map(q: Quadratics, method: str = "perfedavg_exact", *, local_steps: int = 5, client_lr: float = 0.1,
                   inner_lr: float = 0.2, server_lr: float = 1.0) -> "drift.RoundMap":
    """One full-participation, full-batch round of ``method`` ("fedavg", "perfedavg_exact",
    "perfedavg_hf", "perfedavg_fo") as the affine map x -> M x + c (:class:`flu.lessons.drift.RoundMap`):
    every client runs :func:`perfedavg_local` (or ``local_steps`` GD steps for FedAvg) from x and
    the server sets x <- x - server_lr sum_i p_i (x - y_i), p_i = n_i / n. Built by evaluating the
    round at 0 and at the basis vectors, so it is exactly what the rule computes, to rounding."""
    q = _check_quadratics(q)
    chk.option("method", method, META_METHODS)
    tau = chk.integer("local_steps", local_steps, low=1)
    eta = chk.real("server_lr", server_lr, low=0, low_open=True)
    p = q.p

    def step(x):
        if method == "fedavg":
            ys = [_fedavg_local(q, i, x, tau, client_lr) for i in range(q.num_clients)]
        else:
            ys = [perfedavg_local(q, i, x, local_steps=tau, client_lr=client_lr, inner_lr=inner_lr,
                                  variant=method.split("_")[1]) for i in range(q.num_clients)]
        return x - eta * p @ (x - np.stack(ys))

    return drift.affine_round_map(step, q.dim, method, q.dim)


def maml_minimiser(q: Quadratics, inner_lr: float) -> np.ndarray:
    """The minimiser of the Per-FedAvg objective sum_i p_i F_i(w - a grad F_i(w)), a = ``inner_lr``.
    On quadratics w - a grad F_i(w) - c_i = (I - a H_i)(w - c_i), so it is the minimiser of the
    quadratics with curvatures (I - a H_i) A_i (I - a H_i): (sum_i p_i B_i)^-1 sum_i p_i B_i c_i."""
    q = _check_quadratics(q)
    a = chk.real("inner_lr", inner_lr, low=0)
    eye = np.eye(q.dim)
    B = np.stack([(eye - 2 * a * A) @ A @ (eye - 2 * a * A) for A in q.A])
    lhs = np.einsum("i,ijk->jk", q.p, B)
    return np.linalg.solve(lhs, np.einsum("i,ijk,ik->j", q.p, B, q.centers))


def adapted_values(q: Quadratics, W, inner_lr: float) -> np.ndarray:
    """sum_i p_i F_i(w - a grad F_i(w)) at points ``W`` (G, d): the loss after one inner step."""
    q = _check_quadratics(q)
    a = chk.real("inner_lr", inner_lr, low=0)
    W = np.atleast_2d(np.asarray(W, dtype=np.float64))
    eye = np.eye(q.dim)
    D = W[None, :, :] - q.centers[:, None, :]                                 # (N, G, d)
    E = np.einsum("ijk,igk->igj", eye[None] - 2 * a * q.A, D)                  # (I - a H_i)(w - c_i)
    return q.p @ np.einsum("igj,ijk,igk->ig", E, q.A, E)


def adapted_grid(q: Quadratics, xlim, ylim, inner_lr: float, num: int = 81) -> pd.DataFrame:
    """:func:`adapted_values` on a ``num`` x ``num`` grid: long form ``w1, w2, value`` (for contours)."""
    q = _check_quadratics(q)
    if q.dim != 2:
        chk.fail("q", "2-D clients for a contour grid", f"dimension {q.dim}")
    num = chk.integer("num", num, low=2)
    W1, W2 = np.meshgrid(np.linspace(*map(float, xlim), num), np.linspace(*map(float, ylim), num))
    W = np.stack([W1.ravel(), W2.ravel()], 1)
    return pd.DataFrame({"w1": W[:, 0], "w2": W[:, 1], "value": adapted_values(q, W, inner_lr)})


def meta_fixed_points(q: Quadratics, *, local_steps: int = 5, client_lr: float = 0.1, inner_lr: float = 0.2,
                      methods=META_METHODS) -> pd.DataFrame:
    """One row per method of :func:`meta_round_map` and per optimum: ``label, kind, w1 .. wd,
    F`` (sum_i p_i F_i), ``F_adapted`` (:func:`adapted_values`), ``dist_to_w_star``,
    ``dist_to_maml`` and ``radius`` (the spectral radius of the round map; NaN for optima). The
    optima are w* (argmin F) and the Per-FedAvg optimum (:func:`maml_minimiser`)."""
    q = _check_quadratics(q)
    w_star, w_maml = q.w_star, maml_minimiser(q, inner_lr)
    rows = [("optimum w* of F", "optimum", w_star, np.nan),
            ("optimum of the Per-FedAvg objective", "optimum", w_maml, np.nan)]
    for m in methods:
        rm = meta_round_map(q, m, local_steps=local_steps, client_lr=client_lr, inner_lr=inner_lr)
        rows.append((_label(m), "fixed point", rm.fixed_point, rm.radius))
    out = []
    for label, kind, w, radius in rows:
        out.append(dict(label=label, kind=kind, **{f"w{k + 1}": float(v) for k, v in enumerate(w)},
                        F=float(q.values(w)[0]), F_adapted=float(adapted_values(q, w, inner_lr)[0]),
                        dist_to_w_star=float(np.linalg.norm(w - w_star)),
                        dist_to_maml=float(np.linalg.norm(w - w_maml)), radius=radius))
    return pd.DataFrame(out)


def inner_outer(q: Quadratics, x, *, inner_lr: float = 0.2, meta_lr: float = 0.2) -> pd.DataFrame:
    """The points of one MAML round from the global point ``x`` (for the diagram): ``kind`` (global,
    adapted, client optimum, meta step), ``client`` (<NA> for the shared points), ``w1, w2``.
    Client i's adapted point is phi_i = x - a grad F_i(x) (the inner loop, a = ``inner_lr``); the
    meta step is x - b sum_i p_i (I - a H_i) grad F_i(phi_i) (the outer loop, b = ``meta_lr``)."""
    q = _check_quadratics(q)
    if q.dim != 2:
        chk.fail("q", "2-D clients (a diagram)", f"dimension {q.dim}")
    a = chk.real("inner_lr", inner_lr, low=0, low_open=True)
    b = chk.real("meta_lr", meta_lr, low=0, low_open=True)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    rows, meta = [("global", None, *x)], np.zeros(2)
    for i in range(q.num_clients):
        H, c = 2 * q.A[i], q.centers[i]
        phi = x - a * H @ (x - c)
        meta += q.p[i] * (np.eye(2) - a * H) @ (H @ (phi - c))
        rows += [("adapted", i, *phi), ("client optimum", i, *c)]
    rows.append(("meta step", None, *(x - b * meta)))
    out = pd.DataFrame(rows, columns=["kind", "client", "w1", "w2"])
    out["client"] = out["client"].astype("Int64")
    return out


# ============================================================================ methods

#: label -> (algorithm, options): the methods of the comparison (labels as in flu._core.labels)
METHODS = {
    "FedAvg + fine-tuning": ("fedavg", {}),
    "Reptile": ("reptile", {}),
    "FedMeta (FOMAML)": ("fomaml", {"inner_lr": 0.05, "inner_steps": 1}),
    "Per-FedAvg": ("perfedavg", {"inner_lr": 0.01, "variant": "hf"}),
    "FedPer": ("fedper", {}),
    "FedRep": ("fedrep", {"head_steps": 5}),
    "FedBABU": ("fedbabu", {}),
    "LG-FedAvg": ("lg_fedavg", {}),
    "Ditto": ("ditto", {"lam": 0.1}),
    "APFL": ("apfl", {"mix": 0.5}),
    "Local only": (None, {}),
}
FAST_METHODS = ("FedAvg + fine-tuning", "Per-FedAvg", "FedRep", "Ditto", "APFL")
PANEL_METHODS = tuple(m for m in METHODS if m != "Local only")
#: which panel control feeds which option of which method
_KNOBS = {"inner_steps": {"FedMeta (FOMAML)": "inner_steps", "FedRep": "head_steps"},
          "inner_lr": {"FedMeta (FOMAML)": "inner_lr", "Per-FedAvg": "inner_lr"},
          "lam": {"Ditto": "lam"}}


def method_options(method: str, **knobs) -> tuple:
    """``(algorithm, options)`` of ``method`` (a key of :data:`METHODS`) with the panel's knobs
    applied where the method has them: ``inner_steps`` (FOMAML's ``inner_steps``, FedRep's
    ``head_steps``), ``inner_lr`` (FOMAML, Per-FedAvg) and ``lam`` (Ditto); None leaves the default."""
    chk.option("method", method, METHODS)
    algorithm, options = METHODS[method]
    options = dict(options)
    for knob, value in knobs.items():
        if knob not in _KNOBS:
            chk.fail("knobs", f"names among {sorted(_KNOBS)}", knob)
        if value is not None and method in _KNOBS[knob]:
            options[_KNOBS[knob][method]] = value
    return algorithm, options


def uses(knob: str) -> tuple:
    """The methods a panel knob (``inner_steps``, ``inner_lr``, ``lam``) acts on."""
    chk.option("knob", knob, _KNOBS)
    return tuple(_KNOBS[knob])


def train_method(model: nn.Module, fed: fdata.Federation, method: str, *, options: dict | None = None, **train):
    """``flu.run(model, fed, algorithm, **options, **train)`` for ``method`` (a key of
    :data:`METHODS` other than "Local only"; ``options`` replace its defaults)."""
    algorithm, opts = method_options(method)
    if algorithm is None:
        chk.fail("method", "a federated method (Local only trains no federated model)", method)
    train.setdefault("progress", False)
    return run(model, fed, algorithm=algorithm, **{**opts, **(options or {})}, **train)


_TRAINS = {"fedavg": "all, averaged", "reptile": "all, averaged (meta step)",
           "fomaml": "all: query gradient at the support-adapted point", "perfedavg": "all: MAML gradient",
           "fedper": "body and own head jointly", "fedrep": "own head first, then the body",
           "fedbabu": "body only (head frozen until evaluation)", "lg_fedavg": "own body and the head jointly",
           "ditto": "global model, and own model pulled to it", "apfl": "global model, and own model in a mixture"}


def what_travels(model: nn.Module, fed: fdata.Federation, methods=None, **train) -> pd.DataFrame:
    """One row per method: ``method, kind, trains, stays_on_client, personal_copy, bytes_up,
    bytes_down`` (per round, the first round of ``flu.run(..., num_rounds=1)``: bytes_up and
    bytes_down of ``hist.rounds``), ``bytes_up_vs_fedavg`` and ``params`` (the model's
    parameters). ``stays_on_client`` is the part that never travels, ``personal_copy`` the part
    of which each client keeps its own copy across rounds (``flu.algorithms.Algorithm``)."""
    methods = [m for m in (methods or METHODS) if m != "Local only"]
    train = {**train, "num_rounds": 1, "eval_every": 1}
    rows = []
    for m in methods:
        algorithm, _ = method_options(m)
        alg = get_algorithm(algorithm)
        first = train_method(model, fed, m, **train).rounds.iloc[0]
        rows.append(dict(method=m, kind=alg.kind, trains=_TRAINS[algorithm], stays_on_client=alg.stays or "-",
                         personal_copy=alg.keeps or ("mixture" if alg.personal else "-"),
                         bytes_up=int(first["bytes_up"]), bytes_down=int(first["bytes_down"])))
    out = pd.DataFrame(rows)
    base = out.loc[out.method == "FedAvg + fine-tuning", "bytes_up"]
    out["bytes_up_vs_fedavg"] = out["bytes_up"] / float(base.iloc[0]) if len(base) else np.nan
    out["params"] = sum(p.numel() for p in model.parameters())
    return out


# ============================================================================ the protocol over methods

def assign_roles(clients, seed: int = 0, *, validation_fraction: float = 0.5) -> tuple:
    """Split ``clients`` (ids, at least 2) at random into (validation, test), both sorted, with
    max(1, round(validation_fraction * n)) validation clients and at least one test client (the
    stream (seed, roles, SPLIT))."""
    want = "a sequence of at least 2 client ids (clients with a held-out split)"
    if isinstance(clients, (str, bytes)) or not hasattr(clients, "__iter__"):
        chk.fail("clients", want, clients)
    ids = sorted(set(int(c) for c in clients))
    if len(ids) < 2:
        chk.fail("clients", want, ids)
    frac = chk.real("validation_fraction", validation_fraction, low=0, high=1, low_open=True, high_open=True)
    k = min(len(ids) - 1, max(1, int(round(frac * len(ids)))))
    order = np_stream(seed_value("seed", seed), _ROLES, SPLIT).permutation(len(ids))
    pick = [ids[j] for j in order]
    return sorted(pick[:k]), sorted(pick[k:])


def _local_table(model, fed, train) -> pd.DataFrame:
    """``flu.evaluation.local_only`` as a personalize-shaped table at steps 0."""
    t = ev.local_only(model, fed, **train)
    t = t[t.client.notna() & t.metric.isin(["loss", "accuracy"])].copy()
    t["client"] = t["client"].astype("int64")
    t.insert(1, "steps", 0)
    return t[ev.PERSONAL_COLUMNS].reset_index(drop=True)


def method_tables(model: nn.Module, seen: fdata.Federation, unseen: fdata.Federation | None, method: str, *,
                  steps=(0, 1, 5, 10), lr: float = 0.05, seed: int = 0, options: dict | None = None,
                  **train) -> tuple:
    """Train ``method`` on the ``seen`` clients and personalise (``flu.evaluation.personalize``,
    ``steps``, ``lr``, full batch, the query split): seen clients start from their personal model
    when the method has one (``start="personal"``), else from the global model; ``unseen``
    clients (None: none) never trained and start from the global model. "Local only" trains
    each client alone (``flu.evaluation.local_only``, the same ``train``) and reports steps 0.

    Returns ``(hist, {"seen": table, "unseen": table})`` (hist None for Local only)."""
    train = {**train, "seed": seed}
    groups = {"seen": seen} if unseen is None else {"seen": seen, "unseen": unseen}
    if method_options(method)[0] is None:
        train.setdefault("progress", False)
        return None, {g: _local_table(model, f, train) for g, f in groups.items()}
    hist = train_method(model, seen, method, options=options, **train)
    start = "personal" if hist.personal_params is not None else "global"
    tables = {"seen": ev.personalize(hist, seen, steps, lr, seed=seed, start=start)}
    if unseen is not None:
        tables["unseen"] = ev.personalize(hist.model, unseen, steps, lr, seed=seed)
    return hist, tables


COMPARISON_COLUMNS = ["method", "task", "group", "steps", "statistic", "value"]


def comparison_table(tables: dict, roles: dict, *, task: str = "", metric: str = "accuracy") -> pd.DataFrame:
    """``flu.evaluation.protocol`` for every group: ``tables`` maps ``(method, group)`` to a
    personalize table, ``roles`` maps each group to its ``(validation_clients, test_clients)``;
    the step count is chosen on the group's validation clients and reported on its test clients.
    Long form ``method, task, group, steps, statistic, value``."""
    if not isinstance(tables, dict) or not tables:
        chk.fail("tables", "a non-empty dict (method, group) -> personalize table", type(tables).__name__)
    frames = []
    for group in dict.fromkeys(g for _, g in tables):
        if group not in roles:
            chk.fail("roles", f"(validation, test) clients for every group ({group!r} missing)", sorted(roles))
        mine = {m: t[t.metric == metric] for (m, g), t in tables.items() if g == group}
        validation, test = roles[group]
        frames.append(ev.protocol(mine, validation, test, metric, group=group))
    out = pd.concat(frames, ignore_index=True)
    out.insert(1, "task", task)
    return out[COMPARISON_COLUMNS]


def pivot(table: pd.DataFrame, statistics=("mean", "worst_10pct", "fraction_hurt")) -> pd.DataFrame:
    """A :func:`comparison_table` laid out wide: one row per (task, method) in their order, one
    column per (group, statistic) for ``statistics``, and ``(group, "steps")``, the step count
    each group's validation clients chose."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in COMPARISON_COLUMNS if c not in table.columns]
    if missing:
        chk.fail("table", f"a comparison table with columns {COMPARISON_COLUMNS} (missing {missing})",
                 list(table.columns))
    unknown = sorted(set(statistics) - set(table.statistic))
    if unknown:
        chk.fail("statistics", f"statistics of table {sorted(set(table.statistic))}", unknown)
    rows = table[table.statistic.isin(list(statistics))]
    steps = table.drop_duplicates(["task", "method", "group"])
    steps = steps.assign(statistic="steps", value=steps["steps"].astype("float64"))
    both = pd.concat([rows, steps], ignore_index=True)
    wide = both.pivot_table(index=["task", "method"], columns=["group", "statistic"], values="value", sort=False)
    order = [(g, s) for g in dict.fromkeys(table.group) for s in (*statistics, "steps")]
    return wide[order]


@dataclass(frozen=True)
class Comparison:
    """``table`` (:func:`comparison_table`), ``per_client`` (every personalize row with ``method``
    and ``group``), ``roles`` (group -> (validation, test) clients), ``unseen_ids`` (the held-out
    clients' ids in the task's federation), ``histories`` (method -> History) and ``seconds``
    (method -> wall seconds of training and personalising)."""

    table: pd.DataFrame
    per_client: pd.DataFrame
    roles: dict
    unseen_ids: np.ndarray
    histories: dict
    seconds: dict


def compare(task: Task, methods=FAST_METHODS, *, num_unseen: int = 10, steps=(0, 1, 5, 10), lr: float = 0.05,
            seed: int = 0, task_name: str | None = None, **train) -> Comparison:
    """Every method of ``methods`` on ``task``: ``num_unseen`` clients are held out
    (``flu.fewshot.split_clients``), the others train (:func:`method_tables`); within each group
    the clients with query examples get validation and test roles (:func:`assign_roles`), and
    :func:`comparison_table` reports each method at the step count its validation clients chose."""
    import time

    seen, unseen, unseen_ids = fshot.split_clients(task.fed, num_unseen, seed=seed)
    tables, histories, seconds = {}, {}, {}
    for m in methods:
        t0 = time.perf_counter()
        hist, groups = method_tables(task.model, seen, unseen, m, steps=steps, lr=lr, seed=seed, **train)
        seconds[m] = time.perf_counter() - t0
        histories[m] = hist
        tables.update({(m, g): t for g, t in groups.items()})
    roles = {g: assign_roles(sorted(set(t.client)), seed) for g, t in
             {g: t for (m, g), t in tables.items() if m == methods[0]}.items()}
    name = task.name if task_name is None else task_name
    per_client = pd.concat([t.assign(method=m, group=g) for (m, g), t in tables.items()], ignore_index=True)
    return Comparison(comparison_table(tables, roles, task=name), per_client, roles, unseen_ids, histories, seconds)


def at_chosen_steps(comparison: Comparison, *, test_only: bool = True, metric: str = "accuracy") -> pd.DataFrame:
    """The per-client rows of ``comparison`` at the step count the protocol chose for each method
    and group (on the test clients only, with ``test_only``): ``method, group, client, steps,
    metric, value`` (for ECDFs and before/after plots)."""
    if not isinstance(comparison, Comparison):
        raise TypeError(f"comparison must be an flu.lessons.personal.Comparison, got {type(comparison).__name__}")
    chosen = comparison.table.drop_duplicates(["method", "group"]).set_index(["method", "group"])["steps"]
    rows = comparison.per_client[comparison.per_client.metric == metric]
    keep = [chosen.get((m, g)) == s and (not test_only or c in comparison.roles[g][1])
            for m, g, c, s in zip(rows.method, rows.group, rows.client, rows.steps)]
    return rows[keep][["method", "group", "client", "steps", "metric", "value"]].reset_index(drop=True)


# ============================================================================ N-way K-shot episodes

def meta_train(model: nn.Module, X, y, base, methods=("FedAvg + fine-tuning", "Reptile", "FedMeta (FOMAML)",
                                                       "Per-FedAvg"), *, num_clients: int = 10,
               alpha: float = 0.5, seed: int = 0, **train) -> dict:
    """Federated (meta-)training on the ``base`` classes only: the examples of (X, y) whose label is
    in ``base`` over ``num_clients`` Dirichlet(``alpha``) clients (all their examples train),
    one :func:`train_method` run per method. Returns method -> trained model."""
    y_np = chk.labels("y", y)
    keep = np.isin(y_np, np.asarray(base))
    if not keep.any():
        chk.fail("base", "class labels present in y", base)
    Xb, yb = torch.as_tensor(X)[torch.from_numpy(keep)], torch.from_numpy(y_np[keep])
    part = fpart.dirichlet(yb, num_clients, alpha, seed=seed)
    fed = fdata.federate(Xb, yb, part, test_fraction=0.2, seed=seed)
    return {m: train_method(model, fed, m, seed=seed, **train).model for m in methods}


EPISODE_COLUMNS = ["method", "shots", "episode", "steps", "metric", "value"]


def meta_test(models: dict, X, y, novel, *, n_way: int = 5, shots=(1, 5, 10), steps=(0, 5, 20), query: int = 10,
              num_episodes: int = 20, lr: float = 0.1, finetune: str = "linear_probe", seed: int = 0) -> pd.DataFrame:
    """``flu.evaluation.episodes`` on the ``novel`` classes for every model of ``models`` (label ->
    module) and every K in ``shots`` (the same episodes for every model). Long form ``method,
    shots, episode, steps, metric, value``."""
    if not isinstance(models, dict) or not models:
        chk.fail("models", "a non-empty dict label -> torch.nn.Module", type(models).__name__)
    want = "a non-empty sequence of positive ints"
    if isinstance(shots, (str, bytes)) or not hasattr(shots, "__iter__") or not list(shots):
        chk.fail("shots", want, shots)
    frames = []
    for label, model in models.items():
        for k in shots:
            k = chk.integer("shots", k, low=1)
            t = ev.episodes(model, X, y, novel, n_way=n_way, shots=k, query=query, num_episodes=num_episodes,
                            steps=steps, lr=lr, finetune=finetune, seed=seed)
            frames.append(t.assign(method=label, shots=k))
    return pd.concat(frames, ignore_index=True)[EPISODE_COLUMNS]


# ============================================================================ the panel's computation

@dataclass(frozen=True)
class Scenario:
    """The panel's result: ``table`` (:func:`comparison_table` of the one method, seen and
    unseen), ``tables`` (group -> personalize table, accuracy rows), ``best`` (group -> chosen
    step count) and ``hist``."""

    table: pd.DataFrame
    tables: dict
    best: dict
    hist: object


def scenario(X, y, *, method: str = "Ditto", shots: int = 5, alpha: float = 0.3, inner_steps: int = 1,
             inner_lr: float = 0.05, lam: float = 0.1, num_clients: int = 20, num_unseen: int = 6,
             steps=(0, 1, 5, 10), lr: float = 0.05, seed: int = 0, hidden: int = 64, **train) -> Scenario:
    """One setting of the panel: ``num_clients`` Dirichlet(``alpha``) clients of (X, y) with
    ``shots`` support examples per class (:func:`flu.lessons.fewshot.few_shot_federation`),
    ``num_unseen`` held out, ``method`` trained on the others with the knobs of
    :func:`method_options`, then the protocol (:func:`method_tables`, :func:`assign_roles`,
    :func:`comparison_table`). A group with fewer than 2 clients holding query examples is a
    ValueError naming ``shots``."""
    chk.option("method", method, PANEL_METHODS)
    X = torch.as_tensor(X)
    few = lf.few_shot_federation(X, y, shots=shots, alpha=alpha, num_clients=num_clients, seed=seed,
                                 partition_seed=seed)
    seen, unseen, _ = fshot.split_clients(few.federation, num_unseen, seed=seed)
    for name, fed in (("seen", seen), ("unseen", unseen)):
        if int((fed.test_sizes > 0).sum()) < 2:
            chk.fail("shots", f"small enough that at least 2 {name} clients keep query examples", shots)
    _, options = method_options(method, inner_steps=inner_steps, inner_lr=inner_lr, lam=lam)
    model = nets.mlp(int(X.shape[1]), hidden, int(np.max(chk.labels("y", y))) + 1, seed=seed)
    hist, tables = method_tables(model, seen, unseen, method, steps=steps, lr=lr, seed=seed, options=options,
                                 **train)
    tables = {g: t[t.metric == "accuracy"].reset_index(drop=True) for g, t in tables.items()}
    roles = {g: assign_roles(sorted(set(t.client)), seed) for g, t in tables.items()}
    table = comparison_table({(method, g): t for g, t in tables.items()}, roles, task="panel")
    best = {g: int(table.loc[table.group == g, "steps"].iloc[0]) for g in tables}
    return Scenario(table, tables, best, hist)


# ============================================================================ the MiniLM rows

MINILM_CSV = "minilm_personal.csv"
MINILM_COLUMNS = ["method", "task", "group", "steps", "statistic", "value", "wall_s"]


def load_minilm_personal(path=None) -> pd.DataFrame:
    """The committed result of ``python scripts/minilm_personal.py`` (``data/minilm_personal.csv``):
    the protocol's rows with the MiniLM encoder fine-tuned in the loop, columns ``method, task,
    group, steps, statistic, value, wall_s``. A missing file is a FileNotFoundError; a CSV without
    these columns a ValueError naming ``path``."""
    path = pretrained.data_dir() / MINILM_CSV if path is None else path
    table = pd.read_csv(path)
    missing = [c for c in MINILM_COLUMNS if c not in table.columns]
    if missing:
        chk.fail("path", f"a CSV written by scripts/minilm_personal.py (columns {missing} missing)", str(path))
    return table
