"""Notebook 09's interactive panels: draw and wire only; the compute is
``flu.lessons.finetune_convergence`` (its ``*_scenario`` functions and closed forms).

Each ``*_panel`` maps named controls onto one callback with ``flu.widgets.common.panel``
(``interactive_output``); the callback reads only its arguments and the values bound when the
panel was built (``functools.partial``), recomputes, draws with ``flu.plots.finetune_convergence``
and returns what it computed (``panel.result``). Sliders recompute on release
(``continuous_update=False``). ``known`` dicts (``scenario_key`` -> result) let a panel show the
notebook's default run without recomputing it.

- :func:`probe_panel` (Section 1): shots K, alpha, l2, local steps -> Li et al.'s bound over the
  probe's suboptimality, and Gamma / zeta^2 in three feature spaces;
- :func:`nonconvex_panel` (Section 2): method (full, linear probe, last layers, FFA-LoRA: the
  modes ``flu.run`` records diagnostics for), alpha, K -> running mean of ||grad F||^2 with the
  non-convex rate, B-dissimilarity and client drift;
- :func:`lora_panel` (Section 3): client lr, alpha, LoRA or FFA-LoRA -> the effective step on W
  and the run's accuracy;
- :func:`perfedavg_panel` (Section 4): inner_lr -> Per-FedAvg's bound against the measured run;
- :func:`participation_panel` (Section 5): participation spread, local steps -> where FedAvg's
  mean iterate goes (closed form).
"""
from __future__ import annotations

import functools

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from ...lessons import drift
from ...lessons import finetune_convergence as fc
from ..plots import convergence as pc
from ..plots import finetune_convergence as pf
from ..._core.labels import method_color
from .common import LAYOUT, STYLE, int_slider, log_slider, panel, show, show_html

METHODS = ("full", "linear_probe", "last_layers", "ffa_lora")   # flu.run records no diagnostics for "lora"


# ----------------------------------------------------------------------------- Section 1

def draw_probe(result: dict, *, title: str = ""):
    """Left: F(w_t) - F* measured and Li et al.'s bound per round; right: Gamma and zeta^2 per feature
    space (when computed). Returns the Figure."""
    het = result.get("heterogeneity")
    fig, axes = plt.subplots(1, 2 if het is not None else 1, figsize=(12, 4) if het is not None else (6.5, 4),
                             layout="constrained", squeeze=False)
    ax = axes[0, 0]
    pc.plot_suboptimality(result["table"], x="round", hue=None, ax=ax)
    color = ax.get_lines()[0].get_color()
    ax.legend([Line2D([], [], color=color, ls="-"), Line2D([], [], color=color, ls="--")],
              ["measured", "Li et al. 2020, Theorem 1"], fontsize="small")
    last = result["info"]["looseness"].iloc[-1]
    ax.set_title(f"linear probe: bound / measured = {last['ratio']:.3g} at round {int(last['round'])}", fontsize=9)
    if het is not None:
        pf.plot_feature_constants(het, ("Gamma", "zeta2"), ax=axes[0, 1])
        axes[0, 1].set_title("heterogeneity of the same clients in three feature spaces", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _probe_view(fixed, shots, alpha, l2, local_steps):
    res = fc.probe_scenario(shots=shots, alpha=alpha, l2=l2, local_steps=local_steps, **fixed)
    c = res["constants"]
    show(draw_probe(res, title=f"K = {shots} shots, alpha = {alpha:.3g}, l2 = {l2:.3g}, E = {local_steps}"))
    show_html(f"<small>mu = {c.mu:.3g}, L = {c.L:.3g}, kappa = {c.kappa:.3g}, Gamma = {c.Gamma:.3g}, "
              f"G^2 = {res['info']['G2']:.3g}, sigma^2 = {res['info']['sigma2']:.3g}</small>")
    return res


def probe_panel(*, shots: int = 5, alpha: float = 0.5, l2: float = 0.1, local_steps: int = 5, num_rounds: int = 20,
                batch_size: int | None = 16, num_clients: int = 10, query: int | None = 10, seed: int = 0,
                known: dict | None = None, controls=None) -> W.VBox:
    """The linear probe as a convex problem: ``shots`` (K), ``alpha`` (label skew), ``l2`` (mu = l2)
    and ``local_steps`` (E) -> ``flu.lessons.finetune_convergence.probe_scenario``."""
    widgets = dict(shots=int_slider("shots K (per class and client)", shots, 1, 20),
                   alpha=log_slider("alpha (label skew)", alpha, 0.05, 10.0),
                   l2=log_slider("l2 (= mu)", l2, 0.01, 1.0),
                   local_steps=int_slider("local steps E", local_steps, 1, 20))
    fixed = dict(num_rounds=num_rounds, batch_size=batch_size, num_clients=num_clients, query=query, seed=seed,
                 known=known)
    return panel("Linear probe: Li et al.'s bound over the measured suboptimality", widgets,
                 functools.partial(_probe_view, fixed), visible=controls)


# ----------------------------------------------------------------------------- Section 2

def draw_nonconvex(result: dict, *, title: str = ""):
    """Left: the running mean of ||grad F(x_r)||^2 and the non-convex rate (dashed); right:
    B-dissimilarity and client drift per round. Returns the Figure."""
    st = result["stationarity"]
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    pf.plot_stationarity(st, rate=result["rate"], ax=ax_l)
    ax_l.set_title(f"beta = {result['beta']:.3g}, G^2 = {result['G2']:.3g}, F(x0) = {result['gap0']:.3g}", fontsize=9)
    mode = st["mode"].iloc[0]
    ax_r.plot(st["round"], st["b_dissimilarity"], "-o", ms=3, color=method_color(mode), label="B-dissimilarity")
    ax_r.set(xlabel="round", ylabel="B(x_r)")
    ax2 = ax_r.twinx()
    ax2.plot(st["round"], st["client_drift"], "--s", ms=3, color="#777777", label="client drift")
    ax2.set_ylabel("mean ||x - y_i||")
    ax_r.legend(handles=[*ax_r.get_lines(), *ax2.get_lines()], fontsize="small")
    ax_r.set_title("dissimilarity and drift along the run", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _nonconvex_view(fixed, method, alpha, shots):
    res = fc.nonconvex_scenario(mode=method, alpha=alpha, shots=shots, **fixed)
    show(draw_nonconvex(res, title=f"{method}: alpha = {alpha:.3g}, K = {shots}, lr = {res['client_lr']:g}"))
    return res


def nonconvex_panel(*, method: str = "full", alpha: float = 0.5, shots: int = 5, num_rounds: int = 6,
                    local_steps: int = 5, client_lr=None, num_clients: int = 10, query: int | None = 10, seed: int = 0,
                    known: dict | None = None, controls=None) -> W.VBox:
    """A fine-tuning ``method`` with diagnostics against the non-convex rate: ``method`` (one of
    :data:`METHODS`), ``alpha``, ``shots`` -> ``flu.lessons.finetune_convergence.nonconvex_scenario``
    (full-batch local steps)."""
    widgets = dict(method=W.Dropdown(options=list(METHODS), value=method, description="method", style=STYLE,
                                     layout=LAYOUT),
                   alpha=log_slider("alpha (label skew)", alpha, 0.05, 10.0),
                   shots=int_slider("shots K", shots, 1, 20))
    fixed = dict(num_rounds=num_rounds, local_steps=local_steps, client_lr=client_lr, num_clients=num_clients,
                 query=query, seed=seed, known=known)
    return panel("Non-convex fine-tuning: stationarity, dissimilarity and drift", widgets,
                 functools.partial(_nonconvex_view, fixed), visible=controls)


# ----------------------------------------------------------------------------- Section 3

def draw_lora(result: dict, *, title: str = ""):
    """Left: the effective step on W over one client's local steps with its first-order bound;
    right: the run's query accuracy per round. Returns the Figure."""
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    pf.plot_lora_trace(result["trace"], ax=ax_l)
    ax_l.set_title(f"client {result['client']} (most skewed support), one round of local steps", fontsize=9)
    sw = result["sweep"]
    ax_r.plot(sw["round"], sw["accuracy"], "-o", ms=3, color=method_color(result["trace"]["mode"].iloc[0]))
    ax_r.set(xlabel="round", ylabel="query accuracy", ylim=(0, 1))
    ax_r.set_title("diverged" if bool(sw["diverged"].any()) else "flu.run with these settings", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _lora_view(fixed, client_lr, alpha, mode):
    res = fc.lora_scenario(client_lr=client_lr, alpha=alpha, mode=mode, **fixed)
    show(draw_lora(res, title=f"{mode}: client lr = {client_lr:.3g}, alpha = {alpha:.3g}"))
    return res


def lora_panel(*, client_lr: float = 0.1, alpha: float = 0.3, mode: str = "lora", shots: int = 5, steps: int = 5,
               num_rounds: int = 4, num_clients: int = 10, query: int | None = 10, seed: int = 0, prefixes=None,
               known: dict | None = None, controls=None) -> W.VBox:
    """LoRA's bilinear step: ``client_lr``, ``alpha``, ``mode`` ("lora" or "ffa_lora") ->
    ``flu.lessons.finetune_convergence.lora_scenario`` (``prefixes``: the conv outputs of every image,
    ``flu.lessons.fewshot.Prefixes``, computed once)."""
    widgets = dict(client_lr=log_slider("client learning rate", client_lr, 0.01, 3.0),
                   alpha=log_slider("alpha (label skew)", alpha, 0.05, 10.0),
                   mode=W.Dropdown(options=["lora", "ffa_lora"], value=mode, description="mode", style=STYLE,
                                   layout=LAYOUT))
    fixed = dict(shots=shots, steps=steps, num_rounds=num_rounds, num_clients=num_clients, query=query, seed=seed,
                 prefixes=prefixes, known=known)
    return panel("LoRA: the effective step on W = W0 + BA", widgets, functools.partial(_lora_view, fixed),
                 visible=controls)


# ----------------------------------------------------------------------------- Section 4

def _perfedavg_view(fixed, inner_lr):
    known = fixed["known"] or {}
    hit = next((v for a, v in known.items() if abs(a - inner_lr) <= 1e-9 * max(abs(a), 1e-300)), None)
    curves, summary = hit if hit is not None else fc.perfedavg_sweep(
        fixed["model"], fixed["fed"], [inner_lr], constants=fixed["constants"], client_lr=fixed["client_lr"],
        local_steps=fixed["local_steps"], num_rounds=fixed["num_rounds"], l2=fixed["l2"], seed=fixed["seed"])
    ax = pf.plot_bound_vs_measured(curves)
    ax.set_ylabel(r"$\frac{1}{K}\sum_{k<K}\|\nabla F_\alpha(w_k)\|^2$")
    row = summary.iloc[0]
    ax.set_title(f"inner_lr = {inner_lr:.3g}: bound / measured = {row['ratio']:.3g}, floor = {row['floor']:.3g}, "
                 f"personalised accuracy {row['personal']:.3f}", fontsize=9)
    ax.figure.set_size_inches(7, 4)
    show(ax.figure)
    return summary


def perfedavg_panel(model, fed, constants, *, inner_lr: float = 0.05, client_lr: float, local_steps: int = 5,
                    num_rounds: int = 20, l2: float = 0.1, seed: int = 0, known: dict | None = None,
                    controls=None) -> W.VBox:
    """Per-FedAvg's Theorem 4.5 against the measured run for one ``inner_lr`` alpha (up to 1/L of
    ``constants``) -> ``flu.lessons.finetune_convergence.perfedavg_sweep`` with the fixed ``client_lr``.
    ``known``: {inner_lr: (curves, summary)} of runs already made with these settings."""
    top = 1.0 / constants.L
    widgets = dict(inner_lr=log_slider("inner_lr alpha (<= 1/L)", min(inner_lr, top), top / 100, top, step=0.05))
    fixed = dict(model=model, fed=fed, constants=constants, client_lr=client_lr, local_steps=local_steps,
                 num_rounds=num_rounds, l2=l2, seed=seed, known=known)
    return panel("Per-FedAvg: Fallah et al.'s bound and the measured stationarity", widgets,
                 functools.partial(_perfedavg_view, fixed), visible=controls)


# ----------------------------------------------------------------------------- Section 5

def draw_participation(quad, points, trajectories, *, title: str = ""):
    """Contours of F, client optima and w* (``flu.plots.convergence``), each rule's mean trajectory
    and limit, and the distance of each mean iterate to w* per round. Returns the Figure."""
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(12, 5), width_ratios=[1, 1.1], layout="constrained")
    xlim, ylim = drift.window(np.vstack([quad.centers, points[["w1", "w2"]].to_numpy()]))
    pc.plot_contours(drift.objective_grid(quad, xlim, ylim, num=61), ax=ax_l, levels=10)
    pc.plot_landmarks(points[points["kind"].isin(["client optimum", "optimum"])], ax=ax_l)
    pf.plot_limits(points, trajectories, ax=ax_l)
    ax_l.set(xlim=xlim, ylim=ylim)
    pf.plot_distance(trajectories, y="dist", hue="method", ax=ax_r)
    ax_r.set_ylabel(r"$\|E[x_r] - w^*\|$")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _participation_view(fixed, spread, local_steps):
    quad = fixed["quad"]
    q = fc.spread_probabilities(spread, quad.num_clients)
    points, traj = fc.participation_points(quad, q, local_steps=local_steps, lr=fixed["lr"],
                                           num_rounds=fixed["num_rounds"])
    show(draw_participation(quad, points, traj, title=f"q = {np.round(q, 2).tolist()}, tau = {local_steps}"))
    show_html(points[points["kind"] != "client optimum"][["label", "dist_to_opt"]]
              .to_html(index=False, float_format=lambda v: f"{v:.3g}"))
    return points


def participation_panel(quad, *, spread: float = 0.8, local_steps: int = 1, lr: float = 0.1, num_rounds: int = 40,
                        controls=None) -> W.VBox:
    """Heterogeneous participation on the quadratic clients ``quad``: ``spread`` (q_i = 1 - spread
    i / (N - 1)) and ``local_steps`` -> ``flu.lessons.finetune_convergence.participation_points``."""
    widgets = dict(spread=W.FloatSlider(value=spread, min=0.0, max=0.95, step=0.05, description="participation spread",
                                        continuous_update=False, style=STYLE, layout=LAYOUT),
                   local_steps=int_slider("local steps tau", local_steps, 1, 20))
    fixed = dict(quad=quad, lr=lr, num_rounds=num_rounds)
    return panel("Heterogeneous participation: where FedAvg's mean iterate goes", widgets,
                 functools.partial(_participation_view, fixed), visible=controls)
