"""flu.privacy.DPFedAvg: clipping, the noised weighted sum, adaptive clipping and its accounting."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from fedlab_utils.algorithms.base import weighted_sum
from fedlab_utils.privacy import DPFedAvg, epsilon


def _deltas(K=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.05, 0.3, 1.0, 3.0, 10.0], dtype=dtype)[:K]
    w = torch.randn(K, 4, 3, generator=g, dtype=dtype) * scale[:, None, None]
    b = torch.randn(K, 6, generator=g, dtype=dtype) * scale[:, None]
    return {"w": w, "b": b}


def _norm(d, i):
    return math.sqrt(sum(float((v[i].double() ** 2).sum()) for v in d.values()))


# ---- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,name", [
    (dict(clip=0.0), "clip"), (dict(clip=-1.0), "clip"), (dict(clip=math.nan), "clip"),
    (dict(noise_multiplier=-0.5), "noise_multiplier"), (dict(delta=0.0), "delta"), (dict(delta=1.0), "delta"),
    (dict(target_quantile=0.0), "target_quantile"), (dict(target_quantile=1.0), "target_quantile"),
    (dict(clip=math.inf), "noise_multiplier"), (dict(clip=math.inf, noise_multiplier=0, target_quantile=0.5), "clip"),
    (dict(clip_lr=0.0), "clip_lr"), (dict(count_noise=-1.0), "count_noise")])
def test_bad_settings_are_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DPFedAvg(**kwargs)


def test_record_is_frozen_and_allows_no_clipping_without_noise():
    dp = DPFedAvg(clip=math.inf, noise_multiplier=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dp.clip = 1.0


# ---- clipping -----------------------------------------------------------------------------------

def test_clipped_norms_are_at_most_clip_and_small_updates_stay():
    d = _deltas()
    clip = 1.0
    clipped, norms = DPFedAvg(clip=clip).clip_updates(d)
    for i in range(5):
        assert norms[i].item() == pytest.approx(_norm(d, i), rel=1e-12)
        assert _norm(clipped, i) <= clip * (1 + 4 * torch.finfo(torch.float32).eps)
        if _norm(d, i) <= clip:  # untouched, bit for bit
            assert all(torch.equal(clipped[k][i], d[k][i]) for k in d)
        else:  # scaled onto the sphere, same direction
            assert _norm(clipped, i) == pytest.approx(clip, rel=1e-6)
            for k in d:
                torch.testing.assert_close(clipped[k][i], d[k][i] * (clip / _norm(d, i)))
    assert 0 < sum(_norm(d, i) > clip for i in range(5)) < 5  # both branches seen


def test_infinite_clip_leaves_updates_bit_identical():
    d = _deltas()
    clipped, norms = DPFedAvg(clip=math.inf, noise_multiplier=0).clip_updates(d)
    assert all(clipped[k] is d[k] for k in d)
    clipped, _ = DPFedAvg(clip=1.0, noise_multiplier=0).clip_updates(d, clip=math.inf)
    assert all(torch.equal(clipped[k], d[k]) for k in d)


def test_one_norm_per_client_over_all_tensors():
    d = {"a": torch.tensor([[3.0], [0.0]]), "b": torch.tensor([[4.0, 0.0], [0.0, 0.5]])}
    clipped, norms = DPFedAvg(clip=1.0).clip_updates(d)
    assert norms.tolist() == [5.0, 0.5]
    torch.testing.assert_close(clipped["a"], torch.tensor([[0.6], [0.0]]))
    torch.testing.assert_close(clipped["b"], torch.tensor([[0.8, 0.0], [0.0, 0.5]]))


# ---- aggregation --------------------------------------------------------------------------------

def test_noiseless_aggregate_is_the_weighted_sum_of_clipped_updates_by_hand():
    d = _deltas(dtype=torch.float64)
    w = torch.tensor([0.1, 0.3, 0.2, 0.15, 0.25], dtype=torch.float64)
    dp = DPFedAvg(clip=0.8, noise_multiplier=0.0)
    clipped, _ = dp.clip_updates(d)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    out = dp.aggregate(clipped, w, g, max_weight=0.3)
    assert torch.equal(g.get_state(), state)  # no draw at all
    for k in d:
        hand = sum(float(w[i]) * d[k][i] * min(1.0, 0.8 / _norm(d, i)) for i in range(5))
        torch.testing.assert_close(out[k], hand, rtol=1e-12, atol=1e-14)
        assert torch.equal(out[k], weighted_sum(clipped, w)[k])  # the engine's plain sum, bit for bit
    assert dp.aggregate(clipped, w, None, max_weight=0.3).keys() == d.keys()


def test_noise_std_is_z_clip_max_weight():
    z, clip, wmax, K = 1.5, 2.0, 0.5, 3
    dp = DPFedAvg(clip=clip, noise_multiplier=z)
    zeros = {"a": torch.zeros(K, 200, 50, dtype=torch.float64), "b": torch.zeros(K, 10, dtype=torch.float64)}
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    draws = torch.cat([torch.cat([v.reshape(-1) for v in dp.aggregate(zeros, w, g, wmax).values()])
                       for _ in range(20)])
    n, sigma = draws.numel(), z * clip * wmax
    assert abs(draws.mean().item()) < 5 * sigma / math.sqrt(n)
    assert abs(draws.std().item() / sigma - 1) < 5 / math.sqrt(2 * n)


def test_noise_replays_per_generator_and_adds_to_the_sum():
    d = _deltas()
    w = torch.full((5,), 0.2)
    dp = DPFedAvg(clip=1.0, noise_multiplier=0.7)
    clipped, _ = dp.clip_updates(d)
    a = dp.aggregate(clipped, w, torch.Generator().manual_seed(1), 0.2)
    b = dp.aggregate(clipped, w, torch.Generator().manual_seed(1), 0.2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    g = torch.Generator().manual_seed(1)
    for k in ("w", "b"):  # key order
        noise = torch.randn(clipped[k].shape[1:], generator=g)
        assert torch.equal(a[k], weighted_sum(clipped, w)[k] + 0.7 * 1.0 * 0.2 * noise)


# ---- adaptive clipping --------------------------------------------------------------------------

def test_one_adaptive_step_is_the_geometric_update_with_documented_count_noise():
    norms = torch.tensor([0.5, 1.5, 0.9, 2.0, 0.1, 3.0, 1.0, 0.2])
    exact = DPFedAvg(clip=1.0, noise_multiplier=0.0, target_quantile=0.3, clip_lr=0.2)
    assert exact.next_clip(norms, 1.0, None) == pytest.approx(math.exp(-0.2 * (5 / 8 - 0.3)), rel=1e-15)
    noised = DPFedAvg(clip=1.0, noise_multiplier=1.0, target_quantile=0.3, clip_lr=0.2)
    xi = torch.randn((), generator=torch.Generator().manual_seed(4), dtype=torch.float64).item()
    sigma_b = 8 / 20  # Andrew et al.'s default m / 20
    expected = 1.0 * math.exp(-0.2 * ((5 + sigma_b * xi) / 8 - 0.3))
    assert noised.next_clip(norms, 1.0, torch.Generator().manual_seed(4)) == pytest.approx(expected, rel=1e-15)
    assert DPFedAvg(clip=1.0).next_clip(norms, 0.7, None) == 0.7  # fixed clipping


def test_adaptive_clip_converges_to_the_target_quantile():
    gamma = 0.7
    true = math.exp(0.5244005127080407)  # lognormal(0, 1)'s 0.7 quantile: exp(Phi^-1(0.7))
    dp = DPFedAvg(clip=0.1, noise_multiplier=1.0, target_quantile=gamma, clip_lr=0.2)
    rng, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
    clip, logs = 0.1, []
    for _ in range(500):
        clip = dp.next_clip(torch.from_numpy(rng.lognormal(0.0, 1.0, 100)), clip, g)
        logs.append(math.log(clip))
    tail = np.array(logs[250:]).mean()
    assert abs(tail - math.log(true)) < 0.08
    assert logs[0] < math.log(0.2)  # it moved there from far below


def test_accounting_noise_multiplier_combines_update_and_count_noise():
    z, sb, m = 1.2, 3.0, 60
    zd = DPFedAvg.update_noise_multiplier(z, sb)
    assert zd == pytest.approx((z**-2 - (2 * sb) ** -2) ** -0.5, rel=1e-15)
    dp = DPFedAvg(clip=1.0, noise_multiplier=zd, target_quantile=0.5, count_noise=sb)
    assert dp.accounting_noise_multiplier(m) == pytest.approx(z, rel=1e-12)
    assert DPFedAvg(noise_multiplier=zd).accounting_noise_multiplier(m) == zd  # fixed clip: no count
    default = DPFedAvg(noise_multiplier=1.0, target_quantile=0.5)
    assert default.accounting_noise_multiplier(40) == pytest.approx((1 + (2 * 2.0) ** -2) ** -0.5)
    assert dp.epsilon(0.1, 50, m) == pytest.approx(epsilon(z, 0.1, 50, dp.delta), rel=1e-9)
    with pytest.raises(ValueError, match="count_noise"):
        DPFedAvg.update_noise_multiplier(1.0, 0.4)
    with pytest.raises(ValueError, match="clients"):
        dp.epsilon(0.1, 50)


def test_an_empty_round_is_pure_noise():
    dp = DPFedAvg(clip=0.5, noise_multiplier=2.0)
    clipped, norms = dp.clip_updates({"w": torch.zeros(0, 3), "b": torch.zeros(0)})
    assert norms.numel() == 0
    out = dp.aggregate(clipped, torch.zeros(0), torch.Generator().manual_seed(0), max_weight=0.25)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(out["w"], 2.0 * 0.5 * 0.25 * torch.randn(3, generator=g))
    assert torch.equal(out["b"], 2.0 * 0.5 * 0.25 * torch.randn((), generator=g))
