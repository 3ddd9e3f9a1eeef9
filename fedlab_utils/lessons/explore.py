"""Pure compute behind the notebooks' interactive panels (``flu.widgets``).

Each function takes plain keyword arguments (the same names as the widget controls) and returns
tables, so a notebook can call it once with defaults for a static figure and a widget can call it
again on every change. Nothing here draws, reads globals or seeds global state (the training
functions run on one torch thread and restore the previous count, see :func:`torch_threads`).

- :func:`make_partition` / :func:`partition_summary`: one partitioner by scheme name, its
  ``label_counts`` table and ``heterogeneity`` metrics; :func:`metrics_table` for display.
- :func:`fedavg_curves`: a small FedAvg federation (digits, 20 clients, a width-32 MLP) trained
  with ``flu.run``; returns its ``History.metrics`` with ``partition`` and ``alpha`` columns.
- :func:`alpha_sweep`: heterogeneity metrics and FedAvg's final accuracy for several ``alpha``.
- :func:`images_by_client`: the first images of each client (pictures of feature skew).
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import torch

from .._core import checks as chk
from .._core.runtime import torch_threads
from ..data import datasets as fdata
from ..models import nets as models
from ..data import partition as fpart
from ..engine.runner import run

SCHEMES = ("iid", "dirichlet", "pathological", "shards", "quantity_skew", "inner_dirichlet")

# Which ``make_partition`` argument each scheme uses (besides num_clients and seed).
SCHEME_PARAMS = {
    "iid": (),
    "dirichlet": ("alpha",),
    "pathological": ("classes_per_client",),
    "shards": ("classes_per_client",),
    "quantity_skew": ("sigma",),
    "inner_dirichlet": ("alpha",),
}

# name -> (formula, range, value under IID): the rows of :func:`metrics_table`.
METRIC_INFO = {
    "js_divergence": ("mean_i JS(p_i, p), bits", "[0, 1]", "0"),
    "emd": ("mean_i sum_k |p_i(k) - p(k)|", "[0, 2]", "0"),
    "effective_classes": ("mean_i exp H(p_i)", "[1, C]", "C"),
    "size_gini": ("sum_ij |n_i - n_j| / (2 N^2 mean n)", "[0, 1)", "0"),
    "size_cv": ("std(n) / mean(n)", "[0, inf)", "0"),
}

MODELS = ("logistic", "mlp")


def make_partition(y, scheme: str = "dirichlet", *, num_clients: int = 20, alpha: float = 0.5,
                   classes_per_client: int = 2, sigma: float = 1.0, seed: int = 0) -> fpart.Partition:
    """The partition of labels ``y`` by ``scheme`` (one of :data:`SCHEMES`).

    Each scheme reads only its own arguments (:data:`SCHEME_PARAMS`): ``alpha`` for
    ``dirichlet`` and ``inner_dirichlet``, ``classes_per_client`` for ``pathological`` and for
    ``shards`` (as ``shards_per_client``: sorted-label shards hold about one class each),
    ``sigma`` for ``quantity_skew``.
    """
    chk.option("scheme", scheme, SCHEMES)
    if scheme == "iid":
        return fpart.iid(y, num_clients, seed=seed)
    if scheme == "dirichlet":
        return fpart.dirichlet(y, num_clients, alpha, seed=seed)
    if scheme == "pathological":
        return fpart.pathological(y, num_clients, classes_per_client, seed=seed)
    if scheme == "shards":
        return fpart.shards(y, num_clients, classes_per_client, seed=seed)
    if scheme == "quantity_skew":
        return fpart.quantity_skew(y, num_clients, sigma, seed=seed)
    return fpart.inner_dirichlet(y, num_clients, alpha, seed=seed)


def partition_summary(y, scheme: str = "dirichlet", *, num_clients: int = 20, alpha: float = 0.5,
                      classes_per_client: int = 2, sigma: float = 1.0, seed: int = 0):
    """``(counts, metrics)`` of :func:`make_partition`: the tidy ``client, label, count`` table of
    ``flu.partition.label_counts`` and the dict of ``flu.partition.heterogeneity``."""
    part = make_partition(y, scheme, num_clients=num_clients, alpha=alpha,
                          classes_per_client=classes_per_client, sigma=sigma, seed=seed)
    return fpart.label_counts(part, y), fpart.heterogeneity(part, y)


def metrics_table(metrics: dict, num_classes: int | None = None) -> pd.DataFrame:
    """The five headline heterogeneity metrics as a table: ``metric, value, formula, range, iid``
    (``iid`` is the value of a perfectly balanced IID split; ``C`` becomes ``num_classes`` when given)."""
    rows = []
    for name, (formula, rng, iid_value) in METRIC_INFO.items():
        if name not in metrics:
            chk.fail("metrics", f"a dict from flu.partition.heterogeneity (with key {name!r})", sorted(metrics))
        if num_classes is not None:
            rng, iid_value = rng.replace("C", str(num_classes)), iid_value.replace("C", str(num_classes))
        rows.append(dict(metric=name, value=float(metrics[name]), formula=formula, range=rng, iid=iid_value))
    return pd.DataFrame(rows)


@functools.lru_cache(maxsize=8)
def _named_dataset(name: str) -> fdata.Dataset:
    return fdata.load_dataset(name)


def _dataset(dataset) -> fdata.Dataset:
    if isinstance(dataset, fdata.Dataset):
        return dataset
    if not isinstance(dataset, str):
        raise TypeError(f"dataset must be a name or an flu.data.Dataset, got {type(dataset).__name__}")
    chk.option("dataset", dataset, ("digits", "breast_cancer", "wine"))
    return _named_dataset(dataset)


def _model(model: str, ds: fdata.Dataset, hidden: int, seed: int, dtype):
    chk.option("model", model, MODELS)
    d, C = int(ds.X.shape[1]), len(ds.classes)
    if model == "logistic":
        return models.logistic(d, C, dtype=dtype, seed=seed)
    return models.mlp(d, hidden, C, dtype=dtype, seed=seed)


def _fedavg(ds, part, seed, *, model, hidden, dtype, num_threads, **run_args):
    """FedAvg with ``flu.run`` on ``part`` of ``ds`` (20% of each client held out for test)."""
    fed = fdata.federate(ds.X, ds.y, part, test_fraction=0.2, seed=seed, shape=ds.shape)
    with torch_threads(num_threads):
        return run(_model(model, ds, hidden, seed, dtype), fed, "fedavg", progress=False, seed=seed, **run_args)


def fedavg_curves(alpha: float = 0.1, local_steps: int = 10, clients_per_round: int = 5,
                  client_lr: float = 0.1, num_rounds: int = 20, *, dataset="digits", num_clients: int = 20,
                  model: str = "mlp", hidden: int = 32, batch_size: int | None = 16,
                  iid_reference: bool = False, seed: int = 0, dtype=torch.float32,
                  num_threads: int | None = 1) -> pd.DataFrame:
    """FedAvg on a Dirichlet(``alpha``) split of ``dataset``; returns the run's ``History.metrics``
    with two extra columns, ``partition`` (``"Dirichlet split"``) and ``alpha``.

    ``num_clients`` clients (``flu.partition.dirichlet``, 20% of each client's data held out for
    test), a ``model`` (``"logistic"`` or a one-hidden-layer ``"mlp"``) initialised from ``seed``,
    ``flu.run`` with the vectorised engine. ``iid_reference=True`` adds a second run with the same
    settings on an IID split (``partition == "IID split"``, ``alpha`` inf), the curve heterogeneity is
    measured against.
    ``num_threads``: torch threads during the runs (see :func:`torch_threads`).
    """
    ds = _dataset(dataset)
    chk.integer("num_clients", num_clients, low=2)
    chk.integer("clients_per_round", clients_per_round, low=1, high=num_clients)
    splits = {"Dirichlet split": fpart.dirichlet(ds.y, num_clients, alpha, seed=seed)}
    if iid_reference:
        splits["IID split"] = fpart.iid(ds.y, num_clients, seed=seed)
    frames = []
    for label, part in splits.items():
        hist = _fedavg(ds, part, seed, model=model, hidden=hidden, dtype=dtype, num_threads=num_threads,
                       num_rounds=num_rounds, local_steps=local_steps, client_lr=client_lr,
                       batch_size=batch_size, clients_per_round=clients_per_round)
        frames.append(hist.metrics.assign(partition=label, alpha=float(alpha) if label == "Dirichlet split" else np.inf))
    return pd.concat(frames, ignore_index=True)


def alpha_sweep(alphas=(0.03, 0.3, 3.0, 30.0), seeds=(0,), *, num_rounds: int = 20, local_steps: int = 10,
                clients_per_round: int | None = 5, client_lr: float = 0.1, dataset="digits",
                num_clients: int = 20, model: str = "mlp", hidden: int = 32,
                batch_size: int | None = 16, dtype=torch.float32, num_threads: int | None = 1) -> pd.DataFrame:
    """One row per (``alpha``, ``seed``): the ``heterogeneity`` metrics of the Dirichlet(alpha)
    split and FedAvg's final pooled test ``accuracy`` and train ``loss`` on it (same settings as
    :func:`fedavg_curves`; the seed drives the partition, the model init and the run)."""
    ds = _dataset(dataset)
    rows = []
    for alpha in alphas:
        for seed in seeds:
            part = fpart.dirichlet(ds.y, num_clients, alpha, seed=seed)
            hist = _fedavg(ds, part, seed, model=model, hidden=hidden, dtype=dtype, num_threads=num_threads,
                           num_rounds=num_rounds, local_steps=local_steps, client_lr=client_lr,
                           batch_size=batch_size, clients_per_round=clients_per_round)
            metrics = fpart.heterogeneity(part, ds.y)
            rows.append(dict(alpha=float(alpha), seed=int(seed),
                             **{k: metrics[k] for k in METRIC_INFO},
                             accuracy=hist.final("accuracy", "test"), loss=hist.final("loss", "train")))
    return pd.DataFrame(rows)


def images_by_client(fed: fdata.Federation, clients=None, per_client: int = 6, shape=None) -> np.ndarray:
    """``(len(clients), per_client, H, W)`` array of the first training images of each client
    (for a grid of pictures showing feature skew); missing images are NaN."""
    shape = shape or fed.shape
    if shape is None or len(shape) != 3:
        chk.fail("shape", "an image shape (C, H, W)", shape)
    clients = range(fed.num_clients) if clients is None else clients
    clients = [chk.integer("clients", c, low=0, high=fed.num_clients - 1) for c in clients]
    per_client = chk.integer("per_client", per_client, low=1)
    out = np.full((len(clients), per_client, shape[1], shape[2]), np.nan)
    for r, c in enumerate(clients):
        X = fed.train[c][0][:per_client].reshape(-1, *shape)[:, 0]
        out[r, :len(X)] = X.detach().cpu().numpy()
    return out
