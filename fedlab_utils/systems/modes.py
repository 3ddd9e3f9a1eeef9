"""One fine-tuning mode per client, from its memory and its speed.

Memory of a mode is ``flu.finetune.cost(model, mode, input_shape=..., batch_size=...)
["memory_bytes"]`` (parameters, gradients of the trainable ones, kept activations) in MB
(2**20 bytes), compared with the client's ``memory_mb``.

The rule of :func:`assign_modes` (``modes`` listed from most to least expressive, m_0, m_1, ...;
``speed_quantiles`` q_0 > q_1 > ... one fewer than the modes):

1. speed target: with t_k the q_k-quantile of all clients' ``samples_per_s`` (numpy's linear
   interpolation; inf counts as the largest float), client i's target is m_k with k the number of
   thresholds it is below (s_i >= t_0: m_0; t_1 <= s_i < t_0: m_1; ...). With the defaults the
   fastest third gets "full", the middle third "last_layers", the slowest third "linear_probe";
   list "lora" in second place to give the middle third LoRA. Equal speeds get equal targets
   (identical devices all get m_0).
2. memory cap: the client gets the first mode from its target onwards (less expressive) whose
   memory fits its ``memory_mb``; if none does, the closest more expressive one that fits.
   A mode whose memory exceeds the client's is never assigned; a client that fits no mode is a
   ValueError naming ``profiles`` and the client.

This is the "match the mode to the device" idea of heterogeneous-resource FL (HeteroFL, Diao et
al. 2021; FjORD, Horvath et al. 2021; layer freezing for stragglers), with the masks of
``flu.finetune`` in place of sub-networks.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._core import checks as chk
from ..models import finetune as ft
from .profiles import check_profiles

DEFAULT_MODES = ("full", "last_layers", "linear_probe")
MB = 2 ** 20


def mode_memory_mb(model, mode: str, *, input_shape, batch_size: int = 16, **options) -> float:
    """Memory of one local step of ``mode`` in MB (2**20 bytes): ``flu.finetune.cost``'s estimate."""
    return ft.cost(model, mode, input_shape=input_shape, batch_size=batch_size, **options)["memory_bytes"] / MB


def _route(modes, mode_options: dict) -> dict:
    """Each mode's own options (``num_layers`` to last_layers, ``lora_rank`` to the LoRA modes)."""
    for key, value in mode_options.items():
        if not any(key in ft.OPTIONS.get(m, {}) for m in modes):
            owners = sorted(m for m, opts in ft.OPTIONS.items() if key in opts)
            chk.fail(key, f"an option of one of the modes {sorted(set(modes))} "
                     f"({'it belongs to ' + ', '.join(owners) if owners else 'unknown option'})", value)
    return {m: {k: v for k, v in mode_options.items() if k in ft.OPTIONS.get(m, {})} for m in set(modes)}


def _profiles(profiles):
    if not isinstance(profiles, pd.DataFrame):
        raise TypeError(f"profiles must be a pandas DataFrame (flu.systems.profiles(...)), "
                        f"got {type(profiles).__name__}")
    if len(profiles) == 0:
        raise ValueError("profiles must be a DataFrame with one row per client, got 0 rows")
    return check_profiles(profiles, len(profiles))


def _mode_name(name: str, mode) -> str:
    if not isinstance(mode, str) or mode not in ft.MODES:
        chk.fail(name, f"one of {list(ft.MODES)}", mode)
    return mode


def speed_targets(speeds, speed_quantiles) -> np.ndarray:
    """k_i = the number of thresholds t_k = quantile(speeds, q_k) that s_i is below (step 1 of the rule)."""
    s = np.asarray(speeds, dtype=np.float64)
    s = np.where(np.isinf(s), np.finfo(np.float64).max, s)
    thresholds = np.quantile(s, np.asarray(speed_quantiles, dtype=np.float64))
    return (s[:, None] < thresholds[None, :]).sum(axis=1)


def assign_modes(profiles, model, *, input_shape, batch_size: int = 16, modes=DEFAULT_MODES,
                 speed_quantiles=(0.66, 0.33), **mode_options) -> list:
    """One mode per client (client order) by the rule in the module docstring: the speed third
    picks the target, memory caps it; ``**mode_options`` (``num_layers``, ``lora_rank``) go to
    the modes that take them."""
    prof = _profiles(profiles)
    if isinstance(modes, str) or not isinstance(modes, (list, tuple)) or not modes:
        chk.fail("modes", "a non-empty list of mode names, most expressive first", modes)
    modes = tuple(_mode_name("modes", m) for m in modes)
    if len(set(modes)) != len(modes):
        chk.fail("modes", "mode names without repeats", list(modes))
    if isinstance(speed_quantiles, (str, bytes)) or not isinstance(speed_quantiles, (list, tuple)) \
            or len(speed_quantiles) != len(modes) - 1:
        chk.fail("speed_quantiles", f"a list of {len(modes) - 1} numbers in (0, 1), one fewer than the modes",
                 speed_quantiles)
    qs = [chk.real("speed_quantiles", q, low=0.0, high=1.0, low_open=True, high_open=True) for q in speed_quantiles]
    if any(a <= b for a, b in zip(qs, qs[1:])):
        chk.fail("speed_quantiles", "strictly decreasing (the fastest tier first)", tuple(speed_quantiles))
    options = _route(modes, mode_options)
    need = {m: mode_memory_mb(model, m, input_shape=input_shape, batch_size=batch_size, **options[m]) for m in modes}
    memory = prof["memory_mb"].to_numpy()
    targets = speed_targets(prof["samples_per_s"].to_numpy(), qs)
    out = []
    for client, (k, mem) in enumerate(zip(targets.tolist(), memory.tolist())):
        fits = [j for j, m in enumerate(modes) if need[m] <= mem]
        if not fits:
            lightest = min(modes, key=need.get)
            chk.fail("profiles", f"a memory_mb that fits some mode for client {client}: the lightest of "
                     f"{list(modes)}, {lightest!r}, needs {need[lightest]:.4g} MB", mem)
        below = [j for j in fits if j >= k]
        out.append(modes[min(below)] if below else modes[max(fits)])
    return out


def check_modes(finetune, profiles, model, input_shape, batch_size: int = 16, **mode_options) -> list:
    """``finetune`` (one mode, or a list of one mode per client) checked against each client's
    ``memory_mb``; returns the list of modes. Errors name ``finetune`` and the client."""
    prof = _profiles(profiles)
    n = len(prof)
    if isinstance(finetune, str):
        names = [f"finetune={finetune!r}"] * n
        modes = [_mode_name("finetune", finetune)] * n
    elif isinstance(finetune, (list, tuple)):
        if len(finetune) != n:
            chk.fail("finetune", f"one mode per client ({n} modes)", list(finetune))
        modes = [_mode_name(f"finetune[{i}]", m) for i, m in enumerate(finetune)]
        names = [f"finetune[{i}]={m!r}" for i, m in enumerate(modes)]
    else:
        raise TypeError(f"finetune must be a mode name or a list of them (one per client), "
                        f"got {type(finetune).__name__}")
    chk.integer("batch_size", batch_size, low=1)
    options = _route(modes, mode_options)
    need = {m: mode_memory_mb(model, m, input_shape=input_shape, batch_size=batch_size, **options[m])
            for m in sorted(set(modes))}
    for client, (mode, mem, name) in enumerate(zip(modes, prof["memory_mb"].tolist(), names)):
        if need[mode] > mem:
            raise ValueError(f"{name} needs {need[mode]:.4g} MB (flu.finetune.cost), more than client {client}'s "
                             f"memory_mb {mem:g}: give it a lighter mode (flu.systems.assign_modes)")
    return modes

