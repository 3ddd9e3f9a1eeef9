"""Notebook 06's compute (``flu.lessons.personal``), each function against an independent reference:
the engine (``flu.run``) for the numpy Per-FedAvg rules, finite differences for the meta-gradient,
``flu.evaluation`` for the protocol tables, and hand counts for the bytes."""
import numpy as np
import pandas as pd
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils.lessons import drift
from fedlab_utils.lessons import personal as lp


@pytest.fixture(scope="module")
def q():
    return flu.data.quadratics.heterogeneous_quadratics(3)


@pytest.fixture(scope="module")
def small():
    return lp.image_task(shots=3, alpha=0.5, num_clients=10, hidden=16, seed=1)


TINY = dict(num_rounds=2, local_steps=2, client_lr=0.05, batch_size=8, eval_every=2)


def _grad(f, x, h=1e-6):
    x = np.asarray(x, dtype=np.float64)
    return np.array([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(len(x))])


# ============================================================================ Per-FedAvg on quadratics

@pytest.mark.parametrize("variant", lp.VARIANTS)
def test_perfedavg_local_averaged_is_one_round_of_flu_run(q, variant):
    x = np.zeros(2)
    ours = q.p @ np.stack([lp.perfedavg_local(q, i, x, local_steps=3, client_lr=0.1, inner_lr=0.2, variant=variant)
                           for i in range(3)])
    hist = flu.run(drift.quadratic_model(q), q.federation(), algorithm="perfedavg", variant=variant, inner_lr=0.2,
                   num_rounds=1, local_steps=3, client_lr=0.1, batch_size=None, loss="mse", progress=False)
    np.testing.assert_allclose(ours, hist.params["head.weight"].numpy().ravel(), atol=1e-12)


def test_round_map_iterates_as_flu_run_and_converges_to_its_fixed_point(q):
    rm = lp.meta_round_map(q, "perfedavg_exact", local_steps=5, client_lr=0.1, inner_lr=0.2)
    assert rm.radius < 1
    hist = flu.run(drift.quadratic_model(q), q.federation(), algorithm="perfedavg", variant="exact", inner_lr=0.2,
                   num_rounds=120, local_steps=5, client_lr=0.1, batch_size=None, loss="mse", eval_every=120,
                   progress=False)
    engine = hist.params["head.weight"].numpy().ravel()
    np.testing.assert_allclose(engine, rm.iterate(120)[-1], atol=1e-12)
    np.testing.assert_allclose(engine, rm.fixed_point, atol=1e-9)
    fedavg = lp.meta_round_map(q, "fedavg", local_steps=2, client_lr=0.1)
    reference = drift.round_map(q, "fedavg", local_steps=2, client_lr=0.1)
    np.testing.assert_allclose(fedavg.fixed_point, reference.fixed_point, atol=1e-12)


def test_adapted_values_is_the_loss_after_one_inner_step(q):
    W = np.array([[0.3, -0.2], [-1.0, 0.5]])
    a = 0.15
    direct = []
    for w in W:
        adapted = [w - a * 2 * q.A[i] @ (w - q.centers[i]) for i in range(3)]
        direct.append(sum(q.p[i] * q.client_values(adapted[i])[i, 0] for i in range(3)))
    np.testing.assert_allclose(lp.adapted_values(q, W, a), direct, rtol=1e-12)


def test_maml_minimiser_zeroes_the_gradient_of_the_adapted_loss(q):
    w = lp.maml_minimiser(q, 0.2)
    g = _grad(lambda v: lp.adapted_values(q, v, 0.2)[0], w)
    assert np.abs(g).max() < 1e-7
    np.testing.assert_allclose(lp.maml_minimiser(q, 0.0), q.w_star, atol=1e-12)   # alpha = 0: plain F


def test_inner_outer_meta_step_is_the_gradient_of_the_adapted_loss(q):
    x = np.array([0.4, -0.3])
    pts = lp.inner_outer(q, x, inner_lr=0.2, meta_lr=0.5)
    meta = pts[pts.kind == "meta step"][["w1", "w2"]].to_numpy()[0]
    expected = x - 0.5 * _grad(lambda v: lp.adapted_values(q, v, 0.2)[0], x)
    np.testing.assert_allclose(meta, expected, atol=1e-7)
    phi0 = pts[(pts.kind == "adapted") & (pts.client == 0)][["w1", "w2"]].to_numpy()[0]
    np.testing.assert_allclose(phi0, x - 0.2 * 2 * q.A[0] @ (x - q.centers[0]), atol=1e-14)


def test_meta_fixed_points_table(q):
    fixed = lp.meta_fixed_points(q, local_steps=3, client_lr=0.1, inner_lr=0.2).set_index("label")
    np.testing.assert_allclose(fixed.loc["optimum w* of F", ["w1", "w2"]].to_numpy(float), q.w_star, atol=1e-12)
    exact = fixed.loc["Per-FedAvg (exact)"]
    assert exact["dist_to_maml"] < fixed.loc["FedAvg", "dist_to_maml"]
    np.testing.assert_allclose(exact["F"], q.values(exact[["w1", "w2"]].to_numpy(float))[0], rtol=1e-12)


def test_quadratic_functions_name_bad_input(q):
    with pytest.raises(ValueError, match="variant"):
        lp.perfedavg_local(q, 0, np.zeros(2), variant="second")
    with pytest.raises(ValueError, match="method"):
        lp.meta_round_map(q, "scaffold")
    with pytest.raises(ValueError, match="inner_lr"):
        lp.maml_minimiser(q, -0.1)
    with pytest.raises(TypeError, match="q must be"):
        lp.adapted_values("quadratics", np.zeros(2), 0.1)


# ============================================================================ methods and bytes

def test_method_options_apply_the_knobs_only_where_they_belong():
    assert lp.method_options("Ditto", lam=2.0, inner_lr=0.3) == ("ditto", {"lam": 2.0})
    assert lp.method_options("FedRep", inner_steps=4) == ("fedrep", {"head_steps": 4})
    assert lp.method_options("FedMeta (FOMAML)", inner_steps=3, inner_lr=0.5)[1] == {"inner_lr": 0.5, "inner_steps": 3}
    assert lp.method_options("FedAvg + fine-tuning", lam=1.0) == ("fedavg", {})
    assert set(lp.uses("inner_lr")) == {"FedMeta (FOMAML)", "Per-FedAvg"}
    with pytest.raises(ValueError, match="method"):
        lp.method_options("FedSomething")
    with pytest.raises(ValueError, match="knobs"):
        lp.method_options("Ditto", mu=1.0)
    with pytest.raises(ValueError, match="method"):
        lp.train_method(flu.models.mlp(64, 8, 10), None, "Local only")


def test_what_travels_counts_the_shared_parameters(small):
    table = lp.what_travels(small.model, small.fed, ("FedAvg + fine-tuning", "FedPer", "LG-FedAvg", "Ditto"),
                            **TINY).set_index("method")
    head = sum(p.numel() for n, p in small.model.named_parameters() if n.startswith("head."))
    total = sum(p.numel() for p in small.model.parameters())
    N = small.fed.num_clients
    assert table.loc["FedAvg + fine-tuning", "bytes_up"] == 4 * N * total
    assert table.loc["FedPer", "bytes_up"] == 4 * N * (total - head)
    assert table.loc["LG-FedAvg", "bytes_up"] == 4 * N * head
    assert table.loc["Ditto", "bytes_up"] == 4 * N * total
    assert table.loc["FedPer", "stays_on_client"] == "head" and table.loc["LG-FedAvg", "personal_copy"] == "body"


def test_global_vs_local_against_evaluate_and_local_only(small):
    gl = lp.global_vs_local(small.model, small.fed, seed=0, **TINY)
    hist = flu.run(small.model, small.fed, seed=0, progress=False, **TINY)
    ev = flu.evaluation.evaluate(hist.model, small.fed)
    acc = ev[(ev.metric == "accuracy") & ev.client.notna()].set_index("client")["value"]
    lo = flu.evaluation.local_only(small.model, small.fed, seed=0, **TINY)
    loc = lo[(lo.metric == "accuracy")].set_index("client")["value"]
    for _, r in gl.iterrows():
        c = int(r["client"])
        assert r["global"] == pytest.approx(acc[c]) and r["local"] == pytest.approx(loc[c])
        assert r["gap"] == pytest.approx(r["global"] - r["local"])
        assert r["classes"] == len(torch.unique(small.fed.train[c][1]))


# ============================================================================ the protocol

def test_assign_roles_is_a_seeded_partition():
    v, t = lp.assign_roles([5, 1, 3, 9, 7, 2], seed=4)
    assert sorted(v + t) == [1, 2, 3, 5, 7, 9] and not set(v) & set(t) and len(v) == 3
    assert (v, t) == lp.assign_roles([1, 2, 3, 5, 7, 9], seed=4)
    assert any(lp.assign_roles(range(20), seed=s) != lp.assign_roles(range(20), seed=0) for s in (1, 2, 3))
    assert lp.assign_roles([0, 1], seed=0, validation_fraction=0.9)[1]       # at least one test client
    with pytest.raises(ValueError, match="clients"):
        lp.assign_roles([3])
    with pytest.raises(ValueError, match="validation_fraction"):
        lp.assign_roles([0, 1, 2], validation_fraction=1.0)


@pytest.fixture(scope="module")
def comparison(small):
    return lp.compare(small, ("FedAvg + fine-tuning", "FedRep", "Local only"), num_unseen=4, steps=(0, 1, 3),
                      lr=0.05, seed=0, task_name="tiny", **TINY)


def test_compare_equals_protocol_on_its_tables(comparison):
    table, per = comparison.table, comparison.per_client
    assert list(table.columns) == lp.COMPARISON_COLUMNS and set(table.task) == {"tiny"}
    for (method, group), rows in table.groupby(["method", "group"]):
        mine = per[(per.method == method) & (per.group == group) & (per.metric == "accuracy")]
        validation, test = comparison.roles[group]
        ref = flu.evaluation.protocol({method: mine.drop(columns=["method", "group"])}, validation, test, group=group)
        pd.testing.assert_frame_equal(rows[["method", "group", "steps", "statistic", "value"]].reset_index(drop=True),
                                      ref.reset_index(drop=True))
    local = per[(per.method == "Local only")]
    assert set(local.steps) == {0}
    chosen = lp.at_chosen_steps(comparison)
    assert set(chosen.client[chosen.group == "seen"]) <= set(comparison.roles["seen"][1])


def test_method_tables_starts_personal_methods_from_their_personal_models(small):
    seen, unseen, _ = flu.fewshot.split_clients(small.fed, 3, seed=0)
    hist, tables = lp.method_tables(small.model, seen, unseen, "FedRep", steps=(0, 2), lr=0.05, seed=0, **TINY)
    ref = flu.evaluation.personalize(hist, seen, (0, 2), 0.05, seed=0, start="personal")
    pd.testing.assert_frame_equal(tables["seen"], ref)
    pd.testing.assert_frame_equal(tables["unseen"], flu.evaluation.personalize(hist.model, unseen, (0, 2), 0.05, seed=0))


def test_comparison_table_and_pivot(comparison):
    tables = {(m, g): t.drop(columns=["method", "group"]) for (m, g), t in
              comparison.per_client.groupby(["method", "group"], sort=False)}
    again = lp.comparison_table(tables, comparison.roles, task="tiny")
    pd.testing.assert_frame_equal(again.sort_values(lp.COMPARISON_COLUMNS[:5]).reset_index(drop=True),
                                  comparison.table.sort_values(lp.COMPARISON_COLUMNS[:5]).reset_index(drop=True))
    wide = lp.pivot(comparison.table)
    row = comparison.table[(comparison.table.method == "FedRep") & (comparison.table.group == "unseen")]
    assert wide.loc[("tiny", "FedRep"), ("unseen", "mean")] == row.set_index("statistic").loc["mean", "value"]
    assert wide.loc[("tiny", "FedRep"), ("unseen", "steps")] == row.steps.iloc[0]
    with pytest.raises(ValueError, match="roles"):
        lp.comparison_table(tables, {"seen": comparison.roles["seen"]})
    with pytest.raises(ValueError, match="statistics"):
        lp.pivot(comparison.table, ("mean", "best"))


# ============================================================================ episodes, text, panel, CSV

def test_meta_test_rows_are_flu_evaluation_episodes(small):
    X, y = flu.data.load_dataset("digits").X, flu.data.load_dataset("digits").y
    models = {"a": small.model}
    table = lp.meta_test(models, X, y, [7, 8, 9], n_way=3, shots=(2,), steps=(0, 2), query=4, num_episodes=3, seed=5)
    ref = flu.evaluation.episodes(small.model, X, y, [7, 8, 9], n_way=3, shots=2, query=4, num_episodes=3,
                                  steps=(0, 2), lr=0.1, finetune="linear_probe", seed=5)
    np.testing.assert_array_equal(table.value.to_numpy(), ref.value.to_numpy())
    assert set(table.method) == {"a"} and set(table.shots) == {2}
    with pytest.raises(ValueError, match="shots"):
        lp.meta_test(models, X, y, [7, 8, 9], n_way=3, shots=(0,))
    with pytest.raises(ValueError, match="base"):
        lp.meta_train(small.model, X, y, [42])


def test_text_task_model_was_pretrained_on_other_movies():
    task = lp.text_task(num_clients=4, shots=2, pretrain_steps=30, seed=0)
    raw = lp.text_task(num_clients=4, shots=2, pretrain_steps=0, seed=0)
    assert task.fed.num_clients == 4 and task.model.name.startswith("mlp(384")
    text = flu.pretrained.load_text_embeddings(fast=True)
    movies = flu.lessons.hetero_finetune.text_task(num_clients=4, shots=2, seed=0).movies
    other = ~torch.as_tensor(np.isin(np.asarray(text.groups), movies))
    with torch.no_grad():
        losses = [float(torch.nn.functional.cross_entropy(m(text.X[other]), text.y[other])) for m in (task.model, raw.model)]
    assert losses[0] < losses[1]
    assert set(task.table.columns) == {"client", "label", "available", "support", "query"}
    with pytest.raises(ValueError, match="pretrain_lr"):
        lp.text_task(num_clients=4, pretrain_lr=0.0)


def test_scenario_refuses_a_setting_without_query_clients():
    digits = flu.data.load_dataset("digits")
    with pytest.raises(ValueError, match="shots"):
        lp.scenario(digits.X, digits.y, shots=60, num_clients=20, num_unseen=6, **TINY)
    with pytest.raises(ValueError, match="method"):
        lp.scenario(digits.X, digits.y, method="Local only")


def test_load_minilm_personal(tmp_path):
    good = tmp_path / "good.csv"
    pd.DataFrame([["Ditto", "text", "seen", 1, "mean", 0.7, 3.0]], columns=lp.MINILM_COLUMNS).to_csv(good, index=False)
    assert lp.load_minilm_personal(good).value.iloc[0] == 0.7
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"method": ["Ditto"], "value": [0.7]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="path"):
        lp.load_minilm_personal(bad)
    with pytest.raises(FileNotFoundError):
        lp.load_minilm_personal(tmp_path / "none.csv")
