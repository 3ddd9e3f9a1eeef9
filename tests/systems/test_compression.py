"""flu.systems.Compression: exact encodings, byte counts, QSGD's unbiasedness and replay."""
import dataclasses
import math

import pytest
import torch

from fedlab_utils.systems.compression import Compression, variance_bound


def _updates(k=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(k, 3, 4, generator=g, dtype=dtype), "b": torch.randn(k, 5, generator=g, dtype=dtype)}


CLIENTS = torch.tensor([0, 4, 7])


# ---- none and float16 ----------------------------------------------------------------------------

def test_none_is_the_identity_with_dense_bytes():
    delta = {"w": torch.randn(3, 3, 4), "b": torch.randn(3, 5, dtype=torch.float64)}
    delta["w"][0, 0, 0] = -0.0
    decoded, nbytes, res = Compression("none").compress(delta, None, 0, CLIENTS)
    assert all(decoded[n] is delta[n] for n in delta)
    assert torch.equal(nbytes, torch.full((3,), 12 * 4 + 5 * 8, dtype=torch.int64))
    assert res is None


def test_float16_is_the_half_precision_round_trip():
    delta = {"w": torch.tensor([[0.5, 1.25, 1 + 2**-12, 1 + 2**-9, -3.0]])}
    decoded, nbytes, _ = Compression("float16").compress(delta, None, 0, torch.tensor([2]))
    # representable values stay, 1 + 2^-12 is below half of float16's ulp at 1 (2^-10)
    assert decoded["w"].tolist() == [[0.5, 1.25, 1.0, 1 + 2**-9, -3.0]]
    assert decoded["w"].dtype == torch.float32
    big = _updates(dtype=torch.float32)
    decoded, nbytes, _ = Compression("float16").compress(big, None, 0, CLIENTS)
    for n in big:
        assert torch.equal(decoded[n], big[n].to(torch.float16).to(torch.float32))
    assert nbytes.tolist() == [(12 + 5) * 2] * 3


# ---- top-k ---------------------------------------------------------------------------------------

def test_topk_with_fraction_one_is_bit_for_bit_the_update():
    delta = _updates(dtype=torch.float32)
    delta["w"][1, 2, 3] = -0.0
    comp = Compression("topk", fraction=1.0)
    decoded, nbytes, res = comp.compress(delta, None, 0, CLIENTS)
    for n in delta:
        assert torch.equal(decoded[n], delta[n])
        assert torch.equal(torch.signbit(decoded[n]), torch.signbit(delta[n]))
        assert torch.count_nonzero(res[n]) == 0
    assert nbytes.tolist() == [12 * 4 + 5 * 4] * 3
    # the next round, with the (zero) residual, is still exact
    nxt = _updates(seed=1, dtype=torch.float32)
    nxt["b"][0, 0] = -0.0
    decoded, _, _ = comp.compress(nxt, res, 1, CLIENTS)
    for n in nxt:
        assert torch.equal(decoded[n], nxt[n]) and torch.equal(torch.signbit(decoded[n]), torch.signbit(nxt[n]))


@pytest.mark.parametrize("fraction,k", [(0.2, 2), (0.3, 3), (0.5, 5), (0.01, 1), (0.7, 7)])
def test_topk_keeps_the_k_largest_magnitudes_ties_to_the_lower_index(fraction, k):
    v = [1.0, -3.0, 3.0, 2.0, -3.0, 0.5, -2.0, 0.0, 2.0, -0.25]
    expected_idx = sorted(range(len(v)), key=lambda i: (-abs(v[i]), i))[:k]   # independent reference
    assert k == math.ceil(fraction * len(v) - 1e-9)
    decoded, _, res = Compression("topk", fraction=fraction).compress(
        {"p": torch.tensor([v, v[::-1]], dtype=torch.float64)}, None, 0, torch.tensor([0, 1]))
    row = decoded["p"][0].tolist()
    assert [i for i, x in enumerate(row) if x != 0] == sorted(i for i in expected_idx if v[i] != 0)
    assert all(row[i] == (v[i] if i in expected_idx else 0.0) for i in range(len(v)))
    rev = v[::-1]
    expected_rev = sorted(range(len(v)), key=lambda i: (-abs(rev[i]), i))[:k]
    assert all(decoded["p"][1, i].item() == (rev[i] if i in expected_rev else 0.0) for i in range(len(v)))
    assert res["p"][0].tolist() == [0.0 if i in expected_idx else v[i] for i in range(len(v))]


def test_topk_ties_on_a_constant_vector_keep_the_first_entries():
    decoded, _, _ = Compression("topk", fraction=0.25).compress(
        {"p": -torch.ones(1, 8)}, None, 0, torch.tensor([0]))
    assert decoded["p"].tolist() == [[-1.0, -1.0] + [0.0] * 6]


def test_error_feedback_loses_nothing_over_rounds():
    comp = Compression("topk", fraction=0.1)
    residual, total_delta, total_decoded = None, None, None
    for t in range(12):
        delta = _updates(seed=100 + t)
        decoded, _, residual = comp.compress(delta, residual, t, CLIENTS)
        for n in delta:
            assert torch.count_nonzero(decoded[n].reshape(3, -1), dim=1).le(math.ceil(0.1 * delta[n][0].numel())).all()
        total_delta = delta if total_delta is None else {n: total_delta[n] + delta[n] for n in delta}
        total_decoded = decoded if total_decoded is None else {n: total_decoded[n] + decoded[n] for n in delta}
    for n in total_delta:
        assert torch.allclose(total_decoded[n] + residual[n], total_delta[n], rtol=0, atol=1e-12)
        assert residual[n].abs().max() > 0.1   # the residual is really used


def test_error_feedback_compresses_update_plus_residual():
    comp = Compression("topk", fraction=0.25)
    d1 = {"p": torch.tensor([[4.0, 1.0, 0.5, 3.0, 0.0, 0.0, 0.0, 0.0]])}
    d2 = {"p": torch.tensor([[0.0, 2.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])}
    out1, _, res = comp.compress(d1, None, 0, torch.tensor([0]))
    assert out1["p"].tolist() == [[4.0, 0, 0, 3.0, 0, 0, 0, 0]]
    assert res["p"].tolist() == [[0, 1.0, 0.5, 0, 0, 0, 0, 0]]
    out2, _, res2 = comp.compress(d2, res, 1, torch.tensor([0]))
    # the input is [0, 3.5, 0.5, 0, ..., 1.0]: 3.5 and 1.0 are kept
    assert out2["p"].tolist() == [[0, 3.5, 0, 0, 0, 0, 0, 1.0]]
    assert res2["p"].tolist() == [[0, 0, 0.5, 0, 0, 0, 0, 0]]
    plain = Compression("topk", fraction=0.25, error_feedback=False)
    out_nofb, _, none = plain.compress(d2, None, 1, torch.tensor([0]))
    assert none is None and out_nofb["p"].tolist() == [[0, 2.5, 0, 0, 0, 0, 0, 1.0]]


# ---- QSGD ----------------------------------------------------------------------------------------

V = torch.tensor([0.9, -0.35, 0.0, 0.12, -0.6, 0.02, 0.44, -0.07, 0.3, -0.01] * 5, dtype=torch.float64)


def _qsgd_draws(comp, v, rounds=40, clients=100):
    ids = torch.arange(clients)
    rows = [comp.compress({"p": v.expand(clients, -1).clone()}, None, t, ids)[0]["p"] for t in range(rounds)]
    return torch.cat(rows)


def test_qsgd_is_unbiased_within_the_variance_bound_rate():
    s = 4
    draws = _qsgd_draws(Compression("qsgd", levels=s, seed=3), V)
    t = draws.shape[0]
    bound = variance_bound(V, s)
    # E||mean - v||^2 <= bound / T: allow three standard errors of the mean, in norm
    err = float(torch.linalg.vector_norm(draws.mean(0) - V))
    assert err <= 3 * math.sqrt(bound / t)
    # and against the exact variance, sum_j (||v|| / s)^2 p_j (1 - p_j) with p_j = frac(s |v_j| / ||v||)
    norm = float(torch.linalg.vector_norm(V))
    p = s * V.abs() / norm - torch.floor(s * V.abs() / norm)
    assert err <= 3 * math.sqrt((norm / s) ** 2 * float((p * (1 - p)).sum()) / t)
    # the test has power: deterministic rounding down (the biased quantiser) is far outside it
    floor_q = norm * torch.sign(V) * torch.floor(s * V.abs() / norm) / s
    assert float(torch.linalg.vector_norm(floor_q - V)) > 10 * 3 * math.sqrt(bound / t)


def test_qsgd_variance_matches_the_exact_value_and_respects_the_bound():
    s = 4
    draws = _qsgd_draws(Compression("qsgd", levels=s, seed=5), V)
    norm = float(torch.linalg.vector_norm(V))
    r = s * V.abs() / norm
    p = r - torch.floor(r)
    exact = (norm / s) ** 2 * float((p * (1 - p)).sum())       # sum of Bernoulli variances
    sq = ((draws - V) ** 2).sum(1)
    assert abs(float(sq.mean()) - exact) <= 4 * float(sq.std()) / math.sqrt(len(sq))
    assert exact <= variance_bound(V, s)


@pytest.mark.parametrize("s", [1, 3, 16, 200])
def test_qsgd_entries_lie_on_the_norm_grid(s):
    delta = _updates(k=3, seed=9)
    decoded, _, _ = Compression("qsgd", levels=s).compress(delta, None, 2, CLIENTS)
    for n, d in delta.items():
        for i in range(3):
            norm = float(torch.linalg.vector_norm(d[i]))
            levels = decoded[n][i] * s / norm
            assert torch.allclose(levels, torch.round(levels), rtol=0, atol=1e-9)
            assert levels.abs().max() <= s + 1e-9
            same_sign = (torch.sign(decoded[n][i]) == torch.sign(d[i])) | (decoded[n][i] == 0)
            assert same_sign.all()


def test_qsgd_keeps_zero_and_single_entry_vectors_exact():
    delta = {"p": torch.tensor([[0.0, 0.0, 0.0], [0.0, -2.5, 0.0]], dtype=torch.float64)}
    decoded, _, _ = Compression("qsgd", levels=7).compress(delta, None, 0, torch.tensor([0, 1]))
    assert torch.equal(decoded["p"], delta["p"])


def test_qsgd_replays_by_seed_and_round_and_is_independent_per_client():
    delta = _updates(k=3)
    comp = Compression("qsgd", levels=2, seed=11)
    a, _, _ = comp.compress(delta, None, 5, CLIENTS)
    b, _, _ = comp.compress(delta, None, 5, CLIENTS)
    c, _, _ = comp.compress(delta, None, 6, CLIENTS)
    d, _, _ = Compression("qsgd", levels=2, seed=12).compress(delta, None, 5, CLIENTS)
    assert all(torch.equal(a[n], b[n]) for n in delta)
    assert not all(torch.equal(a[n], c[n]) for n in delta)
    assert not all(torch.equal(a[n], d[n]) for n in delta)
    # a client's draw does not depend on who else is in the batch, nor on its row
    alone, _, _ = comp.compress({n: x[2:3].clone() for n, x in delta.items()}, None, 5, torch.tensor([7]))
    assert all(torch.equal(alone[n][0], a[n][2]) for n in delta)
    # two clients with the same update draw differently
    same = {n: x[:1].expand(2, *x.shape[1:]).clone() for n, x in delta.items()}
    e, _, _ = comp.compress(same, None, 5, torch.tensor([0, 1]))
    assert not all(torch.equal(e[n][0], e[n][1]) for n in delta)


def test_variance_bound_formula():
    v = torch.full((16,), 0.5)                  # ||v||^2 = 4
    assert variance_bound(v, 1) == pytest.approx(min(16, 4) * 4.0)
    assert variance_bound(v, 8) == pytest.approx(min(16 / 64, 4 / 8) * 4.0)


# ---- bytes ---------------------------------------------------------------------------------------

def _mixed():
    g = torch.Generator().manual_seed(2)
    return {"w": torch.randn(2, 3, 4, generator=g), "b": torch.randn(2, 5, generator=g, dtype=torch.float64)}


@pytest.mark.parametrize("comp,expected", [
    (Compression("none"), 12 * 4 + 5 * 8),
    (Compression("float16"), 17 * 2),
    (Compression("qsgd", levels=16), (4 + 12 * 1) + (8 + 5 * 1)),
    (Compression("qsgd", levels=127), (4 + 12 * 1) + (8 + 5 * 1)),
    (Compression("qsgd", levels=128), (4 + 12 * 2) + (8 + 5 * 2)),
    (Compression("qsgd", levels=40000), (4 + 12 * 4) + (8 + 5 * 4)),
    (Compression("topk", fraction=0.25), 3 * (4 + 8) + 2 * (8 + 8)),      # k = 3 of 12, k = 2 of 5
    (Compression("topk", fraction=0.5), 12 * 4 + 5 * 8),                 # sparse larger: dense
    (Compression("topk", fraction=1.0), 12 * 4 + 5 * 8),
])
def test_bytes_per_client(comp, expected):
    _, nbytes, _ = comp.compress(_mixed(), None, 0, torch.tensor([1, 3]))
    assert nbytes.dtype == torch.int64
    assert nbytes.tolist() == [expected, expected]


# ---- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,name", [
    ({"method": "svd"}, "method"), ({"levels": 0}, "levels"), ({"levels": -3}, "levels"),
    ({"fraction": 0.0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"fraction": float("nan")}, "fraction"),
    ({"seed": -1}, "seed"), ({"seed": 2**63}, "seed"),
])
def test_bad_parameters_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Compression(**kwargs)


@pytest.mark.parametrize("kwargs,name", [
    ({"levels": 2.5}, "levels"), ({"seed": 1.0}, "seed"), ({"error_feedback": "yes"}, "error_feedback"),
    ({"fraction": "half"}, "fraction"),
])
def test_wrong_types_raise_type_error_naming_them(kwargs, name):
    with pytest.raises(TypeError, match=name):
        Compression(**kwargs)


def test_compression_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Compression().levels = 3


@pytest.mark.parametrize("args,name", [
    (({"p": torch.zeros(2, 3)}, None, -1, torch.tensor([0, 1])), "round"),
    (({"p": torch.zeros(2, 3)}, None, 0, torch.tensor([[0, 1]])), "clients"),
    (({"p": torch.zeros(2, 3)}, None, 0, torch.tensor([0, -1])), "clients"),
    (({"p": torch.zeros(3, 3)}, None, 0, torch.tensor([0, 1])), "delta"),
    (({"p": torch.zeros(2, 3, dtype=torch.int64)}, None, 0, torch.tensor([0, 1])), "delta"),
    (({"p": torch.tensor([[0.0, float("nan")], [0, 0]])}, None, 0, torch.tensor([0, 1])), "delta"),
    (({"p": torch.zeros(2, 3)}, {"q": torch.zeros(2, 3)}, 0, torch.tensor([0, 1])), "residual"),
    (({"p": torch.zeros(2, 3)}, {"p": torch.zeros(2, 4)}, 0, torch.tensor([0, 1])), "residual"),
])
def test_bad_compress_inputs_raise_value_error_naming_them(args, name):
    with pytest.raises(ValueError, match=name):
        Compression("topk", fraction=0.5).compress(*args)
