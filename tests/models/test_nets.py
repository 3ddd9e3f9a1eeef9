"""Models: body/head split, seeded init without global state, no BatchNorm, shapes."""
import pytest
import torch
from torch import nn

import fedlab_utils as flu


@pytest.mark.parametrize("make, x", [
    (lambda: flu.models.mlp(64, 32, 10), torch.randn(5, 64)),
    (lambda: flu.models.logistic(13, 3), torch.randn(5, 13)),
    (lambda: flu.models.cnn((1, 8, 8), 10, width=4, features=8), torch.randn(5, 64)),
    (lambda: flu.models.cnn((1, 28, 28), 10), torch.randn(5, 1, 28, 28)),
])
def test_models_have_body_head_and_no_batchnorm(make, x):
    model = make()
    assert isinstance(model.body, nn.Module) and isinstance(model.head, nn.Linear)
    assert model(x).shape == (5, model.head.out_features)
    torch.testing.assert_close(model(x), model.head(model.body(x)))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert flu.models.head_prefix(model) == "head."


def test_seeded_init_does_not_touch_global_rng():
    state = torch.random.get_rng_state()
    a = flu.models.mlp(8, 4, 2, seed=1)
    b = flu.models.mlp(8, 4, 2, seed=1)
    c = flu.models.mlp(8, 4, 2, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_dtype_and_zero_init_for_exact_models():
    lin = flu.models.linear(3)
    assert lin.head.weight.dtype == torch.float64 and lin.head.bias is None and not lin.head.weight.any()
    log = flu.models.logistic(4, 3, bias=False, dtype=torch.float64)
    assert log.head.bias is None and log.head.weight.dtype == torch.float64


def test_head_of_plain_module_is_last_with_params():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert flu.models.head_prefix(model) == "2."
    assert flu.models.layer_prefixes(model) == ["0.", "2."]


@pytest.mark.parametrize("call, name", [
    (lambda: flu.models.mlp(0, 4, 2), "in_features"),
    (lambda: flu.models.mlp(4, [], 2), "hidden"),
    (lambda: flu.models.mlp(4, 4, 2, activation="swish"), "activation"),
    (lambda: flu.models.cnn((1, 2, 2), 3), "input_shape"),
    (lambda: flu.models.logistic(4, 0), "num_classes"),
])
def test_bad_input(call, name):
    with pytest.raises(ValueError, match=name):
        call()
