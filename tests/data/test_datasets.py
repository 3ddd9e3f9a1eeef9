"""Datasets, federations and feature-skew transforms."""
import math

import numpy as np
import pytest
import torch

import fedlab_utils as flu


@pytest.mark.parametrize("name, n, d, C", [("digits", 1797, 64, 10), ("breast_cancer", 569, 30, 2),
                                           ("wine", 178, 13, 3)])
def test_bundled_datasets(name, n, d, C):
    ds = flu.data.load_dataset(name)
    assert ds.X.shape == (n, d) and ds.X.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert len(ds.classes) == C and ds.groups is None
    assert torch.isfinite(ds.X).all()
    # standardised: zero mean; unit variance except constant features, which stay 0 (digits)
    assert ds.X.double().mean(0).abs().max() < 1e-5
    std = ds.X.double().std(0, unbiased=False)
    assert (((std - 1).abs() < 1e-4) | (std == 0)).all()


def test_digits_shape_and_constant_pixels():
    ds = flu.data.load_dataset("digits")
    assert ds.shape == (1, 8, 8)
    assert (ds.X.std(0) == 0).sum() >= 1  # constant pixels are centred, not divided by zero


def test_synthetic_is_fedprox_generator():
    ds = flu.data.load_dataset("synthetic", alpha=0.5, beta=0.5, num_clients=12, seed=3)
    assert ds.X.shape[1] == 60 and len(ds.classes) == 10
    assert sorted(np.unique(ds.groups)) == list(range(12))
    sizes = np.bincount(ds.groups)
    assert (sizes >= 50).all()
    again = flu.data.load_dataset("synthetic", alpha=0.5, beta=0.5, num_clients=12, seed=3)
    assert torch.equal(ds.X, again.X) and torch.equal(ds.y, again.y)
    # beta controls how far apart the clients' input means are
    spread = []
    for beta in (0.0, 4.0):
        s = flu.data.load_dataset("synthetic", alpha=0.0, beta=beta, num_clients=20, seed=0)
        means = torch.stack([s.X[torch.as_tensor(s.groups == k)].mean(0) for k in range(20)])
        spread.append(float(means.std(0).mean()))
    assert spread[1] > 2 * spread[0]
    part = flu.partition.natural(ds.groups)
    assert len(part) == 12


def test_federate_splits_every_client():
    ds = flu.data.load_dataset("digits")
    part = flu.partition.dirichlet(ds.y, num_clients=10, alpha=0.5, seed=0)
    fed = flu.data.federate(ds.X, ds.y, part, test_fraction=0.25, seed=1)
    assert fed.num_clients == 10
    assert int(fed.sizes.sum() + fed.test_sizes.sum()) == len(ds.y)
    for i, idx in enumerate(part):
        n = len(idx)
        assert fed.test_sizes[i] == min(round(0.25 * n), n - 1)
    p = fed.weights("samples")
    assert math.isclose(p.sum(), 1.0) and np.allclose(fed.weights("uniform"), 0.1)
    again = flu.data.federate(ds.X, ds.y, part, test_fraction=0.25, seed=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(fed.test, again.test))


def test_add_noise_grows_with_client_index():
    X = torch.zeros(200, 5)
    y = torch.zeros(200, dtype=torch.long)
    fed = flu.data.Federation.from_clients([(X[:50], y[:50]), (X[50:100], y[50:100]), (X[100:], y[100:])])
    noisy = flu.data.add_noise(fed, sigma=3.0, seed=0)
    stds = [float(Xi.std()) for Xi, _ in noisy.train]
    assert stds[0] == 0.0
    assert stds[1] == pytest.approx(1.0, rel=0.2) and stds[2] == pytest.approx(2.0, rel=0.2)


def test_rotate_by_90_degrees_is_exact_turn():
    img = torch.zeros(1, 1, 4, 4)
    img[0, 0, 0, 1] = 1.0
    X = img.reshape(1, 16)
    fed = flu.data.Federation.from_clients([(X, torch.zeros(1, dtype=torch.long))] * 2, shape=(1, 4, 4))
    out = flu.data.rotate(fed, [0.0, 90.0])
    assert torch.equal(out.train[0][0], X)
    turned = out.train[1][0].reshape(4, 4)
    expected = torch.rot90(img[0, 0], k=1)  # counter-clockwise on screen = clockwise in array coordinates
    assert torch.allclose(turned, expected, atol=1e-6) or torch.allclose(turned, torch.rot90(img[0, 0], k=-1),
                                                                        atol=1e-6)


@pytest.mark.parametrize("call, name", [
    (lambda: flu.data.load_dataset("mnist-full"), "name"),
    (lambda: flu.data.load_dataset("digits", alpha=1), "options"),
    (lambda: flu.data.load_dataset("synthetic", alpha=-1), "alpha"),
    (lambda: flu.data.federate(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), [[0, 1], []]), r"part\[1\]"),
    (lambda: flu.data.federate(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), [[0, 9]]), r"part\[0\]"),
    (lambda: flu.data.federate(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), [[0]], test_fraction=1.0),
     "test_fraction"),
    (lambda: flu.data.federate(torch.full((2, 2), float("nan")), torch.zeros(2, dtype=torch.long), [[0, 1]]),
     "X"),
    (lambda: flu.data.add_noise(flu.data.Federation.from_clients([(torch.zeros(2, 2), torch.zeros(2))]), -1.0),
     "sigma"),
])
def test_bad_input(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# ---------------------------------------------------------------- federation validation

def _long(*values):
    return torch.tensor(values, dtype=torch.long)


def test_from_clients_refuses_mixed_example_shapes():
    with pytest.raises(ValueError, match=r"clients\[1\] X.*\(4,\).*clients\[0\].*\(5,\)"):
        flu.data.Federation.from_clients([(torch.zeros(3, 4), _long(0, 1, 0)), (torch.zeros(2, 5), _long(1, 0))])
    with pytest.raises(ValueError, match=r"test\[0\] X.*\(4,\).*\(1, 2, 2\)"):
        flu.data.Federation.from_clients([(torch.zeros(3, 4), _long(0, 1, 0))],
                                         test=[(torch.zeros(2, 1, 2, 2), _long(1, 0))])
    with pytest.raises(ValueError, match=r"train\[1\] X"):  # the constructor checks too
        flu.data.Federation(((torch.zeros(3, 4), _long(0, 1, 0)), (torch.zeros(2, 5), _long(1, 0))),
                            ((torch.zeros(0, 4), _long()), (torch.zeros(0, 5), _long())))
    ok = flu.data.Federation.from_clients([(torch.zeros(3, 4), _long(0, 1, 0)), (torch.zeros(2, 4), _long(1, 0))],
                                          test=[(torch.zeros(0, 4), _long()), (torch.zeros(1, 4), _long(2))])
    assert ok.num_clients == 2


def test_integer_column_labels_are_refused_with_a_hint():
    X, y = torch.zeros(4, 2), _long(0, 1, 1, 0).reshape(-1, 1)
    with pytest.raises(ValueError, match=r"clients\[0\] y.*\(4, 1\).*y\.reshape\(-1\)"):
        flu.data.Federation.from_clients([(X, y)])
    with pytest.raises(ValueError, match=r"y.*\(4, 1\).*y\.reshape\(-1\)"):
        flu.data.federate(X, y, [[0, 1], [2, 3]])
    # float targets of shape (n, 1) are regression and stay allowed
    reg = flu.data.Federation.from_clients([(X, torch.zeros(4, 1))])
    assert reg.train[0][1].shape == (4, 1)


def test_negative_labels_are_refused():
    with pytest.raises(ValueError, match=r"clients\[1\] y must be non-negative class labels, got -2"):
        flu.data.Federation.from_clients([(torch.zeros(2, 2), _long(0, 1)), (torch.zeros(2, 2), _long(-2, 1))])
    with pytest.raises(ValueError, match="y must be non-negative"):
        flu.data.federate(torch.zeros(3, 2), _long(0, -1, 1), [[0, 1, 2]])


def test_x_and_y_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match=r"clients\[0\] y.*3 examples.*2 entries"):
        flu.data.Federation.from_clients([(torch.zeros(3, 2), _long(0, 1))])
    with pytest.raises(ValueError, match=r"test\[0\] y"):
        flu.data.Federation.from_clients([(torch.zeros(2, 2), _long(0, 1))], test=[(torch.zeros(3, 2), _long(0))])
    with pytest.raises(ValueError, match="y must be as long as X"):
        flu.data.federate(torch.zeros(3, 2), _long(0, 1), [[0, 1]])
    with pytest.raises(ValueError, match="test"):
        flu.data.Federation.from_clients([(torch.zeros(2, 2), _long(0, 1))] * 2, test=[(torch.zeros(2, 2), _long(0, 1))])
    with pytest.raises(TypeError, match=r"clients\[0\]"):
        flu.data.Federation.from_clients([torch.zeros(3, 2)])  # not a pair


# ---------------------------------------------------------------- seeds and streams

@pytest.mark.parametrize("bad", [True, 1.5, -1, 2**63])
def test_bad_seeds_are_refused(bad):
    fed = flu.data.Federation.from_clients([(torch.zeros(4, 2), _long(0, 1, 0, 1))])
    for call in (lambda: flu.data.federate(torch.zeros(4, 2), _long(0, 1, 0, 1), [[0, 1, 2, 3]], seed=bad),
                 lambda: flu.data.add_noise(fed, 1.0, seed=bad),
                 lambda: flu.data.synthetic(num_clients=2, seed=bad)):
        with pytest.raises((TypeError, ValueError), match="seed"):
            call()


def test_federate_cut_is_per_client():
    X, y = torch.arange(60, dtype=torch.float32).unsqueeze(1), torch.arange(60) % 3
    two = flu.data.federate(X, y, [range(0, 20), range(20, 40)], test_fraction=0.3, seed=9)
    three = flu.data.federate(X, y, [range(0, 20), range(20, 40), range(40, 60)], test_fraction=0.3, seed=9)
    for a, b in zip(two.test, three.test):  # another client leaves the first two cuts unchanged
        assert torch.equal(a[0], b[0])
    other = flu.data.federate(X, y, [range(0, 20), range(20, 40)], test_fraction=0.3, seed=10)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(two.test, other.test))


def test_add_noise_draws_train_and_test_independently():
    X, y = torch.zeros(30, 3), torch.zeros(30, dtype=torch.long)
    fed = flu.data.Federation.from_clients([(X, y), (X, y)], test=[(X, y), (X, y)])
    noisy = flu.data.add_noise(fed, 1.0, seed=4)
    assert not torch.equal(noisy.train[1][0], noisy.test[1][0])  # same length, other draw
    again = flu.data.add_noise(fed, 1.0, seed=4)
    assert torch.equal(noisy.train[1][0], again.train[1][0]) and torch.equal(noisy.test[1][0], again.test[1][0])
    assert noisy.splits == fed.splits and noisy.num_clients == 2


def test_synthetic_devices_do_not_depend_on_the_device_count():
    small = flu.data.synthetic(num_clients=3, dim=5, seed=2)
    large = flu.data.synthetic(num_clients=5, dim=5, seed=2)
    n = len(small.y)
    assert torch.equal(small.X, large.X[:n]) and torch.equal(small.y, large.y[:n])
    assert np.array_equal(small.groups, large.groups[:n])
