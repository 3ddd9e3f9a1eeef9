"""The hand-written local SGD of Linear/activation chains against autograd and the loop backend."""
import pytest
import torch
from torch import nn

import fedlab_utils as flu
from fedlab_utils.engine.local import Trainer
from fedlab_utils.models.batched import chain_forward, linear_chain


def _data(gen, n=60, d=5, classes=3, loss="cross_entropy", dtype=torch.float64):
    X = torch.randn(n, d, generator=gen, dtype=dtype)
    if loss == "mse" and classes == 1:
        Y = torch.randn(n, generator=gen, dtype=dtype)
    else:
        Y = torch.randint(0, max(classes, 2), (n,), generator=gen)
    return X, Y


def _trainers(model, X, Y, loss, l2, frozen_names=()):
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    frozen = {k: v for k, v in params.items() if k in frozen_names}
    l2_names = {k for k, v in params.items() if v.dim() >= 2 and k not in frozen}
    chain = Trainer(model, frozen, X, Y, loss, l2_names, l2, "vectorized")
    auto = Trainer(model, frozen, X, Y, loss, l2_names, l2, "vectorized")
    auto.chain = None   # the autograd path on stacked_forward
    loop = Trainer(model, frozen, X, Y, loss, l2_names, l2, "loop")
    return params, chain, auto, loop


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu"])
@pytest.mark.parametrize("loss,classes", [("cross_entropy", 3), ("cross_entropy", 1), ("mse", 3), ("mse", 1)])
def test_chain_step_equals_autograd_and_loop(gen, activation, loss, classes):
    model = flu.models.mlp(5, [7, 4], classes, activation=activation, dtype=torch.float64, seed=2)
    X, Y = _data(gen, loss=loss, classes=classes)
    params, chain, auto, loop = _trainers(model, X, Y, loss, l2=0.03)
    assert chain.chain is not None
    K, T, B = 4, 3, 6
    idx, w, mask = flu.engine.batch_plan(torch.full((K,), 15), torch.arange(K) * 15, torch.arange(K),
                                         torch.tensor([3, 1, 2, 3]), B, 0, 1)
    x = {k: v for k, v in params.items()}
    start = {k: v.unsqueeze(0).expand(K, *v.shape) for k, v in x.items()}
    shift = {k: 0.1 * torch.randn(K, *v.shape, generator=gen, dtype=v.dtype) for k, v in x.items()}
    for kw in (dict(), dict(shift=shift, pull=0.2), dict(fixed=("head.bias",))):
        got = chain(x, idx, w, mask, [0.3, 0.2, 0.1], start, **kw)
        ref = auto(x, idx, w, mask, [0.3, 0.2, 0.1], start, **kw)
        per_client = loop(x, idx, w, mask, [0.3, 0.2, 0.1], start, **kw)
        for k in x:
            torch.testing.assert_close(got[k], ref[k], atol=1e-12, rtol=0)
            torch.testing.assert_close(got[k], per_client[k], atol=1e-12, rtol=0)
        # the one-step client trained too, and a fixed tensor keeps its start value
        assert not torch.equal(got["head.weight"][1], x["head.weight"])
        if "fixed" in kw:
            assert torch.equal(got["head.bias"], start["head.bias"])


def test_chain_with_frozen_body_trains_only_the_head(gen):
    model = flu.models.mlp(5, 8, 3, dtype=torch.float64, seed=1)
    X, Y = _data(gen)
    body = ("body.1.weight", "body.1.bias")
    params, chain, auto, _ = _trainers(model, X, Y, "cross_entropy", l2=0.0, frozen_names=body)
    x = {k: v for k, v in params.items() if k not in body}
    K = 3
    idx, w, mask = flu.engine.batch_plan(torch.full((K,), 20), torch.arange(K) * 20, torch.arange(K),
                                         torch.full((K,), 4), 5, 0, 2)
    start = {k: v.unsqueeze(0).expand(K, *v.shape) for k, v in x.items()}
    got = chain(x, idx, w, mask, [0.5] * 4, start)
    ref = auto(x, idx, w, mask, [0.5] * 4, start)
    assert set(got) == set(x)
    for k in x:
        torch.testing.assert_close(got[k], ref[k], atol=1e-12, rtol=0)


def test_linear_chain_recognises_only_plain_chains():
    assert linear_chain(flu.models.mlp(4, 3, 2)) == [("flatten", None), ("linear", "body.1."), ("relu", None),
                                                      ("linear", "head.")]
    assert linear_chain(nn.Sequential(nn.Linear(3, 2), nn.Tanh())) == [("linear", "0."), ("tanh", None)]

    class Scaled(nn.Sequential):   # a forward of its own: not a plain chain
        def forward(self, x):
            return 2 * super().forward(x)

    assert linear_chain(Scaled(nn.Linear(3, 2))) is None
    assert linear_chain(nn.Sequential(nn.Linear(3, 2), nn.Dropout())) is None
    assert linear_chain(flu.models.cnn((1, 8, 8), 4, width=4, features=8)) is None


def test_chain_forward_is_the_module_forward(gen):
    model = flu.models.mlp(6, [5, 4], 3, activation="gelu", seed=0)
    X = torch.randn(11, 6, generator=gen)
    params = dict(model.named_parameters())
    with torch.no_grad():
        assert torch.equal(chain_forward(linear_chain(model), params, X), model(X))


def test_chain_chunks_write_one_output(gen, monkeypatch):
    """Chunks of clients (views of one output) give exactly what one chunk of all clients gives."""
    import fedlab_utils.engine.local as local
    model = flu.models.mlp(5, 6, 3, dtype=torch.float64, seed=4)
    X, Y = _data(gen, n=70)
    params, chain, _, _ = _trainers(model, X, Y, "cross_entropy", l2=0.01)
    K = 7
    idx, w, mask = flu.engine.batch_plan(torch.full((K,), 10), torch.arange(K) * 10, torch.arange(K),
                                         torch.tensor([2, 3, 1, 3, 2, 3, 3]), 4, 0, 5)
    start = {k: v.unsqueeze(0).expand(K, *v.shape) for k, v in params.items()}
    shift = {k: torch.randn(K, *v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    whole = chain(params, idx, w, mask, [0.2, 0.2, 0.2], start, shift=shift, pull=0.1)
    per_client = sum(v.numel() * v.element_size() for v in params.values())
    monkeypatch.setattr(local, "CHAIN_BYTES", 3 * per_client)   # chunks of 3, 3 and 1 clients
    calls = []
    step = local.chain_sgd_step
    monkeypatch.setattr(local, "chain_sgd_step", lambda *a, **k: calls.append(a[4].shape[0]) or step(*a, **k))
    chunked = chain(params, idx, w, mask, [0.2, 0.2, 0.2], start, shift=shift, pull=0.1)
    assert calls == [3, 3, 3, 3, 3, 3, 1, 1, 1]
    for k in params:
        assert torch.equal(whole[k], chunked[k])


def test_chain_forward_leaves_its_input_alone(gen):
    model = nn.Sequential(nn.ReLU(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2), nn.ReLU())
    X = torch.randn(9, 4, generator=gen)
    before = X.clone()
    with torch.no_grad():
        out = chain_forward(linear_chain(model), dict(model.named_parameters()), X)
        assert torch.equal(out, model(X))
    assert torch.equal(X, before)
