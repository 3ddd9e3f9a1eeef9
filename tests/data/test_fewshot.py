"""Few-shot protocol: support/query disjointness, K-shot counts, strictness, prototypes."""
import numpy as np
import pytest
import torch

import fedlab_utils as flu


@pytest.fixture(scope="module")
def digits_fed():
    ds = flu.data.load_dataset("digits")
    part = flu.partition.dirichlet(ds.y, num_clients=8, alpha=0.3, seed=0)
    return flu.data.federate(ds.X, ds.y, part, seed=0, shape=ds.shape)


def test_k_shot_counts_and_disjoint(digits_fed):
    few = flu.fewshot.k_shot(digits_fed, shots=5, seed=1)
    fed = few.federation
    assert fed.splits == ("support", "query")
    for i, ((Xs, ys), (Xq, yq)) in enumerate(zip(fed.train, fed.test)):
        rows = few.table[few.table.client == i]
        for _, r in rows.iterrows():
            assert int((ys == r.label).sum()) == min(5, r.available) == r.support
            assert int((yq == r.label).sum()) == r.available - r.support == r.query
        assert len(Xs) + len(Xq) == len(digits_fed.train[i][1]) + len(digits_fed.test[i][1])


def test_support_and_query_are_disjoint():
    ids = torch.arange(200, dtype=torch.float32).unsqueeze(1)  # each example carries its own id
    y = torch.arange(200) % 4
    fed = flu.data.Federation.from_clients([(ids[:120], y[:120])], test=[(ids[120:], y[120:])])
    few = flu.fewshot.k_shot(fed, shots=7, seed=5)
    s = set(few.federation.train[0][0].ravel().tolist())
    q = set(few.federation.test[0][0].ravel().tolist())
    assert len(s) == 28 and not s & q and s | q == set(range(200))


def test_k_shot_seeded_and_composable(digits_fed):
    a = flu.fewshot.k_shot(digits_fed, shots=3, seed=2).federation
    b = flu.fewshot.k_shot(digits_fed, shots=3, seed=2).federation
    c = flu.fewshot.k_shot(digits_fed, shots=3, seed=3).federation
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a.train, b.train))
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(a.train, c.train))
    noisy = flu.data.add_noise(digits_fed, 0.5, seed=0)
    few = flu.fewshot.k_shot(noisy, shots=2, query=3, seed=0)
    assert (few.table["query"] <= 3).all()
    hist = flu.run(flu.models.mlp(64, 16, 10), few.federation, num_rounds=2, progress=False)
    assert set(hist.metrics.split) == {"support", "query"}


def test_short_classes_and_strict():
    X = torch.randn(7, 3)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    fed = flu.data.Federation.from_clients([(X, y)])
    few = flu.fewshot.k_shot(fed, shots=3, seed=0)
    t = few.table.set_index("label")
    assert list(t.support) == [3, 2, 1] and list(t["query"]) == [1, 0, 0]
    with pytest.raises(ValueError, match="client 0, class 1"):
        flu.fewshot.k_shot(fed, shots=3, strict=True)
    with pytest.raises(ValueError, match="shots"):
        flu.fewshot.k_shot(fed, shots=0)


def test_episode_and_unseen(digits_fed):
    ds = flu.data.load_dataset("digits")
    Xs, ys, Xq, yq, classes = flu.fewshot.episode(ds.X, ds.y, n_way=5, shots=2, query=4, seed=0)
    assert Xs.shape == (10, 64) and Xq.shape == (20, 64) and len(set(classes)) == 5
    assert torch.equal(ys, torch.arange(5).repeat_interleave(2))
    with pytest.raises(ValueError, match="n_way"):
        flu.fewshot.episode(ds.X, ds.y, n_way=11, shots=1)
    seen, unseen, ids = flu.fewshot.split_clients(digits_fed, 2, seed=0)
    assert seen.num_clients == 6 and unseen.num_clients == 2 and len(ids) == 2
    base, novel = flu.fewshot.base_novel_split(range(10), 4)
    assert list(novel) == [6, 7, 8, 9] and list(base) == [0, 1, 2, 3, 4, 5]


def test_prototypes_equal_pooled_class_means(digits_fed):
    body = torch.nn.Identity()
    head, info = flu.fewshot.prototype_classifier(body, digits_fed, num_classes=10)
    X, y = digits_fed.pooled("train")
    for c in range(10):
        torch.testing.assert_close(info["prototypes"][c], X[y == c].double().mean(0), rtol=0, atol=1e-6)
    # nearest-mean prediction equals the argmax of the linear head
    d = torch.cdist(X.double(), info["prototypes"])
    assert torch.equal(head(X).argmax(1), d.argmin(1))
    held = sum(len(torch.unique(y_i)) for _, y_i in digits_fed.train)
    assert info["bytes_up"] == held * (64 * 4 + 8)


# ---------------------------------------------------------------- seeds and streams

@pytest.mark.parametrize("bad", [True, 2.0, -1, 2**63])
def test_bad_seeds_are_refused(digits_fed, bad):
    ds = flu.data.load_dataset("digits")
    for call in (lambda: flu.fewshot.k_shot(digits_fed, shots=2, seed=bad),
                 lambda: flu.fewshot.episode(ds.X, ds.y, n_way=3, shots=1, seed=bad),
                 lambda: flu.fewshot.split_clients(digits_fed, 2, seed=bad),
                 lambda: flu.fewshot.base_novel_split(range(10), 3, seed=bad)):
        with pytest.raises((TypeError, ValueError), match="seed"):
            call()


def test_base_novel_split_seeded():
    base, novel = flu.fewshot.base_novel_split(range(20), 5, seed=3)
    assert len(novel) == 5 and sorted(set(base) | set(novel)) == list(range(20)) and not set(base) & set(novel)
    again = flu.fewshot.base_novel_split(range(20), 5, seed=3)
    assert np.array_equal(novel, again[1])
    assert len({tuple(flu.fewshot.base_novel_split(range(20), 5, seed=s)[1]) for s in range(6)}) > 1
    # seed=None draws nothing: the largest ids are novel
    assert list(flu.fewshot.base_novel_split([5, 1, 9, 3], 2)[1]) == [5, 9]


def test_k_shot_draws_per_client_and_class():
    ds = flu.data.load_dataset("digits")
    fed = flu.data.federate(ds.X, ds.y, flu.partition.iid(ds.y, 4, seed=0), seed=0)
    whole = flu.fewshot.k_shot(fed, shots=3, seed=7).federation
    some = flu.fewshot.k_shot(fed, shots=3, seed=7, classes=[2, 5]).federation
    for (Xw, yw), (Xs, ys) in zip(whole.train, some.train):  # dropping classes leaves the others' draws
        for c in (2, 5):
            assert torch.equal(Xw[yw == c], Xs[ys == c])


def test_episode_with_sparse_labels():
    y = torch.tensor([0, 7, 100000] * 10)
    X = torch.arange(30, dtype=torch.float32).unsqueeze(1)
    Xs, ys, Xq, yq, classes = flu.fewshot.episode(X, y, n_way=2, shots=2, query=3, seed=1)
    assert set(classes.tolist()) <= {0, 7, 100000} and len(classes) == 2
    for new, c in enumerate(classes):
        assert (y[Xs[ys == new].long().ravel()] == c).all() and (y[Xq[yq == new].long().ravel()] == c).all()


def test_prototype_classifier_checks_num_classes(digits_fed):
    with pytest.raises(ValueError, match="num_classes"):
        flu.fewshot.prototype_classifier(torch.nn.Identity(), digits_fed, num_classes=5)
