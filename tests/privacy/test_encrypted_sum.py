"""flu.privacy.encrypted_sum: CKKS sums through TenSEAL within the scheme's noise bound."""
import math
import sys

import pytest
import torch

from fedlab_utils.privacy import encrypted_sum


def _bound(K, N=8192, scale_bits=40, sigma=3.2):
    """K (B_clean + sqrt(N)) / 2^scale_bits, Cheon et al. 2017 Lemma 1 with h = N."""
    b_clean = 8 * math.sqrt(2) * sigma * N + 6 * sigma * math.sqrt(N) + 16 * sigma * math.sqrt(N * N)
    return K * (b_clean + math.sqrt(N)) / 2**scale_bits


def test_missing_tenseal_raises_import_error_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tenseal", None)
    with pytest.raises(ImportError, match="pip install tenseal"):
        encrypted_sum([torch.zeros(3)])


def test_decrypted_sum_is_within_the_ckks_bound():
    pytest.importorskip("tenseal")
    K, n = 10, 4096
    g = torch.Generator().manual_seed(0)
    ups = [torch.randn(n, generator=g) for _ in range(K)]
    total, tr = encrypted_sum(ups)
    exact = sum(u.double() for u in ups)
    err = (total - exact).abs().max().item()
    assert tr["error_bound"] == pytest.approx(_bound(K), rel=1e-12)
    assert err <= _bound(K)  # ~6e-6 absolute at scale 2^40
    assert err > 0  # approximate arithmetic, not a plaintext shortcut
    assert tr["ciphertexts_per_client"] == 1 and len(tr["bytes_per_client"]) == K
    assert min(tr["bytes_per_client"]) > 8 * n  # ciphertexts expand the float64 plaintext
    assert tr["messages"] == 2 * K + 2
    assert tr["bytes"] == (K + 1) * tr["public_context_bytes"] + sum(tr["bytes_per_client"]) + tr["sum_bytes"]
    assert len(tr["seconds"]["encrypt"]) == K


def test_long_updates_span_several_ciphertexts_and_keep_their_shape():
    pytest.importorskip("tenseal")
    g = torch.Generator().manual_seed(1)
    ups = [torch.randn(2, 2500, generator=g, dtype=torch.float64) for _ in range(3)]
    total, tr = encrypted_sum(ups)
    assert total.shape == (2, 2500) and tr["ciphertexts_per_client"] == 2
    assert (total - sum(ups)).abs().max().item() <= _bound(3)


@pytest.mark.parametrize("kwargs,name", [(dict(poly_modulus_degree=4096), "poly_modulus_degree"),
                                         (dict(scale_bits=10), "scale_bits")])
def test_bad_parameters_are_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        encrypted_sum([torch.zeros(3)], **kwargs)


def test_bad_updates_are_refused():
    with pytest.raises(ValueError, match="updates"):
        encrypted_sum([torch.zeros(3), torch.zeros(4)])
    with pytest.raises(ValueError, match="updates"):
        encrypted_sum([torch.tensor([1.0, float("nan")])])
