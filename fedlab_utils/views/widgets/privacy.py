"""Notebook 10's interactive panels: draw and wire only; the compute is ``flu.lessons.privacy``.

Each panel maps its controls onto one callback with ``ipywidgets.interactive_output``
(:func:`flu.widgets.common.panel`); a callback reads only its arguments and the values bound
when the panel was built (``functools.partial``), and ``panel.result`` is its table.

- :func:`leak_panel`: ``shots`` (K), ``local_steps``, ``protection`` (drop-downs) -> the attack
  of ``flu.lessons.privacy.attack`` on one client, originals over reconstructions.
- :func:`clipping_panel`: ``clip`` (the start), ``target_quantile`` (fixed or adaptive), ``clip_lr``
  (drop-downs) -> one DP-FedAvg run: its clip and held-out accuracy per round (trains).
- :func:`accounting_panel`: ``noise_multiplier``, ``clip``, ``sample_rate``, ``rounds`` (sliders,
  the first one first) -> Opacus' epsilon against rounds, with and without sampling, and the noise
  std the server adds, z C / (q N).
- :func:`utility_panel`: ``noise_multiplier``, ``clip``, ``num_rounds`` -> DP-FedAvg against
  FedAvg on a task (trains; sliders recompute on release).
- :func:`secure_panel`: ``clients``, ``dropped`` -> ``flu.privacy.secure_sum``'s bytes per phase and
  what the server receives (masked uploads against the unmasked encodings).
"""
from __future__ import annotations

import functools

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ... import privacy as fp
from ..._core import checks as chk
from ...lessons import privacy as lp
from ..plots import privacy as pp
from .common import LAYOUT, STYLE, int_slider, log_slider, panel, show

SECURE_PHASES = ("advertise_keys", "share_keys", "masked_input", "unmasking")


def _float_slider(description, value, low, high, step):
    return W.FloatSlider(value=value, min=low, max=high, step=step, description=description, continuous_update=False,
                         readout_format=".2f", style=STYLE, layout=LAYOUT)


# ----------------------------------------------------------------------------- the leak

def draw_attack(a: lp.Attack, *, title: str = ""):
    """Left: the originals above the reconstructions; right: the attack's gradient distance per step."""
    fig, (ax_g, ax_l) = plt.subplots(1, 2, figsize=(11, 2.8), width_ratios=[1.6, 1], layout="constrained")
    pp.plot_gallery(lp.gallery({"client": a}), ax=ax_g)
    ax_l.plot(a.losses["step"], a.losses["loss"], color=pp.COLORS[0])
    ax_l.set(yscale="log", xlabel="attack step", ylabel="gradient distance")
    ax_l.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _leak_view(model, X, y, fixed, shots, local_steps, protection):
    clip, z = fixed["protections"][protection]
    a = lp.attack(model, X[:shots], y[:shots], local_steps=local_steps, lr=fixed["lr"], clip=clip, noise_multiplier=z,
                  seed=fixed["seed"], **fixed["attack_options"])
    err = a.error["relative_mse"]
    show(draw_attack(a, title=f"K = {shots}, {local_steps} local step(s), {protection}: relative MSE {err:.3g}, "
                              f"PSNR {a.error['psnr']:.1f} dB, noise / update norm {a.noise_norm / a.update_norm:.2g}"))
    return pd.DataFrame([dict(shots=shots, local_steps=local_steps, protection=protection, relative_mse=err,
                              psnr=a.error["psnr"], update_norm=a.update_norm, noise_norm=a.noise_norm)])


def leak_panel(model, X, y, *, protections: dict, shots: int = 1, local_steps: int = 1, protection: str | None = None,
               shots_options=(1, 2, 4, 8), local_steps_options=(1, 2, 5, 10), lr: float = 0.1, seed: int = 0,
               controls=None, **attack_options) -> W.VBox:
    """The attack on the first K examples of ``X, y`` (one client's; distinct labels first):
    drop-downs ``shots`` -> K, ``local_steps`` -> tau, ``protection`` -> a name of ``protections``
    (name -> (clip, noise_multiplier)). Each change reruns ``flu.lessons.privacy.attack``."""
    protections = lp.check_protections(protections)
    names = list(protections)
    options = [k for k in shots_options if k <= len(X)]
    widgets = dict(
        shots=W.Dropdown(options=options, value=shots, description="K (examples)", style=STYLE, layout=LAYOUT),
        local_steps=W.Dropdown(options=list(local_steps_options), value=local_steps, description="local steps",
                               style=STYLE, layout=LAYOUT),
        protection=W.Dropdown(options=names, value=names[0] if protection is None else protection,
                              description="protection", style=STYLE, layout=LAYOUT),
    )
    fixed = dict(protections=protections, lr=lr, seed=seed, attack_options=attack_options)
    return panel("What one client's update reveals (gradient inversion)", widgets,
                 functools.partial(_leak_view, model, torch.as_tensor(X), torch.as_tensor(y), fixed), visible=controls,
                 columns=3)


# ----------------------------------------------------------------------------- clipping

def draw_clipping(table: pd.DataFrame, *, title: str = ""):
    """Left: the clip per round; right: held-out accuracy per round (``flu.lessons.privacy.runs_table``)."""
    fig, (ax_c, ax_a) = plt.subplots(1, 2, figsize=(11, 3.4), layout="constrained")
    colors = pp.palette(table["label"])
    pp.plot_lines(table, "round", "clip", ax=ax_c, logy=True, colors=colors, legend=False)
    pp.plot_lines(table, "round", "accuracy", ax=ax_a, colors=colors)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _clipping_view(task, model, fixed, clip, target_quantile, clip_lr):
    dp = fp.DPFedAvg(clip=clip, noise_multiplier=fixed["noise_multiplier"], delta=fixed["delta"],
                     target_quantile=target_quantile, clip_lr=clip_lr)
    label = f"C0={clip:g}, " + ("fixed" if target_quantile is None else f"gamma={target_quantile:g}, eta_C={clip_lr:g}")
    hist = lp.train(model, task.federation, dp, num_rounds=fixed["num_rounds"], local_steps=fixed["local_steps"],
                    client_lr=fixed["client_lr"], batch_size=fixed["batch_size"], seed=fixed["seed"])
    table = lp.runs_table({label: hist}, task.X_test, task.y_test)
    last = table.iloc[-1]
    show(draw_clipping(table, title=f"z = {fixed['noise_multiplier']:g}, {label}: last clip {last['clip']:.3g}, "
                                    f"accuracy {last['accuracy']:.3f}, epsilon {last['epsilon']:.3g}"))
    return table


def clipping_panel(task: lp.Task, model, *, noise_multiplier: float = 2.0, clip: float = 0.1,
                   target_quantile: float | None = 0.5, clip_lr: float = 1.0, num_rounds: int = 15,
                   local_steps: int = 5, client_lr: float = 0.3, batch_size: int | None = 16, delta: float = 1e-5,
                   seed: int = 0, controls=None) -> W.VBox:
    """Drop-downs ``clip`` -> the (starting) clip C, ``target_quantile`` -> gamma (``None``: fixed
    clipping), ``clip_lr`` -> eta_C (greyed out when fixed) -> ``flu.lessons.privacy.train`` with
    ``DPFedAvg(clip, noise_multiplier, target_quantile=gamma, clip_lr=eta_C)``, every client every
    round; draws the clip and the held-out accuracy per round."""
    widgets = dict(
        clip=W.Dropdown(options=[0.01, 0.1, 1.0, 10.0], value=clip, description="clip C (start)", style=STYLE,
                        layout=LAYOUT),
        target_quantile=W.Dropdown(options=[("fixed (no adaptation)", None), ("0.2", 0.2), ("0.5 (median)", 0.5),
                                            ("0.8", 0.8)], value=target_quantile, description="target quantile",
                                   style=STYLE, layout=LAYOUT),
        clip_lr=W.Dropdown(options=[0.2, 0.5, 1.0], value=clip_lr, description="clip step eta_C", style=STYLE,
                           layout=LAYOUT),
    )

    def grey_out(change=None):
        widgets["clip_lr"].disabled = widgets["target_quantile"].value is None

    widgets["target_quantile"].observe(grey_out, "value")
    grey_out()
    fixed = dict(noise_multiplier=noise_multiplier, delta=delta, num_rounds=num_rounds, local_steps=local_steps,
                 client_lr=client_lr, batch_size=batch_size, seed=seed)
    return panel("Fixed or adaptive clipping (Andrew et al. 2021)", widgets,
                 functools.partial(_clipping_view, task, model, fixed), visible=controls, columns=3)


# ----------------------------------------------------------------------------- accounting

def draw_accounting(curves: pd.DataFrame, *, noise_multiplier: float, clip: float, sample_rate: float,
                    num_clients: int, prv: float | None = None, title: str = ""):
    """Left: epsilon against rounds (``curves``: ``label, round, epsilon``), the PRV value as a
    cross if given; right: the noise std z C / (q N) against the clip, the current clip marked."""
    fig, (ax_e, ax_n) = plt.subplots(1, 2, figsize=(11, 3.8), width_ratios=[1.4, 1], layout="constrained")
    pp.plot_lines(curves, "round", "epsilon", hue="label", ax=ax_e)
    if prv is not None:
        ax_e.plot(curves["round"].max(), prv, marker="x", color="#c44e52", ms=9, mew=2, ls="none", label="PRV")
        ax_e.legend(fontsize="small")
    ax_e.set_ylim(bottom=0)
    C = np.logspace(-2, 1, 60)
    std = noise_multiplier * C / (sample_rate * num_clients)
    ax_n.plot(C, std, color=pp.COLORS[2])
    ax_n.plot([clip], [noise_multiplier * clip / (sample_rate * num_clients)], marker="o", color=pp.COLORS[3])
    ax_n.set(xscale="log", yscale="log", xlabel="clip norm $C$", ylabel=r"noise std per coordinate $z C / (qN)$")
    ax_n.grid(True, which="both", alpha=0.3)
    ax_n.set_title("the clip moves the noise, not epsilon", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _accounting_view(fixed, noise_multiplier, clip, sample_rate, rounds):
    delta, N = fixed["delta"], fixed["num_clients"]
    every = max(1, rounds // 60)
    sampled = lp.epsilon_curve(noise_multiplier, sample_rate, rounds, delta, every=every)
    full = lp.epsilon_curve(noise_multiplier, 1.0, rounds, delta, every=every)
    curves = pd.concat([sampled.assign(label=f"q = {sample_rate:.3g} (Poisson sampling)"),
                        full.assign(label="q = 1 (every client, every round)")], ignore_index=True)
    prv = float(lp.epsilon_table((noise_multiplier,), (sample_rate,), (rounds,), delta=delta, accountants=("prv",))[
        "epsilon"].iloc[0]) if fixed["prv"] else None
    eps, eps1 = float(sampled["epsilon"].iloc[-1]), float(full["epsilon"].iloc[-1])
    std = noise_multiplier * clip / (sample_rate * N)
    show(draw_accounting(curves, noise_multiplier=noise_multiplier, clip=clip, sample_rate=sample_rate, num_clients=N,
                         prv=prv, title=f"z = {noise_multiplier:.2f}, q = {sample_rate:.3g}, T = {rounds}: "
                                        f"epsilon {eps:.3g} (q = 1: {eps1:.3g}) at delta = {delta:g}; noise std "
                                        f"{std:.3g} with C = {clip:.3g}, N = {N}"))
    return pd.DataFrame([dict(noise_multiplier=noise_multiplier, clip=clip, sample_rate=sample_rate, rounds=rounds,
                              delta=delta, epsilon=eps, epsilon_full_participation=eps1, epsilon_prv=prv,
                              noise_std=std)])


def accounting_panel(*, noise_multiplier: float = 1.0, clip: float = 1.0, sample_rate: float = 0.1,
                     rounds: int = 100, delta: float = 1e-5, num_clients: int = 100, max_rounds: int = 1000,
                     prv: bool = False, controls=None) -> W.VBox:
    """Sliders ``noise_multiplier`` (z, first), ``clip`` (C), ``sample_rate`` (q) and ``rounds`` (T)
    -> ``flu.lessons.privacy.epsilon_curve`` (Opacus RDP) at q and at q = 1, and the noise std
    z C / (q N) of DP-FedAvg with uniform weights over ``num_clients`` clients. ``prv``: also
    Opacus' PRV accountant at T (slower)."""
    widgets = dict(
        noise_multiplier=_float_slider("noise multiplier z", noise_multiplier, 0.3, 8.0, 0.1),
        clip=log_slider("clip norm C", clip, 0.01, 10.0),
        sample_rate=log_slider("sample rate q", sample_rate, 0.001, 1.0),
        rounds=int_slider("rounds T", rounds, 1, max_rounds),
    )
    fixed = dict(delta=delta, num_clients=num_clients, prv=prv)
    return panel("Accounting with Opacus: epsilon as the knobs move", widgets,
                 functools.partial(_accounting_view, fixed), visible=controls)


# ----------------------------------------------------------------------------- privacy and utility

def draw_utility(table: pd.DataFrame, *, title: str = ""):
    """Left: held-out accuracy against rounds per run; right: epsilon against rounds (private runs)."""
    fig, (ax_a, ax_e) = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
    colors = pp.palette(table["label"])
    pp.plot_lines(table, "round", "accuracy", ax=ax_a, colors=colors)
    private = table[np.isfinite(table["epsilon"].to_numpy(dtype=float))]
    if not private.empty:
        pp.plot_lines(private, "round", "epsilon", ax=ax_e, colors=colors)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _utility_view(task, model, fixed, noise_multiplier, clip, num_rounds):
    train = dict(num_rounds=num_rounds, local_steps=fixed["local_steps"], client_lr=fixed["client_lr"],
                 batch_size=fixed["batch_size"], seed=fixed["seed"])
    dp = fp.DPFedAvg(clip=clip, noise_multiplier=noise_multiplier, delta=fixed["delta"])
    runs = {"FedAvg": lp.train(model, task.federation, None, **train),
            f"DP-FedAvg z={noise_multiplier:.2g}, C={clip:.2g}": lp.train(model, task.federation, dp, **train)}
    table = lp.runs_table(runs, task.X_test, task.y_test)
    N = task.federation.num_clients
    last = table[table["round"] == num_rounds].set_index("label")
    show(draw_utility(table, title=f"{N} clients, every round (q = 1): noise std z C / N = "
                                   f"{noise_multiplier * clip / N:.3g}; accuracy " + ", ".join(
                                       f"{k} {v:.3f}" for k, v in last["accuracy"].items())))
    return table


def utility_panel(task: lp.Task, model, *, noise_multiplier: float = 2.0, clip: float = 1.0, num_rounds: int = 20,
                  local_steps: int = 5, client_lr: float = 0.3, batch_size: int | None = 16, delta: float = 1e-5,
                  seed: int = 0, max_rounds: int = 60, controls=None) -> W.VBox:
    """Sliders ``noise_multiplier`` (z), ``clip`` (C), ``num_rounds`` -> FedAvg and DP-FedAvg
    (every client every round) on ``task`` (``flu.lessons.privacy.digits_task``), held-out
    accuracy and epsilon per round. Each change trains both (sliders recompute on release)."""
    widgets = dict(
        noise_multiplier=_float_slider("noise multiplier z", noise_multiplier, 0.1, 10.0, 0.1),
        clip=log_slider("clip norm C", clip, 0.01, 10.0),
        num_rounds=int_slider("rounds", num_rounds, 1, max_rounds),
    )
    fixed = dict(local_steps=local_steps, client_lr=client_lr, batch_size=batch_size, delta=delta, seed=seed)
    return panel("Privacy against utility: DP-FedAvg next to FedAvg", widgets,
                 functools.partial(_utility_view, task, model, fixed), visible=controls, columns=3)


# ----------------------------------------------------------------------------- secure aggregation

def draw_secure(phases: pd.DataFrame, seen: pd.DataFrame, *, title: str = ""):
    """Left: bytes per protocol phase (``phases``: ``phase, bytes``); right: histograms of what the
    server receives (``seen``: ``what, value`` as fractions of the ring)."""
    fig, (ax_b, ax_h) = plt.subplots(1, 2, figsize=(11, 3.4), layout="constrained")
    pp.plot_costs(phases.rename(columns={"phase": "method"}), "bytes", ax=ax_b)
    ax_b.set_title("bytes per phase (all clients, both ways)", fontsize=9)
    pp.plot_histograms(seen, ax=ax_h)
    ax_h.set(xlabel=r"value as a fraction of the ring $\mathbb{Z}_{2^{64}}$")
    ax_h.set_title("what the server receives from one client", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def encoded(update, frac_bits: int = 24) -> np.ndarray:
    """The ring element x_u that secure_sum masks (the update rounded to multiples of 2^-frac_bits,
    two's complement in Z_{2^64}), as fractions of the ring: what the server would see unmasked."""
    t = torch.as_tensor(update).detach().double().reshape(-1)
    ints = torch.round(t * 2.0 ** frac_bits).to(torch.int64).numpy().view(np.uint64)
    return ints.astype(np.float64) / lp.RING


def _secure_view(updates, fixed, clients, dropped):
    total, tr = fp.secure_sum(list(updates[:clients]), dropped=tuple(range(dropped)), seed=fixed["seed"])
    phases = pd.DataFrame([dict(phase=p, messages=v["messages"], bytes=v["bytes"]) for p, v in tr["phases"].items()])
    u = tr["survivors"][0]
    seen = pd.concat([pd.DataFrame({"what": f"client {u} unmasked (never sent)", "value": encoded(updates[u])}),
                      pd.DataFrame({"what": f"client {u} masked upload", "value": lp.masked_values(tr, [u])["value"]})],
                     ignore_index=True)
    ks = lp.uniformity(seen, by="what")
    exact = torch.stack([torch.as_tensor(updates[i]).double() for i in tr["survivors"]]).sum(0)
    err = float((total - exact).abs().max())
    show(draw_secure(phases, seen, title=f"{clients} clients, {dropped} dropped (threshold t = {tr['threshold']}): "
                                         f"{tr['messages']} messages, {tr['bytes']:,} bytes; "
                                         f"max |sum error| {err:.2g}"))
    return phases.assign(ks_p_masked=float(ks["p_value"].iloc[1]), max_error=err)


def secure_panel(updates, *, clients: int = 5, dropped: int = 1, seed: int = 0, controls=None) -> W.VBox:
    """Sliders ``clients`` (K, the first K of ``updates``) and ``dropped`` (clients 0..d-1 leave
    after sharing their keys) -> ``flu.privacy.secure_sum``: bytes per phase and, for the first
    survivor, its masked upload against its unmasked encoding. Too many drop-outs are refused
    with the reason (at least max(2, t) must survive)."""
    updates = [torch.as_tensor(u) for u in updates]
    if len(updates) < 3:
        chk.fail("updates", "a list of at least 3 client tensors", f"{len(updates)} tensors")
    widgets = dict(clients=int_slider("clients K", min(clients, len(updates)), 3, len(updates)),
                   dropped=int_slider("dropped after sharing keys", dropped, 0, len(updates) - 2))

    def bound(change=None):  # at most K - 2 can drop (the protocol needs max(2, t) survivors)
        widgets["dropped"].max = widgets["clients"].value - 2

    widgets["clients"].observe(bound, "value")
    bound()
    return panel("Secure aggregation by pairwise masking, with drop-outs", widgets,
                 functools.partial(_secure_view, updates, dict(seed=seed)), visible=controls)


__all__ = ["accounting_panel", "clipping_panel", "draw_accounting", "draw_attack", "draw_clipping", "draw_secure",
           "draw_utility", "encoded", "leak_panel", "secure_panel", "utility_panel"]
