"""Per-client evaluation against scikit-learn metrics and hand computations."""
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

import fedlab_utils as flu


@pytest.fixture(scope="module")
def setup():
    ds = flu.data.load_dataset("digits")
    part = flu.partition.dirichlet(ds.y, num_clients=6, alpha=0.5, seed=1)
    fed = flu.data.federate(ds.X, ds.y, part, seed=0)
    few = flu.fewshot.k_shot(fed, shots=3, seed=0).federation
    return few, flu.models.mlp(64, 32, 10, seed=0)


def test_evaluate_matches_sklearn(setup):
    few, model = setup
    table = flu.evaluation.evaluate(model, few)
    assert set(table.split) == {"query"}
    with torch.no_grad():
        for i, (X, y) in enumerate(few.test):
            pred = model(X).argmax(1).numpy()
            row = table[(table.client == i) & (table.metric == "accuracy")].value.iloc[0]
            assert row == pytest.approx(accuracy_score(y.numpy(), pred))
            f1 = table[(table.client == i) & (table.metric == "f1_macro")].value.iloc[0]
            labels = np.union1d(y.numpy(), pred)
            assert f1 == pytest.approx(f1_score(y.numpy(), pred, average="macro", labels=labels))


def test_summary_and_before_after():
    def table(vals):
        return flu.evaluation._frame([(i, "query", "global", "accuracy", v) for i, v in enumerate(vals)])
    before = table([0.5] * 10)
    after = table([0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.5, 0.4, 0.3, 0.2])
    s = flu.evaluation.summarize(after, baseline=before)
    assert s["mean"] == pytest.approx(0.545) and s["median"] == pytest.approx(0.525)
    assert s["worst_10pct"] == pytest.approx(0.2) and s["fraction_hurt"] == pytest.approx(0.3)
    ba = flu.evaluation.before_after(before, after)
    assert list(ba.columns) == ["client", "before", "after", "change"]
    m, lo, hi = flu.evaluation.interval([0.8, 0.82, 0.78, 0.81])
    assert lo < m < hi and m == pytest.approx(0.8025)
    with pytest.raises(ValueError, match="values"):
        flu.evaluation.interval([0.8])


def test_baselines_run(setup):
    few, model = setup
    local = flu.evaluation.local_only(model, few, num_rounds=2, local_steps=3, batch_size=None,
                                      finetune="linear_probe")
    assert set(local.model) == {"personal"} and local.client.notna().all()
    central = flu.evaluation.centralised(model, few, num_rounds=2, local_steps=3, batch_size=None)
    assert isinstance(central, torch.nn.Module)


def test_seen_unseen_summaries(setup):
    few, model = setup
    seen, unseen, ids = flu.fewshot.split_clients(few, 2, seed=0)
    hist = flu.run(model, seen, num_rounds=2, finetune="linear_probe", progress=False)
    table = flu.evaluation.seen_unseen(hist.model, seen, unseen, before=model)
    assert list(table.group) == ["seen", "unseen"]
    assert list(table.clients) == [4, 2]
    direct = flu.evaluation.summarize(flu.evaluation.evaluate(hist.model, unseen))
    assert table.loc[1, "mean"] == pytest.approx(direct["mean"])
    assert table.fraction_hurt.between(0, 1).all()


# ---------------------------------------------------------------- argument checks

def _table(vals, metric="accuracy"):
    return flu.evaluation._frame([(i, "query", "global", metric, v) for i, v in enumerate(vals)])


def test_interval_hand_computed():
    m, lo, hi = flu.evaluation.interval([1.0, 2.0, 3.0, 4.0], confidence=0.95)
    half = 3.182446305284263 * np.std([1, 2, 3, 4], ddof=1) / 2  # t_{0.975, 3} s / sqrt(4)
    assert (m, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    m90, lo90, hi90 = flu.evaluation.interval([1.0, 2.0, 3.0, 4.0], confidence=0.9)
    assert lo < lo90 < m90 < hi90 < hi


@pytest.mark.parametrize("confidence", [0, 1, 1.5, -0.1, float("nan"), 95])
def test_interval_confidence_outside_unit_interval(confidence):
    with pytest.raises(ValueError, match="confidence"):
        flu.evaluation.interval([0.8, 0.9, 0.85], confidence)


@pytest.mark.parametrize("values", [[], np.array([]), [0.8], [[0.8, 0.9], [0.7, 0.6]], [0.8, float("nan")],
                                    ["a", "b"]])
def test_interval_bad_values(values):
    with pytest.raises(ValueError, match="values"):
        flu.evaluation.interval(values)


def test_unknown_loss_names_the_choices(setup):
    few, model = setup
    for call in (lambda: flu.evaluation.evaluate(model, few, loss="hinge"),
                 lambda: flu.evaluation.local_only(model, few, loss="hinge", num_rounds=1),
                 lambda: flu.evaluation.centralised(model, few, loss="hinge", num_rounds=1)):
        with pytest.raises(ValueError, match=r"loss.*\['cross_entropy', 'mse'\].*'hinge'"):
            call()


def test_unknown_split_and_metric(setup):
    few, model = setup
    with pytest.raises(ValueError, match=r"split.*'query'.*'support'.*'test'"):
        flu.evaluation.evaluate(model, few, split="test")
    seen, unseen, _ = flu.fewshot.split_clients(few, 2, seed=0)
    with pytest.raises(ValueError, match="metric.*'acc'"):
        flu.evaluation.seen_unseen(model, seen, unseen, metric="acc")
    with pytest.raises(ValueError, match=r"metric.*\['accuracy'\].*'f1'"):
        flu.evaluation.summarize(_table([0.5, 0.6]), metric="f1")
    with pytest.raises(ValueError, match="metric.*'loss'"):
        flu.evaluation.before_after(_table([0.5]), _table([0.6]), metric="loss")
    with pytest.raises(TypeError, match="fed"):
        flu.evaluation.evaluate(model, few.train)


@pytest.mark.parametrize("drop", ["client", "metric", "value"])
def test_tables_missing_columns(drop):
    good, bad = _table([0.5, 0.6]), _table([0.5, 0.6]).drop(columns=[drop])
    with pytest.raises(ValueError, match=f"before.*missing.*'{drop}'"):
        flu.evaluation.before_after(bad, good)
    with pytest.raises(ValueError, match=f"after.*missing.*'{drop}'"):
        flu.evaluation.before_after(good, bad)
    with pytest.raises(ValueError, match=f"table.*missing.*'{drop}'"):
        flu.evaluation.summarize(bad)
    with pytest.raises(ValueError, match=f"baseline.*missing.*'{drop}'"):
        flu.evaluation.summarize(good, baseline=bad)


def test_tables_with_several_values_per_client():
    twice = pd.concat([_table([0.5, 0.6]), _table([0.7, 0.8]).assign(model="personal")], ignore_index=True)
    with pytest.raises(ValueError, match="one 'accuracy' value per client"):
        flu.evaluation.summarize(twice)
    with pytest.raises(ValueError, match="after"):
        flu.evaluation.before_after(_table([0.5, 0.6]), twice)


def test_fraction_hurt_over_shared_clients():
    before = _table([0.5, 0.5, 0.5])
    after = flu.evaluation._frame([(0, "query", "g", "accuracy", 0.4), (2, "query", "g", "accuracy", 0.9),
                                   (5, "query", "g", "accuracy", 0.1)])
    s = flu.evaluation.summarize(after, baseline=before)
    assert s["fraction_hurt"] == pytest.approx(0.5) and s["clients"] == 3  # clients 0 (hurt) and 2 in both
