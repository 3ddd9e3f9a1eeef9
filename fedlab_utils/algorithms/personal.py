"""Personalisation: every client ends with a model of its own.

Personal heads (the body is shared): ``fedper`` (Arivazhagan et al. 2019), ``fedrep`` (Collins
et al. 2021: head first, then body), ``fedbabu`` (Oh et al. 2022: the head never trains during
federated training and is fine-tuned at evaluation, ``flu.evaluation.personalize``). A personal
body: ``lg_fedavg`` (Liang et al. 2020: local representations, global head). Whole personal
models next to the global one: ``ditto`` (Li et al. 2021, ``lam``) and ``apfl`` (Deng et al.
2020, ``mix``).

A client's personal copies persist across rounds as client state ``"personal." + name`` (the
engine keeps them under partial participation: a client not selected keeps its copy), and are
what ``History.personal_params`` holds. What stays on the clients never travels (``stays``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._core import checks as chk
from .base import (PERSONAL, Algorithm, ClientResult, ClientRound, Options, expand, local_delta, non_negative,
                   personal_copies)
from .optimization import _average_server


def _start(batch: ClientRound, part: tuple) -> dict:
    """Stacked starting values: the global x, with the client's personal copies of ``part``."""
    own = personal_copies(batch.state)
    start = expand(batch.params, len(batch.steps))
    start.update({k: own[k].clone() for k in part})
    return start


def _body(batch: ClientRound) -> tuple:
    return tuple(k for k in batch.params if k not in batch.head)


def _result(batch: ClientRound, local: dict, personal: tuple) -> ClientResult:
    """delta_i = x - y_i on the shared part (zero on the personal part, which does not travel),
    and the new personal copies."""
    delta = local_delta(batch, local)
    for k in personal:
        delta[k] = torch.zeros_like(delta[k])
    return ClientResult(delta, state={PERSONAL + k: local[k] for k in personal})


# ---------------------------------------------------------------------------- personal heads

def _fedper_client(batch: ClientRound) -> ClientResult:
    local = batch.train(start=_start(batch, batch.head))
    return _result(batch, local, batch.head)


def fedper() -> Algorithm:
    """FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers"): each
    client trains body and its own head jointly for ``local_steps`` from (x_body, h_i); the body
    is averaged as in FedAvg, the head h_i stays on the client."""
    return Algorithm("fedper", _fedper_client, _average_server, kind="personal", stays="head", keeps="head")


@dataclass(frozen=True)
class FedRepOptions(Options):
    """``head_steps >= 1``: local steps on the head (body fixed) before the body's ``local_steps``."""

    head_steps: int = 10

    def __post_init__(self):
        chk.integer("head_steps", self.head_steps, low=1)


def _fedrep_client(batch: ClientRound) -> ClientResult:
    body = _body(batch)
    start = _start(batch, batch.head)
    heads = batch.train(start=start, fixed=body, steps=batch.options.head_steps, draw=1)
    local = batch.train(start={**start, **{k: heads[k] for k in batch.head}}, fixed=batch.head)
    return _result(batch, local, batch.head)


def fedrep() -> Algorithm:
    """FedRep (Collins et al. 2021, ICML, "Exploiting Shared Representations for Personalized
    Federated Learning", Algorithm 1): client i first takes ``head_steps`` SGD steps on its head
    h_i with the body fixed at x_body, then ``local_steps`` steps on the body with the new head
    fixed; the body is averaged, the head stays."""
    return Algorithm("fedrep", _fedrep_client, _average_server, options=FedRepOptions(), kind="personal",
                     stays="head", keeps="head")


def _fedbabu_client(batch: ClientRound) -> ClientResult:
    local = batch.train(fixed=batch.head)
    return _result(batch, local, ())


def fedbabu() -> Algorithm:
    """FedBABU (Oh, Kim and Yun 2022, ICLR, "FedBABU: Towards Enhanced Representation for
    Federated Image Classification"): the head keeps its (shared, seeded) initial values during
    federated training and never travels; only the body trains and is averaged. Personalisation
    comes at evaluation: fine-tune the head (or all) on each client with
    ``flu.evaluation.personalize``."""
    return Algorithm("fedbabu", _fedbabu_client, _average_server, kind="personal", stays="head")


def _lg_client(batch: ClientRound) -> ClientResult:
    body = _body(batch)
    local = batch.train(start=_start(batch, body))
    return _result(batch, local, body)


def lg_fedavg() -> Algorithm:
    """LG-FedAvg (Liang et al. 2020, "Think Locally, Act Globally"): the body is each client's
    local representation and stays on it; the head is global and averaged."""
    return Algorithm("lg_fedavg", _lg_client, _average_server, kind="personal", stays="body", keeps="body")


# ---------------------------------------------------------------------------- personal models

@dataclass(frozen=True)
class DittoOptions(Options):
    """``lam >= 0``: the pull of each personal model toward the global one (0: local training)."""

    lam: float = 0.1

    def __post_init__(self):
        non_negative("lam", self.lam)


def _ditto_client(batch: ClientRound) -> ClientResult:
    names = tuple(batch.params)
    v = batch.train(start=_start(batch, names), pull=batch.options.lam, draw=1)
    return ClientResult(local_delta(batch, batch.train()), state={PERSONAL + k: v[k] for k in names})


def ditto() -> Algorithm:
    """Ditto (Li, Hu, Beirami and Smith 2021, ICML, Algorithm 1): the global model is FedAvg's;
    each selected client also takes ``local_steps`` SGD steps at ``client_lr`` from its personal
    v_i (initially the round-0 global) on

        F_i(v) + lam/2 ||v - x||^2,      x the global model it received,

    on minibatches drawn independently of the global update's. ``lam = 0`` is local training;
    large ``lam`` pulls v_i to x."""
    return Algorithm("ditto", _ditto_client, _average_server, options=DittoOptions(), kind="personal", keeps="all")


@dataclass(frozen=True)
class APFLOptions(Options):
    """``mix`` in [0, 1]: the personal model is mix * v_i + (1 - mix) * x."""

    mix: float = 0.25

    def __post_init__(self):
        chk.real("mix", self.mix, low=0, high=1)


def _apfl_client(batch: ClientRound) -> ClientResult:
    a = batch.options.mix
    names = tuple(batch.params)
    w = expand(batch.params, len(batch.steps))
    v = _start(batch, names)
    for t, lr in enumerate(batch.lrs):
        g_w = batch.grad(w, step=t)
        g_v = batch.grad({k: a * v[k] + (1 - a) * w[k] for k in names}, step=t)
        w = {k: w[k] - lr * g_w[k] for k in names}
        v = {k: v[k] - lr * a * g_v[k] for k in names}
    return ClientResult(local_delta(batch, w), state={PERSONAL + k: v[k] for k in names})


def _apfl_personal(x: dict, client_state: dict, options) -> dict:
    v = personal_copies(client_state)
    return {k: options.mix * v[k] + (1 - options.mix) * x[k].unsqueeze(0) for k in v}


def apfl() -> Algorithm:
    """APFL (Deng, Kamani and Mahdavi 2020, "Adaptive Personalized Federated Learning",
    Algorithm 1, fixed mixing weight): each local step on the same minibatch,

        w <- w - client_lr * grad F_i(w),
        v_i <- v_i - client_lr * mix * grad F_i(mix v_i + (1 - mix) w),

    the global model is FedAvg's average of the w, and client i's personal model is
    mix * v_i + (1 - mix) * x. ``mix = 0`` is FedAvg; ``mix = 1`` trains v_i alone."""
    return Algorithm("apfl", _apfl_client, _average_server, options=APFLOptions(), kind="personal", keeps="all",
                     personal=_apfl_personal)
