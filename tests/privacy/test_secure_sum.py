"""flu.privacy.secure_sum: exact masked sums over Z_{2^64}, drop-out recovery, uniform-looking uploads."""
import numpy as np
import pytest
import torch

from fedlab_utils.privacy import secure_sum, shamir_reconstruct, shamir_split
from fedlab_utils.privacy.secure_agg import FIELD

I64 = torch.iinfo(torch.int64)


def _ints(K, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(I64.min, I64.max, (n,), generator=g, dtype=torch.int64) for _ in range(K)]


def _ring_sum(updates, keep):
    """Python-int reference: sum mod 2^64, read back as a signed int64."""
    out = []
    for j in range(updates[0].numel()):
        s = sum(int(updates[i].reshape(-1)[j]) for i in keep) % 2**64
        out.append(s - 2**64 if s >= 2**63 else s)
    return torch.tensor(out, dtype=torch.int64)


@pytest.mark.parametrize("dropped", [(), (1,), (0, 4)])
def test_integer_sum_is_exact_modulo_2_64(dropped):
    ups = _ints(6)
    total, tr = secure_sum(ups, dropped=dropped, seed=3)
    keep = [i for i in range(6) if i not in dropped]
    assert total.dtype == torch.int64
    assert torch.equal(total, _ring_sum(ups, keep))
    assert tr["survivors"] == keep and tr["dropped"] == sorted(dropped)


def test_small_integer_sum_is_the_plain_sum_and_keeps_the_shape():
    g = torch.Generator().manual_seed(1)
    ups = [torch.randint(-1000, 1000, (4, 5), generator=g, dtype=torch.int32) for _ in range(4)]
    total, _ = secure_sum(ups, dropped=(2,))
    assert total.shape == (4, 5)
    assert torch.equal(total, (ups[0] + ups[1] + ups[3]).to(torch.int64))


@pytest.mark.parametrize("dropped", [(), (3, 7)])
def test_float_sum_within_quantisation_bound(dropped):
    g = torch.Generator().manual_seed(2)
    K = 10
    ups = [3 * torch.randn(4096, generator=g) for _ in range(K)]
    total, _ = secure_sum(ups, dropped=dropped, seed=5)
    exact = sum(u.double() for i, u in enumerate(ups) if i not in dropped)
    assert total.dtype == torch.float64
    assert (total - exact).abs().max().item() <= K * 2.0**-25
    assert (total - exact).abs().max().item() > 0  # it is quantised, not the float sum


def test_a_masked_upload_looks_uniform_and_far_from_the_plaintext():
    n = 20000
    ups = [torch.zeros(n, dtype=torch.int64) for _ in range(3)]  # the most structured plaintext
    total, tr = secure_sum(ups, dropped=(2,), seed=0)
    assert torch.equal(total, torch.zeros(n, dtype=torch.int64))
    for u, y in tr["masked"].items():
        assert y.dtype == np.uint64 and y.size == n
        top = (y >> np.uint64(60)).astype(np.int64)  # 16 bins of the top 4 bits
        counts = np.bincount(top, minlength=16)
        chi2 = ((counts - n / 16) ** 2 / (n / 16)).sum()
        assert chi2 < 60  # chi-square with 15 dof: P(> 60) ~ 1e-7
        u01 = y.astype(np.float64) / 2.0**64
        assert abs(u01.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
        assert np.median(np.minimum(y, np.uint64(0) - y).astype(np.float64)) > 2.0**60  # far from 0


def test_masks_do_not_cancel_without_the_server_unmasking():
    ups = _ints(4)
    total, tr = secure_sum(ups, seed=9)
    raw = np.zeros(300, dtype=np.uint64)
    for y in tr["masked"].values():
        raw = raw + y
    assert not np.array_equal(raw.view(np.int64), total.numpy())  # the self masks b_u remain


def test_deterministic_per_seed():
    ups = _ints(5, n=50)
    a, ta = secure_sum(ups, dropped=(1,), seed=11)
    b, tb = secure_sum(ups, dropped=(1,), seed=11)
    c, tc = secure_sum(ups, dropped=(1,), seed=12)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert all(np.array_equal(ta["masked"][u], tb["masked"][u]) for u in ta["masked"])
    assert not any(np.array_equal(ta["masked"][u], tc["masked"][u]) for u in ta["masked"])


def test_transcript_counts_the_four_rounds():
    K, n = 10, 4096
    ups = [torch.ones(n) for _ in range(K)]
    total, tr = secure_sum(ups, dropped=(0, 9))
    assert torch.equal(total, torch.full((n,), 8.0, dtype=torch.float64))
    S = 8
    assert list(tr["phases"]) == ["advertise_keys", "share_keys", "masked_input", "unmasking"]
    assert tr["messages"] == 2 * K + 2 * K + 2 * S + S
    assert tr["bytes"] == sum(p["bytes"] for p in tr["phases"].values())
    assert tr["phases"]["masked_input"]["bytes"] >= S * n * 8
    assert tr["threshold"] == K // 2 + 1 and tr["values"] == n and tr["clients"] == K


def test_shamir_needs_threshold_shares():
    rng = np.random.default_rng(0)
    secret = 123456789012345
    shares = shamir_split(secret, 7, 4, rng)
    assert shamir_reconstruct({x: shares[x] for x in (1, 3, 5, 7)}) == secret
    assert shamir_reconstruct({x: shares[x] for x in (2, 4, 6, 7)}) == secret
    assert shamir_reconstruct({x: shares[x] for x in (1, 2, 3)}) != secret
    assert all(0 <= s < FIELD for s in shares.values())


@pytest.mark.parametrize("kwargs,name", [
    (dict(dropped=(0, 1, 2)), "dropped"),            # 1 survivor
    (dict(dropped=(0, 1), threshold=3), "dropped"),  # fewer survivors than the threshold
    (dict(dropped=(5,)), "dropped"), (dict(dropped=(1, 1)), "dropped"),
    (dict(threshold=1), "threshold"), (dict(seed=-1), "seed")])
def test_bad_arguments_are_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        secure_sum(_ints(4, n=3), **kwargs)


def test_bad_updates_are_refused():
    with pytest.raises(ValueError, match="updates"):
        secure_sum([torch.zeros(3)])
    with pytest.raises(ValueError, match="updates"):
        secure_sum([torch.zeros(3), torch.zeros(4)])
    with pytest.raises(ValueError, match="updates"):
        secure_sum([torch.zeros(3), torch.zeros(3, dtype=torch.int64)])
    with pytest.raises(ValueError, match="updates"):
        secure_sum([torch.full((3,), 1e30), torch.zeros(3)])
    with pytest.raises(TypeError, match="updates"):
        secure_sum(torch.zeros(2, 3))
