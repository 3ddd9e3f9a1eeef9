"""protocol (Motley's table over methods) against numbers computed by hand, and the N-way K-shot
episodes against flu.fewshot.episode plus a hand-written SGD loop on a zero head."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils._core.random import FEWSHOT, mix

# ---------------------------------------------------------------- protocol on hand-built tables
ACC = {  # method -> client -> accuracy at steps 0, 1, 5
    "fedavg": {0: (0.5, 0.6, 0.9), 1: (0.5, 0.7, 0.8), 2: (0.6, 0.7, 0.5), 3: (0.4, 0.5, 0.6),
               4: (0.8, 0.8, 0.9), 5: (0.5, 0.4, 0.7), 6: (0.7, 0.9, 0.2)},
    "ditto": {0: (0.5, 0.9, 0.6), 1: (0.5, 0.8, 0.7), 2: (0.6, 0.5, 0.9), 3: (0.4, 0.6, 0.1),
              4: (0.8, 0.9, 0.9), 5: (0.5, 0.5, 0.7), 6: (0.7, 0.6, 0.2)},
}
STEPS = (0, 1, 5)
VAL, TEST = [0, 1], [2, 3, 4, 5, 6]


def _table(acc, steps=STEPS):
    rows = []
    for c, vals in acc.items():
        for s, v in zip(steps, vals):
            tag = "global" if s == 0 else "personal"
            rows.append((c, s, "test", tag, "accuracy", v))
            rows.append((c, s, "test", tag, "loss", 2.0 - v))
    return pd.DataFrame(rows, columns=["client", "steps", "split", "model", "metric", "value"])


def _by_hand(acc, lower=False):
    """Best step on VAL by mean, then the statistics on TEST, from the dict alone."""
    sign = -1.0 if lower else 1.0
    vals = {c: np.array([(2.0 - v) if lower else v for v in a]) for c, a in acc.items()}
    means = [np.mean([vals[c][j] for c in VAL]) for j in range(len(STEPS))]
    j = int(np.argmax(sign * np.array(means)))  # argmax returns the first (fewest steps) on ties
    v = np.array([vals[c][j] for c in TEST])
    base = np.array([vals[c][0] for c in TEST])
    worst = v.max() if lower else v.min()      # ceil(10% of 5) = 1 client
    hurt = np.mean(sign * v < sign * base)
    return STEPS[j], {"mean": v.mean(), "median": np.median(v), "worst_10pct": worst,
                      "fraction_hurt": hurt, "clients": len(TEST)}


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_protocol_equals_hand_computation(metric):
    tables = {m: _table(a) for m, a in ACC.items()}
    out = flu.evaluation.protocol(tables, VAL, TEST, metric, group="unseen")
    assert list(out.columns) == ["method", "group", "steps", "statistic", "value"]
    assert len(out) == 2 * 5 and set(out.group) == {"unseen"}
    assert set(out.statistic) == {"mean", "median", "worst_10pct", "fraction_hurt", "clients"}
    for method, acc in ACC.items():
        steps, stats = _by_hand(acc, lower=metric == "loss")
        rows = out[out.method == method]
        assert set(rows.steps) == {steps}
        for stat, want in stats.items():
            assert rows[rows.statistic == stat].value.iloc[0] == pytest.approx(want, abs=1e-12), (method, stat)


def test_protocol_hand_values_spelled_out():
    out = flu.evaluation.protocol({"fedavg": _table(ACC["fedavg"])}, VAL, TEST)
    # validation means 0.5 / 0.65 / 0.85 -> 5 steps; test values 0.5 0.6 0.9 0.7 0.2 against 0.6 0.4 0.8 0.5 0.7
    got = dict(zip(out.statistic, out.value))
    assert set(out.steps) == {5}
    assert got == pytest.approx({"mean": 0.58, "median": 0.6, "worst_10pct": 0.2, "fraction_hurt": 0.4, "clients": 5})


def test_protocol_only_step_zero_reports_zero_hurt():
    zero = {c: (v[0],) for c, v in ACC["fedavg"].items()}
    out = flu.evaluation.protocol({"Local only": _table(zero, steps=(0,))}, VAL, TEST)
    got = dict(zip(out.statistic, out.value))
    assert set(out.steps) == {0} and got["fraction_hurt"] == 0.0
    assert got["mean"] == pytest.approx(np.mean([zero[c][0] for c in TEST]))


def test_protocol_errors_name_the_parameter():
    tables = {"fedavg": _table(ACC["fedavg"])}
    with pytest.raises(ValueError, match="test_clients"):
        flu.evaluation.protocol(tables, [0, 1], [1, 2])
    with pytest.raises(ValueError, match="validation_clients"):
        flu.evaluation.protocol(tables, [], [2])
    with pytest.raises(ValueError, match="tables"):
        flu.evaluation.protocol({}, VAL, TEST)
    with pytest.raises(TypeError, match="tables"):
        flu.evaluation.protocol([tables["fedavg"]], VAL, TEST)
    with pytest.raises(ValueError, match="metric"):
        flu.evaluation.protocol(tables, VAL, TEST, "acc")
    with pytest.raises(ValueError, match=r"tables\['fedavg'\].*test_clients"):
        flu.evaluation.protocol(tables, VAL, [2, 99])


# ---------------------------------------------------------------- episodes on separable novel classes

@pytest.fixture(scope="module")
def blobs():
    g = torch.Generator().manual_seed(0)  # test data only (a private generator)
    C, n, d = 6, 30, 8
    centers = 3.0 * torch.eye(C, d, dtype=torch.float64)
    X = torch.cat([centers[c] + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64) for c in range(C)])
    y = torch.arange(C).repeat_interleave(n)
    return X, y, flu.models.logistic(d, C, dtype=torch.float64, seed=0)


def _reference(X, y, classes, n_way, shots, query, e, seed, steps, lr):
    """One episode by hand: the same draw, then plain SGD on a zero linear head (identity body)."""
    keep = torch.isin(y, torch.tensor(classes))
    Xs, ys, Xq, yq, _ = flu.fewshot.episode(X[keep], y[keep], n_way, shots, query, seed=mix(seed, e, FEWSHOT))
    W = torch.zeros(n_way, X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_way, dtype=torch.float64, requires_grad=True)
    out, done = {}, 0
    for target in steps:
        for _ in range(target - done):
            loss = torch.nn.functional.cross_entropy(Xs @ W.T + b, ys)
            gW, gb = torch.autograd.grad(loss, (W, b))
            with torch.no_grad():
                W -= lr * gW
                b -= lr * gb
        done = target
        with torch.no_grad():
            logits = Xq @ W.T + b
        out[target] = ((logits.argmax(1) == yq).double().mean().item(),
                       torch.nn.functional.cross_entropy(logits, yq).item())
    return out


def test_episodes_equal_a_hand_written_loop(blobs):
    X, y, model = blobs
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes, steps = [2, 3, 4, 5], (0, 3, 40)
    df = flu.evaluation.episodes(model, X, y, classes, n_way=3, shots=4, query=6, num_episodes=4, steps=steps,
                                 lr=0.5, seed=3)
    assert list(df.columns) == ["episode", "steps", "metric", "value"]
    assert len(df) == 4 * len(steps) * 2
    for e in range(4):
        ref = _reference(X, y, classes, 3, 4, 6, e, 3, steps, 0.5)
        for s in steps:
            row = df[(df.episode == e) & (df.steps == s)].set_index("metric").value
            assert row["accuracy"] == pytest.approx(ref[s][0], abs=1e-12)
            assert row["loss"] == pytest.approx(ref[s][1], abs=1e-10)
    zero = df[df.steps == 0].set_index("metric").value
    assert (zero["accuracy"] == 1 / 3).all()                  # a zero head: chance, exactly
    assert np.allclose(zero["loss"], math.log(3), atol=1e-12)
    final = df[(df.steps == 40) & (df.metric == "accuracy")].value
    assert final.mean() > 0.9
    for k, v in model.state_dict().items():                   # the caller's model is unchanged
        assert torch.equal(v, before[k])
    assert model.head.out_features == 6 and all(p.requires_grad for p in model.parameters())
    again = flu.evaluation.episodes(model, X, y, classes, n_way=3, shots=4, query=6, num_episodes=4, steps=steps,
                                    lr=0.5, seed=3)
    pd.testing.assert_frame_equal(df, again)


def test_episodes_full_finetuning_moves_the_body():
    X = torch.eye(4, dtype=torch.float64).repeat_interleave(12, 0)
    y = torch.arange(4).repeat_interleave(12)
    model = flu.models.mlp(4, 8, 10, dtype=torch.float64, seed=1)
    probe = flu.evaluation.episodes(model, X, y, [0, 1, 2, 3], n_way=2, shots=2, query=4, num_episodes=2,
                                    steps=(0, 5), lr=0.5)
    full = flu.evaluation.episodes(model, X, y, [0, 1, 2, 3], n_way=2, shots=2, query=4, num_episodes=2,
                                   steps=(0, 5), lr=0.5, finetune="full")
    assert (probe[probe.steps == 0].value.to_numpy() == full[full.steps == 0].value.to_numpy()).all()
    assert not np.allclose(probe[probe.metric == "loss"].value, full[full.metric == "loss"].value)


@pytest.mark.parametrize("kwargs, name", [
    ({"classes": [2, 3], "n_way": 3}, "n_way"), ({"classes": [2, 9]}, "classes"), ({"classes": []}, "classes"),
    ({"classes": ["a", "b"]}, "classes"), ({"steps": (3, 1)}, "steps"), ({"lr": 0}, "lr"),
    ({"num_episodes": 0}, "num_episodes"), ({"seed": -1}, "seed"), ({"finetune": "all"}, "finetune"),
    ({"shots": 40}, "n_way"),  # no class holds shots + query examples
])
def test_episodes_errors_name_the_parameter(blobs, kwargs, name):
    X, y, model = blobs
    args = {"classes": [2, 3, 4, 5], "n_way": 2, "shots": 2, "query": 3, "num_episodes": 1, "steps": (0,)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        flu.evaluation.episodes(model, X, y, args.pop("classes"), **args)
