"""Notebook 10's compute: what a client's update leaks, client-level DP-FedAvg, its accounting,
and secure aggregation. Tables in, tables out; nothing drawn (``flu.plots.privacy``,
``flu.widgets.privacy`` draw and wire).

Everything calls ``flu.privacy`` and ``flu.run``; nothing here re-derives them.

- Task: :func:`pixels` (digits scaled to [0, 1]), :func:`digits_task` (a K-shot federation of
  many small clients with a held-out test set no client holds), :func:`accuracy`.
- The leak (Zhu et al. 2019, DLG; Zhao et al. 2020, iDLG): :func:`client_update` (one client's
  local full-batch gradient descent), :func:`protect` (clip to C and add N(0, (z C)^2), the DP-FedAvg
  step applied to one update), :func:`attack` (``flu.privacy.invert_gradients`` on the protected
  update; :func:`distinct_first` puts distinct labels first, as iDLG needs),
  :func:`reconstruction_table`, :func:`gallery`.
- DP-FedAvg (McMahan et al. 2018): :func:`train` (``flu.run`` with ``record_params``),
  :func:`runs_table` (held-out accuracy, epsilon and clip per round), :func:`privacy_utility`.
- Accounting (Opacus): :func:`epsilon_curve` (epsilon after every round, Opacus' RDP accountant:
  the per-round RDP is computed once and multiplied by the rounds, exactly what
  ``RDPAccountant`` does), :func:`epsilon_table` (``flu.privacy.epsilon`` over a grid, RDP or PRV),
  :func:`client_budgets` (per-client epsilons when clients clip harder or join fewer rounds).
- DP noise in Li et al.'s bound (2020, ICLR, Theorem 1): :func:`noise_term`, :func:`update_norms`,
  :func:`dp_li_experiment`.
- Aggregation: :func:`aggregation_costs` (plaintext, Bonawitz et al. 2017 masking, CKKS),
  :func:`masked_values` and :func:`uniformity` (what the server sees).
"""
from __future__ import annotations

import copy
import functools
import math
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import privacy as fp
from .._core import checks as chk
from .._core.random import SPLIT, np_stream, seed_value, stream
from ..analysis import convergence as cv
from ..data import datasets as fdata
from ..engine.runner import run
from ..models import nets
from . import hetero_finetune as hf
from .fewshot import few_shot_federation

__all__ = ["Attack", "PROTECT", "Task", "accuracy", "aggregation_costs", "attack", "check_protections",
           "client_budgets", "client_update", "digits_task", "distinct_first", "dp_li_experiment", "epsilon_curve",
           "epsilon_table", "gallery", "masked_values", "noise_term", "pixels", "privacy_utility", "protect",
           "reconstruction_table", "runs_table", "train", "uniformity", "update_norms"]

PROTECT = 41  # stream purpose of the noise :func:`protect` adds (apart from the package's purposes)
RING = 2.0 ** 64


# =============================================================================== task

def pixels() -> fdata.Dataset:
    """scikit-learn's digits with pixels in [0, 1] (the raw 0..16 grey levels divided by 16), so
    images and reconstructions are on one scale."""
    ds = fdata.load_dataset("digits", standardized=False)
    return replace(ds, X=ds.X / 16.0, name="digits (pixels in [0, 1])")


@dataclass(frozen=True)
class Task:
    """A K-shot federation (``federation.train`` = support sets) and the held-out test set."""

    federation: fdata.Federation
    X_test: torch.Tensor
    y_test: torch.Tensor
    table: pd.DataFrame
    shots: int
    alpha: float


def digits_task(X=None, y=None, *, shots: int = 5, alpha: float = 0.5, num_clients: int = 100,
                test_fraction: float = 0.2, seed: int = 0, shape=None) -> Task:
    """Hold out ``test_fraction`` of the digits (a permutation from the stream (seed, SPLIT)),
    then ``flu.lessons.fewshot.few_shot_federation`` on the rest: Dirichlet(``alpha``) over
    ``num_clients`` clients, ``shots`` support examples per class a client holds. ``X, y``
    default to :func:`pixels` (and ``shape`` to its (1, 8, 8)). Accuracy is measured on the
    held-out digits, which no client has."""
    if X is None or y is None:
        ds = pixels()
        X, y, shape = ds.X, ds.y, ds.shape if shape is None else shape
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    if len(X) != len(y):
        chk.fail("y", f"one label per row of X ({len(X)})", f"{len(y)} labels")
    chk.real("test_fraction", test_fraction, low=0, high=1, low_open=True, high_open=True)
    seed = seed_value("seed", seed)
    n_test = int(round(test_fraction * len(y)))
    if not 0 < n_test < len(y):
        chk.fail("test_fraction", f"leaving at least one test and one training example of {len(y)}", test_fraction)
    perm = torch.as_tensor(np_stream(seed, SPLIT).permutation(len(y)))
    test, pool = perm[:n_test], perm[n_test:]
    few = few_shot_federation(X[pool], y[pool], shots=shots, alpha=alpha, num_clients=num_clients, seed=seed,
                              partition_seed=seed, shape=shape)
    return Task(few.federation, X[test], y[test], few.table, few.shots, float(alpha))


@torch.no_grad()
def accuracy(model: nn.Module, X, y, params: dict | None = None) -> float:
    """Share of ``X`` that ``model`` (with ``params`` if given) labels ``y``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    dtype = next(model.parameters()).dtype
    out = model(X.to(dtype)) if params is None else torch.func.functional_call(model, params, (X.to(dtype),))
    return float((out.argmax(1) == y).double().mean())


# =============================================================================== the leak

def client_update(model: nn.Module, X, y, *, local_steps: int = 1, lr: float = 0.1) -> dict:
    """``y_i - x``: the change ``local_steps`` of full-batch gradient descent (rate ``lr``, mean
    cross-entropy) make to every parameter of ``model`` (left unchanged). One step is ``-lr`` times
    the gradient of the client's K examples: what DLG inverts."""
    steps = chk.integer("local_steps", local_steps, low=1)
    lr = chk.real("lr", lr, low=0, low_open=True)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    new = hf.local_update(model, torch.as_tensor(X), torch.as_tensor(y), set(start), steps=steps, lr=lr)
    return {k: new[k] - start[k] for k in start}


def protect(update: dict, *, clip: float = math.inf, noise_multiplier: float = 0.0, seed: int = 0) -> dict:
    """DP-FedAvg's step on one update: ``clip_C(u) + N(0, (z C)^2 I)`` (``flu.privacy.DPFedAvg``'s
    ``clip_updates`` and ``aggregate`` with one client of weight 1; noise from the stream
    (seed, PROTECT)). What an observer of this update alone sees: under local DP, or in a round
    whose noised sum holds one client."""
    if not isinstance(update, dict) or not update:
        chk.fail("update", "a non-empty dict name -> tensor", update)
    dp = fp.DPFedAvg(clip=clip, noise_multiplier=noise_multiplier)
    stacked = {k: torch.as_tensor(v).unsqueeze(0) for k, v in update.items()}
    clipped, _ = dp.clip_updates(stacked)
    g = stream(seed_value("seed", seed), PROTECT) if noise_multiplier > 0 else None
    out = dp.aggregate(clipped, torch.ones(1), g, 1.0)
    return {k: v for k, v in out.items()}


def _norm(tensors: dict) -> float:
    return float(sum(v.detach().double().pow(2).sum() for v in tensors.values()).sqrt())


@dataclass(frozen=True)
class Attack:
    """One inversion: ``original`` and ``recovered`` inputs (K, d), matched in order (the Hungarian
    match of ``flu.privacy.reconstruction_error``), their labels, the error dict, the gradient
    distance per step (``losses``), and the norms of the update and of the noise added to it."""

    original: torch.Tensor
    recovered: torch.Tensor
    labels: torch.Tensor
    recovered_labels: torch.Tensor
    error: dict
    losses: pd.DataFrame
    update_norm: float
    noise_norm: float


def attack(model: nn.Module, X, y, *, local_steps: int = 1, lr: float = 0.1, clip: float = math.inf,
           noise_multiplier: float = 0.0, steps: int = 200, attack_lr: float = 0.1, distance: str = "cosine",
           optimizer: str = "adam", bounds=(0.0, 1.0), seed: int = 0) -> Attack:
    """The honest-but-curious server's attack on one client holding ``X, y`` (K examples): the client
    sends :func:`client_update`, optionally :func:`protect`-ed; the attacker, who knows the model,
    ``lr`` and ``local_steps``, reads the labels off the last layer (iDLG) and runs
    ``flu.privacy.invert_gradients(..., update_lr=lr * local_steps)``, i.e. treats the update as one
    step of rate lr x tau. Default: Geiping et al.'s cosine distance with Adam (``steps`` steps of
    rate ``attack_lr``), which a clip cannot fool (it only rescales the update); ``distance="l2"``,
    ``optimizer="lbfgs"`` is DLG. The recovered inputs are clamped to ``bounds`` (the attacker knows
    pixels lie in [0, 1]; None: not clamped) before the error is measured."""
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    if X.dim() != 2 or len(X) == 0 or len(X) != len(y):
        chk.fail("X", "a (K, d) tensor of K >= 1 flat examples with one label each", tuple(X.shape))
    if bounds is not None and (len(bounds) != 2 or not bounds[0] < bounds[1]):
        chk.fail("bounds", "None or a pair (low, high) with low < high", bounds)
    upd = client_update(model, X, y, local_steps=local_steps, lr=lr)
    seen = protect(upd, clip=clip, noise_multiplier=noise_multiplier, seed=seed)
    clipped = protect(upd, clip=clip) if noise_multiplier > 0 else seen
    noise = {k: seen[k] - clipped[k] for k in seen}
    num_classes = int(list(model.parameters())[-1].shape[0])
    rec, losses = fp.invert_gradients(model, seen, len(X), num_classes, tuple(X.shape[1:]), steps=steps,
                                      lr=attack_lr, seed=seed, distance=distance, optimizer=optimizer,
                                      update_lr=lr * local_steps)
    inputs = rec.inputs if bounds is None else rec.inputs.clamp(float(bounds[0]), float(bounds[1]))
    err = fp.reconstruction_error(X, inputs)
    order = torch.as_tensor(err["order"])
    return Attack(X.detach().clone(), inputs[order], y.clone(), rec.labels[order], err, losses,
                  _norm(upd), _norm(noise))


def distinct_first(X, y) -> tuple:
    """``(X, y)`` reordered so that the first examples have distinct labels (one of each label, in
    order of first appearance), then the rest: iDLG's labels are exact for distinct labels."""
    y = torch.as_tensor(y)
    seen, first, rest = set(), [], []
    for i, c in enumerate(y.tolist()):
        (rest if c in seen else first).append(i)
        seen.add(c)
    order = torch.as_tensor(first + rest, dtype=torch.int64)
    return torch.as_tensor(X)[order], y[order]


def check_protections(protections) -> dict:
    """``protections`` (name -> (clip, noise_multiplier)) checked by ``flu.privacy.DPFedAvg``."""
    if not isinstance(protections, dict) or not protections:
        chk.fail("protections", "a non-empty dict name -> (clip, noise_multiplier)", protections)
    out = {}
    for name, value in protections.items():
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            chk.fail("protections", "a dict name -> (clip, noise_multiplier)", {name: value})
        fp.DPFedAvg(clip=value[0], noise_multiplier=value[1])  # checks both
        out[str(name)] = (float(value[0]), float(value[1]))
    return out


def reconstruction_table(model: nn.Module, X, y, *, shots=(1, 4, 8), local_steps=(1, 5), protections=None,
                         lr: float = 0.1, seed: int = 0, return_attacks: bool = False, **attack_options):
    """:func:`attack` on the first K examples of ``X, y`` for every K in ``shots``, every number of
    local steps and every protection (name -> (clip, noise_multiplier); default none only).
    ``attack_options`` go to :func:`attack`. One row each: ``shots, local_steps, protection, clip,
    noise_multiplier, update_norm, noise_norm, relative_mse`` (MSE / variance of the originals; 0 =
    perfect, about 1 or more = no better than guessing the mean), ``psnr`` (dB), ``labels_right``
    (iDLG's labels equal the true multiset). With ``return_attacks`` also a dict (shots,
    local_steps, protection) -> :class:`Attack`, for :func:`gallery`."""
    protections = check_protections({"none": (math.inf, 0.0)} if protections is None else protections)
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    shots = [chk.integer("shots", k, low=1, high=len(X)) for k in shots]
    rows, attacks = [], {}
    for k in shots:
        for tau in local_steps:
            for name, (clip, z) in protections.items():
                a = attack(model, X[:k], y[:k], local_steps=tau, lr=lr, clip=clip, noise_multiplier=z, seed=seed,
                           **attack_options)
                attacks[(k, int(tau), name)] = a
                rows.append(dict(shots=k, local_steps=int(tau), protection=name, clip=clip, noise_multiplier=z,
                                 update_norm=a.update_norm, noise_norm=a.noise_norm,
                                 relative_mse=a.error["relative_mse"], psnr=a.error["psnr"],
                                 labels_right=bool(torch.equal(a.recovered_labels.sort().values,
                                                               a.labels.sort().values))))
    table = pd.DataFrame(rows)
    return (table, attacks) if return_attacks else table


def gallery(attacks: dict, shape=(8, 8)) -> pd.DataFrame:
    """Long table ``attack, kind, slot, label, image`` (kind ``original`` / ``recovered``, image an
    ``shape`` array) of ``attacks`` (name -> Attack)."""
    if not isinstance(attacks, dict) or not attacks:
        chk.fail("attacks", "a non-empty dict name -> Attack", attacks)
    rows = []
    for name, a in attacks.items():
        if not isinstance(a, Attack):
            raise TypeError(f"attacks must map names to Attack, got {type(a).__name__} for {name!r}")
        for kind, imgs, labels in (("original", a.original, a.labels), ("recovered", a.recovered, a.recovered_labels)):
            for j in range(len(imgs)):
                rows.append(dict(attack=str(name), kind=kind, slot=j, label=int(labels[j]),
                                 image=imgs[j].reshape(shape).detach().cpu().numpy()))
    return pd.DataFrame(rows, columns=["attack", "kind", "slot", "label", "image"])


# =============================================================================== DP-FedAvg

def train(model: nn.Module, fed: fdata.Federation, privacy=None, *, num_rounds: int = 20, local_steps: int = 5,
          client_lr: float = 0.3, batch_size: int | None = 16, clients_per_round: int | None = None,
          sampling: str = "uniform", weights: str = "uniform", seed: int = 0, **options):
    """``flu.run(model, fed, "fedavg", privacy=privacy, record_params=True, ...)`` evaluated only
    after the last round (the held-out accuracy per round comes from the trajectory)."""
    return run(model, fed, "fedavg", num_rounds=num_rounds, local_steps=local_steps, client_lr=client_lr,
               batch_size=batch_size, clients_per_round=clients_per_round, sampling=sampling, weights=weights,
               privacy=privacy, record_params=True, eval_every=num_rounds, progress=False, seed=seed, **options)


def runs_table(runs: dict, X_test, y_test) -> pd.DataFrame:
    """One row per (label, round) of ``runs`` (label -> History with a trajectory): ``label, round,
    accuracy`` (on ``X_test``), ``epsilon`` (inf without privacy, 0 at round 0), ``clip`` (NaN without)."""
    if not isinstance(runs, dict) or not runs:
        chk.fail("runs", "a non-empty dict label -> History", runs)
    frames = []
    for label, h in runs.items():
        if getattr(h, "trajectory", None) is None:
            chk.fail("runs", "Histories recorded with record_params=True", label)
        acc = [accuracy(h.model, X_test, y_test, params) for params in h.trajectory]
        R = len(acc) - 1
        private = "epsilon" in h.rounds
        eps = [0.0] + h.rounds["epsilon"].tolist() if private else [0.0] + [math.inf] * R
        clip = [h.rounds["clip"].iloc[0]] + h.rounds["clip"].tolist() if private else [math.nan] * (R + 1)
        frames.append(pd.DataFrame({"label": str(label), "round": np.arange(R + 1), "accuracy": acc,
                                    "epsilon": eps, "clip": clip}))
    return pd.concat(frames, ignore_index=True)


def privacy_utility(tasks=((0.5, 5),), noise_multipliers=(0.0, 2.0, 6.0), *, clip: float = 1.0,
                    num_clients: int = 100, num_rounds: int = 20, local_steps: int = 5, client_lr: float = 0.3,
                    batch_size: int | None = 16, hidden: int = 32, delta: float = 1e-5, seed: int = 0,
                    X=None, y=None) -> pd.DataFrame:
    """Held-out accuracy against epsilon: for every (alpha, shots) in ``tasks`` (:func:`digits_task`
    with ``num_clients``) and every noise multiplier z (0: no privacy), FedAvg with DP-FedAvg at
    ``clip``, every client in every round (q = 1, uniform weights, so the noise std is z C / N) on
    ``flu.models.mlp(d, hidden, 10)``. Rows ``alpha, shots, noise_multiplier, clip, epsilon``
    (the run's, inf without privacy), ``accuracy``, ``noise_std``."""
    if not tasks:
        chk.fail("tasks", "a non-empty list of (alpha, shots) pairs", tasks)
    rows = []
    for pair in tasks:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            chk.fail("tasks", "a list of (alpha, shots) pairs", pair)
        alpha, shots = pair
        task = digits_task(X, y, shots=shots, alpha=alpha, num_clients=num_clients, seed=seed)
        d = int(task.X_test.shape[1])
        model = nets.mlp(d, hidden, 10, seed=seed)
        for z in noise_multipliers:
            z = chk.real("noise_multipliers", z, low=0)
            dp = fp.DPFedAvg(clip=clip, noise_multiplier=z, delta=delta) if z > 0 else None
            h = train(model, task.federation, dp, num_rounds=num_rounds, local_steps=local_steps, client_lr=client_lr,
                      batch_size=batch_size, seed=seed)
            eps = float(h.rounds["epsilon"].iloc[-1]) if dp else math.inf
            rows.append(dict(alpha=float(alpha), shots=int(shots), noise_multiplier=z, clip=float(clip), epsilon=eps,
                             accuracy=accuracy(h.model, task.X_test, task.y_test),
                             noise_std=z * clip / task.federation.num_clients))
    return pd.DataFrame(rows)


# =============================================================================== accounting

@functools.lru_cache(maxsize=256)
def _rdp_per_round(noise_multiplier: float, sample_rate: float) -> tuple:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    orders = tuple(RDPAccountant.DEFAULT_ALPHAS)
    return orders, tuple(analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                              orders=list(orders)).tolist())


def epsilon_curve(noise_multiplier: float, sample_rate: float, rounds: int, delta: float, *,
                  every: int = 1) -> pd.DataFrame:
    """``round, epsilon, order``: Opacus' RDP epsilon after rounds every, 2 every, ..., ``rounds``
    (and ``rounds`` itself) of the sampled Gaussian mechanism, equal to
    ``flu.privacy.epsilon(noise_multiplier, sample_rate, round, delta)`` at each. The RDP of T
    rounds is T times that of one (Mironov et al. 2019: RDP composes additively), so Opacus'
    per-round RDP is computed once (and cached) and converted for each T (Balle et al. 2020,
    Thm. 21, Opacus' ``get_privacy_spent``); ``order`` is the best alpha."""
    z = chk.real("noise_multiplier", noise_multiplier, low=0)
    q = chk.real("sample_rate", sample_rate, low=0, high=1, low_open=True)
    R = chk.integer("rounds", rounds, low=1)
    delta = chk.real("delta", delta, low=0, high=1, low_open=True, high_open=True)
    every = chk.integer("every", every, low=1)
    T = sorted(set(range(every, R + 1, every)) | {R})
    if z == 0:
        return pd.DataFrame({"round": T, "epsilon": math.inf, "order": math.nan})
    from opacus.accountants.analysis import rdp as analysis

    orders, rdp = _rdp_per_round(float(z), float(q))
    rdp = np.asarray(rdp)
    rows = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        for t in T:
            eps, order = analysis.get_privacy_spent(orders=list(orders), rdp=rdp * int(t), delta=float(delta))
            rows.append((t, float(eps), float(order)))
    return pd.DataFrame(rows, columns=["round", "epsilon", "order"])


def epsilon_table(noise_multipliers=(0.5, 1.0, 2.0), sample_rates=(0.01, 0.1, 1.0), rounds=(100,), *,
                  delta: float = 1e-5, accountants=("rdp",)) -> pd.DataFrame:
    """``flu.privacy.epsilon`` over the grid: rows ``noise_multiplier, sample_rate, rounds, delta,
    accountant, epsilon``."""
    rows = []
    for acc in accountants:
        for z in noise_multipliers:
            for q in sample_rates:
                for T in rounds:
                    with warnings.catch_warnings():  # Opacus' PRV takes log(0) at q = 1 on a branch it discards
                        warnings.filterwarnings("ignore", "divide by zero encountered in log", RuntimeWarning)
                        eps = fp.epsilon(z, q, T, delta, accountant=acc)
                    rows.append(dict(noise_multiplier=float(z), sample_rate=float(q), rounds=int(T), delta=float(delta),
                                     accountant=acc, epsilon=eps))
    return pd.DataFrame(rows)


def client_budgets(noise_multiplier: float, rounds: int, delta: float, *, sample_rate: float = 1.0,
                   clip_shares=(1.0, 0.5, 0.25), round_shares=(1.0, 0.5, 0.25)) -> pd.DataFrame:
    """Per-client epsilons under one noise level (std z C on the sum). A client whose update is
    clipped to s C (``clip_shares``) moves the sum by at most s C, so its noise multiplier is z / s;
    a client present in only a share s of the rounds (``round_shares``) composes round(s T) rounds.
    Rows ``lever`` (``clip`` / ``rounds``), ``share, noise_multiplier, rounds, epsilon``."""
    z = chk.real("noise_multiplier", noise_multiplier, low=0, low_open=True)
    R = chk.integer("rounds", rounds, low=1)
    rows = []
    for s in clip_shares:
        s = chk.real("clip_shares", s, low=0, high=1, low_open=True)
        eps = float(epsilon_curve(z / s, sample_rate, R, delta, every=R)["epsilon"].iloc[-1])
        rows.append(dict(lever="clip", share=s, noise_multiplier=z / s, rounds=R, epsilon=eps))
    for s in round_shares:
        s = chk.real("round_shares", s, low=0, high=1, low_open=True)
        Ri = max(1, int(round(s * R)))
        eps = float(epsilon_curve(z, sample_rate, Ri, delta, every=Ri)["epsilon"].iloc[-1])
        rows.append(dict(lever="rounds", share=s, noise_multiplier=z, rounds=Ri, epsilon=eps))
    return pd.DataFrame(rows)


# =============================================================================== DP noise in Li et al.'s bound

def noise_term(constants: cv.Constants, num_rounds: int, local_steps: int, variance: float) -> np.ndarray:
    """(L / 2) N_r for r = 0..R: the DP noise's share of the bound on E[F(w_r)] - F*.

    With Li et al.'s schedule eta_t = 2 / (mu (gamma + t)) (``flu.convergence.li_step_size``), the
    distance Delta_t = E||w_t - w*||^2 obeys Delta_{t+1} <= (1 - eta_t mu) Delta_t + eta_t^2 B
    (their Lemma 1) plus, after each round's last step t = rE, the variance V = d (z C w_max)^2 of the
    noise (zero mean, independent). By linearity Delta_t <= A_t + N_t with A_t Li's bound and
    N_{t+1} = (1 - eta_t mu) N_t + V 1[t + 1 = rE], so N after round R is
    V sum_{r=1}^{R} prod_{t=rE+1}^{RE} (1 - eta_t mu), and F - F* <= (L / 2) Delta."""
    R = chk.integer("num_rounds", num_rounds, low=0)
    E = chk.integer("local_steps", local_steps, low=1)
    V = chk.real("variance", variance, low=0)
    if not constants.mu > 0:
        chk.fail("constants", "with mu > 0 (l2 > 0)", constants)
    lr = cv.li_step_size(constants.mu, cv.li_gamma(constants, E), E)
    eta = np.array([lr(r, s) for r in range(1, R + 1) for s in range(E)])
    factor = 1.0 - eta * constants.mu              # iteration t = index + 1
    N = [0.0]
    for r in range(1, R + 1):
        # contract the previous rounds' noise through round r's E steps, then add round r's
        N.append(N[-1] * float(np.prod(factor[(r - 1) * E: r * E])) + V)
    return constants.L / 2 * np.asarray(N)


def update_norms(model: nn.Module, fed: fdata.Federation, trajectory, *, local_steps: int, client_lr, l2: float = 0.0,
                 weights: str = "uniform") -> pd.DataFrame:
    """``round, client, norm``: ||x_{r-1} - y_i|| of every client's full-batch local update in every
    round r of ``trajectory`` (the global parameters, round 0 first), recomputed from scratch with
    ``client_lr`` (a float or ``(round, step)`` callable) and the l2 penalty on every parameter
    of dimension > 1 (as ``flu.run``). Checks that a clip C never bound: max(norm) <= C."""
    E = chk.integer("local_steps", local_steps, low=1)
    rows = []
    for r in range(1, len(trajectory)):
        x = trajectory[r - 1]
        for i, (Xi, yi) in enumerate(fed.train):
            net = copy.deepcopy(model)
            with torch.no_grad():
                for k, p in net.named_parameters():
                    p.copy_(x[k])
            params = dict(net.named_parameters())
            for s in range(E):
                loss = nn.functional.cross_entropy(net(Xi.to(next(net.parameters()).dtype)), yi)
                loss = loss + l2 / 2 * sum((p ** 2).sum() for p in params.values() if p.dim() > 1)
                grads = torch.autograd.grad(loss, list(params.values()))
                eta = client_lr(r, s) if callable(client_lr) else client_lr
                with torch.no_grad():
                    for p, g in zip(params.values(), grads):
                        p -= eta * g
            rows.append((r, i, _norm({k: x[k] - params[k].detach() for k in x})))
    return pd.DataFrame(rows, columns=["round", "client", "norm"])


def dp_li_experiment(fed: fdata.Federation, model: nn.Module, *, l2: float = 0.1, local_steps: int = 5,
                     num_rounds: int = 15, noise_multipliers=(0.5, 2.0), clip: float | None = None, seeds=(0, 1, 2, 3),
                     delta: float = 1e-5, constants: cv.Constants | None = None,
                     check_clip: str | bool = "largest"):
    """DP-FedAvg on a convex problem against Li et al. 2020 (ICLR) Theorem 1 plus :func:`noise_term`.

    Full participation, full-batch local gradient descent (sigma^2 = 0), uniform weights (w_max = 1/N),
    Li et al.'s step sizes. ``clip`` defaults to 2 E eta_1 G, twice what a client's update can reach
    while its gradients stay below G (G^2 estimated as in notebook 03, at evenly spaced global
    iterates of the run without noise and of the first noisy run), so clipping should not bind and
    DP-FedAvg is FedAvg plus noise of variance V = d (z C / N)^2 per round; ``check_clip`` recomputes
    the update norms (:func:`update_norms`) of the first seed's run of the largest z (``"largest"``,
    the noisiest iterates), of every z > 0 (True), or of none (False).

    Returns ``(table, info)``: ``table`` long form ``noise_multiplier, round, iteration, kind, value``
    with kind ``measured`` (E[F(w_r)] - F* over ``seeds``), ``bound`` (Theorem 1 + noise term) and
    ``noise term``; z = 0 is the run without privacy (and Theorem 1 alone). ``info``: constants,
    G2, clip, epsilon per z, variance per z, max update norm per z.
    """
    E = chk.integer("local_steps", local_steps, low=1)
    R = chk.integer("num_rounds", num_rounds, low=1)
    seeds = [seed_value("seeds", s) for s in seeds]
    if not seeds:
        chk.fail("seeds", "at least one seed", seeds)
    c = constants if constants is not None else cv.constants(model, fed, "cross_entropy", l2, "uniform")
    lr = cv.li_step_size(c.mu, cv.li_gamma(c, E), E)
    common = dict(num_rounds=R, local_steps=E, client_lr=lr, batch_size=None, weights="uniform", l2=l2,
                  diagnostics=True, eval_every=R, progress=False)
    clean = run(model, fed, "fedavg", record_params=True, seed=seeds[0], **common)
    points = np.unique(np.linspace(0, R, 4).round().astype(int))
    G2 = cv.G2(model, [clean.trajectory[i] for i in points], fed, "cross_entropy", l2, batch_size=None)
    C = 2 * E * lr(1, 0) * math.sqrt(G2) if clip is None else chk.real("clip", clip, low=0, low_open=True)
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    N = fed.num_clients
    start = clean.trajectory[0]
    dist2 = cv.distance2(start, c.w_star)
    F0 = cv.objective(model, start, fed, "cross_entropy", l2, "uniform")
    rounds = np.arange(R + 1)
    frames, info = [], dict(constants=c, clip=C, G2=G2, epsilon={}, variance={}, max_update_norm={}, schedule=lr)
    runs = {}
    for z in noise_multipliers:
        z = chk.real("noise_multipliers", z, low=0)
        if z == 0:
            hs = [clean]
        else:
            dp = fp.DPFedAvg(clip=C, noise_multiplier=z, delta=delta)
            hs = [run(model, fed, "fedavg", privacy=dp, record_params=(k == 0), seed=s, **common)
                  for k, s in enumerate(seeds)]
            G2 = max(G2, cv.G2(model, [hs[0].trajectory[i] for i in points], fed, "cross_entropy", l2,
                               batch_size=None))
            info["epsilon"][z] = float(hs[0].rounds["epsilon"].iloc[-1])
        runs[z] = hs
    info["G2"] = G2
    for z, hs in runs.items():
        gap = np.mean([np.concatenate([[F0], h.rounds["global_loss"].to_numpy()]) for h in hs], axis=0) - c.F_star
        V = d * (z * C / N) ** 2
        term = noise_term(c, R, E, V)
        li = cv.li_fedavg_bound(c, R, E, G2=G2, dist2=dist2)["bound"].to_numpy()
        info["variance"][z] = V
        if z > 0 and (check_clip is True or (check_clip == "largest" and z == max(runs))):
            info["max_update_norm"][z] = float(update_norms(model, fed, hs[0].trajectory, local_steps=E, client_lr=lr,
                                                            l2=l2)["norm"].max())
        for kind, value in (("measured", gap), ("bound", li + term), ("noise term", term)):
            frames.append(pd.DataFrame({"noise_multiplier": z, "round": rounds, "iteration": rounds * E,
                                        "kind": kind, "value": value}))
    return pd.concat(frames, ignore_index=True), info


# =============================================================================== aggregation

def aggregation_costs(updates, *, dropped=(), seed: int = 0, poly_modulus_degree: int = 8192):
    """Bytes, messages, seconds and error of summing ``updates`` (K tensors of one shape) three ways,
    over the clients not in ``dropped``: ``plaintext`` (float32 uploads, the server adds),
    ``masking`` (``flu.privacy.secure_sum``, Bonawitz et al. 2017: the dropped clients' masks are
    removed from Shamir shares) and ``CKKS`` (``flu.privacy.encrypted_sum`` of the survivors'
    updates: a dropped client's ciphertext simply never arrives).

    Returns ``(table, transcripts)``: rows ``method, clients, survivors, values, messages, bytes``
    (everything sent, up and down, key and context distribution included), ``vs_plaintext``
    (bytes / the plaintext's), ``client_s`` (seconds of client work, mean per client), ``server_s``,
    ``max_error`` (against the float64 sum); ``transcripts`` maps method to its transcript.
    """
    if isinstance(updates, torch.Tensor) or not hasattr(updates, "__len__") or len(updates) < 2:
        chk.fail("updates", "a list of at least 2 client tensors", type(updates).__name__)
    tensors = [torch.as_tensor(u) for u in updates]
    K, n = len(tensors), tensors[0].numel()
    drop = set(dropped)
    alive = [i for i in range(K) if i not in drop]
    exact = torch.stack([tensors[i].double() for i in alive]).sum(0)
    rows, transcripts = [], {}

    tic = time.perf_counter()
    plain = torch.stack([tensors[i].float() for i in alive]).sum(0)
    server = time.perf_counter() - tic
    rows.append(dict(method="plaintext", clients=K, survivors=len(alive), values=n, messages=len(alive),
                     bytes=4 * n * len(alive), client_s=0.0, server_s=server,
                     max_error=float((plain.double() - exact).abs().max())))
    total, tr = fp.secure_sum(tensors, dropped=tuple(sorted(drop)), seed=seed)
    rows.append(dict(method="masking", clients=K, survivors=len(alive), values=n, messages=tr["messages"],
                     bytes=tr["bytes"], client_s=tr["seconds"]["client"] / K, server_s=tr["seconds"]["server"],
                     max_error=float((total - exact).abs().max())))
    transcripts["masking"] = tr
    total, tr = fp.encrypted_sum([tensors[i] for i in alive], poly_modulus_degree=poly_modulus_degree)
    s = tr["seconds"]
    rows.append(dict(method="CKKS", clients=K, survivors=len(alive), values=n, messages=tr["messages"],
                     bytes=tr["bytes"], client_s=float(np.mean(s["encrypt"])), server_s=s["add"],
                     max_error=float((total - exact).abs().max())))
    transcripts["CKKS"] = tr
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("bytes") + 1, "vs_plaintext", table["bytes"] / table["bytes"].iloc[0])
    return table, transcripts


def masked_values(transcript: dict, clients=None, limit: int | None = None) -> pd.DataFrame:
    """``client, index, value``: the masked uploads y_u of ``flu.privacy.secure_sum``'s transcript,
    as fractions of the ring (y_u / 2^64 in [0, 1)); the first ``limit`` values of each."""
    masked = transcript.get("masked") if isinstance(transcript, dict) else None
    if not masked:
        chk.fail("transcript", "a secure_sum transcript with 'masked' uploads", type(transcript).__name__)
    clients = list(masked) if clients is None else list(clients)
    rows = []
    for c in clients:
        if c not in masked:
            chk.fail("clients", f"survivors among {sorted(masked)}", c)
        v = masked[c][:limit].astype(np.float64) / RING
        rows.append(pd.DataFrame({"client": c, "index": np.arange(len(v)), "value": v}))
    return pd.concat(rows, ignore_index=True)


def uniformity(values: pd.DataFrame, by: str = "client") -> pd.DataFrame:
    """Kolmogorov-Smirnov test of each group's ``value`` against Uniform[0, 1): ``by, n, statistic,
    p_value`` (a small p-value: not uniform)."""
    from scipy import stats

    if not isinstance(values, pd.DataFrame) or not {by, "value"} <= set(values.columns):
        chk.fail("values", f"a DataFrame with columns {by!r} and 'value'", type(values).__name__)
    rows = []
    for key, g in values.groupby(by, sort=False):
        res = stats.kstest(g["value"].to_numpy(), "uniform")
        rows.append({by: key, "n": len(g), "statistic": float(res.statistic), "p_value": float(res.pvalue)})
    return pd.DataFrame(rows)
