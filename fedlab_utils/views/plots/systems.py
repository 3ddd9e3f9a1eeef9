"""Plots of system heterogeneity (notebook 07): each ``plot_*(df, *, ax=None, ...)`` returns its Axes.

They draw the tables of ``flu.lessons.systems`` (and ``History.timeline``) and compute nothing
beyond pivoting and grouping. Colours: one per phase (:data:`PHASE_COLORS`), per outcome
(:data:`OUTCOME_COLORS`) and per straggler policy (:data:`POLICY_COLORS`); any other label
(a compression, an availability setting) gets the next colour of a fixed palette in the order of
the table.

- :func:`plot_devices`: each client's speed against its upload bandwidth, by device tier.
- :func:`plot_round_cost`: what one round costs each client, download / compute / upload stacked.
- :func:`plot_timeline`: a Gantt chart of one round (phases per client; late, partial and dropped
  work hatched or faded; the deadline as a vertical line).
- :func:`plot_curve` and :func:`plot_accuracy_vs_time`: a per-round column against another
  (accuracy against virtual time, bytes, rounds), one line per label.
- :func:`plot_participation`: a clients x rounds map of outcomes.
- :func:`plot_energy`: energy per client, the part spent on lost work hatched.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..._core import checks as chk
from .base import _axes, _need

PHASE_COLORS = {"download": "#6baed6", "compute": "#3a7d44", "upload": "#f28e2b"}
OUTCOME_COLORS = {"completed": "#3a7d44", "partial": "#a6d96a", "late": "#f6b26b", "dropped": "#c0392b",
                  "idle": "#eeeeee"}
POLICY_COLORS = {"wait_all": "#4c72b0", "deadline": "#dd8452", "partial_work": "#55a868", "over_select": "#c44e52"}
OTHER_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
                "#ccb974", "#64b5cd")
TIER_COLORS = {"low": "#c0392b", "mid": "#e1a23a", "high": "#2e6f9e"}
# how a phase bar looks for each outcome: alpha, hatch
OUTCOME_STYLE = {"completed": (1.0, None), "partial": (1.0, "////"), "late": (0.35, "xxxx"), "dropped": (0.35, None)}
AXIS_LABELS = {"virtual_time": "virtual time (s)", "round": "round", "bytes_up": "bytes sent up (cumulative)",
               "bytes": "bytes up + down (cumulative)", "energy_j": "energy (J, cumulative)",
               "accuracy": "test accuracy", "round_time": "round time (s)",
               "clients_available": "clients available", "clients_completed": "clients completing"}


def palette(labels, hue: str | None = None) -> dict:
    """``{label: colour}``: :data:`POLICY_COLORS` for policies, else :data:`OTHER_COLORS` in order."""
    labels = list(dict.fromkeys(labels))
    if hue == "policy" or all(label in POLICY_COLORS for label in labels):
        return {label: POLICY_COLORS.get(label, OTHER_COLORS[k % len(OTHER_COLORS)]) for k, label in enumerate(labels)}
    return {label: OTHER_COLORS[k % len(OTHER_COLORS)] for k, label in enumerate(labels)}


def plot_devices(devices: pd.DataFrame, *, ax=None, x: str = "samples_per_s", y: str = "upload_mbps"):
    """Each client as a point: ``x`` against ``y`` (log axes), coloured by ``tier`` (if present),
    sized by ``memory_mb``, numbered by client. ``devices``: ``flu.lessons.systems.device_table``."""
    _need(devices, "devices", ["client", x, y, "memory_mb"])
    ax = _axes(ax, (5, 4))
    tiers = devices["tier"] if "tier" in devices.columns else pd.Series("mid", index=devices.index)
    mem = devices["memory_mb"].to_numpy(dtype=float)
    finite = np.isfinite(mem)
    size = np.full(len(mem), 40.0)
    if finite.any():
        size[finite] = 25 + 75 * mem[finite] / mem[finite].max()
    for tier in [t for t in ("low", "mid", "high") if t in set(tiers)] + sorted(set(tiers) - {"low", "mid", "high"}):
        sel = (tiers == tier).to_numpy()
        ax.scatter(devices.loc[sel, x], devices.loc[sel, y], s=size[sel], color=TIER_COLORS.get(tier, "#777777"),
                   alpha=0.85, edgecolor="white", linewidth=0.6, label=f"{tier} tier", zorder=3)
    for r in devices.itertuples():
        ax.annotate(str(r.client), (getattr(r, x), getattr(r, y)), xytext=(4, 3), textcoords="offset points",
                    fontsize=6.5, color="#444444")
    ax.set(xscale="log", yscale="log", xlabel={"samples_per_s": "training speed (samples / s)"}.get(x, x),
           ylabel={"upload_mbps": "upload bandwidth (Mbit / s)", "download_mbps": "download bandwidth (Mbit / s)"
                   }.get(y, y))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", title="marker size: memory", title_fontsize="x-small")
    return ax


def plot_round_cost(devices: pd.DataFrame, *, ax=None, sort: bool = True):
    """What one round costs each client: ``download_s``, ``compute_s`` and ``upload_s`` stacked
    horizontally (``flu.lessons.systems.device_table``), slowest at the top when ``sort``."""
    _need(devices, "devices", ["client", "download_s", "compute_s", "upload_s"])
    ax = _axes(ax, (5, 4))
    d = devices.assign(total=devices["download_s"] + devices["compute_s"] + devices["upload_s"])
    if sort:
        d = d.sort_values("total")
    y = np.arange(len(d))
    left = np.zeros(len(d))
    for phase in ("download", "compute", "upload"):
        w = d[f"{phase}_s"].to_numpy(dtype=float)
        ax.barh(y, w, left=left, height=0.75, color=PHASE_COLORS[phase], label=phase)
        left = left + w
    ax.set_yticks(y, [str(c) for c in d["client"]], fontsize=7)
    ax.set(xlabel="seconds for one round", ylabel="client")
    ax.legend(fontsize="small", loc="lower right")
    return ax


def plot_timeline(timeline: pd.DataFrame, round: int | None = None, *, deadline: float | None = None, ax=None,
                  legend: bool = True):
    """Gantt chart of one round of a ``History.timeline``: one row per selected client, its
    download, compute and upload as bars coloured by phase, from the round's start. Partial work is
    hatched ``////``, late work faded and hatched ``xxxx``, a dropped client's download faded with
    a red cross where it dropped. ``round``: None for the first round in the table; ``deadline``
    (seconds after the round's start) draws a vertical line."""
    _need(timeline, "timeline", ["round", "client", "phase", "start", "end", "outcome"])
    if timeline.empty:
        chk.fail("timeline", "a non-empty timeline (a History of a run with systems=)", "0 rows")
    rounds = sorted(timeline["round"].unique())
    round = int(rounds[0]) if round is None else round
    one = timeline[timeline["round"] == round]
    if one.empty:
        chk.fail("round", f"one of the rounds in the timeline ({rounds[0]}..{rounds[-1]})", round)
    ax = _axes(ax, (7, 4))
    t0 = float(one["start"].min())
    clients = sorted(one["client"].unique())
    row = {c: k for k, c in enumerate(clients)}
    for r in one.itertuples():
        alpha, hatch = OUTCOME_STYLE[r.outcome]
        width = float(r.end) - float(r.start)
        ax.barh(row[r.client], width, left=float(r.start) - t0, height=0.7, color=PHASE_COLORS[r.phase],
                alpha=alpha, hatch=hatch, edgecolor="#333333" if hatch else "none", linewidth=0.4 if hatch else 0)
        if r.outcome == "dropped":
            ax.plot(float(r.end) - t0, row[r.client], marker="x", color=OUTCOME_COLORS["dropped"], ms=8, mew=2)
    ax.set_yticks(range(len(clients)), [f"client {c}" for c in clients], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel=f"seconds since the start of round {round}")
    right = max(float(one["end"].max()) - t0, float(deadline) if deadline is not None else 0.0)
    ax.set_xlim(0, 1.04 * right if right > 0 else 1.0)
    handles = [Patch(color=c, label=p) for p, c in PHASE_COLORS.items()]
    present = set(one["outcome"])
    for outcome in ("partial", "late", "dropped"):
        if outcome in present:
            alpha, hatch = OUTCOME_STYLE[outcome]
            handles.append(Patch(facecolor="#bbbbbb", alpha=alpha if hatch is None else 1.0, hatch=hatch,
                                 edgecolor="#333333", label=outcome + (" (x)" if outcome == "dropped" else "")))
    if deadline is not None:
        ax.axvline(float(deadline), color="#c0392b", ls="--", lw=1.4)
        handles.append(Line2D([], [], color="#c0392b", ls="--", label=f"deadline {float(deadline):.3g} s"))
    if legend:
        ax.legend(handles=handles, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0)
    return ax


def plot_curve(df: pd.DataFrame, x: str, y: str = "accuracy", *, hue: str = "policy", ax=None,
               target: float | None = None, logx: bool = False, legend: bool = True, markers: bool = False):
    """``y`` against ``x``, one line per value of ``hue`` (rows in ``round`` order; NaN ``y``
    skipped); ``target`` draws a dotted horizontal line. Accuracy axes end at 1."""
    _need(df, "df", ["round", x, y, hue])
    ax = _axes(ax, (6, 4))
    colors = palette(df[hue], hue)
    for label, g in df.groupby(hue, sort=False):
        g = g.sort_values("round").dropna(subset=[y])
        ax.plot(g[x], g[y], color=colors[label], lw=1.6, label=str(label), marker="o" if markers else None, ms=2.5)
    if target is not None:
        ax.axhline(float(target), color="#555555", ls=":", lw=1.2, label=f"target {float(target):.3g}")
    if logx:
        ax.set_xscale("symlog" if (df[x] <= 0).any() else "log", **({"linthresh": _linthresh(df[x])}
                                                                     if (df[x] <= 0).any() else {}))
    if x == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=AXIS_LABELS.get(x, x), ylabel=AXIS_LABELS.get(y, y))
    if y == "accuracy":
        lo = float(df[y].min()) if df[y].notna().any() else 0.0
        ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize="small", loc="lower right")
    return ax


def _linthresh(values) -> float:
    pos = np.asarray(values, dtype=float)
    pos = pos[pos > 0]
    return float(pos.min()) if len(pos) else 1.0


def plot_accuracy_vs_time(df: pd.DataFrame, *, hue: str = "policy", x: str = "virtual_time", ax=None,
                          target: float | None = None, legend: bool = True):
    """Test accuracy against virtual time (or ``x``: ``round``, ``bytes_up``, ``bytes``,
    ``energy_j``) for a ``flu.lessons.systems.run_table``, one line per ``hue``."""
    return plot_curve(df, x, "accuracy", hue=hue, ax=ax, target=target, legend=legend)


def plot_participation(timeline: pd.DataFrame, *, num_clients: int | None = None, order=None, ax=None,
                       legend: bool = True, title: str | None = None):
    """Clients (rows) x rounds (columns), each cell coloured by the client's ``outcome`` in that
    round (:data:`OUTCOME_COLORS`); cells absent from the table are ``idle`` (not selected).
    ``timeline``: a ``History.timeline`` or a ``flu.lessons.systems.participation`` table of one
    run. ``num_clients``: rows 0..N-1 (default: up to the largest client seen); ``order``: the
    clients from top to bottom (e.g. sorted by speed)."""
    _need(timeline, "timeline", ["round", "client", "outcome"])
    bad = sorted(set(timeline["outcome"]) - set(OUTCOME_COLORS))
    if bad:
        chk.fail("timeline", f"outcomes among {list(OUTCOME_COLORS)}", bad)
    seen = timeline.groupby(["client", "round"])["outcome"].first().unstack("round")
    n = int(timeline["client"].max()) + 1 if num_clients is None else chk.integer("num_clients", num_clients, low=1)
    rounds = np.arange(1, int(timeline["round"].max()) + 1)
    clients = list(range(n)) if order is None else [int(c) for c in order]
    seen = seen.reindex(index=clients, columns=rounds).fillna("idle")
    codes = {o: k for k, o in enumerate(OUTCOME_COLORS)}
    grid = seen.apply(lambda col: col.map(codes)).to_numpy(dtype=float)
    ax = _axes(ax, (7, 4))
    cmap = ListedColormap(list(OUTCOME_COLORS.values()))
    norm = BoundaryNorm(np.arange(len(codes) + 1) - 0.5, cmap.N)
    ax.pcolormesh(np.arange(len(rounds) + 1) + 0.5, np.arange(len(clients) + 1) - 0.5, grid, cmap=cmap, norm=norm,
                  edgecolors="white", linewidth=0.3)
    ax.set_ylim(len(clients) - 0.5, -0.5)
    step = max(1, len(clients) // 20)
    ax.set_yticks(range(0, len(clients), step), [str(c) for c in clients[::step]], fontsize=6.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="round", ylabel="client")
    if title:
        ax.set_title(title, fontsize=9)
    if legend:
        present = [o for o in OUTCOME_COLORS if (grid == codes[o]).any()]
        ax.legend(handles=[Patch(color=OUTCOME_COLORS[o], label=o) for o in present], fontsize="x-small",
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return ax


def plot_energy(df: pd.DataFrame, *, hue: str = "policy", ax=None, legend: bool = True):
    """Energy per client (``flu.lessons.systems.energy_by_client``): one bar per client and
    ``hue``, side by side; the part spent on work that never reached the server (``wasted_j``:
    late or dropped) hatched on top."""
    _need(df, "df", ["client", "energy_j", hue])
    ax = _axes(ax, (8, 3.5))
    labels = list(dict.fromkeys(df[hue]))
    colors = palette(labels, hue)
    clients = sorted(df["client"].unique())
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        g = df[df[hue] == label].set_index("client").reindex(clients).fillna(0.0)
        x = np.arange(len(clients)) - 0.4 + width * (k + 0.5)
        total = g["energy_j"].to_numpy(dtype=float)
        wasted = g["wasted_j"].to_numpy(dtype=float) if "wasted_j" in g.columns else np.zeros(len(clients))
        ax.bar(x, total - wasted, width, color=colors[label], label=str(label))
        if wasted.any():
            ax.bar(x, wasted, width, bottom=total - wasted, color=colors[label], alpha=0.45, hatch="xxx",
                   edgecolor="#333333", linewidth=0.3)
    ax.set_xticks(np.arange(len(clients)), [str(c) for c in clients], fontsize=7)
    ax.set(xlabel="client", ylabel="energy over the run (J)")
    ax.grid(True, axis="y", alpha=0.3)
    if legend:
        handles = [Patch(color=colors[label], label=str(label)) for label in labels]
        if "wasted_j" in df.columns and (df["wasted_j"] > 0).any():
            handles.append(Patch(facecolor="#bbbbbb", hatch="xxx", edgecolor="#333333", label="lost (late / dropped)"))
        ax.legend(handles=handles, fontsize="x-small", ncol=len(handles), loc="lower left",
                  bbox_to_anchor=(0.0, 1.01), borderaxespad=0.0, frameon=False)
    ax.margins(x=0.01, y=0.06)
    return ax
