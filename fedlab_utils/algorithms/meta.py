"""Meta-learning: a global model as an initialisation that adapts to a client in a few steps.

- ``reptile``: FedMeta-Reptile (Nichol et al. 2018; Jiang et al. 2019): local SGD, then the
  server's meta step ``x <- x - server_lr * sum_i w_i (x - y_i)``. It is FedAvg read as
  meta-learning, so it equals ``"fedavg"`` with the same ``server_lr`` bit for bit.
- ``fomaml``: FedMeta (Chen et al. 2018) with first-order MAML (Finn et al. 2017): each client's
  training data is split once into support and query (``support_fraction``); a local step adapts
  on the support set and steps with the query gradient at the adapted point.
- ``perfedavg``: Per-FedAvg (Fallah et al. 2020, NeurIPS): local steps on the MAML objective
  F_i(w - inner_lr grad F_i(w)), with the Hessian term exact, by finite differences, or dropped.

Every client rule is written with the engine's stacked primitives ``ClientRound.grad``/``hvp``,
so one rule runs vectorised over clients (``backend="vectorized"``) and per client
(``backend="loop"``). Clients with fewer local steps get zero gradients after their last one.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._core import checks as chk
from .base import Algorithm, ClientResult, ClientRound, Options, expand, local_delta, positive
from .optimization import _average_server, _fedavg_client


def reptile() -> Algorithm:
    """FedMeta-Reptile (Nichol et al. 2018; Chen et al. 2018): ``local_steps`` SGD steps from x (the inner loop), then the meta step
    ``x <- x - server_lr * sum_i w_i (x - y_i)`` (the outer loop). The same arithmetic as FedAvg:
    with ``server_lr = 1`` the meta step moves all the way to the clients' mean."""
    return Algorithm("reptile", _fedavg_client, _average_server, kind="meta")


def _inner_lr(value):
    positive("inner_lr", value)


@dataclass(frozen=True)
class FOMAMLOptions(Options):
    """``inner_lr > 0`` and ``inner_steps >= 1`` of the support-set adaptation; ``support_fraction``
    in (0, 1): the share of each client's training examples in its support set."""

    inner_lr: float = 0.05
    inner_steps: int = 1
    support_fraction: float = 0.5

    def __post_init__(self):
        _inner_lr(self.inner_lr)
        chk.integer("inner_steps", self.inner_steps, low=1)
        chk.real("support_fraction", self.support_fraction, low=0, high=1, low_open=True, high_open=True)


def adapt(batch: ClientRound, w: dict, step: int, inner_lr: float, inner_steps: int, part: str = "train") -> dict:
    """``inner_steps`` SGD steps ``phi <- phi - inner_lr grad F_i(phi; D_j)`` from ``w`` (stacked),
    each on an independent minibatch of ``part`` (draw j of local step ``step``)."""
    phi = w
    for j in range(inner_steps):
        g = batch.grad(phi, step=step, draw=j, part=part)
        phi = {k: phi[k] - inner_lr * g[k] for k in phi}
    return phi


def _fomaml_client(batch: ClientRound) -> ClientResult:
    o = batch.options
    w = expand(batch.params, len(batch.steps))
    for t, lr in enumerate(batch.lrs):
        phi = adapt(batch, w, t, o.inner_lr, o.inner_steps, part="support")
        g = batch.grad(phi, step=t, part="query")
        w = {k: w[k] - lr * g[k] for k in w}
    return ClientResult(local_delta(batch, w))


def fomaml() -> Algorithm:
    """FedMeta with first-order MAML (Chen et al. 2018, "Federated Meta-Learning with Fast
    Convergence and Efficient Communication"; Finn et al. 2017). Each local step t of client i:

        phi = w - inner_lr * grad F_i(w; S)      (``inner_steps`` times, support minibatches)
        w  <- w - client_lr * grad F_i(phi; Q)    (the query gradient at the adapted point)

    (first order: the Jacobian of phi with respect to w is taken as I). Support S and query Q are
    a seeded split of the client's training data made once: round(support_fraction * n_i)
    examples in S, at least one on each side. Server: FedAvg's averaging step."""
    return Algorithm("fomaml", _fomaml_client, _average_server, options=FOMAMLOptions(), kind="meta")


VARIANTS = ("exact", "hf", "fo")


@dataclass(frozen=True)
class PerFedAvgOptions(Options):
    """``inner_lr`` (alpha > 0), ``variant`` in ("exact", "hf", "fo"), ``hvp_delta > 0`` (the
    finite-difference step of "hf")."""

    inner_lr: float = 0.01
    variant: str = "hf"
    hvp_delta: float = 1e-3

    def __post_init__(self):
        _inner_lr(self.inner_lr)
        chk.option("variant", self.variant, VARIANTS)
        positive("hvp_delta", self.hvp_delta)


def meta_gradient(batch: ClientRound, w: dict, step: int) -> dict:
    """Per-FedAvg's stochastic gradient of F_i(w - a grad F_i(w)) at stacked ``w`` (a = inner_lr):

        g = grad F_i(w - a grad F_i(w; D); D'),   d = g - a * H_i(w; D'') g,

    with the Hessian-vector product by autograd ("exact"), by the central difference
    (grad F_i(w + delta g; D'') - grad F_i(w - delta g; D'')) / (2 delta) ("hf"), or dropped ("fo")."""
    o = batch.options
    a = o.inner_lr
    g0 = batch.grad(w, step=step, draw=0)
    g = batch.grad({k: w[k] - a * g0[k] for k in w}, step=step, draw=1)
    if o.variant == "fo":
        return g
    if o.variant == "exact":
        hv = batch.hvp(w, g, step=step, draw=2)
    else:
        d = o.hvp_delta
        plus = batch.grad({k: w[k] + d * g[k] for k in w}, step=step, draw=2)
        minus = batch.grad({k: w[k] - d * g[k] for k in w}, step=step, draw=2)
        hv = {k: (plus[k] - minus[k]) / (2 * d) for k in w}
    return {k: g[k] - a * hv[k] for k in w}


def _perfedavg_client(batch: ClientRound) -> ClientResult:
    w = expand(batch.params, len(batch.steps))
    for t, lr in enumerate(batch.lrs):
        d = meta_gradient(batch, w, t)
        w = {k: w[k] - lr * d[k] for k in w}
    return ClientResult(local_delta(batch, w))


def perfedavg() -> Algorithm:
    """Per-FedAvg (Fallah, Mokhtari and Ozdaglar 2020, "Personalized Federated Learning with
    Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach", Algorithm 1). The federated
    objective is sum_i p_i F_i(w - alpha grad F_i(w)); a local step is

        w <- w - client_lr * (I - alpha grad^2 F_i(w; D'')) grad F_i(w - alpha grad F_i(w; D); D')

    with D, D', D'' independent minibatches (all the full training set with ``batch_size=None``)
    and alpha = ``inner_lr``. ``variant``: "exact" (autograd Hessian-vector product), "hf"
    (central finite difference with ``hvp_delta``, Per-FedAvg (HF)), "fo" (Per-FedAvg (FO):
    the Hessian term dropped). Server: FedAvg's averaging step."""
    return Algorithm("perfedavg", _perfedavg_client, _average_server, options=PerFedAvgOptions(), kind="meta")
