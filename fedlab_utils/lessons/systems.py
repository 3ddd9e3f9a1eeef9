"""System heterogeneity on the virtual clock (notebook 07): devices, straggler policies,
availability, compression. Returns DataFrames (and the Histories they come from); draws nothing.

Every run is ``flu.run(model, fed, systems=flu.systems.Simulation(...), ...)`` with the
simulation's seed equal to the run's ``seed`` (docs/systems.md has the clock's formulas):

    download_i = latency_i + 8 bytes_down / (1e6 download_mbps_i)
    compute_i  = tau b_i cost / samples_per_s_i          b_i = min(batch_size, n_i)
    upload_i   = latency_i + 8 bytes_up_i / (1e6 upload_mbps_i)

- :func:`device_table`: each client's profile with what one round would cost it (the formulas
  above for a given model), before anything trains.
- :func:`simulate` (one run), :func:`one_round` (a short run for a Gantt chart),
  :func:`policy_runs`, :func:`availability_runs`, :func:`compression_runs`: dicts
  ``{label: History}``.
- :func:`run_table`: those runs as one table, one row per (label, round), with the virtual
  clock and the cumulative costs (:data:`TABLE_COLUMNS`); :func:`compare_policies`,
  :func:`availability_sweep` and :func:`compression_sweep` run and tabulate in one call.
- :func:`time_to_accuracy`: per run, the virtual seconds, rounds, bytes and energy to a target
  accuracy (``inf`` when never reached).
- :func:`participation` (who did what in each round) and :func:`energy_by_client`.
- :func:`scenario`: the interactive panel's one computation.

Straggler policies: Bonawitz et al. (2019) over-select and drop the last; Nishio and Yonetani
(2019, FedCS) set a deadline; Li et al. (2020, FedProx) keep the partial work of slow clients.
Compression: Alistarh et al. (2017, QSGD), Stich et al. (2018, top-k with memory).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._core import checks as chk
from ..engine.history import History
from ..engine.runner import run
from ..systems import clock
from ..systems.compression import Compression
from ..systems.dynamics import Availability, Bernoulli, Churn, MarkovOnOff
from ..systems.profiles import check_profiles, profiles as preset_profiles
from ..systems.simulation import Simulation
from .practice import federation

__all__ = ["POLICIES", "TABLE_COLUMNS", "Scenario", "availability_runs", "availability_sweep", "compare_policies",
           "compression_runs", "compression_sweep", "default_availability", "default_compressions", "device_table",
           "energy_by_client", "federation", "model_bytes", "one_round", "participation", "policy_runs",
           "run_table", "scenario", "simulate", "slow_links", "time_to_accuracy"]

POLICIES = clock.POLICIES
OUTCOMES = (*clock.OUTCOMES, "idle")
TABLE_COLUMNS = ["round", "virtual_time", "round_time", "accuracy", "bytes_up", "bytes", "energy_j",
                 "clients_available", "clients_selected", "clients_completed", "clients_dropped", "clients_late"]
# the training every run shares unless told otherwise (digits, MLP 64-32-10, 10 of 20 clients)
TRAIN = dict(num_rounds=30, local_steps=10, client_lr=0.05, batch_size=16, clients_per_round=10)


def model_bytes(model) -> int:
    """Bytes of all parameters of ``model`` (what a full download costs)."""
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


def device_table(profiles: pd.DataFrame, model, *, local_steps: int = 10, batch_size: int | None = 16,
                 sizes=None) -> pd.DataFrame:
    """Each client's profile and what one round of full fine-tuning of ``model`` would cost it.

    Adds ``tier`` (low / mid / high by ``memory_mb``), ``download_s``, ``compute_s``,
    ``upload_s`` (the clock's formulas with ``bytes = model_bytes(model)`` both ways,
    ``local_steps`` steps of b_i = min(batch_size, n_i) examples; n_i from ``sizes``, else
    ``batch_size``), ``round_s`` (their sum) and ``round_j`` (watts x round_s).
    """
    prof = check_profiles(profiles, len(profiles))
    steps = chk.integer("local_steps", local_steps, low=1)
    n = len(prof)
    if sizes is None:
        if batch_size is None:
            chk.fail("sizes", "the clients' sample counts when batch_size is None (full batch)", None)
        batch = np.full(n, float(batch_size))
    else:
        sizes = np.asarray(sizes, dtype=np.float64)
        if sizes.shape != (n,):
            chk.fail("sizes", f"one sample count per client ({n})", sizes.tolist())
        batch = sizes if batch_size is None else np.minimum(float(chk.integer("batch_size", batch_size, low=1)), sizes)
    nbytes = model_bytes(model)
    out = prof.copy()
    levels = np.sort(prof["memory_mb"].unique())
    names = {1: ["mid"], 2: ["low", "high"], 3: ["low", "mid", "high"]}.get(len(levels))
    tier = np.searchsorted(levels, prof["memory_mb"].to_numpy())
    out["tier"] = [names[t] for t in tier] if names else [f"tier {t}" for t in tier]
    out["download_s"] = clock.transfer_seconds(prof["latency_s"], nbytes, prof["download_mbps"])
    out["compute_s"] = clock.compute_seconds(steps, batch, 1.0, prof["samples_per_s"])
    out["upload_s"] = clock.transfer_seconds(prof["latency_s"], nbytes, prof["upload_mbps"])
    out["round_s"] = out["download_s"] + out["compute_s"] + out["upload_s"]
    out["round_j"] = out["watts"] * out["round_s"]
    return out


def slow_links(profiles: pd.DataFrame, factor: float) -> pd.DataFrame:
    """``profiles`` with both bandwidths divided by ``factor``. Transfer time is bytes / bandwidth,
    so this is the clock of a model ``factor`` times larger on the same links (compute aside)."""
    factor = chk.real("factor", factor, low=0.0, low_open=True)
    prof = check_profiles(profiles, len(profiles))
    return prof.assign(download_mbps=prof["download_mbps"] / factor, upload_mbps=prof["upload_mbps"] / factor)


# ============================================================================ runs

def simulate(fed, model, profiles: pd.DataFrame, *, policy: str = "wait_all", deadline: float | None = None,
             over_select: float = 1.5, availability="always", churn=None, compression=None, seed: int = 0,
             **train) -> History:
    """One ``flu.run`` on the virtual clock: ``Simulation(profiles, availability, churn, policy,
    deadline, over_select, seed=seed)`` with ``train`` (:data:`TRAIN` unless given: 30 rounds,
    10 local steps of batch 16 at lr 0.05, 10 clients per round). ``deadline`` is used by
    ``"deadline"`` and ``"partial_work"`` only, ``over_select`` by ``"over_select"`` only."""
    chk.option("policy", policy, POLICIES)
    sim = Simulation(profiles=profiles, availability=availability, churn=churn, policy=policy,
                     deadline=deadline if policy in ("deadline", "partial_work") else None,
                     over_select=over_select if policy == "over_select" else 1.0, seed=seed)
    args = {**TRAIN, **train}
    return run(model, fed, systems=sim, compression=compression, progress=False, seed=seed, **args)


def one_round(fed, model, profiles: pd.DataFrame, *, num_rounds: int = 1, **kwargs) -> History:
    """A short run (``num_rounds``, default 1) of :func:`simulate`, for a Gantt chart of its timeline."""
    return simulate(fed, model, profiles, num_rounds=num_rounds, **kwargs)


def policy_runs(fed, model, profiles: pd.DataFrame, policies=POLICIES, *, deadline: float | None = None,
                over_select: float = 1.5, **kwargs) -> dict:
    """``{policy: History}``: :func:`simulate` for each straggler policy, everything else equal."""
    policies = [policies] if isinstance(policies, str) else list(policies)
    if not policies:
        chk.fail("policies", f"a non-empty list among {list(POLICIES)}", policies)
    for p in policies:
        chk.option("policies", p, POLICIES)
    return {p: simulate(fed, model, profiles, policy=p, deadline=deadline, over_select=over_select, **kwargs)
            for p in policies}


def default_availability(num_clients: int, num_rounds: int) -> dict:
    """The availability settings of the notebook: ``{label: (availability, churn)}``:

    - ``always``;
    - ``Bernoulli p=0.5``: each client independently every round;
    - ``Markov on/off``: ``MarkovOnOff(p_on=0.1, p_off=0.1)``, the same long-run 50 % but in
      sessions of 10 rounds on average;
    - ``churn``: everyone available, but the upper half of the clients joins at round
      ``num_rounds // 2`` and the lowest quarter leaves then.
    """
    n = chk.integer("num_clients", num_clients, low=2)
    r = chk.integer("num_rounds", num_rounds, low=2)
    half = r // 2
    join = [0] * (n // 2) + [half] * (n - n // 2)
    leave = [half if i < n // 4 else -1 for i in range(n)]
    return {"always": ("always", None), "Bernoulli p=0.5": (Bernoulli(0.5), None),
            "Markov on/off": (MarkovOnOff(p_on=0.1, p_off=0.1), None), "churn": ("always", Churn(join, leave))}


def availability_runs(fed, model, profiles: pd.DataFrame, settings: dict | None = None, **kwargs) -> dict:
    """``{label: History}`` for each ``{label: (availability, churn)}`` of ``settings``
    (:func:`default_availability` when None); ``kwargs`` go to :func:`simulate`."""
    if settings is None:
        settings = default_availability(len(profiles), kwargs.get("num_rounds", TRAIN["num_rounds"]))
    if not isinstance(settings, dict) or not settings:
        chk.fail("settings", "a non-empty dict {label: (availability, churn)}", settings)
    out = {}
    for label, value in settings.items():
        if not (isinstance(value, tuple) and len(value) == 2):
            chk.fail(f"settings[{label!r}]", "a pair (availability, churn)", value)
        av, churn = value
        if not (av == "always" or isinstance(av, Availability)):
            chk.fail(f"settings[{label!r}]", "an availability model or 'always' first", av)
        out[label] = simulate(fed, model, profiles, availability=av, churn=churn, **kwargs)
    return out


def default_compressions() -> dict:
    """``{label: Compression}``: none, float16, QSGD with s = 2 and 16 levels, top-k 10 % and 1 %
    (with error feedback)."""
    return {"none": Compression("none"), "float16": Compression("float16"),
            "QSGD s=16": Compression("qsgd", levels=16), "QSGD s=2": Compression("qsgd", levels=2),
            "top-k 10%": Compression("topk", fraction=0.1), "top-k 1%": Compression("topk", fraction=0.01)}


def compression_runs(fed, model, profiles: pd.DataFrame, compressions: dict | None = None, **kwargs) -> dict:
    """``{label: History}`` for each ``{label: Compression}`` (:func:`default_compressions` when None)."""
    compressions = default_compressions() if compressions is None else compressions
    if not isinstance(compressions, dict) or not compressions:
        chk.fail("compressions", "a non-empty dict {label: flu.systems.Compression}", compressions)
    for label, c in compressions.items():
        if not isinstance(c, Compression):
            raise TypeError(f"compressions[{label!r}] must be a flu.systems.Compression, got {type(c).__name__}")
    return {label: simulate(fed, model, profiles, compression=c, **kwargs) for label, c in compressions.items()}


# ============================================================================ tables

def _check_runs(runs) -> dict:
    if not isinstance(runs, dict) or not runs:
        chk.fail("runs", "a non-empty dict {label: History}", runs)
    for label, h in runs.items():
        if not isinstance(h, History) or h.timeline is None:
            chk.fail(f"runs[{label!r}]", "a History of a run with systems= (it has a timeline)", type(h).__name__)
    return runs


def _accuracy(hist: History) -> pd.Series:
    m = hist.metrics
    sel = m[m["client"].isna() & (m["model"] == "global") & (m["split"] == "test") & (m["metric"] == "accuracy")]
    return sel.set_index("round")["value"]


def run_table(runs: dict, by: str = "policy") -> pd.DataFrame:
    """One row per (label, round) of ``{label: History}``: column ``by`` (the label), then
    :data:`TABLE_COLUMNS`. Round 0 is the start (time, bytes and energy 0). ``virtual_time``,
    ``bytes_up``, ``bytes`` (up + down) and ``energy_j`` are cumulative to the end of the round;
    ``round_time`` and the ``clients_*`` counts are per round; ``accuracy`` is the pooled test
    accuracy of the global model (NaN in rounds not evaluated)."""
    _check_runs(runs)
    frames = []
    for label, h in runs.items():
        r = h.rounds
        t = pd.DataFrame({
            "round": np.concatenate([[0], r["round"].to_numpy()]),
            "virtual_time": np.concatenate([[0.0], r["virtual_time"].to_numpy()]),
            "round_time": np.concatenate([[0.0], r["round_time"].to_numpy()]),
            "bytes_up": np.concatenate([[0], np.cumsum(r["bytes_up"].to_numpy())]),
            "bytes": np.concatenate([[0], np.cumsum((r["bytes_up"] + r["bytes_down"]).to_numpy())]),
            "energy_j": np.concatenate([[0.0], np.cumsum(r["energy_j"].to_numpy())]),
        })
        for col in ("clients_available", "clients_selected", "clients_completed", "clients_dropped", "clients_late"):
            t[col] = np.concatenate([[0], r[col].to_numpy()])
        t["accuracy"] = t["round"].map(_accuracy(h)).astype("float64")
        t.insert(0, by, label)
        frames.append(t[[by, *TABLE_COLUMNS]])
    return pd.concat(frames, ignore_index=True)


def compare_policies(fed, model, profiles: pd.DataFrame, policies=POLICIES, *, deadline: float | None = None,
                     over_select: float = 1.5, **kwargs) -> pd.DataFrame:
    """:func:`run_table` (``by="policy"``) of :func:`policy_runs`."""
    return run_table(policy_runs(fed, model, profiles, policies, deadline=deadline, over_select=over_select,
                                 **kwargs), "policy")


def availability_sweep(fed, model, profiles: pd.DataFrame, settings: dict | None = None, **kwargs) -> pd.DataFrame:
    """:func:`run_table` (``by="availability"``) of :func:`availability_runs`."""
    return run_table(availability_runs(fed, model, profiles, settings, **kwargs), "availability")


def compression_sweep(fed, model, profiles: pd.DataFrame, compressions: dict | None = None, **kwargs) -> pd.DataFrame:
    """:func:`run_table` (``by="compression"``) of :func:`compression_runs`."""
    return run_table(compression_runs(fed, model, profiles, compressions, **kwargs), "compression")


def time_to_accuracy(table: pd.DataFrame, target: float, *, by: str = "policy") -> pd.DataFrame:
    """Per value of ``by``: the first round whose ``accuracy`` is >= ``target``, and the
    ``virtual_time``, ``bytes`` and ``energy_j`` spent by then (cumulative columns of
    :func:`run_table`). Columns: ``by, target, reached, rounds, virtual_time, bytes, energy_j,
    final_accuracy, total_time`` (what the whole run took). A run that never reaches the target
    has ``reached`` False and ``inf`` in ``rounds``, ``virtual_time``, ``bytes`` and ``energy_j``.
    Round 0 counts."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    need = [by, "round", "accuracy", "virtual_time", "bytes", "energy_j"]
    if any(c not in table.columns for c in need):
        chk.fail("table", f"a table with columns {need} (flu.lessons.systems.run_table)", list(table.columns))
    target = chk.real("target", target)
    rows = []
    for label, g in table.groupby(by, sort=False):
        g = g.sort_values("round")
        hit = g[g["accuracy"] >= target]
        row = {by: label, "target": target, "reached": not hit.empty}
        first = hit.iloc[0] if not hit.empty else None
        for col, src in (("rounds", "round"), ("virtual_time", "virtual_time"), ("bytes", "bytes"),
                         ("energy_j", "energy_j")):
            row[col] = float(first[src]) if first is not None else math.inf
        acc = g["accuracy"].dropna()
        row["final_accuracy"] = float(acc.iloc[-1]) if len(acc) else math.nan
        row["total_time"] = float(g["virtual_time"].iloc[-1])
        rows.append(row)
    return pd.DataFrame(rows, columns=[by, "target", "reached", "rounds", "virtual_time", "bytes", "energy_j",
                                       "final_accuracy", "total_time"])


def participation(runs: dict, num_clients: int, *, by: str = "policy") -> pd.DataFrame:
    """Who did what: one row per (label, round, client) for rounds 1..R and clients 0..N-1, with
    ``outcome`` completed / partial / late / dropped from the timeline, or ``idle`` (not selected:
    unavailable, or not drawn among the available)."""
    _check_runs(runs)
    n = chk.integer("num_clients", num_clients, low=1)
    frames = []
    for label, h in runs.items():
        R = int(h.rounds["round"].max())
        grid = pd.MultiIndex.from_product([range(1, R + 1), range(n)], names=["round", "client"])
        seen = h.timeline.groupby(["round", "client"])["outcome"].first()
        if len(seen) and int(seen.index.get_level_values("client").max()) >= n:
            chk.fail("num_clients", "at least the number of clients in the runs", n)
        out = seen.reindex(grid, fill_value="idle").reset_index()
        out.insert(0, by, label)
        frames.append(out)
    return pd.concat(frames, ignore_index=True)


def energy_by_client(runs: dict, profiles: pd.DataFrame, *, by: str = "policy") -> pd.DataFrame:
    """Per (label, client): ``busy_s`` (seconds in download, compute and upload over the run, as
    cut by drop-outs and deadlines), ``energy_j`` = watts x busy_s, ``wasted_j`` (the part spent
    in rounds whose update never reached the server: late or dropped), ``rounds_selected`` and
    ``rounds_completed`` (completed or partial). Clients never selected have zeros."""
    _check_runs(runs)
    prof = check_profiles(profiles, len(profiles))
    watts = prof.set_index("client")["watts"]
    frames = []
    for label, h in runs.items():
        tl = h.timeline.assign(busy=h.timeline["end"] - h.timeline["start"])
        per = tl.groupby(["round", "client"]).agg(busy=("busy", "sum"), outcome=("outcome", "first")).reset_index()
        per["useful"] = per["outcome"].isin(("completed", "partial"))
        g = per.groupby("client")
        out = pd.DataFrame({"client": prof["client"].to_numpy()}).set_index("client")
        out["busy_s"] = g["busy"].sum()
        out["wasted_s"] = per[~per["useful"]].groupby("client")["busy"].sum()
        out["rounds_selected"] = g.size()
        out["rounds_completed"] = g["useful"].sum()
        out = out.fillna(0)
        out["energy_j"] = watts * out["busy_s"]
        out["wasted_j"] = watts * out.pop("wasted_s")
        out = out.reset_index()
        out.insert(0, by, label)
        out["rounds_selected"] = out["rounds_selected"].astype("int64")
        out["rounds_completed"] = out["rounds_completed"].astype("int64")
        frames.append(out[[by, "client", "busy_s", "energy_j", "wasted_j", "rounds_selected", "rounds_completed"]])
    return pd.concat(frames, ignore_index=True)


# ============================================================================ the panel

@dataclass(frozen=True)
class Scenario:
    """What :func:`scenario` returns: the profiles, ``{policy: History}`` (the chosen policy and
    ``wait_all``) and their :func:`run_table`."""

    profiles: pd.DataFrame
    runs: dict
    table: pd.DataFrame


def scenario(fed, model, *, preset: str = "phones", speed_spread: float | None = None,
             bandwidth_spread: float | None = None, link_factor: float = 1.0, dropout: float | None = None,
             availability: float = 1.0, policy: str = "deadline", deadline: float | None = None,
             over_select: float = 1.5, profile_seed: int = 0, seed: int = 0, **train) -> Scenario:
    """Profiles of ``preset`` for ``fed``'s clients (``speed_spread`` and ``bandwidth_spread`` as
    in ``flu.systems.profiles``, bandwidths divided by ``link_factor``, every client's
    ``dropout`` set to the value given, None: the preset's), available with probability
    ``availability`` per round (``Bernoulli``; 1: always), run under ``policy`` and under
    ``wait_all`` for reference (one run when ``policy`` is ``wait_all``)."""
    chk.option("policy", policy, POLICIES)
    prof = preset_profiles(preset, fed.num_clients, seed=profile_seed, speed_spread=speed_spread,
                           bandwidth_spread=bandwidth_spread)
    if link_factor != 1.0:
        prof = slow_links(prof, link_factor)
    if dropout is not None:
        prof = prof.assign(dropout=chk.real("dropout", dropout, low=0.0, high=1.0))
    p = chk.real("availability", availability, low=0.0, high=1.0, low_open=True)
    av = "always" if p == 1.0 else Bernoulli(p)
    policies = ["wait_all"] if policy == "wait_all" else ["wait_all", policy]
    runs = {q: simulate(fed, model, prof, policy=q, deadline=deadline, over_select=over_select, availability=av,
                        seed=seed, **train) for q in policies}
    return Scenario(prof, runs, run_table(runs, "policy"))
