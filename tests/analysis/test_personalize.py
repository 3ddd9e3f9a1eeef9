"""personalize / best_steps / personalization_report against evaluate, plain PyTorch SGD and hand-made tables."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils._core.random import BATCH, stream


@pytest.fixture(scope="module")
def setup():
    ds = flu.data.load_dataset("digits")
    part = flu.partition.dirichlet(ds.y, num_clients=5, alpha=0.5, seed=1)
    fed = flu.data.federate(ds.X, ds.y, part, seed=0)
    return fed, flu.models.mlp(64, 16, 10, dtype=torch.float64, seed=0)


def _value(table, client, steps, metric):
    sel = table[(table.client == client) & (table.steps == steps) & (table.metric == metric)]
    assert len(sel) == 1
    return sel.value.iloc[0]


def test_steps_zero_is_evaluate_of_the_global_model(setup):
    fed, model = setup
    table = flu.evaluation.personalize(model, fed, steps=(0,), lr=0.1)
    assert list(table.columns) == ["client", "steps", "split", "model", "metric", "value"]
    assert set(table.model) == {"global"} and set(table.split) == {"test"}
    ref = flu.evaluation.evaluate(model, fed)
    for i in range(len(fed.train)):
        for metric in ("loss", "accuracy"):
            want = ref[(ref.client == i) & (ref.metric == metric)].value.iloc[0]
            assert abs(_value(table, i, 0, metric) - want) < 1e-12


def test_history_gives_its_model(setup):
    fed, model = setup
    hist = flu.run(model, fed, num_rounds=1, local_steps=1, batch_size=None, progress=False)
    a = flu.evaluation.personalize(hist, fed, steps=(0, 2), lr=0.1)
    b = flu.evaluation.personalize(hist.model, fed, steps=(0, 2), lr=0.1)
    pd.testing.assert_frame_equal(a, b)


def _sgd(model, X, y, lr, batches):
    net = copy.deepcopy(model)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for idx in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(X[idx].double()), y[idx]).backward()
        opt.step()
    return net


def test_full_batch_step_equals_plain_sgd(setup):
    fed, model = setup
    lr = 0.3
    table = flu.evaluation.personalize(model, fed, steps=(0, 1, 3), lr=lr)
    assert set(table[table.steps > 0].model) == {"personal"}
    for i, ((X, y), (Xt, yt)) in enumerate(zip(fed.train, fed.test)):
        for k in (1, 3):
            net = _sgd(model, X, y, lr, [torch.arange(len(y))] * k)
            with torch.no_grad():
                out = net(Xt.double())
            loss = torch.nn.functional.cross_entropy(out, yt).item()
            acc = (out.argmax(1) == yt).double().mean().item()
            assert abs(_value(table, i, k, "loss") - loss) < 1e-12
            assert abs(_value(table, i, k, "accuracy") - acc) < 1e-12
        assert _value(table, i, 1, "loss") != _value(table, i, 0, "loss")


def test_minibatches_come_from_the_seeded_stream(setup):
    fed, model = setup
    table = flu.evaluation.personalize(model, fed, steps=(2,), lr=0.2, batch_size=8, seed=7, split="train")
    assert set(table.split) == {"train"}
    for i, (X, y) in enumerate(fed.train):
        batches = [torch.rand(len(y), generator=stream(7, i, t, BATCH)).argsort()[:8] for t in range(2)]
        net = _sgd(model, X, y, 0.2, batches)
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(net(X.double()), y).item()
        assert abs(_value(table, i, 2, "loss") - loss) < 1e-12
    again = flu.evaluation.personalize(model, fed, steps=(2,), lr=0.2, batch_size=8, seed=7, split="train")
    pd.testing.assert_frame_equal(table, again)
    other = flu.evaluation.personalize(model, fed, steps=(2,), lr=0.2, batch_size=8, seed=8, split="train")
    assert not np.allclose(table.value, other.value)


def test_linear_probe_leaves_the_body_untouched(setup, monkeypatch):
    fed, model = setup
    head = flu.models.head_prefix(model)
    seen = []
    real_grad = torch.autograd.grad

    def spy(outputs, inputs, *a, **k):
        seen.append(len(inputs))
        return real_grad(outputs, inputs, *a, **k)

    finals = {}
    real_deepcopy = copy.deepcopy

    def keep(obj, *a):
        out = real_deepcopy(obj, *a)
        if type(out) is type(model):
            finals.setdefault("nets", []).append(out)
        return out

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    monkeypatch.setattr(torch.autograd, "grad", spy)
    monkeypatch.setattr(flu.evaluation.copy, "deepcopy", keep)
    probe = flu.evaluation.personalize(model, fed, steps=(0, 4), lr=0.5, finetune="linear_probe")
    monkeypatch.undo()
    n_head = sum(1 for n, _ in model.named_parameters() if n.startswith(head))
    assert seen and set(seen) == {n_head}
    clients = finals["nets"][1:]  # prepare's copy, then one fine-tuned copy per client
    assert len(clients) == len(fed.train)
    for net in clients:
        for n, p in net.named_parameters():
            if n.startswith(head):
                assert not torch.equal(p, before[n])
            else:
                assert torch.equal(p, before[n])
    for n, p in model.named_parameters():  # the caller's model is never changed
        assert torch.equal(p, before[n])
    full = flu.evaluation.personalize(model, fed, steps=(0, 4), lr=0.5)
    assert not np.allclose(probe[probe.steps == 4].value, full[full.steps == 4].value)


@pytest.mark.parametrize("kwargs, name", [
    ({"steps": (1, 0)}, "steps"), ({"steps": (1, 1)}, "steps"), ({"steps": (-1, 2)}, "steps"),
    ({"steps": ()}, "steps"), ({"steps": (0, 1.5)}, "steps"), ({"steps": 3}, "steps"),
    ({"lr": 0}, "lr"), ({"lr": -0.1}, "lr"), ({"lr": float("nan")}, "lr"),
    ({"finetune": "everything"}, "finetune"), ({"loss": "hinge"}, "loss"), ({"split": "val"}, "split"),
    ({"batch_size": 0}, "batch_size"), ({"seed": -1}, "seed"),
])
def test_bad_arguments_name_the_parameter(setup, kwargs, name):
    fed, model = setup
    with pytest.raises(ValueError, match=name):
        flu.evaluation.personalize(model, fed, **kwargs)


def test_empty_test_split_is_an_error(setup):
    fed, model = setup
    empty = flu.data.Federation(fed.train, tuple((X[:0], y[:0]) for X, y in fed.test))
    with pytest.raises(ValueError, match="split"):
        flu.evaluation.personalize(model, empty)
    assert set(flu.evaluation.personalize(model, empty, steps=(0,), split="train").split) == {"train"}
    with pytest.raises(TypeError, match="hist_or_model"):
        flu.evaluation.personalize("model", fed)
    with pytest.raises(TypeError, match="federation"):
        flu.evaluation.personalize(model, fed.train)


# ---------------------------------------------------------------- best_steps / report on a hand-made table

def _hand_table():
    acc = {  # client -> accuracy at steps 0, 1, 5
        0: (0.5, 0.6, 0.9), 1: (0.5, 0.7, 0.8),          # validation: means 0.5, 0.65, 0.85
        2: (0.6, 0.7, 0.5), 3: (0.4, 0.5, 0.6), 4: (0.8, 0.8, 0.9),
        5: (0.5, 0.4, 0.7), 6: (0.7, 0.9, 0.2),
    }
    rows = []
    for c, vals in acc.items():
        for s, v in zip((0, 1, 5), vals):
            rows.append((c, s, "test", "global" if s == 0 else "personal", "accuracy", v))
            rows.append((c, s, "test", "global" if s == 0 else "personal", "loss", 1 - v + (0.5 if s == 5 else 0)))
    return pd.DataFrame(rows, columns=["client", "steps", "split", "model", "metric", "value"])


def test_best_steps_on_validation_clients():
    t = _hand_table()
    assert flu.evaluation.best_steps(t, [0, 1]) == 5
    assert flu.evaluation.best_steps(t, [6]) == 1
    # loss: lower is better; validation losses 0.5 / 0.35 / 0.65 -> steps 1
    assert flu.evaluation.best_steps(t, [0, 1], metric="loss") == 1
    for bad, name in (([], "validation_clients"), ([99], "validation_clients"), ("01", "validation_clients")):
        with pytest.raises(ValueError, match=name):
            flu.evaluation.best_steps(t, bad)
    with pytest.raises(ValueError, match="metric"):
        flu.evaluation.best_steps(t, [0], metric="acc")
    doubled = pd.concat([t, t.assign(split="train")])
    with pytest.raises(ValueError, match="table"):
        flu.evaluation.best_steps(doubled, [0])


def test_personalization_report_on_test_clients():
    t = _hand_table()
    r = flu.evaluation.personalization_report(t, [2, 3, 4, 5, 6], 5)
    v = [0.5, 0.6, 0.9, 0.7, 0.2]
    assert r["mean"] == pytest.approx(np.mean(v)) and r["median"] == pytest.approx(0.6)
    assert r["worst_10pct"] == pytest.approx(0.2) and r["clients"] == 5
    assert r["fraction_hurt"] == pytest.approx(2 / 5)  # clients 2 (0.6 -> 0.5) and 6 (0.7 -> 0.2)
    r1 = flu.evaluation.personalization_report(t, [2, 3, 4, 5, 6], 1)
    assert r1["fraction_hurt"] == pytest.approx(1 / 5)  # client 5 only; client 4 unchanged
    rl = flu.evaluation.personalization_report(t, [2, 3, 4, 5, 6], 5, metric="loss")
    assert rl["worst_10pct"] == pytest.approx(1 - 0.2 + 0.5)  # the highest loss
    assert rl["fraction_hurt"] == pytest.approx(1.0)  # every loss at 5 steps is 1 - acc + 0.5: all rose
    with pytest.raises(ValueError, match="steps"):
        flu.evaluation.personalization_report(t, [2, 3], 3)
    with pytest.raises(ValueError, match="steps"):
        flu.evaluation.personalization_report(t[t.steps != 0], [2, 3], 5)
    with pytest.raises(ValueError, match="test_clients"):
        flu.evaluation.personalization_report(t, [], 5)


# ---------------------------------------------------------------- start="personal"

@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(3)  # test data only (a private generator)
    clients = [(torch.randn(10, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (10,), generator=g))
               for _ in range(3)]
    tests = [(torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (6,), generator=g))
             for _ in range(3)]
    fed = flu.data.Federation.from_clients(clients, tests)
    model = torch.nn.utils.skip_init(torch.nn.Linear, 3, 2, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, 3, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64))
    personal = {"weight": torch.randn(3, 2, 3, generator=g, dtype=torch.float64)}
    hist = flu.History(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), {}, {}, model=model, personal_params=personal)
    return fed, hist


def test_personal_start_equals_per_client_sgd_from_the_personal_weights(tiny):
    fed, hist = tiny
    lr, steps = 0.4, (0, 1, 3)
    table = flu.evaluation.personalize(hist, fed, steps=steps, lr=lr, start="personal")
    assert set(table.model) == {"personal"}
    for i, ((X, y), (Xt, yt)) in enumerate(zip(fed.train, fed.test)):
        W = hist.personal_params["weight"][i].clone().requires_grad_(True)  # row i replaces the global weight
        b = hist.model.bias.detach().clone().requires_grad_(True)            # the bias stays global
        done = 0
        for k in steps:
            for _ in range(k - done):
                gW, gb = torch.autograd.grad(torch.nn.functional.cross_entropy(X @ W.T + b, y), (W, b))
                with torch.no_grad():
                    W -= lr * gW
                    b -= lr * gb
            done = k
            with torch.no_grad():
                out = Xt @ W.T + b
            assert abs(_value(table, i, k, "loss") - torch.nn.functional.cross_entropy(out, yt).item()) < 1e-12
            assert abs(_value(table, i, k, "accuracy") - (out.argmax(1) == yt).double().mean().item()) < 1e-12
    glob = flu.evaluation.personalize(hist, fed, steps=(0,), lr=lr)
    assert set(glob.model) == {"global"}
    start_loss = table[(table.steps == 0) & (table.metric == "loss")].value
    assert not np.allclose(glob[glob.metric == "loss"].value, start_loss)
    assert torch.equal(hist.model.weight, tiny[1].model.weight)  # nothing written back


def test_personal_start_errors_name_the_parameter(tiny):
    fed, hist = tiny
    with pytest.raises(ValueError, match="start"):
        flu.evaluation.personalize(hist.model, fed, start="personal")
    with pytest.raises(ValueError, match="start"):
        flu.evaluation.personalize(hist, fed, start="local")
    plain = flu.History(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), {}, {}, model=hist.model)
    with pytest.raises(ValueError, match="start"):
        flu.evaluation.personalize(plain, fed, start="personal")
    two = flu.data.Federation(fed.train[:2], fed.test[:2])
    with pytest.raises(ValueError, match="federation"):
        flu.evaluation.personalize(hist, two, start="personal")
    wrong = flu.History(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), {}, {}, model=hist.model,
                        personal_params={"head.weight": hist.personal_params["weight"]})
    with pytest.raises(ValueError, match="hist_or_model"):
        flu.evaluation.personalize(wrong, fed, start="personal")
