"""DP-FedAvg with fixed or adaptive clipping: the record the engine holds and the pure math it calls.

User-level DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models", ICLR): each selected client's update is clipped to L2 norm C (over all its tensors
together), the server adds Gaussian noise to the weighted sum,

    Delta = sum_i w_i clip_C(delta_i) + N(0, (z C w_max)^2 I),   clip_C(d) = d min(1, C / ||d||_2),

where w_max bounds any one client's weight, so one client moves the sum by at most C w_max (the
sensitivity) and z (``noise_multiplier``) is the noise in units of it.

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping",
NeurIPS, Alg. 1): C tracks the ``target_quantile`` gamma of the update norms by the geometric step

    C <- C exp(-eta_C (b_tilde - gamma)),   b_tilde = (sum_i 1[||delta_i|| <= C] + N(0, sigma_b^2)) / m,

with eta_C = ``clip_lr`` and m the clients in the round. The count is itself a Gaussian mechanism
(sensitivity 1/2 after centring each bit at 1/2), so by their Thm. 1 the pair (sum with noise
multiplier z_Delta, count with std sigma_b) is one Gaussian mechanism of noise multiplier

    z = (z_Delta^-2 + (2 sigma_b)^-2)^(-1/2),

which is what the accountant must be given (``accounting_noise_multiplier``). To spend the
budget of a given z, set z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) (``update_noise_multiplier``).
Their default sigma_b = m / 20 (``count_noise=None``); with z_Delta = 0 (no privacy) the count is exact.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .._core import checks as chk

Params = dict


def _positive_or_inf(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    if math.isnan(value) or value <= 0:
        chk.fail(name, "a number > 0 (inf allowed)", value)
    return float(value)


@dataclass(frozen=True)
class DPFedAvg:
    """Clip each client's update to ``clip`` (C, inf = no clipping), add N(0, (z C w_max)^2) to the sum.

    ``noise_multiplier`` z >= 0 (0 draws no noise: plain clipped FedAvg), ``delta`` the delta the
    accountant reports epsilon at, ``target_quantile`` gamma in (0, 1) turns on Andrew et al.'s
    adaptive clipping with step ``clip_lr`` and count noise ``count_noise`` (sigma_b; None =
    m / 20 when z > 0, else 0). See the module docstring for the formulas.
    """

    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    target_quantile: float | None = None
    clip_lr: float = 0.2
    count_noise: float | None = None

    def __post_init__(self):
        clip = _positive_or_inf("clip", self.clip)
        z = chk.real("noise_multiplier", self.noise_multiplier, low=0)
        chk.real("delta", self.delta, low=0, high=1, low_open=True, high_open=True)
        chk.real("clip_lr", self.clip_lr, low=0, low_open=True)
        if self.target_quantile is not None:
            chk.real("target_quantile", self.target_quantile, low=0, high=1, low_open=True, high_open=True)
            if math.isinf(clip):
                chk.fail("clip", "finite when target_quantile is set (adaptive clipping starts from it)", clip)
        if self.count_noise is not None:
            chk.real("count_noise", self.count_noise, low=0)
        if math.isinf(clip) and z > 0:
            chk.fail("noise_multiplier", "0 when clip is inf (the noise std z * clip would be infinite)", z)

    @property
    def adaptive(self) -> bool:
        return self.target_quantile is not None

    # ---- per round ----------------------------------------------------------------------------

    def clip_updates(self, deltas: Params, clip: float | None = None) -> tuple[Params, torch.Tensor]:
        """``(clipped, norms)``: ``delta_i min(1, C / ||delta_i||)`` and the norms ``||delta_i||`` (K,).

        ``deltas`` maps names to stacked (K, ...) tensors; a client's norm is taken over all of its
        tensors together (float64; K = 0 gives empty norms). ``clip`` defaults to ``self.clip``; clip = inf returns the
        tensors themselves (bit-identical). Clipped norms are <= C up to the dtype's rounding.
        """
        clip = self.clip if clip is None else _positive_or_inf("clip", clip)
        if not deltas:
            chk.fail("deltas", "a non-empty dict of stacked (K, ...) tensors", deltas)
        K = {v.shape[0] if v.dim() else None for v in deltas.values()}
        if len(K) != 1 or None in K:
            chk.fail("deltas", "tensors that share one leading client axis K",
                     {k: tuple(v.shape) for k, v in deltas.items()})
        sq = sum(v.detach().double().pow(2).sum(tuple(range(1, v.dim()))) if v.dim() > 1 else
                 v.detach().double().pow(2) for v in deltas.values())
        norms = sq.sqrt()
        if math.isinf(clip):
            return dict(deltas), norms
        factor = torch.where(norms > clip, clip / norms, torch.ones_like(norms))
        clipped = {k: v * factor.to(v.dtype).reshape(-1, *[1] * (v.dim() - 1)) for k, v in deltas.items()}
        return clipped, norms

    def aggregate(self, clipped: Params, weights: torch.Tensor, generator: torch.Generator | None,
                  max_weight: float, *, clip: float | None = None) -> Params:
        """``sum_i w_i clipped_i + N(0, (z C w_max)^2 I)`` for every tensor of ``clipped``.

        The sum is ``tensordot(w, clipped, 1)`` (the engine's weighted sum, bit for bit); noise is
        drawn from ``generator`` in the dict's key order, in each tensor's dtype on the generator's
        device, and never when z = 0 (then ``generator`` may be None). ``clip`` (C) defaults to
        ``self.clip`` (pass the current one under adaptive clipping); ``max_weight`` is w_max > 0.
        """
        clip = self.clip if clip is None else _positive_or_inf("clip", clip)
        weights = torch.as_tensor(weights)
        if weights.dim() != 1:
            chk.fail("weights", "a 1-D tensor of K client weights", f"shape {tuple(weights.shape)}")
        total = {k: torch.tensordot(weights.to(v.dtype), v, dims=1) for k, v in clipped.items()}
        if self.noise_multiplier == 0:
            return total
        max_weight = chk.real("max_weight", max_weight, low=0, low_open=True)
        if math.isinf(clip):
            chk.fail("clip", "finite when noise_multiplier > 0", clip)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator when noise_multiplier > 0, got {generator!r}")
        std = self.noise_multiplier * clip * max_weight
        out = {}
        for k, v in total.items():
            noise = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=generator.device)
            out[k] = v + std * noise.to(v.device)
        return out

    def sigma_b(self, clients: int) -> float:
        """The count's noise std sigma_b for a round of ``clients`` (m): ``count_noise``, or Andrew
        et al.'s m / 20 when it is None and z > 0, or 0 (an exact count) when z = 0."""
        m = chk.integer("clients", clients, low=1)
        if self.count_noise is not None:
            return float(self.count_noise)
        return m / 20 if self.noise_multiplier > 0 else 0.0

    def next_clip(self, norms: torch.Tensor, clip: float, generator: torch.Generator | None) -> float:
        """Andrew et al.'s geometric update ``C exp(-eta_C (b_tilde - gamma))`` from this round's norms.

        ``b_tilde = (#{i: norm_i <= C} + N(0, sigma_b^2)) / m`` with m = len(norms); one standard
        normal is drawn from ``generator`` (float64) unless sigma_b = 0. Without ``target_quantile``
        the clip is returned unchanged.
        """
        clip = _positive_or_inf("clip", clip)
        if not self.adaptive:
            return clip
        norms = torch.as_tensor(norms).detach().double().reshape(-1)
        m = norms.numel()
        if m == 0:
            chk.fail("norms", "a non-empty tensor of client update norms", norms)
        count = float((norms.cpu() <= clip).sum())
        sigma_b = self.sigma_b(m)
        if sigma_b > 0:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator when the count is noised, got {generator!r}")
            count += sigma_b * float(torch.randn((), generator=generator, dtype=torch.float64,
                                                 device=generator.device))
        b_tilde = count / m
        return clip * math.exp(-self.clip_lr * (b_tilde - self.target_quantile))

    # ---- accounting ---------------------------------------------------------------------------

    def accounting_noise_multiplier(self, clients: int) -> float:
        """The z the accountant must use: z_Delta, or (z_Delta^-2 + (2 sigma_b)^-2)^(-1/2) under
        adaptive clipping (Andrew et al. 2021, Thm. 1), for rounds of ``clients`` clients."""
        z = float(self.noise_multiplier)
        if not self.adaptive:
            return z
        sigma_b = self.sigma_b(clients)
        if z == 0 or sigma_b == 0:
            return 0.0
        return (z ** -2 + (2 * sigma_b) ** -2) ** -0.5

    @staticmethod
    def update_noise_multiplier(noise_multiplier: float, count_noise: float) -> float:
        """z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2): the update's noise multiplier that, with count
        noise sigma_b, spends exactly the budget of noise multiplier z (needs 2 sigma_b > z)."""
        z = chk.real("noise_multiplier", noise_multiplier, low=0, low_open=True)
        sb = chk.real("count_noise", count_noise, low=0, low_open=True)
        if 2 * sb <= z:
            chk.fail("count_noise", f"> noise_multiplier / 2 = {z / 2} (else the count alone spends the budget)", sb)
        return (z ** -2 - (2 * sb) ** -2) ** -0.5

    def epsilon(self, sample_rate: float, rounds: int, clients: int | None = None, *,
                accountant: str = "rdp") -> float:
        """epsilon after ``rounds`` rounds at ``self.delta`` (``flu.privacy.epsilon`` with the
        accounting noise multiplier; ``clients`` = m per round, needed under adaptive clipping)."""
        from .accounting import epsilon

        if self.adaptive and clients is None:
            chk.fail("clients", "the number of clients per round when target_quantile is set", clients)
        z = self.accounting_noise_multiplier(clients) if self.adaptive else float(self.noise_multiplier)
        return epsilon(z, sample_rate, rounds, self.delta, accountant=accountant)


@dataclass(frozen=True)
class DPSGD:
    """Sample-level DP-SGD inside every client (Abadi et al. 2016, "Deep Learning with Differential
    Privacy", CCS; the recipe of Opacus): ``flu.run(..., privacy=flu.privacy.DPSGD(...))``.

    Each local step of client i draws a Poisson minibatch (every example independently with rate
    q_i = min(1, batch_size / n_i)), clips every example's gradient to L2 norm ``clip`` (over all
    trained tensors together), adds N(0, (noise_multiplier * clip)^2 I) to their sum and divides by
    the expected batch size q_i n_i:

        g_i = (sum_{j in B} g_j min(1, C / ||g_j||) + N(0, (z C)^2 I)) / (q_i n_i).

    What it protects is one *example* of a client (sample-level), not a client's participation
    (client-level, :class:`DPFedAvg`). Client i's epsilon after s_i local steps is the sampled
    Gaussian mechanism's at rate q_i, composed s_i times (Opacus' RDP accountant); ``History.rounds``
    reports the largest over the clients.
    """

    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5

    def __post_init__(self):
        chk.real("clip", self.clip, low=0, low_open=True)
        chk.real("noise_multiplier", self.noise_multiplier, low=0)
        chk.real("delta", self.delta, low=0, high=1, low_open=True, high_open=True)

    def epsilon(self, sample_rate: float, steps: int) -> float:
        """A client's epsilon after ``steps`` local steps at Poisson rate ``sample_rate`` (0 steps: 0)."""
        from .accounting import epsilon
        if steps == 0:
            return 0.0
        return epsilon(float(self.noise_multiplier), sample_rate, int(steps), self.delta)
