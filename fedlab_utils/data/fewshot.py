"""Few-shot protocol: K-shot support / query sets per client, base/novel classes, episodes,
unseen clients, and the training-free prototype classifier ("none").

Vocabulary (as in Snell et al. 2017 and the UvA few-shot tutorial): a client's **support** set
holds ``shots`` (K) labelled examples of each class it has; its **query** set, disjoint from the
support, is what it is evaluated on. An **episode** is an ``n_way``-class, K-shot task.

Every draw comes from the package's one seeded stream (``flu._core.random``, purpose FEWSHOT):
``k_shot`` from (seed, client, class), the others from (seed, function); seeds are ints in [0, 2**63).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._core import checks as chk
from .._core.random import FEWSHOT, np_stream, seed_value
from ..data.datasets import Federation

# second key of the one-stream draws below (k_shot's streams carry a client and a class instead)
_BASE_NOVEL, _EPISODE, _UNSEEN = range(1, 4)


def base_novel_split(classes, num_novel: int, seed: int | None = None):
    """Split class ids into (base, novel), both sorted. ``seed=None`` (the default) draws nothing
    and takes the ``num_novel`` largest ids as novel; an int seed in [0, 2**63) takes a uniformly
    random ``num_novel``-subset (stream (seed, base/novel)). The backbone is pretrained on base
    classes only."""
    classes = np.unique(np.asarray(classes))
    num_novel = chk.integer("num_novel", num_novel, low=1, high=len(classes) - 1)
    if seed is None:
        novel = classes[-num_novel:]
    else:
        rng = np_stream(seed_value("seed", seed), _BASE_NOVEL, FEWSHOT)
        novel = np.sort(rng.choice(classes, num_novel, replace=False))
    return np.setdiff1d(classes, novel), novel


@dataclass(frozen=True)
class FewShot:
    """A few-shot federation (``federation.train`` = support, ``.test`` = query, splits named so)
    and the ``table`` of what each client holds: client, label, available, support, query."""

    federation: Federation
    table: pd.DataFrame
    shots: int


def k_shot(fed: Federation, shots: int, *, query: int | None = None, seed: int = 0, strict: bool = False,
           classes=None) -> FewShot:
    """Per-client K-shot support sets with disjoint query sets, on top of any federation.

    Each client pools its own examples (train and test of ``fed``, so it composes with every
    partitioner and feature-skew transform) and, for every class it holds, draws ``shots``
    support examples at random from the stream (seed, client, class, FEWSHOT), so one client's or
    class's draw never moves another's; the rest of that class,
    at most ``query`` per class (None: all), form its query set. A client holding fewer than
    ``shots`` examples of a class contributes what it has (and has no query examples of it);
    ``table`` shows it. ``strict=True`` makes a short class an error naming client and class.
    ``classes`` restricts to these labels.
    """
    shots = chk.integer("shots", shots, low=1)
    if query is not None:
        query = chk.integer("query", query, low=0)
    seed = seed_value("seed", seed)
    if not isinstance(fed, Federation):
        raise TypeError(f"fed must be an flu.data.Federation, got {type(fed).__name__}")
    keep = None if classes is None else set(int(c) for c in np.asarray(classes).ravel())
    support, held_out, rows = [], [], []
    for i, ((Xtr, ytr), (Xte, yte)) in enumerate(zip(fed.train, fed.test)):
        X, y = torch.cat([Xtr, Xte]), torch.cat([ytr, yte])
        labels, inv = np.unique(y.numpy(), return_inverse=True)
        order = np.argsort(inv.ravel(), kind="stable")
        by_class = np.split(order, np.cumsum(np.bincount(inv.ravel(), minlength=len(labels)))[:-1])
        s_idx, q_idx = [], []
        for c, where in zip(labels.tolist(), by_class):
            if keep is not None and c not in keep:
                continue
            if len(where) < shots and strict:
                chk.fail(f"client {i}, class {c}", f"holding at least shots = {shots} examples (strict=True)",
                         f"{len(where)} examples")
            where = np_stream(seed, i, c, FEWSHOT).permutation(where)
            k = min(shots, len(where))
            q = where[k:] if query is None else where[k:k + query]
            s_idx.append(where[:k])
            q_idx.append(q)
            rows.append((i, c, len(where), k, len(q)))
        if not s_idx:
            chk.fail(f"client {i}", "holding at least one example of the selected classes", "none")
        s, q = np.sort(np.concatenate(s_idx)), np.sort(np.concatenate(q_idx))
        support.append((X[s], y[s]))
        held_out.append((X[q], y[q]))
    table = pd.DataFrame(rows, columns=["client", "label", "available", "support", "query"])
    few = Federation(tuple(support), tuple(held_out), f"{fed.name}, {shots}-shot", fed.shape, dict(fed.meta),
                     ("support", "query"))
    return FewShot(few, table, shots)


def episode(X, y, n_way: int, shots: int, query: int = 5, *, seed: int = 0):
    """One N-way K-shot episode (Vinyals et al. 2016): ``n_way`` classes drawn at random, ``shots``
    support and ``query`` query examples of each, labels renumbered 0..n_way-1.

    Returns ``(X_support, y_support, X_query, y_query, classes)``.
    """
    y_np = chk.labels("y", y)
    X = torch.as_tensor(X)
    n_way = chk.integer("n_way", n_way, low=2)
    shots = chk.integer("shots", shots, low=1)
    query = chk.integer("query", query, low=1)
    rng = np_stream(seed_value("seed", seed), _EPISODE, FEWSHOT)
    labels, counts = np.unique(y_np, return_counts=True)
    eligible = labels[counts >= shots + query]
    if len(eligible) < n_way:
        chk.fail("n_way", f"at most the {len(eligible)} classes holding shots + query = {shots + query} "
                 "examples", n_way)
    classes = np.sort(rng.choice(eligible, n_way, replace=False))
    s, q, ys, yq = [], [], [], []
    for new, c in enumerate(classes):
        where = rng.permutation(np.flatnonzero(y_np == c))
        s.append(where[:shots])
        q.append(where[shots:shots + query])
        ys += [new] * shots
        yq += [new] * query
    s, q = np.concatenate(s), np.concatenate(q)
    return X[s], torch.tensor(ys), X[q], torch.tensor(yq), classes


def split_clients(fed: Federation, num_unseen: int, *, seed: int = 0):
    """Hold out ``num_unseen`` random clients that never train (evaluated as *unseen* clients).

    Returns ``(seen, unseen, unseen_ids)``; ``seen`` keeps the remaining clients in order.
    """
    if not isinstance(fed, Federation):
        raise TypeError(f"fed must be an flu.data.Federation, got {type(fed).__name__}")
    num_unseen = chk.integer("num_unseen", num_unseen, low=1, high=fed.num_clients - 1)
    rng = np_stream(seed_value("seed", seed), _UNSEEN, FEWSHOT)
    ids = np.sort(rng.choice(fed.num_clients, num_unseen, replace=False))
    rest = [i for i in range(fed.num_clients) if i not in set(ids.tolist())]

    def pick(which):
        return Federation(tuple(fed.train[i] for i in which), tuple(fed.test[i] for i in which), fed.name,
                          fed.shape, dict(fed.meta), fed.splits)

    return pick(rest), pick(ids.tolist()), ids


@torch.no_grad()
def prototype_classifier(body: nn.Module, fed: Federation, num_classes: int | None = None):
    """The training-free baseline "none": a nearest-class-mean head (Snell et al. 2017).

    Every client sends, for each class c, the sum of its support features ``s_ic = sum f(x)`` and
    the count ``n_ic`` (the only upload, bytes counted); the server forms the pooled means
    ``m_c = sum_i s_ic / sum_i n_ic``. Nearest mean in Euclidean distance is the linear head
    ``logits = 2 m_c . z - ||m_c||^2``. Classes no client holds get a logit of -1e9.

    Returns ``(head, info)`` with ``head`` an ``nn.Linear`` and ``info`` a dict with
    ``prototypes`` (C, d), ``counts`` (C,), ``bytes_up``.
    """
    if not isinstance(fed, Federation):
        raise TypeError(f"fed must be an flu.data.Federation, got {type(fed).__name__}")
    sums, counts, bytes_up = None, None, 0
    top = int(torch.cat([y for _, y in fed.train]).max())
    C = top + 1 if num_classes is None else chk.integer("num_classes", num_classes, low=1)
    if top >= C:
        chk.fail("num_classes", f"more than the largest support label ({top})", C)
    for X, y in fed.train:
        z = body(X)
        size = z.element_size()
        z = z.reshape(len(z), -1).to(torch.float64)
        if sums is None:
            sums = torch.zeros(C, z.shape[1], dtype=torch.float64)
            counts = torch.zeros(C, dtype=torch.float64)
        s_i = torch.zeros_like(sums).index_add_(0, y, z)
        n_i = torch.bincount(y, minlength=C).to(torch.float64)
        sums += s_i
        counts += n_i
        held = int((n_i > 0).sum())
        bytes_up += held * (z.shape[1] * size + 8)  # one feature sum and one count per class held
    means = sums / counts.clamp(min=1).unsqueeze(1)
    dtype = next(body.parameters()).dtype if any(True for _ in body.parameters()) else torch.float32
    head = nn.utils.skip_init(nn.Linear, means.shape[1], C, dtype=dtype)  # no random init: set below
    head.weight.copy_(2 * means)
    bias = -(means ** 2).sum(1)
    bias[counts == 0] = -1e9
    head.bias.copy_(bias)
    return head, {"prototypes": means, "counts": counts, "bytes_up": bytes_up}
