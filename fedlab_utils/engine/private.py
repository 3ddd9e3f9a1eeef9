"""Privacy inside a round: DP-FedAvg (``privacy=flu.privacy.DPFedAvg(...)``) and secure
aggregation (``privacy=flu.privacy.SecureAggregation()``).

The selected clients' updates are clipped and summed with the run's weights, Gaussian noise of
std ``noise_multiplier * clip * max_i w_i`` is added (``flu.privacy.DPFedAvg``, McMahan et al.
2018), and the server rule receives the noised sum as the update of one virtual client of
weight 1, so every averaging server rule (FedAvg, FedAvgM, FedAdam, ...) applies unchanged. With
Poisson sampling at rate q the weights are p_i / q and max_i w_i = max_i p_i / q over all N
clients; a round that selects nobody still adds the noise (an empty round must look like any
other). Noise comes from the stream (seed, round, PRIVACY). The adaptive clip (Andrew et al.
2021) and the accountant's epsilon are recorded per round (``rounds`` columns ``clip`` and
``epsilon``) and the clip is saved with the History, so a resumed run goes on exactly.
"""
from __future__ import annotations

import math

import torch

from .._core import checks as chk
from .._core.random import PRIVACY, mix, stream


def check(setup, upload_extra: int) -> None:
    """The algorithms a private aggregation can wrap: a server rule on the weighted sum of the
    updates, with no per-client state and nothing else uploaded (``upload_extra`` bytes per client)."""
    cfg = setup.cfg
    x = {k: setup.params[k] for k in setup.plan.server}
    if cfg.algorithm.init_client(x, cfg.options) or cfg.algorithm.has_personal or upload_extra:
        chk.fail("privacy", f"None with algorithm {cfg.algorithm.name!r}: the private aggregation acts on one "
                 "weighted sum of model updates, and this algorithm also keeps or uploads per-client state",
                 type(cfg.privacy).__name__)


def build(setup):
    """The run's privacy mechanism (:class:`Private`, :class:`Secure` or :class:`SampleLevel`)."""
    kind = type(setup.cfg.privacy).__name__
    return {"SecureAggregation": Secure, "DPSGD": SampleLevel}.get(kind, Private)(setup)


class SampleLevel:
    """Sample-level DP-SGD (``flu.privacy.DPSGD``): the clients' local steps are private
    (engine.local, ``Trainer._dp_sgd``); aggregation is plain. Here: each client's count of private
    steps, and the largest per-client epsilon (client i: Poisson rate q_i = min(1, b / n_i))."""

    replaces_sum = False

    def __init__(self, setup):
        self.dp = setup.cfg.privacy
        n = setup.sizes.to(torch.float64)
        self.q = torch.clamp(setup.cfg.batch_size / n, max=1.0)
        self.N = len(n)

    def start(self) -> dict:
        return {"steps": torch.zeros(self.N, dtype=torch.long)}

    def aggregate(self, delta, weights, state, rnd, sel, steps):
        done = state["steps"].clone()
        done[sel] += steps
        return delta, {"steps": done}, {}

    def row(self, rnd: int, before: dict, after: dict) -> dict:
        """The largest epsilon over the clients after this round (from the steps after it)."""
        pairs = {(float(q), int(s)) for q, s in zip(self.q.tolist(), after["steps"].tolist()) if s}
        return {"epsilon": max((self.dp.epsilon(q, s) for q, s in pairs), default=0.0)}


class Secure:
    """Secure aggregation (Bonawitz et al. 2017, ``flu.privacy.secure_sum``): the weighted sum of a
    round's updates computed from masked uploads; the clip and epsilon of DP do not apply."""

    replaces_sum = True

    def __init__(self, setup):
        self.record, self.seed, self.stays = setup.cfg.privacy, setup.cfg.seed, setup.stays

    def start(self) -> dict:
        return {}

    def aggregate(self, delta: dict, weights: torch.Tensor, state: dict, rnd: int, sel=None, steps=None):
        """``(summed, state, extra)``: sum_i w_i delta_i through the masking protocol as one virtual
        client's update (1, ...), or None when fewer than two clients can take part."""
        from ..privacy.secure_agg import secure_sum
        K = len(weights)
        if K < 2:
            return None, state, {"secure_messages": 0, "secure_bytes": 0}
        travel = [k for k in delta if k not in self.stays]
        flat = [torch.cat([(weights[i].to(delta[k].dtype) * delta[k][i]).reshape(-1).double() for k in travel])
                for i in range(K)]
        t = None if self.record.threshold is None else min(self.record.threshold, K)
        total, transcript = secure_sum(flat, seed=mix(self.record.seed, rnd), threshold=t)
        out, i = {}, 0
        for k, v in delta.items():
            if k in self.stays:
                out[k] = torch.zeros(1, *v.shape[1:], dtype=v.dtype)
                continue
            n = v[0].numel()
            out[k] = total[i:i + n].reshape(1, *v.shape[1:]).to(v.dtype)
            i += n
        return out, state, {"secure_messages": int(transcript["messages"]), "secure_bytes": int(transcript["bytes"])}

    def row(self, rnd: int, before: dict, after: dict) -> dict:
        return {}


class Private:
    """A run's DP-FedAvg: sampling rate q, the largest weight, and the per-round steps."""

    replaces_sum = True

    def __init__(self, setup):
        cfg = setup.cfg
        N = len(setup.sizes)
        self.dp, self.seed = cfg.privacy, cfg.seed
        partial = cfg.clients_per_round is not None and cfg.clients_per_round < N
        self.q = cfg.clients_per_round / N if partial else 1.0
        self.max_weight = float(setup.p.max()) / self.q
        self.expected_clients = max(1, round(self.q * N))
        self.stays = setup.stays

    def start(self) -> dict:
        return {"clip": float(self.dp.clip)}

    def aggregate(self, delta: dict, weights: torch.Tensor, state: dict, rnd: int, sel=None, steps=None):
        """``(noised, state, extra)``: the clipped weighted sum plus noise, as one virtual client's
        stacked update (1, ...), and the clip for the next round."""
        clip = state["clip"]
        travel = {k: v for k, v in delta.items() if k not in self.stays}
        g = stream(self.seed, rnd, PRIVACY) if self.dp.noise_multiplier > 0 else None
        if len(weights):
            clipped, norms = self.dp.clip_updates(travel, clip)
        else:   # nobody selected: the weighted sum is zero, the noise is not
            clipped, norms = travel, torch.zeros(0)
        total = self.dp.aggregate(clipped, weights, g, self.max_weight, clip=clip)
        total.update({k: torch.zeros_like(v[0]) if len(v) else torch.zeros(v.shape[1:], dtype=v.dtype)
                      for k, v in delta.items() if k in self.stays})
        nxt = self.dp.next_clip(norms, clip, g) if len(norms) else clip
        if not math.isfinite(nxt) and self.dp.adaptive:
            chk.fail("privacy", "an adaptive clip that stays finite (lower clip_lr)", nxt)
        return {k: total[k].unsqueeze(0) for k in delta}, {"clip": nxt}, {}

    def row(self, rnd: int, before: dict, after: dict) -> dict:
        """``rounds`` columns of round ``rnd``: the clip it used and the cumulative epsilon."""
        return {"clip": float(before["clip"]), "epsilon": self.dp.epsilon(self.q, rnd, self.expected_clients)}
