"""What flu.run refuses before round 0 (data that do not fit the model, forwards that cannot be
replayed, runs that do not fit in memory), and what it does instead of failing deep in torch."""
import pytest
import torch
from torch import nn

import fedlab_utils as flu


def clients(d=4, classes=3, sizes=(6, 9, 5), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)) for n in sizes]


def run(model, fed, **kwargs):
    args = dict(num_rounds=2, local_steps=2, batch_size=None, progress=False)
    return flu.run(model, fed, **{**args, **kwargs})


class Raw:
    """A federation built around Federation's own checks, to test flu.run's."""

    @staticmethod
    def make(pairs):
        fed = flu.data.Federation.from_clients([(X, y.reshape(-1) if y.dim() > 1 else y) for X, y in clients()])
        object.__setattr__(fed, "train", list(pairs))  # bypass the frozen record on purpose
        object.__setattr__(fed, "test", [(X[:0], y[:0]) for X, y in pairs])
        return fed


def test_wrong_feature_size_names_federation():
    fed = flu.data.Federation.from_clients(clients(d=5))
    with pytest.raises(ValueError, match=r"federation.*shape \(5,\)"):
        run(flu.models.mlp(4, 6, 3), fed)


@pytest.mark.parametrize("labels, match", [(torch.tensor([0, 1, 3, 2]), r"\[0, 3\).*got 3"),
                                           (torch.tensor([0, 1, 7, 2]), "got 7")])
def test_labels_outside_the_models_outputs(labels, match):
    X = torch.randn(4, 4)
    fed = flu.data.Federation.from_clients([(X, labels), (X, torch.tensor([0, 1, 2, 0]))])
    with pytest.raises(ValueError, match="federation.*" + match):
        run(flu.models.mlp(4, 6, 3), fed)


def test_negative_labels_and_column_labels_are_refused():
    X = torch.randn(4, 4)
    good = torch.tensor([0, 1, 2, 0])
    for bad, match in ((torch.tensor([0, -1, 2, 0]), "non-negative"), (good.reshape(-1, 1), r"reshape\(-1\)")):
        try:
            fed = flu.data.Federation.from_clients([(X, bad), (X, good)])
        except ValueError as err:  # the federation's own check got there first: it must name the problem
            assert "label" in str(err) or "y" in str(err)
            fed = Raw.make([(X, bad), (X, good)])
        with pytest.raises(ValueError, match=match):
            run(flu.models.mlp(4, 6, 3), fed)


def test_clients_with_different_feature_shapes():
    pairs = [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])), (torch.randn(5, 2, 2), torch.tensor([0, 1, 2, 0, 1]))]
    try:
        fed = flu.data.Federation.from_clients(pairs)
    except ValueError:
        fed = Raw.make(pairs)
    with pytest.raises(ValueError, match=r"federation.*client 1"):
        run(flu.models.mlp(4, 6, 3), fed)


def test_single_logit_model_takes_binary_labels_only():
    X = torch.randn(6, 4)
    fed = flu.data.Federation.from_clients([(X, torch.tensor([0, 1, 1, 0, 2, 1]))])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        run(flu.models.logistic(4, 1), fed)


def test_regression_targets_must_match_the_outputs():
    X = torch.randn(6, 3, dtype=torch.float64)
    fed = flu.data.Federation.from_clients([(X, torch.randn(6, 2, dtype=torch.float64))])
    with pytest.raises(ValueError, match=r"\(n, 1\)"):
        run(flu.models.linear(3, 1), fed, loss="mse")


def with_layer(layer):
    return nn.Sequential(nn.Linear(4, 8), layer, nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("layer, name", [(nn.Dropout(0.5), "Dropout"), (nn.BatchNorm1d(8), "BatchNorm")])
def test_random_or_stateful_forwards_are_refused_in_training_mode(layer, name):
    fed = flu.data.Federation.from_clients(clients())
    with pytest.raises(ValueError, match=f"model.*{name}.*model.eval"):
        run(with_layer(layer), fed)


@pytest.mark.parametrize("backend", ["vectorized", "loop"])
def test_eval_mode_dropout_and_batchnorm_train_exactly(backend):
    """In eval mode Dropout is the identity and BatchNorm an affine map with fixed statistics:
    the run equals the same network without dropout, and replays bit for bit."""
    torch.manual_seed(0)  # test-only: build the layers; the package itself never seeds
    net = with_layer(nn.BatchNorm1d(8))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    net.eval()
    dropped = nn.Sequential(*net[:2], nn.Dropout(0.3), *net[2:]).eval()
    fed = flu.data.Federation.from_clients(clients(), test=clients(seed=1))
    a = run(net, fed, backend=backend, batch_size=3, seed=5)
    b = run(dropped, fed, backend=backend, batch_size=3, seed=5)
    c = run(net, fed, backend=backend, batch_size=3, seed=5)
    names = [k for k, _ in net.named_parameters()]
    for k in names:
        assert torch.equal(a.params[k], c.params[k])
        assert torch.equal(a.params[k], b.params["4." + k[2:] if k.startswith("3.") else k])
    assert not torch.equal(a.params["1.weight"], net[1].weight)  # BatchNorm's affine weights trained


def test_clients_train_in_chunks_when_they_would_not_fit(monkeypatch):
    sizes = (6, 9, 5, 7, 8, 4, 6)
    fed = flu.data.Federation.from_clients(clients(sizes=sizes), test=clients(sizes=sizes, seed=2))
    model = flu.models.mlp(4, 64, 3, dtype=torch.float64)
    whole = run(model, fed, batch_size=4, seed=1, algorithm="scaffold")
    per_client = 4 * sum(p.numel() for p in model.parameters()) * 8
    monkeypatch.setenv("FEDLAB_MEMORY_MB", str(3.5 * per_client / 2 ** 20 + 0.05))
    from fedlab_utils.engine import runner
    seen = []
    original = runner.Trainer._vectorized

    def spy(self, x, idx, *args):
        seen.append(idx.shape[0])
        return original(self, x, idx, *args)

    monkeypatch.setattr(runner.Trainer, "_vectorized", spy)
    chunked = run(model, fed, batch_size=4, seed=1, algorithm="scaffold")
    assert max(seen) < 7 and sum(seen) == 7 * 2  # 7 clients a round, in several chunks, for 2 rounds
    for k in whole.params:
        torch.testing.assert_close(chunked.params[k], whole.params[k], rtol=0, atol=1e-12)


def test_a_run_that_cannot_fit_stops_before_round_0_with_an_estimate(monkeypatch):
    monkeypatch.setenv("FEDLAB_MEMORY_MB", "0.01")
    fed = flu.data.Federation.from_clients(clients())
    with pytest.raises(ValueError, match=r"model.*needs about [\d,]+ MB.*available"):
        run(flu.models.mlp(4, 256, 3), fed)
