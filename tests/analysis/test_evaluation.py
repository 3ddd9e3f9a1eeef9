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
