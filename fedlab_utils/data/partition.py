"""Partitioners named after their published schemes, label-count tables, heterogeneity metrics.

Every partitioner takes the labels ``y`` (torch tensor or numpy array) and a ``seed`` (an int in
[0, 2**63)), draws from the package's one seeded stream ``np_stream(seed, scheme, ..., PARTITION)``
(``flu._core.random``; a scheme key keeps two partitioners run with one seed independent) and
returns a :class:`Partition` whose clients together hold every sample exactly once (only
``pathological(..., scheme="niid_bench")`` may leave out a label no client holds). Label values
may be sparse (e.g. {0, 7, 100000}): they are mapped to their sorted distinct values first, so
time and memory grow with the number of distinct labels, not the largest. ``label_counts`` turns
a partition into a tidy table (for ``flu.plots``) and ``heterogeneity`` summarises it in a few
scalars.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .._core import checks as chk
from .._core.random import PARTITION, np_stream, seed_value

MAX_DRAWS = 100  # redraws allowed to meet ``dirichlet``'s ``min_size``
PATHOLOGICAL_SCHEMES = ("balanced", "niid_bench")

# first key of each scheme's streams: np_stream(seed, scheme, *item keys, PARTITION)
_IID, _DIRICHLET, _PATHOLOGICAL, _NIID_BENCH, _SHARDS, _QUANTITY, _INNER = range(1, 8)
SCHEMES = {"iid": _IID, "dirichlet": _DIRICHLET, "pathological": _PATHOLOGICAL, "niid_bench": _NIID_BENCH,
           "shards": _SHARDS, "quantity_skew": _QUANTITY, "inner_dirichlet": _INNER}


def _rng(seed: int, scheme: int, *keys) -> np.random.Generator:
    return np_stream(seed, scheme, *keys, PARTITION)


def rng(seed: int, scheme: str, *keys: int) -> np.random.Generator:
    """The numpy stream a partitioner draws from: ``rng(seed, "dirichlet", draw, label)`` is what
    ``dirichlet`` uses for ``label`` on its ``draw``-th attempt (so a from-scratch version can
    reproduce it exactly)."""
    return _rng(seed_value("seed", seed), SCHEMES[chk.option("scheme", scheme, SCHEMES)], *keys)


@dataclass(frozen=True, eq=False)
class Partition:
    """Sample indices per client: ``part[i]`` is a sorted int64 array, ``len(part)`` the client count.

    ``name`` is the scheme, ``params`` the arguments it was called with (JSON-able).
    """

    indices: tuple
    name: str = "custom"
    params: dict = field(default_factory=dict)

    def __getitem__(self, i):
        return self.indices[i]

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)

    def __post_init__(self):
        idx = tuple(np.sort(np.asarray(i, dtype=np.int64).ravel()) for i in self.indices)
        object.__setattr__(self, "indices", idx)

    def __eq__(self, other):
        if not isinstance(other, Partition):
            return NotImplemented
        return len(self) == len(other) and all(np.array_equal(a, b) for a, b in zip(self, other))

    @property
    def num_clients(self) -> int:
        return len(self.indices)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(idx) for idx in self.indices], dtype=np.int64)

    def __repr__(self):
        s = self.sizes
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if k != "client_ids")
        return (f"Partition({self.name}({args}), clients={len(s)}, samples={int(s.sum())}, "
                f"sizes {int(s.min())}..{int(s.max())})")


def _make(owner: np.ndarray, n_parts: int, name: str, **params) -> Partition:
    """Partition from ``owner[j]`` = client of sample j, -1 for a sample left out (indices come out sorted)."""
    kept = np.flatnonzero(owner >= 0)
    order = kept[np.argsort(owner[kept], kind="stable")]
    cuts = np.cumsum(np.bincount(owner[kept], minlength=n_parts))[:-1]
    return Partition(tuple(np.split(order.astype(np.int64), cuts)), name, params)


def _from_lists(parts, n: int, name: str, **params) -> Partition:
    owner = np.empty(n, dtype=np.int64)
    for i, idx in enumerate(parts):
        owner[idx] = i
    return _make(owner, len(parts), name, **params)


def _setup(y, num_clients, seed, *, labels=True):
    """Checked ``(y, num_clients, seed)``."""
    y = chk.labels("y", y) if labels else _targets(y)
    num_clients = chk.integer("num_clients", num_clients, low=1)
    seed = seed_value("seed", seed)
    if num_clients > len(y):
        chk.fail("num_clients", f"at most the number of samples ({len(y)})", num_clients)
    return y, num_clients, seed


def _classes(y: np.ndarray):
    """``(classes, by_class)``: the sorted distinct labels and, per class, its sample indices (sorted).

    O(n log n) whatever the label values (no array of size max(y) + 1)."""
    classes, inv = np.unique(y, return_inverse=True)
    inv = inv.ravel()
    order = np.argsort(inv, kind="stable").astype(np.int64)
    return classes, np.split(order, np.cumsum(np.bincount(inv, minlength=len(classes)))[:-1])


def _even(total: int, parts: int) -> np.ndarray:
    """Sizes of ``np.array_split(range(total), parts)``: the first ``total % parts`` one larger."""
    return total // parts + (np.arange(parts) < total % parts)


def _targets(y) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        chk.fail("y", "a 1-D array", f"array of shape {y.shape}")
    return y


def _split_counts(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``weights`` (largest remainders)."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    extra = np.argsort(counts - exact, kind="stable")[: total - counts.sum()]
    counts[extra] += 1
    return counts


def iid(y, num_clients: int, seed: int = 0) -> Partition:
    """IID: a seeded random permutation cut into ``num_clients`` near-equal parts (sizes differ by <= 1).

    Labels are not used, so ``y`` may also be a regression target. The baseline of McMahan et al.
    2017 ("Communication-Efficient Learning of Deep Networks from Decentralized Data") and NIID-Bench.
    """
    y, num_clients, seed = _setup(y, num_clients, seed, labels=False)
    rng = _rng(seed, _IID)
    return _from_lists(np.array_split(rng.permutation(len(y)), num_clients), len(y), "iid",
                       num_clients=num_clients, seed=seed)


def _alpha_per_class(alpha, classes: np.ndarray) -> tuple[np.ndarray, object]:
    """(alpha of each present class, the JSON-able value to record)."""
    if np.ndim(alpha) == 0:
        a = chk.real("alpha", alpha, low=0, low_open=True)
        return np.full(len(classes), a), a
    try:
        arr = np.asarray(alpha, dtype=float)
    except (TypeError, ValueError):
        chk.fail("alpha", "a positive number or a sequence of positive numbers", alpha)
    by_value = int(classes[-1]) + 1
    if arr.shape not in ((len(classes),), (by_value,)):
        chk.fail("alpha", f"a positive number or one per class: {len(classes)} values (one per label "
                 f"present, in sorted order) or {by_value} (one per label 0..{by_value - 1})", alpha)
    if not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
        chk.fail("alpha", "positive and finite", alpha)
    return (arr if len(arr) == len(classes) else arr[classes]), arr.tolist()


def dirichlet(y, num_clients: int, alpha, seed: int = 0, min_size: int = 1) -> Partition:
    """Label-distribution skew by per-class Dirichlet proportions (NIID-Bench "p_k ~ Dir(beta)").

    For each class k: draw q_k ~ Dir(alpha_k * 1_N) over the N clients, shuffle the class's n_k
    samples and cut them at floor(n_k * cumsum(q_k)), so client i gets about q_k[i] * n_k of them.
    Small ``alpha`` puts each class on few clients; large ``alpha`` approaches IID. ``alpha`` is a
    scalar, one value per label present (in sorted order) or one per label 0..max(y). Class k's
    draws come from its own stream (seed, draw, label). The whole draw is repeated until every
    client has at least ``min_size`` samples, at most 100 times, then a ValueError says it cannot
    be met. (NIID-Bench's code also zeroes q_k[i] for clients already above n/N; we do not, like
    Flower Datasets' ``DirichletPartitioner`` default.)

    Li, Diao, Chen, He 2022, "Federated Learning on Non-IID Data Silos: An Experimental Study",
    ICDE; Yurochkin et al. 2019, "Bayesian Nonparametric Federated Learning of Neural Networks", ICML.
    """
    y, num_clients, seed = _setup(y, num_clients, seed)
    classes, by_class = _classes(y)
    alpha_arr, alpha_out = _alpha_per_class(alpha, classes)
    min_size = chk.integer("min_size", min_size, low=0)
    if num_clients * min_size > len(y):
        chk.fail("min_size", f"at most n / num_clients = {len(y)} / {num_clients} "
                 "(every client needs min_size samples)", min_size)
    smallest = 0
    for draw in range(MAX_DRAWS):
        owner = np.empty(len(y), dtype=np.int64)
        for k, idx in enumerate(by_class):
            rng = _rng(seed, _DIRICHLET, draw, classes[k])
            q = rng.dirichlet(np.full(num_clients, alpha_arr[k]))
            cuts = (np.cumsum(q) * len(idx)).astype(np.int64)[:-1]
            counts = np.diff(np.concatenate(([0], cuts, [len(idx)])))
            owner[rng.permutation(idx)] = np.repeat(np.arange(num_clients), counts)
        smallest = max(smallest, int(np.bincount(owner, minlength=num_clients).min()))
        if smallest >= min_size:
            return _make(owner, num_clients, "dirichlet", num_clients=num_clients,
                         alpha=alpha_out, seed=seed, min_size=min_size)
    raise ValueError(
        f"min_size={min_size} cannot be met: in {MAX_DRAWS} draws of Dir(alpha={alpha}) over "
        f"num_clients={num_clients} the smallest client never got more than {smallest} samples; "
        "use a larger alpha, fewer clients or a smaller min_size")


def pathological(y, num_clients: int, classes_per_client: int, seed: int = 0,
                 scheme: str = "balanced") -> Partition:
    """Each client holds exactly ``classes_per_client`` (k) of the C labels present: the
    pathological non-IID of McMahan et al. 2017, in one of two ``scheme``s.

    - ``"balanced"``: clients pick in turn; client i takes the k classes held by the fewest
      clients so far, ties broken at random. So every class is held by floor or ceil of N*k/C
      clients, the first ceil(C/k) clients already cover all classes, and class combinations vary
      (a fixed round-robin would repeat the same disjoint groups). Needs N*k >= C.
    - ``"niid_bench"``: the "#C=k" label-quantity skew of NIID-Bench (Li, Diao, Chen, He 2022,
      "Federated Learning on Non-IID Data Silos: An Experimental Study", ICDE): client i's first
      label is label i mod C (the (i mod C)-th smallest present), then k-1 further distinct labels
      are drawn uniformly at random without replacement among the other C-1 (client i's own
      stream). How many clients hold a label is left to chance. A label no client holds (possible
      when N < C) is left out: its samples reach no client, so the partition covers fewer than n
      samples. NIID-Bench's code (``partition_data``, ``noniid-#label{k}``) assigns the same way;
      it is only run with N >= C, where every label is some client's first one (with an unheld
      label its ``np.array_split(idx, 0)`` fails).

    In both, each class's shuffled samples are split into equal parts (sizes differ by <= 1) among
    the clients that hold it. Needs k <= C; a client left with no sample is an error.

    Li et al. 2022 (NIID-Bench, ICDE); McMahan et al. 2017, "Communication-Efficient Learning of
    Deep Networks from Decentralized Data", AISTATS.
    """
    scheme = chk.option("scheme", scheme, PATHOLOGICAL_SCHEMES)
    y, num_clients, seed = _setup(y, num_clients, seed)
    classes, by_class = _classes(y)
    C = len(classes)
    k = chk.integer("classes_per_client", classes_per_client, low=1)
    if k > C:
        chk.fail("classes_per_client", f"at most the number of classes present ({C})", k)
    held = np.empty((num_clients, k), dtype=np.int64)  # class positions 0..C-1
    owner = np.full(len(y), -1, dtype=np.int64)
    if scheme == "balanced":
        if num_clients * k < C:
            chk.fail("classes_per_client", f"at least ceil(C / num_clients) = {-(-C // num_clients)} "
                     f"so every one of the {C} classes reaches a client", k)
        rng = _rng(seed, _PATHOLOGICAL)
        load = np.zeros(C, dtype=np.int64)
        for i in range(num_clients):
            pick = np.lexsort((rng.random(C), load))[:k]
            held[i] = pick
            load[pick] += 1
        for c in range(C):
            holders = rng.permutation(np.flatnonzero((held == c).any(axis=1)))
            idx = rng.permutation(by_class[c])
            owner[idx] = np.repeat(holders, _even(len(idx), len(holders)))
    else:
        everyone = np.arange(C)
        for i in range(num_clients):
            first = i % C
            others = _rng(seed, _NIID_BENCH, 0, i).choice(np.delete(everyone, first), k - 1, replace=False)
            held[i] = np.concatenate(([first], others))
        for c in range(C):
            holders = np.flatnonzero((held == c).any(axis=1))  # client order, as NIID-Bench deals them
            if len(holders):
                idx = _rng(seed, _NIID_BENCH, 1, classes[c]).permutation(by_class[c])
                owner[idx] = np.repeat(holders, _even(len(idx), len(holders)))
    part = _make(owner, num_clients, "pathological", num_clients=num_clients,
                 classes_per_client=k, seed=seed, scheme=scheme)
    if part.sizes.min() == 0:
        chk.fail("num_clients", "small enough that every client receives a sample "
                 f"(client {int(part.sizes.argmin())} got none: its classes have too few samples)",
                 num_clients)
    return part


def shards(y, num_clients: int, shards_per_client: int, seed: int = 0) -> Partition:
    """McMahan et al. 2017 (FedAvg, AISTATS), Sec. 3: sort the samples by label (ties in random
    order), cut them into num_clients * shards_per_client contiguous shards of near-equal size, and
    give each client ``shards_per_client`` shards drawn at random without replacement."""
    y, num_clients, seed = _setup(y, num_clients, seed)
    s = chk.integer("shards_per_client", shards_per_client, low=1)
    if num_clients * s > len(y):
        chk.fail("shards_per_client", f"at most n // num_clients = {len(y) // num_clients} "
                 "(every shard needs a sample)", s)
    rng = _rng(seed, _SHARDS)
    shuffled = rng.permutation(len(y))
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]
    pieces = np.array_split(by_label, num_clients * s)
    deal = rng.permutation(num_clients * s).reshape(num_clients, s)
    return _from_lists([np.concatenate([pieces[j] for j in row]) for row in deal], len(y), "shards",
                       num_clients=num_clients, shards_per_client=s, seed=seed)


def quantity_skew(y, num_clients: int, sigma: float, seed: int = 0) -> Partition:
    """Quantity skew: client sizes log-normal, labels left IID.

    Draw w_i ~ LogNormal(0, sigma), give every client 1 sample plus a share w_i / sum_j w_j of the
    other n - N (rounded by largest remainders), then deal a random permutation of the samples in
    those sizes, so every client's label mix stays close to the global one. ``sigma=0`` gives
    sizes differing by at most 1. Labels are not used (``y`` may be a regression target).

    The log-normal "unbalanced" split of FedDyn (Acar et al. 2021, ICLR, ``unbalanced_sgm``);
    NIID-Bench (Li et al. 2022) studies the same skew with Dirichlet sizes.
    """
    y, num_clients, seed = _setup(y, num_clients, seed, labels=False)
    sigma = chk.real("sigma", sigma, low=0)
    rng = _rng(seed, _QUANTITY)
    w = rng.lognormal(0.0, sigma, size=num_clients)
    sizes = 1 + _split_counts(len(y) - num_clients, w)
    cuts = np.cumsum(sizes)[:-1]
    return _from_lists(np.split(rng.permutation(len(y)), cuts), len(y), "quantity_skew",
                       num_clients=num_clients, sigma=sigma, seed=seed)


def inner_dirichlet(y, num_clients: int, alpha: float, seed: int = 0) -> Partition:
    """Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical Data Distribution for Federated
    Visual Classification": equal client sizes, each client's class mix q_i ~ Dir(alpha * p).

    p is the global class frequency (classes present). Sizes are n // N, the first n mod N clients
    one more. Client i's class counts are drawn ~ Multinomial(size_i, q_i); classes asked for more
    than they have are shared out at random (multivariate hypergeometric) among the clients asking,
    and clients still short redraw from q_i renormalised over the classes left (the prior p there,
    if q_i puts no mass on them). Each pass empties at least one class, so at most C + 1 passes.
    Small ``alpha``: each client concentrates on few classes; large ``alpha``: near IID.
    """
    y, num_clients, seed = _setup(y, num_clients, seed)
    alpha = chk.real("alpha", alpha, low=0, low_open=True)
    classes, by_class = _classes(y)
    left = np.array([len(idx) for idx in by_class], dtype=np.int64)
    prior = left / left.sum()
    rng = _rng(seed, _INNER)
    mix = rng.dirichlet(alpha * prior, size=num_clients)
    need = _split_counts(len(y), np.ones(num_clients))
    got = np.zeros((num_clients, len(classes)), dtype=np.int64)
    for _ in range(len(classes) + 1):
        if need.sum() == 0:
            break
        q = mix * (left > 0)
        q = np.where(q.sum(1, keepdims=True) > 0, q, prior * (left > 0))
        ask = np.stack([rng.multinomial(m, row / row.sum()) for m, row in zip(need, q)])
        for c in np.flatnonzero(ask.sum(0) > left):
            ask[:, c] = rng.multivariate_hypergeometric(ask[:, c], left[c])
        got += ask
        need -= ask.sum(1)
        left -= ask.sum(0)
    owner = np.empty(len(y), dtype=np.int64)
    for c, idx in enumerate(by_class):
        owner[rng.permutation(idx)] = np.repeat(np.arange(num_clients), got[:, c])
    return _make(owner, num_clients, "inner_dirichlet", num_clients=num_clients, alpha=alpha, seed=seed)


def natural(groups) -> Partition:
    """One client per distinct group id (a device, a writer, a movie), clients in sorted id order.

    ``part.params["client_ids"][i]`` is client i's group id. LEAF (Caldas et al. 2018) and
    FedProx's synthetic data (Li et al. 2020) partition this way.
    """
    groups = _targets(groups)
    if groups.size == 0:
        chk.fail("groups", "non-empty", "an empty array")
    if groups.dtype.kind == "f" and not np.all(np.isfinite(groups)):
        chk.fail("groups", "free of NaN (every sample needs a group)", "NaN entries")
    try:
        ids, owner = np.unique(groups, return_inverse=True)
    except TypeError:
        chk.fail("groups", "sortable group ids of one type", f"dtype {groups.dtype}")
    return _make(owner.ravel().astype(np.int64), len(ids), "natural", client_ids=ids.tolist())


def _count_matrix(part, y) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, classes)``: (clients, C) label counts over the C distinct labels of ``y`` (sorted)."""
    y = chk.labels("y", y)
    if len(y) == 0:
        chk.fail("y", "non-empty", "an empty array")
    parts = [np.asarray(idx, dtype=np.int64).ravel() for idx in part]
    if not parts:
        chk.fail("part", "a partition with at least one client", part)
    flat = np.concatenate(parts)
    if flat.size and (flat.min() < 0 or flat.max() >= len(y)):
        chk.fail("part", f"indices in [0, {len(y) - 1}] (positions in y)",
                 f"indices in [{flat.min()}, {flat.max()}]")
    classes, inv = np.unique(y, return_inverse=True)
    C = len(classes)
    client = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    counts = np.bincount(client * C + inv.ravel()[flat], minlength=len(parts) * C).reshape(len(parts), C)
    return counts, classes


def label_counts(part, y) -> pd.DataFrame:
    """Tidy table with columns ``client, label, count`` (int64): one row per client and label
    present in ``y`` (its original values, sorted), zeros included. ``part`` is a Partition or any
    sequence of index arrays."""
    counts, classes = _count_matrix(part, y)
    N, C = counts.shape
    return pd.DataFrame({"client": np.repeat(np.arange(N, dtype=np.int64), C),
                         "label": np.tile(classes.astype(np.int64), N),
                         "count": counts.ravel().astype(np.int64)})


def _entropy(p: np.ndarray, log=np.log) -> np.ndarray:
    """Row-wise -sum p log p with 0 log 0 = 0."""
    safe = np.where(p > 0, p, 1.0)
    return -(p * log(safe)).sum(axis=-1)


def heterogeneity(part, y) -> dict:
    """Scalar heterogeneity of a partition.

    With n_ik the count of label k (over the labels present in ``y``) at client i, n_i = sum_k n_ik,
    p_i = n_i. / n_i and the pooled p = sum_i n_i. / sum_i n_i, averaged without weights over the
    non-empty clients:

    - ``js_divergence``: JS(p_i, p) = H(m) - (H(p_i) + H(p)) / 2, m = (p_i + p) / 2, entropies in
      bits, so in [0, 1] (the divergence; scipy's ``jensenshannon`` returns its square root).
    - ``emd``: sum_k |p_i(k) - p(k)|, the L1 "EMD" of Zhao et al. 2018 (twice total variation).
    - ``effective_classes``: exp(H(p_i)), natural log (1 = one class, C = uniform).

    Over all clients' sizes n_1..n_N (empty ones included):

    - ``size_gini``: sum_ij |n_i - n_j| / (2 N^2 mean(n)), 0 = equal sizes.
    - ``size_cv``: std(n) / mean(n), population std.

    Extras: ``effective_clients`` (mean over classes of exp(H) of the class's spread over
    clients: 1 = every class on one client, N = spread evenly), ``empty_clients``, ``num_clients``.
    """
    counts = _count_matrix(part, y)[0].astype(float)
    sizes = counts.sum(axis=1)
    if sizes.sum() == 0:
        chk.fail("part", "a partition holding at least one sample", "only empty clients")
    p = counts.sum(axis=0) / sizes.sum()
    p_i = counts[sizes > 0] / sizes[sizes > 0, None]
    js = _entropy((p_i + p) / 2, np.log2) - (_entropy(p_i, np.log2) + _entropy(p, np.log2)) / 2
    by_class = counts[:, counts.sum(axis=0) > 0].T
    spread = np.exp(_entropy(by_class / by_class.sum(axis=1, keepdims=True)))
    N, mean = len(sizes), sizes.mean()
    ranked = np.sort(sizes)
    gini = 2 * np.sum((2 * np.arange(N) - N + 1) * ranked) / (2 * N**2 * mean)
    return {"js_divergence": float(np.clip(js, 0.0, 1.0).mean()),
            "emd": float(np.abs(p_i - p).sum(axis=1).mean()),
            "effective_classes": float(np.exp(_entropy(p_i)).mean()),
            "size_gini": float(gini),
            "size_cv": float(sizes.std() / mean),
            "effective_clients": float(spread.mean()),
            "empty_clients": int((sizes == 0).sum()),
            "num_clients": int(N)}
