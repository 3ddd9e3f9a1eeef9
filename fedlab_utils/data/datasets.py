"""Datasets and federations.

``load_dataset`` returns a :class:`Dataset` (whole data, before partitioning); ``federate`` cuts it
into a :class:`Federation` (per-client train/test tensors) with a partition from
``flu.partition``. Feature skew (``add_noise``, ``rotate``) maps a federation to a new one.

Random draws come from the package's one seeded stream (``flu._core.random``): ``synthetic`` and
``add_noise`` from (seed, client, DATA), ``federate``'s train/test cut from (seed, client, SPLIT),
so one client's draw never depends on the others. Seeds are ints in [0, 2**63).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .._core import checks as chk
from .._core.random import DATA, SPLIT, np_stream, seed_value, stream

DATASETS = ("digits", "breast_cancer", "wine", "synthetic")
SPLITS = ("train", "test", "val", "support", "query")


@dataclass(frozen=True)
class Dataset:
    """A whole labelled data set. ``X`` float32 ``(N, d)`` (images flat, ``shape`` gives (C, H, W)),
    ``y`` int64 labels, ``classes`` their names, ``groups`` a natural client id per sample or None."""

    X: torch.Tensor
    y: torch.Tensor
    classes: list
    name: str
    shape: tuple
    groups: np.ndarray | None = None

    def __len__(self):
        return len(self.y)

    def __repr__(self):
        g = "" if self.groups is None else f", groups={len(np.unique(self.groups))}"
        return f"Dataset({self.name!r}, N={len(self.y)}, shape={self.shape}, classes={len(self.classes)}{g})"


def standardize(X: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per feature; constant features (digits' blank pixels) are only centred."""
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    std[std == 0] = 1.0
    return (X - mean) / std


def load_dataset(name: str = "digits", *, standardized: bool = True, **options) -> Dataset:
    """Load a bundled or generated data set by name.

    - ``"digits"``: scikit-learn's 1,797 8x8 handwritten digits (UCI, CC BY 4.0), 10 classes.
    - ``"breast_cancer"``: Wisconsin diagnostic, 569 x 30, 2 classes (a small cross-silo case).
    - ``"wine"``: 178 x 13, 3 cultivars.
    - ``"synthetic"``: FedProx's synthetic(alpha, beta) (Li et al. 2020, MLSys, Sec. 5.1), options
      ``alpha``, ``beta`` (default 1, 1), ``num_clients`` (30), ``seed`` (0); ``groups`` = device.
    """
    chk.option("name", name, DATASETS)
    if name == "synthetic":
        return synthetic(**options)
    if options:
        chk.fail("options", f"empty for dataset {name!r} (only 'synthetic' takes options)", options)
    from sklearn import datasets as skd

    loader = {"digits": skd.load_digits, "breast_cancer": skd.load_breast_cancer, "wine": skd.load_wine}[name]
    bunch = loader()
    X = bunch.data.astype(np.float64)
    if standardized:
        X = standardize(X)
    shape = (1, 8, 8) if name == "digits" else (X.shape[1],)
    classes = [str(c) for c in bunch.target_names]
    return Dataset(torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(bunch.target, dtype=torch.int64),
                   classes, name, shape, None)


def synthetic(alpha: float = 1.0, beta: float = 1.0, num_clients: int = 30, *, dim: int = 60,
              num_classes: int = 10, seed: int = 0) -> Dataset:
    """FedProx's synthetic(alpha, beta): device k draws u_k ~ N(0, alpha), B_k ~ N(0, beta),
    W_k, b_k ~ N(u_k, 1), v_k ~ N(B_k, 1); x ~ N(v_k, diag(j^-1.2)), y = argmax(W_k x + b_k).

    ``alpha`` controls how much the local models differ, ``beta`` how much the local inputs
    differ. Sizes follow FedProx's generator: lognormal(4, 2) + 50 samples per device (at most
    5,000). Device k draws its size and data from its own stream (seed, k, DATA), so adding
    devices leaves the first ones unchanged.
    """
    alpha = chk.real("alpha", alpha, low=0)
    beta = chk.real("beta", beta, low=0)
    num_clients = chk.integer("num_clients", num_clients, low=1)
    dim = chk.integer("dim", dim, low=1)
    num_classes = chk.integer("num_classes", num_classes, low=2)
    seed = seed_value("seed", seed)
    sigma = np.arange(1, dim + 1, dtype=np.float64) ** -1.2
    Xs, ys, gs = [], [], []
    for k in range(num_clients):
        rng = np_stream(seed, k, DATA)
        size = min(int(rng.lognormal(4, 2)) + 50, 5000)
        u = rng.normal(0, math.sqrt(alpha))
        b_k = rng.normal(0, math.sqrt(beta))
        W = rng.normal(u, 1, (num_classes, dim))
        b = rng.normal(u, 1, num_classes)
        v = rng.normal(b_k, 1, dim)
        x = v + rng.normal(size=(size, dim)) * np.sqrt(sigma)
        Xs.append(x)
        ys.append(np.argmax(x @ W.T + b, axis=1))
        gs.append(np.full(size, k))
    return Dataset(torch.as_tensor(np.concatenate(Xs), dtype=torch.float32),
                   torch.as_tensor(np.concatenate(ys), dtype=torch.int64),
                   [str(c) for c in range(num_classes)], f"synthetic({alpha:g},{beta:g})", (dim,),
                   np.concatenate(gs).astype(np.int64))


Pair = tuple[torch.Tensor, torch.Tensor]


def _check_xy(x_name: str, y_name: str, X: torch.Tensor, y: torch.Tensor) -> None:
    """One client's (or a whole data set's) inputs and targets: equal length, finite, and integer
    labels as a 1-D tensor of non-negative class ids (float targets are regression, any shape)."""
    if X.dim() == 0:
        chk.fail(x_name, "a tensor with one row per example", "a 0-d tensor")
    if y.dim() == 0:
        chk.fail(y_name, "a tensor with one entry per example", "a 0-d tensor")
    if len(X) != len(y):
        chk.fail(y_name, f"as long as {x_name} ({len(X)} examples)", f"{len(y)} entries")
    chk.finite_tensor(x_name, X)
    chk.finite_tensor(y_name, y)
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        return
    if y.dim() == 2 and y.shape[1] == 1:
        raise ValueError(f"{y_name} must be a 1-D tensor of class labels, got shape {tuple(y.shape)}; "
                         "use y.reshape(-1)")
    if y.numel() and int(y.min()) < 0:
        chk.fail(y_name, "non-negative class labels", int(y.min()))


def _check_pairs(groups) -> None:
    """``groups``: (name, pairs) per split. Every pair is (X, y) tensors passing :func:`_check_xy`,
    and all X (all y) of all splits share one per-example shape ``t.shape[1:]``."""
    first = {}
    for name, pairs in groups:
        for i, pair in enumerate(pairs):
            where = f"{name}[{i}]"
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)):
                raise TypeError(f"{where} must be a pair of tensors (X, y), got {type(pair).__name__}")
            X, y = pair
            _check_xy(f"{where} X", f"{where} y", X, y)
            for part, t in (("X", X), ("y", y)):
                shape = tuple(t.shape[1:])
                ref, ref_where = first.setdefault(part, (shape, where))
                if shape != ref:
                    raise ValueError(f"{where} {part} must have examples of shape {ref} like {ref_where} "
                                     f"{part} (one shape across clients and splits), got examples of shape "
                                     f"{shape}")


def _as_pairs(name: str, pairs) -> tuple:
    out = []
    for i, pair in enumerate(pairs):
        try:
            X, y = pair
        except (TypeError, ValueError):
            raise TypeError(f"{name}[{i}] must be a pair (X, y), got {type(pair).__name__}") from None
        out.append((torch.as_tensor(X), torch.as_tensor(y)))
    return tuple(out)


@dataclass(frozen=True)
class Federation:
    """Per-client tensors: ``train[i] = (X_i, y_i)`` and ``test[i]`` (possibly empty).

    p_i of the federated objective F = sum_i p_i F_i: ``weights("samples")`` = n_i / n,
    ``weights("uniform")`` = 1 / N. Checked at construction: every X of every client and split
    has one per-example shape (likewise y), X and y have equal lengths and finite values, and
    integer labels are 1-D and non-negative (whether they fit the model is ``flu.run``'s check).
    """

    train: tuple
    test: tuple
    name: str = "federation"
    shape: tuple | None = None
    meta: dict = field(default_factory=dict)
    splits: tuple = ("train", "test")  # names in History.metrics; few-shot: ("support", "query")

    def __post_init__(self):
        if len(self.train) == 0:
            chk.fail("clients", "a non-empty list of (X, y) pairs", list(self.train))
        if len(self.test) != len(self.train):
            chk.fail("test", f"one (X, y) pair per client ({len(self.train)})", f"{len(self.test)} pairs")
        _check_pairs((("train", self.train), ("test", self.test)))
        if len(self.splits) != 2 or any(s not in SPLITS for s in self.splits):
            chk.fail("splits", f"two names from {SPLITS}", self.splits)
        for i, (X, _) in enumerate(self.train):
            if len(X) == 0:
                chk.fail(f"client {i}", "given at least one training example", "0 examples")

    @classmethod
    def from_clients(cls, clients, test=None, *, name: str = "federation", shape=None) -> "Federation":
        """Build from explicit per-client ``(X, y)`` tensors (or arrays); all of them train.
        ``test`` optional (one pair per client). Refused with a ValueError naming the client: X of
        another per-example shape than the other clients', X and y of different lengths,
        non-finite values, integer labels that are negative or of shape (n, 1)."""
        train = _as_pairs("clients", clients)
        test = tuple((X[:0], y[:0]) for X, y in train) if test is None else _as_pairs("test", test)
        if len(test) != len(train):
            chk.fail("test", f"one (X, y) pair per client ({len(train)})", f"{len(test)} pairs")
        _check_pairs((("clients", train), ("test", test)))
        return cls(train, test, name, shape)

    @property
    def num_clients(self) -> int:
        return len(self.train)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(y) for _, y in self.train], dtype=np.int64)

    @property
    def test_sizes(self) -> np.ndarray:
        return np.array([len(y) for _, y in self.test], dtype=np.int64)

    def weights(self, kind: str = "samples") -> np.ndarray:
        """p_i: ``"samples"`` n_i / n, ``"uniform"`` 1 / N."""
        chk.option("weights", kind, ("samples", "uniform"))
        n = self.sizes.astype(np.float64)
        return n / n.sum() if kind == "samples" else np.full(len(n), 1.0 / len(n))

    def pooled(self, split: str = "train") -> Pair:
        pairs = self.train if chk.option("split", split, ("train", "test")) == "train" else self.test
        return torch.cat([X for X, _ in pairs]), torch.cat([y for _, y in pairs])

    def map(self, fn, *, name: str | None = None) -> "Federation":
        """A new federation with ``X -> fn(i, X)`` applied to client i's train and test inputs."""
        train = tuple((fn(i, X), y) for i, (X, y) in enumerate(self.train))
        test = tuple((fn(i, X), y) for i, (X, y) in enumerate(self.test))
        return Federation(train, test, name or self.name, self.shape, dict(self.meta), self.splits)

    def __repr__(self):
        return (f"Federation({self.name!r}, clients={self.num_clients}, train={int(self.sizes.sum())}, "
                f"test={int(self.test_sizes.sum())})")


def federate(X, y, part, test_fraction: float = 0.2, seed: int = 0, *, name: str | None = None,
             shape=None) -> Federation:
    """Cut ``(X, y)`` into a federation along ``part`` (a list of index arrays, one per client).

    Each client's indices are shuffled by its own stream (seed, client, SPLIT) and the first
    ``round(test_fraction * n_i)`` go to its test split, keeping at least one for training.
    ``y`` of integer labels must be 1-D and non-negative (float targets: regression).
    """
    test_fraction = chk.real("test_fraction", test_fraction, low=0, high=1, high_open=True)
    seed = seed_value("seed", seed)
    if isinstance(X, Dataset):
        raise TypeError("X must be a tensor; pass ds.X, ds.y (and shape=ds.shape)")
    X = torch.as_tensor(X)
    y = torch.as_tensor(y)
    _check_xy("X", "y", X, y)
    parts = [np.asarray(p, dtype=np.int64) for p in part]
    if not parts:
        chk.fail("part", "a non-empty list of index arrays", part)
    train, test = [], []
    for i, idx in enumerate(parts):
        if idx.size == 0:
            chk.fail(f"part[{i}]", "non-empty (every client needs a training example)", "0 indices")
        if idx.min() < 0 or idx.max() >= len(y):
            chk.fail(f"part[{i}]", f"indices in [0, {len(y) - 1}]", f"[{idx.min()}, {idx.max()}]")
        idx = np_stream(seed, i, SPLIT).permutation(idx)
        n_test = min(int(round(test_fraction * idx.size)), idx.size - 1)
        te, tr = np.sort(idx[:n_test]), np.sort(idx[n_test:])
        train.append((X[tr], y[tr]))
        test.append((X[te], y[te]))
    return Federation(tuple(train), tuple(test), name or "federation", shape)


def add_noise(fed: Federation, sigma: float, *, seed: int = 0) -> Federation:
    """Feature skew by noise (NIID-Bench, Li et al. 2022): client i adds N(0, (sigma * i / N)^2)
    to every input, so clients see the same labels through increasingly noisy sensors. The noise
    of client i's split s (0 train, 1 test) comes from its own stream (seed, i, s, DATA)."""
    if not isinstance(fed, Federation):
        raise TypeError(f"fed must be an flu.data.Federation, got {type(fed).__name__}")
    sigma = chk.real("sigma", sigma, low=0)
    seed = seed_value("seed", seed)
    N = fed.num_clients

    def noisy(i, split, X):
        if not X.is_floating_point():
            chk.fail("fed", "a federation with floating-point inputs X", f"client {i} X of dtype {X.dtype}")
        noise = torch.randn(X.shape, generator=stream(seed, i, split, DATA), dtype=X.dtype)
        return X + (sigma * i / N) * noise

    train = tuple((noisy(i, 0, X), y) for i, (X, y) in enumerate(fed.train))
    test = tuple((noisy(i, 1, X), y) for i, (X, y) in enumerate(fed.test))
    return Federation(train, test, f"{fed.name}+noise({sigma:g})", fed.shape, dict(fed.meta), fed.splits)


def rotate(fed: Federation, degrees, *, shape=None) -> Federation:
    """Feature skew by rotation ("rotated MNIST"): client i's images are rotated by ``degrees[i]``.

    ``degrees`` is one angle per client, or a number ``d`` meaning client i gets ``d * i / (N - 1)``.
    Bilinear resampling with zero padding (``torch.nn.functional.grid_sample``).
    """
    if not isinstance(fed, Federation):
        raise TypeError(f"fed must be an flu.data.Federation, got {type(fed).__name__}")
    shape = shape or fed.shape
    if shape is None or len(shape) != 3:
        chk.fail("shape", "an image shape (C, H, W) (pass shape= or federate with shape=)", shape)
    N = fed.num_clients
    if isinstance(degrees, (int, float)) and not isinstance(degrees, bool):
        degrees = [float(degrees) * i / max(N - 1, 1) for i in range(N)]
    degrees = [chk.real("degrees", d) for d in degrees]
    if len(degrees) != N:
        chk.fail("degrees", f"one angle per client ({N})", f"{len(degrees)} angles")

    def turn(i, X):
        if len(X) == 0 or degrees[i] == 0:
            return X.clone()
        img = X.reshape(len(X), *shape)
        t = math.radians(degrees[i])
        theta = torch.tensor([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]], dtype=X.dtype)
        grid = torch.nn.functional.affine_grid(theta.expand(len(X), 2, 3), list(img.shape), align_corners=False)
        out = torch.nn.functional.grid_sample(img, grid, align_corners=False)
        return out.reshape(X.shape)

    return fed.map(turn, name=f"{fed.name}+rotate")
