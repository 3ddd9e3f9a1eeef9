"""Per-client device and network profiles: one row per client, the numbers the virtual clock reads.

Columns and units (docs/systems.md has each preset's numbers and their sources):

==================  ===========================================================================
``client``          0 .. N-1
``samples_per_s``   training throughput of full fine-tuning, examples per second (> 0, inf allowed)
``memory_mb``       memory the client may spend on training, MB = 2**20 bytes (> 0, inf allowed)
``download_mbps``   download bandwidth, Mbit/s = 1e6 bit/s (> 0, inf allowed)
``upload_mbps``     upload bandwidth, Mbit/s (> 0, inf allowed)
``latency_s``       fixed cost of each transfer, seconds (>= 0, finite)
``dropout``         probability that a selected client drops out in a round, in [0, 1]
``watts``           power drawn while busy, W (>= 0, finite)
``energy_budget_j`` energy a client may spend over the whole run, J (> 0, inf allowed)
==================  ===========================================================================

Presets draw each client from its own seeded stream ``np_stream(seed, client, PROFILE)`` in a
fixed order (z_speed, z_net, u_dropout), so client i's profile does not depend on N and the same
seed gives the same DataFrame. Speeds and bandwidths are log-normal around the preset's medians,
as in FedScale's device model (Lai et al. 2022) and PAPAYA (Huba et al. 2022):

    samples_per_s = median_speed * exp(speed_spread * z_speed)
    download_mbps = median_down * exp(bandwidth_spread * z_net)    (one z_net: a slow link is
    upload_mbps   = median_up   * exp(bandwidth_spread * z_net)     slow both ways)

Memory and power come in three device tiers (low, mid, high), chosen by the speed draw's tercile
(z_speed below -0.4307, between, above +0.4307): faster devices carry more memory and draw more
power. The tier follows z_speed even when ``speed_spread`` is 0. ``dropout`` is
low + (high - low) * u_dropout over the preset's range.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd

from .._core import checks as chk
from .._core.random import PROFILE, np_stream, seed_value

COLUMNS = ("client", "samples_per_s", "memory_mb", "download_mbps", "upload_mbps", "latency_s", "dropout",
           "watts", "energy_budget_j")
INF = math.inf
_TERCILE = NormalDist().inv_cdf(2 / 3)  # 0.4307...: z beyond +-this splits N(0, 1) into thirds

# one phone's battery (4000 mAh at 3.85 V = 15.4 Wh) of which federated training may spend 10%
PHONE_ENERGY_J = 0.10 * 4.0 * 3.85 * 3600.0


@dataclass(frozen=True)
class Preset:
    """A preset's medians, spreads and tiers (the tiers are (low, mid, high) by speed tercile)."""

    samples_per_s: float
    speed_spread: float
    download_mbps: float
    upload_mbps: float
    bandwidth_spread: float
    latency_s: float
    memory_mb: tuple
    watts: tuple
    dropout: tuple          # (low, high): per-client dropout uniform in this range
    energy_budget_j: float


PRESETS = {
    # everyone infinitely fast: every time is zero
    "ideal": Preset(INF, 0.0, INF, INF, 0.0, 0.0, (INF,) * 3, (0.0,) * 3, (0.0, 0.0), INF),
    # the phones preset's median device on its median link, for everyone: the clock alone
    "uniform": Preset(75.0, 0.0, 50.0, 10.0, 0.0, 0.03, (1024.0,) * 3, (3.5,) * 3, (0.0, 0.0), INF),
    # cross-device: FedScale/PAPAYA speeds, Ookla mobile links, Bonawitz et al. drop-outs, a battery
    "phones": Preset(75.0, 0.6, 50.0, 10.0, 0.8, 0.03, (512.0, 1024.0, 2048.0), (2.5, 3.5, 5.0), (0.06, 0.10),
                     PHONE_ENERGY_J),
    # Jetson-class boxes on fixed broadband, mains powered (Nano / Xavier NX / AGX Orin tiers)
    "edge_mix": Preset(300.0, 1.0, 90.0, 40.0, 0.7, 0.02, (2048.0, 4096.0, 16384.0), (10.0, 15.0, 30.0),
                       (0.02, 0.02), INF),
    # data-centre GPUs (A10 / A100 / H100 tiers) on institutional links across regions
    "cross_silo": Preset(7500.0, 0.5, 1000.0, 1000.0, 0.5, 0.05, (24576.0, 40960.0, 81920.0),
                         (150.0, 400.0, 700.0), (0.0, 0.0), INF),
}


def _spread(name, value, default):
    if value is None:
        return default
    return chk.real(name, value, low=0.0)


def profiles(preset: str, num_clients: int, seed: int = 0, *, speed_spread: float | None = None,
             bandwidth_spread: float | None = None) -> pd.DataFrame:
    """One row per client of ``preset`` ("ideal", "uniform", "phones", "edge_mix", "cross_silo").

    ``speed_spread`` and ``bandwidth_spread`` are the sigma of log(samples_per_s) and of
    log(bandwidth) (None: the preset's own; 0: every client at the median). Same seed, same
    DataFrame; client i's row does not depend on ``num_clients``.
    """
    if not isinstance(preset, str) or preset not in PRESETS:
        chk.fail("preset", f"one of {sorted(PRESETS)}", preset)
    num_clients = chk.integer("num_clients", num_clients, low=1)
    seed = seed_value("seed", seed)
    p = PRESETS[preset]
    s_speed = _spread("speed_spread", speed_spread, p.speed_spread)
    s_net = _spread("bandwidth_spread", bandwidth_spread, p.bandwidth_spread)
    draws = np.empty((num_clients, 3))
    for i in range(num_clients):
        g = np_stream(seed, i, PROFILE)
        draws[i, :2] = g.standard_normal(2)
        draws[i, 2] = g.random()
    z_speed, z_net, u = draws.T
    tier = (z_speed > -_TERCILE).astype(int) + (z_speed > _TERCILE).astype(int)
    with np.errstate(invalid="ignore"):  # inf * exp(0 * z) stays inf
        speed = p.samples_per_s * np.exp(s_speed * z_speed)
        down = p.download_mbps * np.exp(s_net * z_net)
        up = p.upload_mbps * np.exp(s_net * z_net)
    lo, hi = p.dropout
    return pd.DataFrame({
        "client": np.arange(num_clients, dtype=np.int64),
        "samples_per_s": speed,
        "memory_mb": np.asarray(p.memory_mb, dtype=np.float64)[tier],
        "download_mbps": down,
        "upload_mbps": up,
        "latency_s": np.full(num_clients, p.latency_s),
        "dropout": lo + (hi - lo) * u,
        "watts": np.asarray(p.watts, dtype=np.float64)[tier],
        "energy_budget_j": np.full(num_clients, p.energy_budget_j),
    }, columns=list(COLUMNS))


# column -> (constraint text, test of a valid value, inf allowed)
_RULES = {
    "samples_per_s": ("> 0", lambda v: v > 0, True),
    "memory_mb": ("> 0", lambda v: v > 0, True),
    "download_mbps": ("> 0", lambda v: v > 0, True),
    "upload_mbps": ("> 0", lambda v: v > 0, True),
    "latency_s": (">= 0 and finite", lambda v: v >= 0, False),
    "dropout": ("in [0, 1]", lambda v: 0 <= v <= 1, False),
    "watts": (">= 0 and finite", lambda v: v >= 0, False),
    "energy_budget_j": ("> 0", lambda v: v > 0, True),
}


def _bad(column, constraint, value, client):
    raise ValueError(f"profiles[{column!r}] must be {constraint}, got {value!r} for client {client}")


def check_profiles(df, num_clients: int) -> pd.DataFrame:
    """``df`` checked as the profiles of ``num_clients`` clients; returns a clean copy.

    The copy has the columns of :data:`COLUMNS` first (``client`` int64, the others float64;
    any extra columns kept after them), rows sorted by client. Each failure is a ValueError
    naming the column and the client, e.g. "profiles['samples_per_s'] must be > 0, got -1.0
    for client 3".
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"profiles must be a pandas DataFrame (flu.systems.profiles(...)), got {type(df).__name__}")
    num_clients = chk.integer("num_clients", num_clients, low=1)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"profiles must have the columns {list(COLUMNS)}, got {list(df.columns)} (missing {missing})")
    if len(df) != num_clients:
        raise ValueError(f"profiles must have one row per client ({num_clients} rows), got {len(df)} rows")
    ids = df["client"].to_numpy()
    if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in ids.tolist()) \
            or sorted(int(c) for c in ids) != list(range(num_clients)):
        chk.fail("profiles['client']", f"the client ids 0..{num_clients - 1}, each once", ids.tolist())
    out = df.sort_values("client", kind="stable").reset_index(drop=True)
    out = out[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]].copy()
    out["client"] = out["client"].astype(np.int64)
    for column, (constraint, ok, inf_ok) in _RULES.items():
        values = out[column].tolist()
        for client, v in zip(out["client"].tolist(), values):
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                _bad(column, "a number", v, client)
            v = float(v)
            if math.isnan(v) or (math.isinf(v) and not inf_ok) or not ok(v):
                _bad(column, constraint, v, client)
        out[column] = out[column].astype(np.float64)
    return out
