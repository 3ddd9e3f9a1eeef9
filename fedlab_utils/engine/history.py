"""``History``: the tables a federated run produces, and their save/load.

- ``metrics``: long form ``round, client, split, model, metric, value`` (client ``Int64``,
  ``<NA>`` for the value pooled over all clients; round 0 is before training).
- ``rounds``: one row per round of deterministic quantities (participation, bytes, trainable
  parameters, virtual time, diagnostics).
- ``timing``: measured wall-clock seconds (never part of a replay comparison).
- ``config``: every argument of the run, JSON-able. ``params``: final global parameters.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

METRIC_COLUMNS = ["round", "client", "split", "model", "metric", "value"]


def metrics_frame(rows: dict) -> pd.DataFrame:
    """The pinned ``metrics`` table from column lists (client None/-1 -> <NA>)."""
    df = pd.DataFrame({c: rows.get(c, []) for c in METRIC_COLUMNS})
    df["round"] = df["round"].astype("int64")
    client = pd.array([None if (pd.isna(c) or c < 0) else int(c) for c in df["client"]], dtype="Int64")
    df["client"] = client
    df["split"] = df["split"].astype(str)
    df["model"] = df["model"].astype(str)
    df["metric"] = df["metric"].astype(str)
    df["value"] = df["value"].astype("float64")
    return df


@dataclass
class History:
    metrics: pd.DataFrame
    rounds: pd.DataFrame
    timing: pd.DataFrame
    config: dict
    params: dict
    model: nn.Module | None = None
    trajectory: list | None = None
    client_state: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ views
    def final(self, metric: str = "accuracy", split: str = "test", model: str = "global") -> float:
        """The pooled ``metric`` at the last evaluated round."""
        m = self.metrics
        sel = m[(m.metric == metric) & (m.split == split) & (m.model == model) & m.client.isna()]
        if sel.empty:
            raise ValueError(f"metric must be one recorded for split={split!r}, model={model!r}, got {metric!r}")
        return float(sel.loc[sel["round"].idxmax(), "value"])

    def curve(self, metric: str = "accuracy", split: str = "test", model: str = "global") -> pd.Series:
        """Pooled ``metric`` per round as a Series indexed by round."""
        m = self.metrics
        sel = m[(m.metric == metric) & (m.split == split) & (m.model == model) & m.client.isna()]
        return sel.set_index("round")["value"]

    def to_frame(self, keys=None) -> pd.DataFrame:
        """``metrics`` joined with the run's config (scalars only), for sweeps over runs."""
        df = self.metrics.copy()
        for k, v in self.config.items():
            if (keys is None or k in keys) and isinstance(v, (int, float, str, bool, type(None))):
                df[k] = v
        return df

    def __repr__(self):
        rounds = int(self.rounds["round"].max()) if len(self.rounds) else 0
        return f"History({self.config.get('algorithm')!r}, rounds={rounds}, metrics={len(self.metrics)} rows)"

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """One file, loadable with ``torch.load(path, weights_only=True)``: tables as column lists."""
        def table(df):
            return {c: [None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in df[c]]
                    for c in df.columns}
        torch.save({
            "format": "fedlab_utils.History/1",
            "metrics": table(self.metrics),
            "rounds": table(self.rounds),
            "timing": table(self.timing),
            "config": self.config,
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "trajectory": self.trajectory,
            "client_state": self.client_state,
        }, path)

    @classmethod
    def load(cls, path, model: nn.Module | None = None) -> "History":
        """Read :meth:`save`'s file; pass ``model`` (same architecture) to get ``.model`` back."""
        blob = torch.load(path, weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != "fedlab_utils.History/1":
            raise ValueError(f"path must be a file written by History.save, got {str(path)!r}")
        metrics = metrics_frame(blob["metrics"])
        rounds = pd.DataFrame(blob["rounds"])
        timing = pd.DataFrame(blob["timing"])
        loaded = None
        if model is not None:
            loaded = copy.deepcopy(model)
            loaded.load_state_dict({**loaded.state_dict(), **blob["params"]})
        return cls(metrics, rounds, timing, blob["config"], blob["params"], loaded, blob["trajectory"],
                   blob["client_state"])
