"""flu.privacy.invert_gradients / reconstruction_error: DLG and iDLG on one digits example."""
import math

import pytest
import torch
import torch.nn.functional as F

import fedlab_utils as flu
from fedlab_utils.privacy import DPFedAvg, idlg_labels, invert_gradients, reconstruction_error


@pytest.fixture(scope="module")
def digits():
    return flu.data.load_dataset("digits")


def _grads(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    loss = F.cross_entropy(model(x), y)
    return dict(zip(names, torch.autograd.grad(loss, list(model.parameters()))))


def test_one_example_is_recovered_from_its_gradient(digits):
    x, y = digits.X[5:6], digits.y[5:6]
    model = flu.models.mlp(64, 32, 10, seed=0)
    grads = _grads(model, x, y)
    rec, losses = invert_gradients(model, grads, 1, 10, (64,), steps=20, seed=0)
    assert rec.labels.tolist() == y.tolist()  # iDLG's label
    err = reconstruction_error(x, rec.inputs)
    assert err["relative_mse"] < 0.05
    assert list(losses.columns) == ["step", "loss"] and losses["loss"].iloc[-1] < losses["loss"].iloc[0]
    assert all(p.grad is None for p in model.parameters())  # the model is used, not changed


def test_optimised_labels_and_cosine_distance_also_recover_it(digits):
    x, y = digits.X[9:10], digits.y[9:10]
    model = flu.models.mlp(64, 16, 10, activation="sigmoid", seed=1)
    grads = list(_grads(model, x, y).values())
    rec, _ = invert_gradients(model, grads, 1, 10, (64,), steps=15, label_strategy="optimize", seed=2)
    assert rec.labels.tolist() == y.tolist()
    assert reconstruction_error(x, rec.inputs)["relative_mse"] < 0.05
    rec, _ = invert_gradients(model, grads, 1, 10, (64,), steps=15, distance="cosine", seed=2)
    assert reconstruction_error(x, rec.inputs)["relative_mse"] < 0.05


def test_an_update_is_inverted_like_its_gradient(digits):
    x, y = digits.X[:1], digits.y[:1]
    model = flu.models.mlp(64, 32, 10, seed=0)
    grads = _grads(model, x, y)
    update = {k: -0.1 * g for k, g in grads.items()}
    rec, _ = invert_gradients(model, update, 1, 10, (64,), steps=20, update_lr=0.1)
    assert reconstruction_error(x, rec.inputs)["relative_mse"] < 0.05


def test_clipping_and_heavy_noise_defeat_the_attack(digits):
    x, y = digits.X[5:6], digits.y[5:6]
    model = flu.models.mlp(64, 32, 10, seed=0)
    grads = _grads(model, x, y)
    clean, _ = invert_gradients(model, grads, 1, 10, (64,), steps=20)
    dp = DPFedAvg(clip=0.1, noise_multiplier=1.0)
    clipped, norms = dp.clip_updates({k: g[None] for k, g in grads.items()})
    assert norms.item() > 1.0  # really clipped
    noisy = dp.aggregate(clipped, torch.ones(1), torch.Generator().manual_seed(0), max_weight=1.0)
    rec, _ = invert_gradients(model, noisy, 1, 10, (64,), steps=20)
    bad = reconstruction_error(x, rec.inputs)
    assert bad["relative_mse"] > 0.5
    assert bad["relative_mse"] > 1e3 * reconstruction_error(x, clean.inputs)["relative_mse"]


def test_idlg_reads_distinct_labels_of_a_batch(digits):
    idx = [0, 1, 2, 3]  # labels 0, 1, 2, 3
    x, y = digits.X[idx], digits.y[idx]
    model = flu.models.mlp(64, 32, 10, seed=0)
    grads = _grads(model, x, y)
    assert idlg_labels(list(grads.values()), list(grads), 4, 10).tolist() == sorted(y.tolist())


def test_reconstruction_error_matches_the_best_permutation():
    g = torch.Generator().manual_seed(0)
    orig = torch.randn(4, 8, generator=g, dtype=torch.float64)
    perm = [2, 0, 3, 1]
    noise = 0.01 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    rec = orig[perm] + noise
    err = reconstruction_error(orig, rec)
    inverse = [perm.index(i) for i in range(4)]
    assert err["order"] == inverse
    hand = float(((orig - rec[inverse]) ** 2).mean())
    assert err["mse"] == pytest.approx(hand, rel=1e-12)
    assert err["relative_mse"] == pytest.approx(hand / float(orig.var(unbiased=False)), rel=1e-12)
    rng = float(orig.max() - orig.min())
    assert err["psnr"] == pytest.approx(10 * math.log10(rng**2 / hand), rel=1e-12)
    assert reconstruction_error(orig, orig)["psnr"] == math.inf


def test_bad_arguments_are_refused_by_name(digits):
    model = flu.models.mlp(64, 8, 10, seed=0)
    grads = _grads(model, digits.X[:1], digits.y[:1])
    with pytest.raises(ValueError, match="label_strategy"):
        invert_gradients(model, grads, 1, 10, (64,), label_strategy="guess")
    with pytest.raises(ValueError, match="target_grads_or_update"):
        invert_gradients(model, list(grads.values())[:2], 1, 10, (64,))
    with pytest.raises(ValueError, match="target_grads_or_update"):
        invert_gradients(model, {k: v.reshape(-1) for k, v in grads.items()}, 1, 10, (64,))
    with pytest.raises(ValueError, match="steps"):
        invert_gradients(model, grads, 1, 10, (64,), steps=0)
    with pytest.raises(ValueError, match="recovered"):
        reconstruction_error(torch.zeros(2, 3), torch.zeros(3, 3))


def test_adam_with_cosine_distance_recovers_it_under_no_grad(digits):
    x, y = digits.X[:1], digits.y[:1]
    model = flu.models.mlp(64, 32, 10, seed=0)
    grads = _grads(model, x, y)
    with torch.no_grad():  # the attack switches gradients back on for itself
        rec, losses = invert_gradients(model, grads, 1, 10, (64,), steps=300, lr=0.1, optimizer="adam",
                                       distance="cosine")
    assert reconstruction_error(x, rec.inputs)["relative_mse"] < 0.05
    assert losses["step"].tolist() == list(range(301))
