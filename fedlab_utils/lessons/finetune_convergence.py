"""Notebook 09's compute: which convergence theory covers each fine-tuning method, measured on its own
task (the few-shot digits of notebook 05). Pure functions: tables in, tables out; nothing drawn.

- **Linear probe = convex** (Section 1): :func:`pixel_body`, :func:`feature_bodies` (the same
  clients in pixel space, a random body's and the pretrained body's features, for
  ``flu.convergence.feature_heterogeneity``), :func:`probe_experiment` (Li et al. 2020's bound over
  the measured suboptimality, ``flu.lessons.drift.li_experiment``) and :func:`looseness`.
- **Full fine-tuning = non-convex** (Section 2): :func:`rounds_needed` and :func:`nonconvex_rate`
  (Karimireddy et al. 2020, Theorem I, non-convex, main terms), :func:`diagnostics_runs` (one
  ``flu.run(..., diagnostics=True)`` per mode, the probe on cached features), :func:`start_gradient`,
  :func:`stationarity`, :func:`smoothness`, :func:`flops_per_round` and :func:`milestones`
  (rounds and FLOPs to an epsilon-stationary point and to a target accuracy).
- **LoRA = bilinear** (Section 3): :func:`lora_trace` (one client's local steps from scratch: the
  factors' norms and the effective step on W = W0 + B A), :func:`image_inputs` and
  :func:`lora_sweep` (``flu.run`` over learning rates and label skews), :func:`hessian_extremes`
  and :func:`curvature_table` (where FFA-LoRA is convex and where it is not).
- **Meta-learning** (Section 4): :func:`pca_probe`, :func:`meta_objective` (Per-FedAvg's
  F(w) = sum_i p_i f_i(w - alpha grad f_i(w)) and its gradient), :func:`perfedavg_sweep`
  (Fallah et al. 2020's Theorem 4.5 against measured runs over ``inner_lr``).
- **Participation and mixed modes** (Section 5): :func:`spread_probabilities`,
  :func:`participation_points` (closed form on quadratic clients), :func:`engine_participation`
  (the same with ``flu.run`` over system seeds), :func:`phones_participation` (the few-shot probe
  on "phones" with Bernoulli availability: FedAvg's renormalised rule against the unbiased
  re-weighting, both from the same draws) and :func:`mixed_stationarity` (what one mode per client
  makes stationary).
- **The report's figures** (Section 6): :data:`REPORT`, :func:`interval`, :func:`image_report`,
  :func:`text_report`, :func:`compute_ratio`, :func:`load_minilm`, :func:`report_table`.
- **Summary** (Section 7): :func:`theory_table`.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call

from .._core import checks as chk
from .._core.random import DROPOUT, INIT, PROBE, np_stream, seed_value, stream
from ..analysis import convergence as cv
from ..data import datasets as fdata
from ..engine.runner import run
from ..models import finetune as ft
from ..models import nets, pretrained
from ..systems.dynamics import Bernoulli
from ..systems.profiles import profiles as make_profiles
from ..systems.simulation import Simulation
from . import drift
from . import fewshot as lf
from . import hetero_finetune as hf
from . import study

__all__ = ["EXACT_MAX", "KARIMIREDDY", "MINILM_CSV", "REPORT", "THEORY_COLUMNS", "bias_free_mlp", "compute_ratio",
           "curvature_table",
           "diagnostics_runs", "engine_participation", "feature_bodies", "flops_per_round", "hessian_extremes",
           "image_inputs", "image_report", "interval", "load_minilm", "looseness", "lora_scenario", "lora_sweep",
           "lora_trace", "most_skewed", "nonconvex_scenario", "probe_scenario", "scenario_key",
           "meta_objective", "milestones", "mixed_stationarity", "nonconvex_rate", "participation_points",
           "pca_probe", "perfedavg_sweep", "phones_participation", "pixel_body", "probe_experiment",
           "report_table", "rounds_needed", "smoothness", "spread_probabilities", "start_gradient",
           "stationarity", "support_counts", "text_report", "theory_table"]

EXACT_MAX = 1024  # parameters up to which hessian_extremes forms the Hessian exactly
KARIMIREDDY = "Karimireddy et al. 2020 (ICML) Thm I, non-convex, O(1) = 1"
MINILM_CSV = "minilm_convergence.csv"


def _need(df, name, columns):
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        chk.fail(name, f"a DataFrame with columns {list(columns)}", f"columns {list(df.columns)}")


def support_counts(fed: fdata.Federation, num_classes: int | None = None) -> pd.DataFrame:
    """``client, label, count``: how many support (training) examples of each label each client
    holds, every (client, label) pair listed (zeros included), for ``flu.plots.plot_label_heatmap``."""
    labels = [y.numpy().astype(np.int64) for _, y in fed.train]
    K = max(int(y.max()) for y in labels if len(y)) + 1 if num_classes is None else \
        chk.integer("num_classes", num_classes, low=1)
    rows = [dict(client=i, label=k, count=int((y == k).sum())) for i, y in enumerate(labels) for k in range(K)]
    return pd.DataFrame(rows, columns=["client", "label", "count"])


# ============================================================================ 1. linear probe = convex

def pixel_body(size: int = 8, shape=(1, 28, 28)) -> nn.Module:
    """Pixel space as a parameter-free body: flat images -> ``shape`` -> average-pooled to
    ``size`` x ``size`` -> flat (``size``^2 features per channel). digits28 are scikit-learn's 8x8
    digits upsampled, so ``size=8`` is close to the original pixels, with as many features (64) as
    the CNN's body."""
    size = chk.integer("size", size, low=1)
    return nn.Sequential(nn.Unflatten(1, tuple(shape)), nn.AdaptiveAvgPool2d(size), nn.Flatten())


def feature_bodies(model: nn.Module, *, seed: int = 0, size: int = 8) -> dict:
    """``{"pixels (8x8)": pixel_body, "random CNN": the same CNN freshly initialised (seed), "pretrained CNN":
    model.body}``: the feature spaces ``flu.convergence.feature_heterogeneity`` compares."""
    body = getattr(model, "body", None)
    if not isinstance(body, nn.Module):
        chk.fail("model", "a model with .body (flu.pretrained.pretrained_cnn)", type(model).__name__)
    rand = nets.cnn((1, 28, 28), int(model.head.weight.shape[0]), seed=seed_value("seed", seed))
    return {f"pixels ({size}x{size})": pixel_body(size), "random CNN": rand.body, "pretrained CNN": body}


def probe_experiment(probe: cv.Probe, *, l2: float, local_steps: int = 5, num_rounds: int = 20,
                     batch_size: int | None = 16, seed: int = 0, constants: cv.Constants | None = None,
                     bound_points: int = 3):
    """FedAvg on the linear probe's convex problem (``flu.convergence.probe_problem``) with Li et
    al. 2020 (ICLR)'s schedule eta_t = 2 / (mu (gamma + t)) and their Theorem 1 over the measured
    F(w_t) - F*: ``flu.lessons.drift.li_experiment`` with sample weights. Returns ``(table, info)``
    as that function, ``info["looseness"]`` the :func:`looseness` table."""
    if not isinstance(probe, cv.Probe):
        raise TypeError(f"probe must be a flu.convergence.Probe (probe_problem), got {type(probe).__name__}")
    table, info = drift.li_experiment(probe.federation, probe.model, l2=l2, local_steps=local_steps,
                                      num_rounds=num_rounds, batch_size=batch_size, weights="samples", seed=seed,
                                      constants=constants, bound_points=bound_points)
    info["looseness"] = looseness(table)
    return table, info


def looseness(table: pd.DataFrame) -> pd.DataFrame:
    """``round, measured, bound, ratio`` (bound / measured) from a long table with ``kind`` in
    {"measured", "bound"} (:func:`probe_experiment`), rounds where both are present."""
    _need(table, "table", ["round", "kind", "value"])
    wide = table.pivot_table(index="round", columns="kind", values="value").dropna()
    if not {"measured", "bound"} <= set(wide.columns):
        chk.fail("table", "rows of kind 'measured' and 'bound'", sorted(set(table["kind"])))
    out = wide[["measured", "bound"]].reset_index()
    out["ratio"] = out["bound"] / out["measured"]
    return out


# ============================================================================ 2. full fine-tuning = non-convex

def _rate_terms(eps, beta, gap0, sigma2, G2, B2, K, S, N):
    """The four terms of R(eps) (see :func:`rounds_needed`)."""
    G = math.sqrt(G2)
    return dict(noise=beta * sigma2 * gap0 / (K * S * eps ** 2),
                sampling=(1 - S / N) * beta * G2 * gap0 / (S * eps ** 2),
                drift=beta * G * gap0 / eps ** 1.5,
                smooth=(1 + B2) * beta * gap0 / eps)


def _rate_args(beta, gap0, local_steps, num_clients, sigma2, G2, B2, clients_per_round):
    beta = chk.real("beta", beta, low=0, low_open=True)
    gap0 = chk.real("gap0", gap0, low=0, low_open=True)
    K = chk.integer("local_steps", local_steps, low=1)
    N = chk.integer("num_clients", num_clients, low=1)
    S = N if clients_per_round is None else chk.integer("clients_per_round", clients_per_round, low=1, high=N)
    return (beta, gap0, chk.real("sigma2", sigma2, low=0), chk.real("G2", G2, low=0), chk.real("B2", B2, low=0),
            K, S, N)


def rounds_needed(eps: float, *, beta: float, gap0: float, local_steps: int, num_clients: int, sigma2: float = 0.0,
                  G2: float = 0.0, B2: float = 1.0, clients_per_round: int | None = None) -> float:
    """Rounds R(eps) after which Karimireddy et al. 2020 (ICML, "SCAFFOLD"), Theorem I (FedAvg,
    non-convex) guarantees E||grad f(x_bar_R)||^2 <= eps, **absolute constants set to 1** (the
    theorem is stated in O(.)):

        R(eps) = beta sigma^2 F / (K S eps^2) + (1 - S/N) beta G^2 F / (S eps^2) + beta G F / eps^{3/2}
                 + (1 + B^2) beta F / eps

    Assumptions: each f_i beta-smooth (``beta``), f bounded below with F = f(x_0) - f* (``gap0``),
    stochastic gradients of variance <= sigma^2 (``sigma2``), (G, B)-bounded gradient dissimilarity
    (1/N) sum_i ||grad f_i(x)||^2 <= G^2 + B^2 ||grad f(x)||^2 (``G2``, ``B2``), K local steps, S of
    N clients per round, client step eta_l <= 1/((1 + B^2) 8 beta K eta_g) and eta_g >= sqrt(S);
    x_bar_R is an iterate drawn from the rounds, so E||grad f(x_bar_R)||^2 is their average.
    """
    args = _rate_args(beta, gap0, local_steps, num_clients, sigma2, G2, B2, clients_per_round)
    eps = chk.real("eps", eps, low=0, low_open=True)
    return float(sum(_rate_terms(eps, *args).values()))


def nonconvex_rate(*, beta: float, gap0: float, local_steps: int, num_clients: int, num_rounds: int,
                   sigma2: float = 0.0, G2: float = 0.0, B2: float = 1.0, clients_per_round: int | None = None):
    """The bound of :func:`rounds_needed` as a curve: for R = 1..``num_rounds`` the eps with
    R(eps) = R (R(eps) decreases in eps: bisection on log eps to 1e-13). Returns ``round,
    bound, theorem`` (:data:`KARIMIREDDY`) with attrs ``terms`` (each term of R(eps) at the last
    round's eps, in rounds) and ``max_client_lr`` = 1 / ((1 + B^2) 8 beta K), the theorem's step
    (eta_g = 1)."""
    args = _rate_args(beta, gap0, local_steps, num_clients, sigma2, G2, B2, clients_per_round)
    R = chk.integer("num_rounds", num_rounds, low=1)

    def rounds(log_eps):
        return sum(_rate_terms(math.exp(log_eps), *args).values())

    eps = []
    for r in range(1, R + 1):                      # R(eps) decreases in eps: bisection on log eps
        lo, hi = -80.0, 80.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if rounds(mid) > r else (lo, mid)
            if hi - lo < 1e-13:
                break
        eps.append(math.exp((lo + hi) / 2))
    df = pd.DataFrame({"round": np.arange(1, R + 1, dtype=np.int64), "bound": eps, "theorem": KARIMIREDDY})
    df.attrs.update(terms=_rate_terms(eps[-1], *args), max_client_lr=1.0 / ((1 + args[4]) * 8 * args[0] * args[5]))
    return df


def _cached(model, fed, mode, **options):
    """(model above the frozen prefix, federation of the prefix's outputs) for ``mode``."""
    k = lf.frozen_prefix(model, mode, **{key: v for key, v in options.items() if key in ft.OPTIONS.get(mode, {})})
    if k == 0:
        return model, fed
    block = nn.Sequential(*list(model.body)[:k])
    with torch.no_grad():
        return lf.top_model(model, k), fed.map(lambda i, X: block(X))


def diagnostics_runs(model: nn.Module, fed: fdata.Federation, modes=("full", "linear_probe"), *, num_rounds: int = 10,
                     local_steps: int = 5, batch_size: int | None = None, client_lr=None, seed: int = 0,
                     l2: float = 0.0, **options) -> dict:
    """``{mode: History}``: ``flu.run(model, fed, finetune=mode, diagnostics=True, record_params=True,
    eval_every=1)`` per mode, each on the outputs of the body modules it leaves frozen (the probe on
    cached body features: the same parameters, gradients and minibatches). ``client_lr``: a number,
    a dict mode -> number, or None for ``flu.lessons.study.CLIENT_LR``. The diagnostics are of the
    trainable parameters only (the head's for the probe)."""
    lrs = study.client_lrs(client_lr)
    out = {}
    for mode in modes:
        chk.option("modes", mode, ft.MODES)
        opts = {k: v for k, v in options.items() if k in ft.OPTIONS.get(mode, {})}
        net, data = _cached(model, fed, mode, **opts)
        out[mode] = run(net, data, finetune=mode, num_rounds=num_rounds, local_steps=local_steps,
                        batch_size=batch_size, client_lr=lrs[mode], l2=l2, diagnostics=True, record_params=True,
                        eval_every=1, progress=False, seed=seed, **opts)
    return out


def start_gradient(hist, model: nn.Module, fed: fdata.Federation, *, l2: float = 0.0) -> dict:
    """``global_loss``, ``grad_norm``, ``grad_dissimilarity`` and ``b_dissimilarity`` at the start
    x_0 of a run (``History.trajectory[0]``; the diagnostics record them after each round only),
    over the run's trainable parameters, computed with ``flu.convergence.client_objectives`` on
    ``model`` (the network the run trained, cached prefix included) and ``fed``."""
    if hist.trajectory is None:
        chk.fail("hist", "a History of a run with record_params=True", "trajectory None")
    x0 = hist.trajectory[0]
    plan = ft.prepare(model, hist.config["finetune"], seed=hist.config["seed"],
                      **{k: v for k, v in hist.config.get("finetune_options", {}).items()})
    params = {k: v.detach() for k, v in plan.model.named_parameters()}
    params.update({k: v for k, v in x0.items() if k in params})
    losses, grads = cv.client_objectives(plan.model, params, fed, hist.config["loss"], l2, names=list(plan.trainable))
    p = torch.as_tensor(fed.weights(hist.config["weights"]))
    d = cv.round_diagnostics(losses, grads, p, {}, {k: torch.zeros(1) for k in grads})
    return {k: d[k] for k in ("global_loss", "grad_norm", "grad_dissimilarity", "b_dissimilarity")}


def stationarity(histories: dict, starts: dict | None = None, *, split: str | None = None) -> pd.DataFrame:
    """Long table per (mode, round): ``grad_norm2`` = ||grad F(x_r)||^2 over the trainable
    parameters, ``running_mean`` = (1/(r+1)) sum_{s<=r} ||grad F(x_s)||^2 (what the non-convex
    theorems bound), ``grad_dissimilarity``, ``b_dissimilarity``, ``client_drift`` and the pooled
    ``accuracy`` on ``split`` (default the held-out one: "query", else "test"). Round 0 comes from
    ``starts`` (:func:`start_gradient`, per mode) when given; the running mean then includes it."""
    frames = []
    for mode, hist in histories.items():
        r = hist.rounds
        if "grad_norm" not in r:
            chk.fail("histories", "Histories of runs with diagnostics=True", f"{mode!r} without grad_norm")
        t = pd.DataFrame({"round": r["round"].to_numpy(), "grad_norm2": r["grad_norm"].to_numpy() ** 2,
                          "grad_dissimilarity": r["grad_dissimilarity"].to_numpy(),
                          "b_dissimilarity": r["b_dissimilarity"].to_numpy(),
                          "client_drift": r["client_drift"].to_numpy()})
        if starts is not None and mode in starts:
            s = starts[mode]
            t = pd.concat([pd.DataFrame([dict(round=0, grad_norm2=s["grad_norm"] ** 2,
                                              grad_dissimilarity=s["grad_dissimilarity"],
                                              b_dissimilarity=s["b_dissimilarity"], client_drift=np.nan)]), t],
                          ignore_index=True)
        t["running_mean"] = t["grad_norm2"].expanding().mean()
        acc = hist.metrics
        held = split or next((s for s in ("query", "test") if s in set(acc["split"])), None)
        acc = acc[acc.client.isna() & (acc.split == held) & (acc.model == "global") & (acc.metric == "accuracy")]
        t = t.merge(acc[["round", "value"]].rename(columns={"value": "accuracy"}), on="round", how="left")
        t.insert(0, "mode", mode)
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def smoothness(model: nn.Module, fed: fdata.Federation, points, *, iters: int = 10, seed: int = 0,
               max_examples: int | None = None) -> float:
    """An estimate of beta: the largest |eigenvalue| of the Hessian of the pooled training loss over
    the clients' support data at each of ``points`` (params dicts; ``flu.convergence.hessian_top_eigenvalue``,
    power iteration), the max over them. A lower estimate of the theory's beta (a sup over all x);
    ``max_examples`` keeps the first examples of the pooled data (cheaper)."""
    X = torch.cat([X for X, _ in fed.train])
    y = torch.cat([y for _, y in fed.train])
    if max_examples is not None:
        m = chk.integer("max_examples", max_examples, low=1)
        X, y = X[:m], y[:m]
    points = [points] if isinstance(points, dict) else list(points)
    return max(cv.hessian_top_eigenvalue(model, {k: v.detach() for k, v in w.items()}, X, y, iters=iters, seed=seed)
               for w in points)


def flops_per_round(model: nn.Module, mode: str, fed: fdata.Federation, *, local_steps: int,
                    batch_size: int | None, input_shape=None, **options) -> float:
    """Training FLOPs of one full-participation round of ``mode`` with the body in the loop
    (``flu.finetune.cost``): sum_i local_steps * flops_step(b_i), b_i = ``batch_size`` (or n_i
    for full batches; a step's FLOPs are linear in the batch)."""
    input_shape = input_shape or tuple(fed.train[0][0].shape[1:])
    per = ft.cost(model, mode, input_shape=input_shape, batch_size=1, **options)["flops_step"]
    tau = chk.integer("local_steps", local_steps, low=1)
    b = fed.sizes if batch_size is None else np.minimum(chk.integer("batch_size", batch_size, low=1), fed.sizes)
    return float(per * tau * np.sum(b))


def milestones(table: pd.DataFrame, flops: dict, *, eps_rel: float = 0.1, target: float | None = None) -> pd.DataFrame:
    """Per mode of :func:`stationarity`'s table: ``rounds_to_eps``, the first round r >= 1 with
    ||grad F(x_r)||^2 <= ``eps_rel`` ||grad F(x_0)||^2 (each mode against its own start, its own
    parameters), ``rounds_to_target`` (first round with ``accuracy`` >= ``target``), the final
    accuracy, and both in GFLOPs (``flops``: mode -> FLOPs per round, :func:`flops_per_round`).
    Never reached: NaN."""
    _need(table, "table", ["mode", "round", "grad_norm2", "accuracy"])
    eps_rel = chk.real("eps_rel", eps_rel, low=0, low_open=True)
    rows = []
    for mode, g in table.groupby("mode", sort=False):
        g = g.sort_values("round")
        g0 = g[g["round"] == 0]["grad_norm2"]
        ref = float(g0.iloc[0]) if len(g0) else float(g["grad_norm2"].iloc[0])
        later = g[g["round"] >= 1]
        hit = later[later["grad_norm2"] <= eps_rel * ref]
        r_eps = float(hit["round"].iloc[0]) if len(hit) else np.nan
        r_acc = np.nan
        if target is not None:
            hit = later[later["accuracy"] >= target]
            r_acc = float(hit["round"].iloc[0]) if len(hit) else np.nan
        f = float(flops[mode]) / 1e9
        rows.append(dict(mode=mode, gflops_per_round=f, rounds_to_eps=r_eps, gflops_to_eps=r_eps * f,
                         rounds_to_target=r_acc, gflops_to_target=r_acc * f,
                         final_accuracy=float(later["accuracy"].dropna().iloc[-1]) if later["accuracy"].notna().any()
                         else np.nan))
    return pd.DataFrame(rows)


# ============================================================================ 3. LoRA = bilinear

def _ce(logits, y):
    return nn.functional.cross_entropy(logits, y)


def lora_trace(model: nn.Module, X, y, *, lr: float, steps: int = 5, rank: int = 4, mode: str = "lora",
               layer: int = 8, seed: int = 0) -> pd.DataFrame:
    """One client's local training of the adapter on ``model.body[layer]`` (a Linear) from scratch
    in plain PyTorch: full-batch SGD with step ``lr`` on the mean cross-entropy, ``steps`` times,
    training B, A (``mode="lora"``) or B only (``"ffa_lora"``) and the head, from B = 0 and A from
    ``flu.finetune.prepare(model, mode, seed=seed)`` (the engine's A for FFA-LoRA). With
    G = grad_W f at W = W0 + B A, one step B <- B - lr G A^T, A <- A - lr B^T G moves W by

        Delta W = -lr (G A^T A + B B^T G) + lr^2 G A^T B^T G,   so   ||Delta W|| <~ lr (||A||_2^2 + ||B||_2^2) ||G||

    to first order: the effective step on W is lr (||A||_2^2 + ||B||_2^2) (B A is bilinear) and it
    grows with B; FFA-LoRA (A frozen) has Delta W = -lr G A^T A exactly, linear in B. Per step, at
    its start: ``norm_A``, ``norm_B`` (Frobenius), ``sq_A`` = ||A||_2^2, ``sq_B`` = ||B||_2^2,
    ``loss``; and ``dense_step`` = ||Delta W||, ``sgd_step`` = lr ||G|| (what SGD on W itself would
    move), ``ratio`` = dense_step / sgd_step and ``bound`` = sq_A + sq_B (sq_A for FFA-LoRA), the
    first-order bound on the ratio."""
    chk.option("mode", mode, ("lora", "ffa_lora"))
    lr = chk.real("lr", lr, low=0, low_open=True)
    steps = chk.integer("steps", steps, low=1)
    plan = ft.prepare(model, mode, seed=seed, lora_rank=rank)
    body = plan.model.body
    lin = body[layer]
    if not isinstance(lin, ft.LoRALinear):
        chk.fail("layer", "the index of an adapted Linear layer in model.body", layer)
    with torch.no_grad():
        Z = body[:layer](X)                                          # frozen input of the adapted layer
    above = body[layer + 1:]
    W0 = lin.weight.detach()
    b0 = lin.bias.detach()
    A = lin.lora_A.detach().clone().requires_grad_(mode == "lora")
    B = lin.lora_B.detach().clone().requires_grad_()
    hw = plan.model.head.weight.detach().clone().requires_grad_()
    hb = plan.model.head.bias.detach().clone().requires_grad_()
    rows = []
    for t in range(steps):
        W = (W0 + B @ A).detach().requires_grad_()                  # the dense weight, for grad_W
        loss_W = _ce(nn.functional.linear(above(nn.functional.linear(Z, W, b0)), hw.detach(), hb.detach()), y)
        G = torch.autograd.grad(loss_W, W)[0]
        out = nn.functional.linear(above(nn.functional.linear(Z, W0, b0) + (Z @ A.T) @ B.T), hw, hb)
        loss = _ce(out, y)
        train = [B, hw, hb] + ([A] if mode == "lora" else [])
        grads = torch.autograd.grad(loss, train)
        sq_A = float(torch.linalg.matrix_norm(A.detach(), 2) ** 2)
        sq_B = float(torch.linalg.matrix_norm(B.detach(), 2) ** 2)
        before = (B @ A).detach()
        norms = (float(A.detach().norm()), float(B.detach().norm()))
        with torch.no_grad():
            for p, g in zip(train, grads):
                p -= lr * g
        dense = float(((B @ A).detach() - before).norm())
        sgd = lr * float(G.norm())
        rows.append(dict(step=t, norm_A=norms[0], norm_B=norms[1], sq_A=sq_A, sq_B=sq_B, dense_step=dense,
                         sgd_step=sgd, ratio=dense / sgd if sgd > 0 else np.nan,
                         bound=sq_A + (sq_B if mode == "lora" else 0.0), loss=float(loss.detach())))
    out = pd.DataFrame(rows)
    out.insert(0, "mode", mode)
    out.insert(1, "lr", lr)
    return out


def image_inputs(model: nn.Module, k: int, *, shots: int = 5, alpha: float = 0.5, num_clients: int = 10,
                 query: int | None = 15, seed: int = 0, prefixes: lf.Prefixes | None = None) -> fdata.Federation:
    """The few-shot federation of ``flu.lessons.hetero_finetune.image_task`` (same partition,
    supports and queries) with every input replaced by the output of ``model.body[:k]`` (0: the
    images). ``prefixes``: a :class:`flu.lessons.fewshot.Prefixes` over all digits28 images, to
    compute the prefix once for several alphas."""
    ds = pretrained.load_digits28()
    k = chk.integer("k", k, low=0)
    X = ds.X if k == 0 else (prefixes or lf.Prefixes(model, ds.X))(k)
    few = lf.few_shot_federation(X, ds.y, shots=shots, alpha=alpha, num_clients=num_clients, seed=seed,
                                 partition_seed=seed, shape=ds.shape if k == 0 else None, query=query)
    return few.federation


def lora_sweep(model: nn.Module, alphas, lrs, *, mode: str = "lora", shots: int = 5, num_clients: int = 10,
               query: int | None = 15, num_rounds: int = 5, local_steps: int = 5, batch_size: int | None = 16,
               lora_rank: int = 4, seed: int = 0, prefixes: lf.Prefixes | None = None) -> pd.DataFrame:
    """``flu.run(..., finetune=mode)`` for every label skew ``alpha`` and client learning rate, on
    the outputs of the frozen conv layers (the adapters sit on the dense layer). Long table ``alpha,
    client_lr, round, accuracy, dense_update, diverged``: the pooled query accuracy after each round
    (round 0 = before) and ||W_r - W_{r-1}|| of the adapted dense weight (the merged product; 0 at
    round 0). A run that diverges (FloatingPointError) keeps its completed rounds, ``diverged`` True."""
    chk.option("mode", mode, ("lora", "ffa_lora"))
    k = lf.frozen_prefix(model, mode, lora_rank=lora_rank)
    net = lf.top_model(model, k)
    ds = pretrained.load_digits28()
    prefixes = prefixes or lf.Prefixes(model, ds.X)
    frames = []
    for alpha in alphas:
        fed = image_inputs(model, k, shots=shots, alpha=alpha, num_clients=num_clients, query=query, seed=seed,
                           prefixes=prefixes)
        for lr in lrs:
            diverged = False
            try:
                hist = run(net, fed, finetune=mode, num_rounds=num_rounds, local_steps=local_steps,
                           batch_size=batch_size, client_lr=lr, lora_rank=lora_rank, record_params=True, eval_every=1,
                           progress=False, seed=seed)
            except FloatingPointError as err:
                hist, diverged = err.history, True
            m = hist.metrics
            acc = m[m.client.isna() & (m.split == fed.splits[1]) & (m.model == "global") & (m.metric == "accuracy")]
            acc = acc.set_index("round")["value"]
            name = next(n for n in (hist.trajectory[0] if hist.trajectory else {}) if n.endswith("weight")
                        and not n.startswith("head"))
            W = [t[name].to(torch.float64) for t in hist.trajectory]
            upd = [0.0] + [float((W[r] - W[r - 1]).norm()) for r in range(1, len(W))]
            R = len(W) - 1
            frames.append(pd.DataFrame({"mode": mode, "alpha": float(alpha), "client_lr": float(lr),
                                        "round": np.arange(R + 1),
                                        "accuracy": [float(acc.get(r, np.nan)) for r in range(R + 1)],
                                        "dense_update": upd, "diverged": diverged}))
    return pd.concat(frames, ignore_index=True)


def hessian_extremes(f, params: dict, *, method: str = "auto", iters: int = 300, tol: float = 1e-6,
                     seed: int = 0, chunk: int = 256):
    """``(lam_min, lam_max)``: the smallest and largest Hessian eigenvalues of the scalar function
    ``f(params)`` at ``params`` (name -> tensor, all differentiated), from Hessian-vector products
    (double backward). ``method``: "exact" forms H column by column (batched products, ``chunk``
    at a time) and takes ``eigvalsh``; "lanczos" uses scipy's ARPACK (``eigsh``, which "SA" and
    "LA", at most ``iters`` restarts, tolerance ``tol``); "power": power iteration (``iters``
    steps) on H, then on H + s I and s I - H with s = |lam|_max; "auto": exact up to
    :data:`EXACT_MAX` parameters, else Lanczos. Lanczos and power values are Rayleigh quotients
    v^T H v, so a negative ``lam_min`` proves f is not convex at ``params`` whatever the
    iterations; when Lanczos does not converge the power estimate is returned (an upper estimate
    of lam_min)."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    chk.option("method", method, ("auto", "exact", "lanczos", "power"))
    iters = chk.integer("iters", iters, low=1)
    names = list(params)
    leaves = [params[k].detach().clone().requires_grad_() for k in names]
    grads = torch.autograd.grad(f(dict(zip(names, leaves))), leaves, create_graph=True)
    sizes = [t.numel() for t in leaves]
    dim = sum(sizes)
    gen = stream(seed_value("seed", seed), PROBE)

    def hvp(v):
        return torch.autograd.grad(grads, leaves, grad_outputs=v, retain_graph=True)

    def dot(a, b):
        return float(sum((x * y).sum() for x, y in zip(a, b)))

    def power(shift, sign):
        v = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) for t in leaves]
        for _ in range(iters):
            n = math.sqrt(dot(v, v))
            v = [x / n for x in v]
            v = [shift * x + sign * h for x, h in zip(v, hvp(v))]
        n = math.sqrt(dot(v, v))
        v = [x / n for x in v] if n > 0 else v
        return dot(v, hvp(v))

    if method == "auto":
        method = "exact" if dim <= EXACT_MAX else "lanczos"
    if method == "power":
        lam_abs = abs(power(0.0, 1.0))
        return power(lam_abs, -1.0), power(lam_abs, 1.0)
    if method == "exact":
        eye = torch.eye(dim, dtype=leaves[0].dtype)
        cols = []
        for s in range(0, dim, chk.integer("chunk", chunk, low=1)):
            E = eye[s:s + chunk]
            v = [e.reshape(len(E), *t.shape) for e, t in zip(torch.split(E, sizes, dim=1), leaves)]
            hv = torch.autograd.grad(grads, leaves, grad_outputs=v, retain_graph=True, is_grads_batched=True)
            cols.append(torch.cat([h.reshape(len(E), -1) for h in hv], 1))
        Hm = torch.cat(cols).to(torch.float64)
        eig = torch.linalg.eigvalsh((Hm + Hm.T) / 2)
        return float(eig[0]), float(eig[-1])

    def matvec(x):
        parts = np.split(np.asarray(x, dtype=np.float64).ravel(), np.cumsum(sizes)[:-1])
        v = [torch.as_tensor(c, dtype=t.dtype).reshape(t.shape) for c, t in zip(parts, leaves)]
        return torch.cat([h.reshape(-1) for h in hvp(v)]).to(torch.float64).numpy()

    op = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
    v0 = torch.randn(dim, generator=gen, dtype=torch.float64).numpy()
    lam_max = float(eigsh(op, k=1, which="LA", tol=tol, v0=v0, maxiter=iters, return_eigenvectors=False)[0])
    try:
        lam_min = float(eigsh(op, k=1, which="SA", tol=tol, v0=v0, ncv=min(dim, 40), maxiter=iters,
                              return_eigenvectors=False)[0])
    except ArpackNoConvergence:
        lam_min = power(abs(lam_max), -1.0)
    return lam_min, lam_max


def _mean_ce(model, fixed, X, y, l2=0.0):
    def f(p):
        val = _ce(functional_call(model, {**fixed, **p}, (X,)), y)
        if l2:
            val = val + l2 / 2 * sum((t ** 2).sum() for t in p.values() if t.dim() >= 2)
        return val
    return f


class _HeadAdapter(nn.Module):
    """logits = (W + B A) h + b on frozen features h: an FFA-LoRA adapter on the last map (A fixed)."""

    def __init__(self, head: nn.Linear, A: torch.Tensor):
        super().__init__()
        self.weight = head.weight.detach().clone()
        self.bias = head.bias.detach().clone()
        self.A = A
        self.lora_B = nn.Parameter(torch.zeros(head.out_features, A.shape[0], dtype=head.weight.dtype))

    def forward(self, h):
        return nn.functional.linear(h, self.weight + self.lora_B @ self.A, self.bias)


def curvature_table(model: nn.Module, X, y, *, rank: int = 4, iters: int = 100, power_iters: int = 30,
                    seed: int = 0, full: bool = False) -> pd.DataFrame:
    """Is the local objective convex in what each mode trains? The extreme Hessian eigenvalues
    (:func:`hessian_extremes`: exact up to :data:`EXACT_MAX` parameters, else Lanczos with ``iters``;
    power iteration with ``power_iters`` for the last layers and full fine-tuning)
    of the mean cross-entropy on (``X``, ``y``) at the pretrained start (adapters at B = 0), in the
    parameters each setting trains, on a float64 copy of ``model``:

    - ``linear probe``: the head (W, b) on frozen features: convex (softmax cross-entropy of an affine map);
    - ``FFA-LoRA on the last map``: logits = (W + B A) h + b, only B (A frozen): B -> logits is
      linear, so convex in B;
    - ``FFA-LoRA as built`` (``flu.finetune``: the adapter on the body's dense layer, ReLU and the
      trained head above it): B and the head, coupled through the product head x ReLU(... B A ...);
    - ``LoRA``: A, B and the head (B A is bilinear: at B = 0 the (A, B) block of the Hessian has
      eigenvalues of both signs as soon as the gradient on W is not zero);
    - ``last layers (dense + head)``: a principal block of full fine-tuning's Hessian, so by Cauchy
      interlacing lam_min(full) <= its lam_min: a negative value there is one for full fine-tuning;
    - ``full fine-tuning`` itself (with ``full``; slow: power iteration through the convolutions).

    Rows ``setting, trainable, params, lam_min, lam_max, convex_here`` (lam_min >= -1e-9 lam_max:
    no direction of negative curvature found at this point)."""
    rank = chk.integer("rank", rank, low=1)
    model = copy.deepcopy(model).to(torch.float64)
    X = torch.as_tensor(X).to(torch.float64)
    base = {k: v.detach() for k, v in model.named_parameters()}
    rows = []

    def add(setting, net, names, fixed, inputs, method="auto", steps=iters):
        own = {k for k, _ in net.named_parameters()}
        params = {k: v for k, v in fixed.items() if k in names}
        rest = {k: v for k, v in fixed.items() if k not in names and k in own}
        lo, hi = hessian_extremes(_mean_ce(net, rest, inputs, y), params, method=method, iters=steps, seed=seed)
        rows.append(dict(setting=setting, trainable=", ".join(names),
                         params=int(sum(p.numel() for p in params.values())),
                         lam_min=lo, lam_max=hi, convex_here=bool(lo >= -1e-9 * max(abs(hi), 1e-12))))

    with torch.no_grad():
        H = model.body(X)
    head_only = lf.top_model(model, len(model.body))
    add("linear probe", head_only, ["head.weight", "head.bias"], base, H)
    gen = stream(seed_value("seed", seed), PROBE, 1)
    A = ft.lora_init(rank, model.head.in_features, torch.float64, gen)
    last = _HeadAdapter(model.head, A)
    add("FFA-LoRA on the last map", last, ["lora_B"], {k: v.detach() for k, v in last.named_parameters()}, H)
    for mode, setting in (("ffa_lora", "FFA-LoRA as built"), ("lora", "LoRA"),
                          ("last_layers", "last layers (dense + head)")):
        opts = {"lora_rank": rank} if "lora" in mode else {}
        plan = ft.prepare(model, mode, seed=seed, **opts)
        k = lf.frozen_prefix(model, mode, **opts)
        net = lf.top_model(plan.model, k)
        with torch.no_grad():
            Z = nn.Sequential(*list(plan.model.body)[:k])(X)
        big = mode == "last_layers"                                  # 100k parameters: power iteration
        add(setting, net, list(plan.trainable), {n: v.detach() for n, v in net.named_parameters()}, Z,
            method="power" if big else "auto", steps=power_iters if big else iters)
    if full:
        add("full fine-tuning", model, list(base), base, X, method="power", steps=power_iters)
    return pd.DataFrame(rows)


# ============================================================================ 4. meta-learning (Per-FedAvg)

def pca_probe(probe: cv.Probe, k: int) -> cv.Probe:
    """The probe on the top ``k`` principal directions of its pooled training features (centred
    with their pooled mean): z -> V_k^T (z - mean), a fixed linear map, and a bias-free float64
    head on it (k x classes parameters: small enough for exact Hessians in
    ``flu.convergence.perfedavg_constants``)."""
    if not isinstance(probe, cv.Probe):
        raise TypeError(f"probe must be a flu.convergence.Probe (probe_problem), got {type(probe).__name__}")
    k = chk.integer("k", k, low=1, high=probe.num_features)
    Z = torch.cat([Z for Z, _ in probe.federation.train])
    mean = Z.mean(0)
    V = torch.linalg.svd(Z - mean, full_matrices=False)[2][:k]
    fed = probe.federation.map(lambda i, Z: (Z - mean) @ V.T, name=f"{probe.federation.name}:pca{k}")
    K = int(probe.model.head.weight.shape[0])
    return cv.Probe(fed, nets.logistic(k, K, bias=False, dtype=torch.float64), k)


def meta_objective(model: nn.Module, fed: fdata.Federation, params: dict, inner_lr: float, *, l2: float = 0.0,
                   weights="samples"):
    """``(F, grad_norm2)`` of Per-FedAvg's objective F(w) = sum_i p_i f_i(w - alpha grad f_i(w))
    (Fallah et al. 2020; f_i = mean cross-entropy + l2/2 ||W||^2 on client i's training data,
    alpha = ``inner_lr``) at ``params`` (all of the model's parameters), its gradient
    sum_i p_i (I - alpha H_i) grad f_i(w - alpha grad f_i(w)) by double backward."""
    alpha = chk.real("inner_lr", inner_lr, low=0)
    p = fed.weights(weights) if isinstance(weights, str) else np.asarray(weights, dtype=np.float64)
    names = list(params)
    leaves = [params[k].detach().clone().requires_grad_() for k in names]
    total = 0.0
    for pi, (X, y) in zip(p, fed.train):
        def f(ws):
            d = dict(zip(names, ws))
            val = _ce(functional_call(model, d, (X.to(ws[0].dtype),)), y)
            return val + l2 / 2 * sum((w ** 2).sum() for w in ws if w.dim() >= 2) if l2 else val
        g = torch.autograd.grad(f(leaves), leaves, create_graph=True)
        total = total + float(pi) * f([w - alpha * gi for w, gi in zip(leaves, g)])
    grad = torch.autograd.grad(total, leaves)
    return float(total.detach()), float(sum((t ** 2).sum() for t in grad))


def _personal_accuracy(model, fed, params, inner_lr, l2=0.0):
    """Pooled held-out accuracy after each client's one full-batch step w - alpha grad f_i(w) on its training data."""
    names = list(params)
    correct = total = 0
    for (X, y), (Xq, yq) in zip(fed.train, fed.test):
        leaves = [params[k].detach().clone().requires_grad_() for k in names]
        val = _ce(functional_call(model, dict(zip(names, leaves)), (X,)), y)
        if l2:
            val = val + l2 / 2 * sum((w ** 2).sum() for w in leaves if w.dim() >= 2)
        g = torch.autograd.grad(val, leaves)
        with torch.no_grad():
            out = functional_call(model, {k: w - inner_lr * gi for k, w, gi in zip(names, leaves, g)}, (Xq,))
        correct += int((out.argmax(1) == yq).sum())
        total += len(yq)
    return correct / max(total, 1)


def perfedavg_sweep(model: nn.Module, fed: fdata.Federation, inner_lrs, *, constants: cv.PerFedAvgConstants,
                    client_lr: float | None = None, local_steps: int = 5, num_rounds: int = 20, l2: float = 0.0,
                    variant: str = "exact", seed: int = 0):
    """Per-FedAvg (``flu.run(..., algorithm="perfedavg", batch_size=None)``, full participation,
    full-batch: no minibatch noise) for each ``inner_lr`` alpha, against Fallah et al. 2020's
    Theorem 4.5 (``flu.convergence.perfedavg_bound`` with ``constants``). ``client_lr`` beta
    defaults to the theorem's largest step 1/(10 tau L_F) over the alphas (so every run is inside it).

    Returns ``(curves, summary)``: ``curves`` long ``inner_lr, round, kind, value`` with ``kind``
    "measured" = (1/K) sum_{k<K} ||grad F_alpha(w_k)||^2 at K = round (:func:`meta_objective` at
    the global models w_0 .. w_{K-1}, the rounds' counterpart of the theorem's average over local
    iterates) and "bound"; ``summary`` one row per alpha: ``inner_lr, client_lr, gap0, floor,
    bound, measured, ratio`` (at the last round), ``gamma_F2`` and the pooled held-out accuracy of
    the global model (``accuracy``) and after each client's one step of size alpha (``personal``)."""
    lrs = [chk.real("inner_lrs", a, low=0, low_open=True) for a in inner_lrs]
    if not lrs:
        chk.fail("inner_lrs", "at least one inner learning rate", inner_lrs)
    tau = chk.integer("local_steps", local_steps, low=1)
    R = chk.integer("num_rounds", num_rounds, low=1)
    rho = constants.rho if constants.rho is not None else 0.0
    if client_lr is None:
        client_lr = min(1 / (10 * tau * (4 * constants.L + a * rho * constants.B)) for a in lrs)
    beta = chk.real("client_lr", client_lr, low=0, low_open=True)
    w0 = {k: v.detach() for k, v in model.named_parameters()}
    frames, rows = [], []
    for a in lrs:
        hist = run(model, fed, "perfedavg", inner_lr=a, variant=variant, batch_size=None, client_lr=beta,
                   local_steps=tau, num_rounds=R, l2=l2, record_params=True, eval_every=R, progress=False, seed=seed)
        gap0 = meta_objective(model, fed, w0, a, l2=l2)[0]
        g2 = np.array([meta_objective(model, fed, w, a, l2=l2)[1] for w in hist.trajectory[:R]])
        measured = np.cumsum(g2) / np.arange(1, R + 1)
        b = cv.perfedavg_bound(constants, a, beta, tau, R, gap0=gap0, rho=rho)
        frames.append(pd.DataFrame({"inner_lr": a, "round": np.arange(1, R + 1), "kind": "measured",
                                    "value": measured}))
        frames.append(pd.DataFrame({"inner_lr": a, "round": b["round"].to_numpy(), "kind": "bound",
                                    "value": b["bound"].to_numpy()}))
        acc = hist.metrics
        acc = acc[acc.client.isna() & (acc.split == fed.splits[1]) & (acc.model == "global")
                  & (acc.metric == "accuracy") & (acc["round"] == R)]
        rows.append(dict(inner_lr=a, client_lr=beta, gap0=gap0, floor=b.attrs["floor"], gamma_F2=b.attrs["gamma_F2"],
                         L_F=b.attrs["L_F"], bound=float(b["bound"].iloc[-1]), measured=float(measured[-1]),
                         ratio=float(b["bound"].iloc[-1] / measured[-1]),
                         accuracy=float(acc["value"].iloc[0]) if len(acc) else np.nan,
                         personal=_personal_accuracy(model, fed, hist.params, a, l2)))
    return pd.concat(frames, ignore_index=True), pd.DataFrame(rows)


# ============================================================================ 5. participation and mixed modes

def spread_probabilities(spread: float, num_clients: int) -> np.ndarray:
    """Availability probabilities q_i = 1 - spread * i / (N - 1): client 0 always there, the last
    one with probability 1 - ``spread`` (``spread`` in [0, 0.95]; 0: everyone always)."""
    spread = chk.real("spread", spread, low=0, high=0.95)
    N = chk.integer("num_clients", num_clients, low=1)
    return 1.0 - spread * np.arange(N) / max(N - 1, 1)


def _coords(w):
    return {f"w{k + 1}": float(v) for k, v in enumerate(np.asarray(w).reshape(-1))}


def participation_points(quad, q, *, local_steps=1, lr: float = 0.1, num_rounds: int = 30, x0=None):
    """Where FedAvg's mean iterate goes on the quadratic clients ``quad`` (``flu.data.quadratics``)
    when client i completes a round with probability q_i (``flu.convergence``'s closed forms,
    full-batch local GD with step ``lr``, ``local_steps`` per client or one int):

    - ``FedAvg, everyone``: q = 1 (with tau > 1 already off w*: client drift);
    - ``FedAvg, renormalised``: p renormalised over the clients present (the engine's rule), limit
      (I - E[M])^-1 E[c] with the expected weights pi_i (``participation_weights``);
    - ``re-weighted p_i / q_i``: unbiased, the limit of FedAvg with everyone.

    Returns ``(points, trajectories)``: ``points`` rows ``label, kind, w1.., dist_to_opt`` (the
    client optima, w*, the weighted optimum argmin sum_i pi_i F_i, and the three limits) and
    ``trajectories`` ``method, round, w1.., dist`` (the mean iterates from ``x0``, default 0, with
    ``dist`` = ||E[x_r] - w*||). ``points.attrs``: ``pi``, ``q``, ``radius`` per rule."""
    A, b, p, N = list(quad.X), list(quad.y), quad.p, quad.num_clients
    q = np.broadcast_to(np.asarray(q, dtype=np.float64), (N,)).copy()
    steps = list(local_steps) if isinstance(local_steps, (list, tuple, np.ndarray)) else int(local_steps)
    rules = {"FedAvg, everyone": cv.participation_fixed_point(A, b, p, np.ones(N), steps, lr),
             "FedAvg, renormalised": cv.participation_fixed_point(A, b, p, q, steps, lr),
             "re-weighted p_i / q_i": cv.reweighted_fixed_point(A, b, p, q, steps, lr)}
    pi = rules["FedAvg, renormalised"].weights
    w_star = quad.w_star
    rows = [dict(label=f"client {i} optimum", kind="client optimum", **_coords(c)) for i, c in enumerate(quad.centers)]
    rows.append(dict(label="optimum w*", kind="optimum", **_coords(w_star)))
    rows.append(dict(label="argmin sum pi_i F_i", kind="weighted optimum", **_coords(quad.minimiser(pi / pi.sum()))))
    rows += [dict(label=name, kind="limit", **_coords(fp.x)) for name, fp in rules.items()]
    points = pd.DataFrame(rows)
    cols = [c for c in points.columns if c.startswith("w") and c[1:].isdigit()]
    points["dist_to_opt"] = np.linalg.norm(points[cols].to_numpy() - w_star, axis=1)
    x0 = np.zeros(quad.dim) if x0 is None else np.asarray(x0, dtype=np.float64)
    frames = []
    for name, fp in rules.items():
        T = cv.mean_trajectory(fp, x0, num_rounds)
        df = pd.DataFrame(T, columns=cols)
        df.insert(0, "round", np.arange(len(T)))
        df.insert(0, "method", name)
        df["dist"] = np.linalg.norm(T - w_star, axis=1)
        frames.append(df)
    points.attrs.update(pi=pi, q=q, radius={name: fp.spectral_radius for name, fp in rules.items()})
    return points, pd.concat(frames, ignore_index=True)


def engine_participation(quad, q, *, lr: float = 0.1, local_steps: int = 1, num_rounds: int = 20, seeds=range(8)):
    """``flu.run`` on the quadratic clients with ``Simulation(profiles("ideal", N),
    availability=Bernoulli(q), seed=s)`` (full batch, ``loss="mse"``) for each system seed s:
    ``(mean, se)``, the mean over the seeds of the iterates x_0..x_R (an (R + 1, d) array) and its
    standard error. Its expectation is ``participation_points``' renormalised mean trajectory."""
    seeds = list(seeds)
    if len(seeds) < 2:
        chk.fail("seeds", "at least two system seeds (a mean and its standard error)", seeds)
    N = quad.num_clients
    prof = make_profiles("ideal", N)
    fed, model = quad.federation(), drift.quadratic_model(quad)
    runs = []
    for s in seeds:
        sim = Simulation(profiles=prof, availability=Bernoulli(np.asarray(q, dtype=np.float64)), seed=s)
        h = run(model, fed, num_rounds=num_rounds, local_steps=local_steps, client_lr=lr, batch_size=None, loss="mse",
                systems=sim, record_params=True, eval_every=num_rounds, progress=False, seed=0)
        runs.append(np.array([t["head.weight"].reshape(-1).numpy() for t in h.trajectory]))
    runs = np.stack(runs)
    return runs.mean(0), runs.std(0, ddof=1) / math.sqrt(len(seeds))


def phones_participation(probe: cv.Probe, q, *, l2: float, lr: float = 0.5, num_rounds: int = 60, seed: int = 0,
                         profile_seed: int = 0, tail: int = 20, constants: cv.Constants | None = None):
    """The linear probe (convex) on ``"phones"`` devices (``flu.systems.profiles``) that are
    available with probability q_i (``Bernoulli(q)``) and drop out at their profile's rate d_i:
    client i completes a round with probability q_i (1 - d_i), independently. One full-batch local
    step (step ``lr``) per round, three rules on the same draws:

    - ``flu.run`` (renormalised over the clients that complete);
    - the same rule from scratch (plain torch: availability from ``Bernoulli.available``, drop-outs
      from the simulation's stream, as the engine draws them), to check the engine;
    - the unbiased re-weighting x <- x - lr sum_{i in C} (p_i / (q_i (1 - d_i))) grad F_i(x), not renormalised.

    Returns ``(table, info)``: ``table`` ``rule, round, dist_to_opt, dist_to_weighted`` (||x_r - w*||
    and ||x_r - w_pi|| with w_pi = argmin sum_i pi_i F_i, pi the expected renormalised weights);
    ``info``: ``q_complete``, ``pi``, ``p``, ``gap`` = ||w* - w_pi||, ``engine_vs_scratch`` (max
    |difference| of the iterates) and ``tail`` (per rule, the distances of the mean of the last
    ``tail`` iterates, which average out the round-to-round noise). ``constants``: the probe's
    ``flu.convergence.constants`` at this ``l2`` (its w* is reused)."""
    if not isinstance(probe, cv.Probe):
        raise TypeError(f"probe must be a flu.convergence.Probe (probe_problem), got {type(probe).__name__}")
    fed, model = probe.federation, probe.model
    N = fed.num_clients
    q = np.broadcast_to(np.asarray(q, dtype=np.float64), (N,)).copy()
    R = chk.integer("num_rounds", num_rounds, low=1)
    tail = chk.integer("tail", tail, low=1, high=R)
    prof = make_profiles("phones", N, seed=profile_seed)
    avail = Bernoulli(q)
    sim = Simulation(profiles=prof, availability=avail, seed=seed)
    d = prof["dropout"].to_numpy(dtype=np.float64)
    q_c = q * (1 - d)
    p = fed.weights("samples")
    pi = cv.participation_weights(p, q_c)
    name = next(iter(dict(model.named_parameters())))
    w_star = (constants.w_star if constants is not None else cv.optimum(model, fed, "cross_entropy", l2)[0])[name]
    w_pi = cv.optimum(model, fed, "cross_entropy", l2, weights=pi / pi.sum())[0][name]
    hist = run(model, fed, num_rounds=R, local_steps=1, client_lr=lr, batch_size=None, l2=l2, systems=sim,
               record_params=True, eval_every=R, progress=False, seed=seed)
    engine = [t[name].to(torch.float64) for t in hist.trajectory]
    x_ren = x_rew = engine[0].clone()
    scratch, reweighted = [x_ren], [x_rew]
    pt = torch.as_tensor(p)
    for r in range(1, R + 1):
        here = np.asarray(avail.available(r, N, seed), dtype=bool)
        drop = np_stream(seed, r, DROPOUT).random(N) < d
        done = torch.as_tensor(here & ~drop)
        if bool(done.any()):
            g = cv.client_objectives(model, {name: x_ren}, fed, "cross_entropy", l2)[1][name]
            w = pt * done / (pt * done).sum()
            x_ren = x_ren - lr * torch.tensordot(w, g, dims=1)
            g = cv.client_objectives(model, {name: x_rew}, fed, "cross_entropy", l2)[1][name]
            w = pt * done / torch.as_tensor(q_c)
            x_rew = x_rew - lr * torch.tensordot(w, g, dims=1)
        scratch.append(x_ren)
        reweighted.append(x_rew)
    frames, tails = [], {}
    for rule, xs in (("FedAvg (flu.run, renormalised)", engine), ("FedAvg from scratch (renormalised)", scratch),
                     ("re-weighted p_i / q_i", reweighted)):
        frames.append(pd.DataFrame({"rule": rule, "round": np.arange(R + 1),
                                    "dist_to_opt": [float((x - w_star).norm()) for x in xs],
                                    "dist_to_weighted": [float((x - w_pi).norm()) for x in xs]}))
        mean = torch.stack(xs[-tail:]).mean(0)
        tails[rule] = dict(dist_to_opt=float((mean - w_star).norm()), dist_to_weighted=float((mean - w_pi).norm()))
    info = dict(q_complete=q_c, pi=pi, p=p, gap=float((w_star - w_pi).norm()), tail=tails, history=hist,
                engine_vs_scratch=max(float((a - b).abs().max()) for a, b in zip(engine, scratch)))
    return pd.concat(frames, ignore_index=True), info


def bias_free_mlp(in_features: int = 64, hidden=(32, 16), num_classes: int = 10, *, seed: int = 0) -> nn.Module:
    """A float64 MLP without biases, tanh activations and a zero head (``flu.models.FedModel``):
    every parameter is a weight, so ``flu.run``'s l2 penalises them all and full-batch GD settles
    quickly (for :func:`mixed_stationarity`). Hidden weights ~ N(0, 1/fan_in) from the seeded stream."""
    gen = stream(seed_value("seed", seed), INIT)
    layers, d = [], chk.integer("in_features", in_features, low=1)
    for k in hidden:
        lin = nn.Linear(d, chk.integer("hidden", k, low=1), bias=False, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(k, d, generator=gen, dtype=torch.float64) / math.sqrt(d))
        layers += [lin, nn.Tanh()]
        d = k
    head = nn.Linear(d, chk.integer("num_classes", num_classes, low=2), bias=False, dtype=torch.float64)
    with torch.no_grad():
        head.weight.zero_()
    return nets.FedModel(nn.Sequential(*layers), head, name="bias-free tanh MLP")


def mixed_stationarity(model: nn.Module, fed: fdata.Federation, modes, *, num_rounds: int = 200,
                       client_lr: float = 0.2, l2: float = 0.01, seed: int = 0):
    """What mixed modes (``flu.run(..., finetune=modes)``, one mode per client, one full-batch local
    step per round) converge to. Parameter k is averaged over S_k, the clients whose mode trains it,
    so at a fixed point every block is stationary for its *own* clients' objective:
    sum_{i in S_k} w_i grad_k F_i(x) = 0 with w_i = n_i / sum_{j in S_k} n_j; not for F = sum_i p_i F_i.
    Returns ``(table, history)``: per parameter ``parameter, clients`` (|S_k|), ``grad_own`` =
    ||sum_{i in S_k} w_i grad_k F_i|| and ``grad_all`` = ||grad_k F|| at the final model."""
    modes = list(modes)
    if len(modes) != fed.num_clients:
        chk.fail("modes", f"one mode per client ({fed.num_clients})", modes)
    hist = run(model, fed, finetune=modes, num_rounds=num_rounds, local_steps=1, client_lr=client_lr, batch_size=None,
               l2=l2, eval_every=num_rounds, progress=False, seed=seed)
    masks = {m: set(ft.prepare(model, m).trainable) for m in set(modes)}
    params = {k: v.detach() for k, v in hist.params.items()}
    _, grads = cv.client_objectives(model, params, fed, "cross_entropy", l2)
    p = torch.as_tensor(fed.weights("samples"))
    rows = []
    for k, g in grads.items():
        who = torch.tensor([k in masks[m] for m in modes])
        G = g.reshape(len(p), -1)
        own = (p * who) / (p * who).sum() @ G if bool(who.any()) else torch.zeros(G.shape[1], dtype=G.dtype)
        rows.append(dict(parameter=k, clients=int(who.sum()), grad_own=float(own.norm()),
                         grad_all=float((p @ G).norm())))
    return pd.DataFrame(rows), hist


# ============================================================================ 6. the report's figures

#: the report's headline numbers (*Few-shot fine-tuning training methods in heterogeneous federated
#: environments and their convergence analysis*), as it states them
REPORT = pd.DataFrame([
    dict(key="image_probe", claim="image: linear probe, 10 classes x 20 shots, accuracy", report=0.85),
    dict(key="image_gain", claim="image: linear probe minus no fine-tuning (accuracy)", report=0.20),
    dict(key="text_before", claim="text: macro-F1 before fine-tuning", report=0.75),
    dict(key="text_after", claim="text: macro-F1 after full fine-tuning, 10 rounds", report=0.88),
    dict(key="compute_ratio", claim="full fine-tuning compute / linear probe compute", report=3.0),
])


def interval(values) -> tuple:
    """``(mean, low, high)`` of ``values`` (one per seed): the mean and the range [min, max]."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0 or not np.isfinite(v).all():
        chk.fail("values", "a non-empty list of finite numbers", list(v))
    return float(v.mean()), float(v.min()), float(v.max())


def _pooled(hist, split, metric, rnd):
    m = hist.metrics
    m = m[m.client.isna() & (m.split == split) & (m.model == "global") & (m.metric == metric) & (m["round"] == rnd)]
    return float(m["value"].iloc[0]) if len(m) else np.nan


def image_report(seeds, *, shots: int = 20, alpha: float = 0.5, num_clients: int = 10, query: int | None = None,
                 num_rounds: int = 10, local_steps: int = 5, batch_size: int | None = 16, client_lr: float = 0.1):
    """The linear probe on the few-shot digits (``flu.lessons.hetero_finetune.image_task``, 10
    classes x ``shots``) per seed (partition, supports and training streams), run on the cached body
    features: ``seed, accuracy_before`` (the MNIST head, no fine-tuning), ``accuracy_after``
    (pooled query accuracy after ``num_rounds``), ``gain``, ``f1_before``, ``f1_after``."""
    rows = []
    for s in seeds:
        model, fed = hf.image_task(shots=shots, alpha=alpha, num_clients=num_clients, query=query, seed=s)
        net, data = _cached(model, fed, "linear_probe")
        h = run(net, data, finetune="linear_probe", num_rounds=num_rounds, local_steps=local_steps,
                batch_size=batch_size, client_lr=client_lr, eval_every=num_rounds, progress=False, seed=s)
        split = fed.splits[1]
        rows.append(dict(seed=s, accuracy_before=_pooled(h, split, "accuracy", 0),
                         accuracy_after=_pooled(h, split, "accuracy", num_rounds),
                         f1_before=_pooled(h, split, "f1_macro", 0),
                         f1_after=_pooled(h, split, "f1_macro", num_rounds)))
    out = pd.DataFrame(rows)
    out["gain"] = out["accuracy_after"] - out["accuracy_before"]
    return out


def text_report(seeds, *, num_rounds: int = 10, num_clients: int = 6, shots: int = 4, local_steps: int = 5,
                batch_size: int | None = 8, client_lr: float = 1.0):
    """The frozen-embedding rows of the text task (``flu.lessons.hetero_finetune.text_task``: movies
    as clients, MiniLM embeddings computed once, the server's starting head): a linear probe (the
    head on the embeddings) for ``num_rounds`` per seed. ``seed, f1_before, f1_after,
    accuracy_before, accuracy_after`` (pooled on the query snippets)."""
    rows = []
    for s in seeds:
        task = hf.text_task(num_clients=num_clients, shots=shots, seed=s)
        h = run(hf.head_model(task.head), task.fed, num_rounds=num_rounds, local_steps=local_steps,
                batch_size=batch_size, client_lr=client_lr, eval_every=num_rounds, progress=False, seed=s)
        split = task.fed.splits[1]
        rows.append(dict(seed=s, f1_before=_pooled(h, split, "f1_macro", 0),
                         f1_after=_pooled(h, split, "f1_macro", num_rounds),
                         accuracy_before=_pooled(h, split, "accuracy", 0),
                         accuracy_after=_pooled(h, split, "accuracy", num_rounds)))
    return pd.DataFrame(rows)


def compute_ratio(model: nn.Module, *, input_shape, batch_size: int = 16) -> float:
    """FLOPs of a full fine-tuning step over a linear probe's (``flu.finetune.cost``, body in the loop)."""
    full = ft.cost(model, "full", input_shape=input_shape, batch_size=batch_size)["flops_step"]
    return full / ft.cost(model, "linear_probe", input_shape=input_shape, batch_size=batch_size)["flops_step"]


def load_minilm(path=None) -> pd.DataFrame | None:
    """``data/minilm_convergence.csv`` (``python scripts/minilm_convergence.py``) when it exists, else None."""
    path = pretrained.data_dir() / MINILM_CSV if path is None else Path(path)
    return pd.read_csv(path) if Path(path).exists() else None


def report_table(measured: dict, *, notes: dict | None = None, claims: pd.DataFrame = REPORT) -> pd.DataFrame:
    """The report's numbers beside this workbook's: ``claim, report, measured, low, high, n, note``
    with ``measured``/``low``/``high`` the :func:`interval` of ``measured[key]`` (a list of values,
    one per seed; keys of :data:`REPORT`; a missing key gives NaN) and ``note`` from ``notes``."""
    _need(claims, "claims", ["key", "claim", "report"])
    unknown = set(measured) - set(claims["key"])
    if unknown:
        chk.fail("measured", f"keys among {list(claims['key'])}", sorted(unknown))
    rows = []
    for r in claims.itertuples(index=False):
        vals = measured.get(r.key)
        mean, lo, hi = interval(vals) if vals is not None else (np.nan, np.nan, np.nan)
        rows.append(dict(claim=r.claim, report=r.report, measured=mean, low=lo, high=hi,
                         n=0 if vals is None else len(list(vals)), note=(notes or {}).get(r.key, "")))
    return pd.DataFrame(rows)


# ============================================================================ 7. summary

THEORY_COLUMNS = ["method", "assumption", "theorem", "constants", "measured", "looseness"]


def theory_table(rows) -> pd.DataFrame:
    """The theory-vs-measurement summary: one row per method with :data:`THEORY_COLUMNS` (each row a
    dict with exactly those keys; numbers formatted by the caller, from the cells that computed them)."""
    rows = list(rows)
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or set(r) != set(THEORY_COLUMNS):
            chk.fail(f"rows[{i}]", f"a dict with the keys {THEORY_COLUMNS}",
                     r if not isinstance(r, dict) else sorted(r))
    return pd.DataFrame(rows, columns=THEORY_COLUMNS)


# ============================================================================ the panels' computations

def _key(**kw):
    return tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in kw.items()))


def probe_scenario(*, shots: int = 5, alpha: float = 0.5, l2: float = 0.1, local_steps: int = 5,
                   num_rounds: int = 20, batch_size: int | None = 16, num_clients: int = 10, query: int | None = 10,
                   seed: int = 0, heterogeneity: bool = True, bound_points: int = 2, known: dict | None = None) -> dict:
    """Section 1's panel: the few-shot task at (``shots``, ``alpha``), its linear probe on the
    pretrained features (standardised), the constants, :func:`probe_experiment` and (with
    ``heterogeneity``) ``flu.convergence.feature_heterogeneity`` over :func:`feature_bodies`.
    Returns ``{"key", "constants", "table", "info", "heterogeneity", "probe", "model", "fed"}``;
    ``known`` (read only) maps a result's ``key`` (:func:`scenario_key` of the arguments) to it."""
    key = scenario_key("probe", shots=shots, alpha=alpha, l2=l2, local_steps=local_steps, num_rounds=num_rounds,
                       batch_size=batch_size, num_clients=num_clients, query=query, seed=seed,
                       heterogeneity=heterogeneity, bound_points=bound_points)
    if known is not None and key in known:
        return known[key]
    model, fed = hf.image_task(shots=shots, alpha=alpha, num_clients=num_clients, query=query, seed=seed)
    probe = cv.probe_problem(model, fed, standardize=True)
    c = cv.constants(probe.model, probe.federation, "cross_entropy", l2)
    table, info = probe_experiment(probe, l2=l2, local_steps=local_steps, num_rounds=num_rounds,
                                   batch_size=batch_size, seed=seed, constants=c, bound_points=bound_points)
    het = None
    if heterogeneity:
        bodies = feature_bodies(model, seed=seed)
        bodies.pop("pretrained CNN")                                  # its constants are c, computed above
        het = pd.concat([cv.feature_heterogeneity(fed, bodies, l2, standardize=True),
                         pd.DataFrame([_heterogeneity_row("pretrained CNN", probe, c)])], ignore_index=True)
    return dict(key=key, constants=c, table=table, info=info, heterogeneity=het, probe=probe, model=model, fed=fed)


def _heterogeneity_row(space: str, probe: cv.Probe, c: cv.Constants) -> dict:
    """``flu.convergence.feature_heterogeneity``'s row for a probe whose constants ``c`` are known
    (zeta2 = sum_i p_i ||grad F_i(w*)||^2 by ``client_objectives``)."""
    _, grads = cv.client_objectives(probe.model, c.w_star, probe.federation, "cross_entropy", c.l2)
    g2 = sum((g.reshape(probe.federation.num_clients, -1) ** 2).sum(1) for g in grads.values()).numpy()
    return dict(space=str(space), num_features=probe.num_features, mu=c.mu, L=c.L, kappa=c.kappa, mu_F=c.mu_F,
                L_F=c.L_F, F_star=c.F_star, Gamma=c.Gamma, zeta2=float(np.array(c.p) @ g2))


def scenario_key(kind: str, **settings) -> tuple:
    """The key of a panel computation in a ``known`` dict: ``(kind, sorted settings)``."""
    return (kind, _key(**settings))


def nonconvex_scenario(*, mode: str = "full", shots: int = 5, alpha: float = 0.5, num_rounds: int = 6,
                       local_steps: int = 5, client_lr=None, num_clients: int = 10, query: int | None = 10,
                       seed: int = 0, beta_examples: int = 48, beta_iters: int = 4, known: dict | None = None) -> dict:
    """Section 2's panel: one ``flu.run(..., finetune=mode, diagnostics=True)`` with full-batch local
    steps (sigma = 0) on the task at (``shots``, ``alpha``) (:func:`diagnostics_runs`), its
    :func:`stationarity` table from x_0, an estimate of beta (:func:`smoothness` at x_0 on the
    first ``beta_examples`` support examples, the trainable parameters' Hessian for a cached
    mode), G^2 = max_r zeta_r^2 with B^2 = 1 (the exact identity sum_i p_i ||grad F_i||^2 =
    ||grad F||^2 + zeta^2), and :func:`nonconvex_rate` from F(x_0). Returns ``{"key", "stationarity",
    "rate", "beta", "G2", "gap0", "client_lr", "history", "start"}`` (``known`` as :func:`probe_scenario`).
    ``mode="lora"`` is refused by ``flu.run`` (no diagnostics: its server and client coordinates differ)."""
    chk.option("mode", mode, ft.MODES)
    lr = study.client_lrs(client_lr)[mode]
    key = scenario_key("nonconvex", mode=mode, shots=shots, alpha=alpha, num_rounds=num_rounds,
                       local_steps=local_steps, client_lr=lr, num_clients=num_clients, query=query, seed=seed,
                       beta_examples=beta_examples, beta_iters=beta_iters)
    if known is not None and key in known:
        return known[key]
    model, fed = hf.image_task(shots=shots, alpha=alpha, num_clients=num_clients, query=query, seed=seed)
    hist = diagnostics_runs(model, fed, (mode,), num_rounds=num_rounds, local_steps=local_steps, batch_size=None,
                            client_lr=lr, seed=seed)[mode]
    net, data = _cached(model, fed, mode)
    start = start_gradient(hist, net, data)
    table = stationarity({mode: hist}, {mode: start})
    plan = ft.prepare(net, mode, seed=seed)
    x0 = {k: v.detach() for k, v in plan.model.named_parameters()}
    x0.update({k: v for k, v in hist.trajectory[0].items() if k in x0})
    Xb = torch.cat([X for X, _ in data.train])[:beta_examples]
    yb = torch.cat([y for _, y in data.train])[:beta_examples]
    beta = abs(cv.hessian_top_eigenvalue(plan.model, {k: x0[k] for k in plan.trainable}, Xb, yb, iters=beta_iters,
                                         seed=seed))
    G2 = float(table["grad_dissimilarity"].max())
    rate = nonconvex_rate(beta=beta, gap0=start["global_loss"], local_steps=local_steps,
                          num_clients=fed.num_clients, num_rounds=num_rounds, G2=G2)
    return dict(key=key, stationarity=table, rate=rate, beta=beta, G2=G2, gap0=start["global_loss"], client_lr=lr,
                history=hist, start=start)


def lora_scenario(*, client_lr: float = 0.1, alpha: float = 0.3, mode: str = "lora", shots: int = 5, steps: int = 5,
                  num_rounds: int = 4, num_clients: int = 10, query: int | None = 10, seed: int = 0,
                  prefixes: lf.Prefixes | None = None, known: dict | None = None) -> dict:
    """Section 3's panel: :func:`lora_trace` on the client with the most skewed support (the largest
    share of one label) at ``client_lr``, and :func:`lora_sweep` of that one setting. Returns
    ``{"key", "trace", "sweep", "client"}`` (``known`` as :func:`probe_scenario`; ``prefixes`` as
    :func:`lora_sweep`)."""
    key = scenario_key("lora", client_lr=client_lr, alpha=alpha, mode=mode, shots=shots, steps=steps,
                       num_rounds=num_rounds, num_clients=num_clients, query=query, seed=seed)
    if known is not None and key in known:
        return known[key]
    model, fed = hf.image_task(shots=shots, alpha=alpha, num_clients=num_clients, query=query, seed=seed)
    client = most_skewed(fed)
    X, y = fed.train[client]
    trace = lora_trace(model, X, y, lr=client_lr, steps=steps, mode=mode, seed=seed)
    sweep = lora_sweep(model, [alpha], [client_lr], mode=mode, shots=shots, num_clients=num_clients, query=query,
                       num_rounds=num_rounds, local_steps=steps, seed=seed, prefixes=prefixes)
    return dict(key=key, trace=trace, sweep=sweep, client=client)


def most_skewed(fed: fdata.Federation) -> int:
    """The client whose support has the largest share of a single label (ties: the lowest index)."""
    shares = []
    for _, y in fed.train:
        counts = np.bincount(y.numpy().astype(np.int64))
        shares.append(counts.max() / max(counts.sum(), 1))
    return int(np.argmax(shares))
