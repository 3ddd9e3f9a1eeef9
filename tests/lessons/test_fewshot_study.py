"""Notebook 05's helpers: LoRA factor averaging (``flu.lessons.lora_demo``), the few-shot plots
(``flu.plots.fewshot``), the compute of ``flu.lessons.fewshot`` (its panel is tested in
tests/views/test_widgets.py), and the study fixes (MiniLM body through ``flu.run``; pooled
local-only accuracy).

Small problems throughout (digits 8x8, an MLP, a few clients), so the file runs in seconds.
"""
import types

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import fedlab_utils as flu
from fedlab_utils.lessons import fewshot as lf
from fedlab_utils.lessons import lora_demo
from fedlab_utils.views.plots import fewshot as pf

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def digits():
    return flu.data.load_dataset("digits")


@pytest.fixture(scope="module")
def few(digits):
    return lf.few_shot_federation(digits.X, digits.y, shots=5, alpha=0.5, num_clients=5, seed=0,
                                  shape=digits.shape)


@pytest.fixture(scope="module")
def mlp():
    return flu.models.mlp(64, [32, 16], 10, seed=0)


# ----------------------------------------------------------------------------- lora_demo

def test_naive_factor_averaging_errs_and_ffa_lora_does_not(mlp, few):
    fed = few.federation
    table = lora_demo.lora_factor_averaging_error(mlp, fed, local_steps=(1, 10), lora_rank=2, client_lr=0.1)
    assert set(table["mode"]) == {"lora", "ffa_lora"}
    assert list(table.columns[:2]) == ["mode", "local_steps"]
    lora = table[table["mode"] == "lora"]
    ffa = table[table["mode"] == "ffa_lora"]
    # one step: A has not moved (its gradient is proportional to B = 0), so the two merges agree
    assert (lora[lora.local_steps == 1]["relative_error"] < 1e-12).all()
    # several steps: the clients' A drift apart and the naive average is wrong
    assert (lora[lora.local_steps == 10]["relative_error"] > 1e-4).all()
    assert (lora[lora.local_steps == 10]["A_spread"] > 0).all()
    # FFA-LoRA: A frozen and shared, averaging B is exact
    assert (ffa["relative_error"] < 1e-10).all()
    assert (ffa["A_spread"] < 1e-12).all()
    assert len(lora) == 2 * 2   # two adapted Linear layers of the body, two step counts


@pytest.mark.parametrize("mode", ["lora", "ffa_lora"])
def test_exact_merge_equals_the_engines_first_round(mlp, few, mode):
    fed = few.federation
    factors = lora_demo.client_factors(mlp, fed, mode=mode, lora_rank=3, local_steps=4, client_lr=0.1, seed=2)
    merged = lora_demo.exact_merge(factors)
    hist = flu.run(mlp, fed, num_rounds=1, local_steps=4, client_lr=0.1, batch_size=None, finetune=mode,
                   lora_rank=3, seed=2, progress=False)
    assert set(merged) == {p + "weight" for p in factors["plan"].adapters}
    for name, W in merged.items():
        torch.testing.assert_close(hist.params[name], W, rtol=1e-5, atol=1e-6)


def test_client_factors_checks_and_reports_divergence(mlp, few):
    with pytest.raises(ValueError, match="mode"):
        lora_demo.client_factors(mlp, few.federation, mode="full")
    with pytest.raises(TypeError, match="fed"):
        lora_demo.client_factors(mlp, [(torch.zeros(2, 64), torch.zeros(2, dtype=torch.long))])
    with pytest.raises(FloatingPointError, match="diverged"):
        lora_demo.client_factors(mlp, few.federation, local_steps=30, client_lr=1e4)
    with pytest.raises(ValueError, match="factors"):
        lora_demo.factor_averaging_error({"plan": None})


# ----------------------------------------------------------------------------- compute

def test_few_shot_federation_matches_the_spelled_out_calls(digits):
    a = lf.few_shot_federation(digits.X, digits.y, shots=3, alpha=0.3, num_clients=4, seed=1, partition_seed=2)
    part = flu.partition.dirichlet(digits.y, 4, 0.3, seed=2)
    b = flu.fewshot.k_shot(flu.data.federate(digits.X, digits.y, part, seed=2), 3, seed=1)
    for (xa, ya), (xb, yb) in zip(a.federation.train + a.federation.test, b.federation.train + b.federation.test):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # indices depend on labels and seeds only: row numbers pick the same examples
    rows = lf.few_shot_federation(torch.arange(len(digits.y)).unsqueeze(1), digits.y, shots=3, alpha=0.3,
                                  num_clients=4, seed=1, partition_seed=2)
    for (r, _), (x, _) in zip(rows.federation.train, a.federation.train):
        assert torch.equal(digits.X[r.ravel()], x)


def test_support_gallery_and_trainable_table(few, mlp):
    gallery = lf.support_gallery(few.federation, clients=[0, 2], per_split=3, shape=(1, 8, 8))
    assert list(gallery.columns) == ["client", "split", "slot", "label", "image"]
    assert set(gallery.split) == {"support", "query"} and set(gallery.client) == {0, 2}
    assert gallery.image.iloc[0].shape == (8, 8)
    table = lf.trainable_table(mlp, lora_rank=2)
    totals = table.groupby("mode")["trainable"].sum()
    for mode in flu.finetune.MODES:
        opts = {"lora_rank": 2} if "lora" in mode else {}
        assert totals[mode] == flu.finetune.cost(mlp, mode, input_shape=(64,), **opts)["trainable_params"]
    assert (table.trainable <= table.params).all()


def test_frozen_prefix_and_top_model(mlp, digits):
    # mlp body: Flatten, Linear, ReLU, Linear, ReLU
    assert lf.frozen_prefix(mlp, "linear_probe") == 5 == lf.frozen_prefix(mlp, "none")
    assert lf.frozen_prefix(mlp, "full") == 0 and lf.frozen_prefix(mlp, "bitfit") == 0
    assert lf.frozen_prefix(mlp, "last_layers", num_layers=2) == 3
    assert lf.frozen_prefix(mlp, "lora") == 0       # the first Linear gets an adapter; Flatten alone: nothing to cache
    k = 3
    prefixes = lf.Prefixes(mlp, digits.X)
    with torch.no_grad():
        torch.testing.assert_close(lf.top_model(mlp, k)(prefixes(k)), mlp(digits.X))
        head_model, Z = lf.cache_body(mlp, digits.X)
        torch.testing.assert_close(head_model(Z), mlp(digits.X))


def test_compare_on_cached_prefixes_equals_the_model_in_the_loop(mlp, few):
    modes = ("none", "linear_probe", "last_layers", "full")
    kw = dict(num_rounds=2, local_steps=2, seed=0)
    cached, _, _ = lf.compare(mlp, few.federation, modes, **kw)
    loop, _, _ = lf.compare(mlp, few.federation, modes, cache=False, **kw)
    assert list(cached["mode"]) == ["pretrained", *modes] == list(loop["mode"])
    assert cached.set_index("mode").loc["linear_probe", "features"].startswith("body[:5] cached")
    assert set(loop["features"]) == {"in the loop"}
    with pytest.raises(ValueError, match="modes"):
        lf.compare(mlp, few.federation, ())
    for col in ("accuracy", "f1_macro", "bytes_up_per_round", "trainable_params", "flops_step"):
        np.testing.assert_allclose(cached[col].to_numpy(float), loop[col].to_numpy(float), atol=1e-3, equal_nan=True)


def test_sweep_and_rounds_curve_tables(mlp, digits, few):
    sweep = lf.sweep(mlp, digits.X, digits.y, "shots", [2, 4], seeds=(0, 1), num_rounds=2, num_clients=4,
                     local_steps=2)
    assert set(sweep.shots) == {2, 4} and set(sweep.seed) == {0, 1}
    assert len(sweep) == 2 * 2 * 3              # pretrained, prototypes, linear probe per point
    with pytest.raises(ValueError, match="param"):
        lf.sweep(mlp, digits.X, digits.y, "lr", [0.1])
    curve = lf.rounds_curve(mlp, few.federation, ("none", "linear_probe"), num_rounds=3, local_steps=2)
    assert list(curve.columns) == ["method", "mode", "round", "metric", "value"]
    assert set(curve["round"]) == {0, 1, 2, 3} and set(curve.metric) == {"accuracy", "f1_macro"}
    flat = curve[(curve["mode"] == "none") & (curve.metric == "accuracy")]["value"]
    assert flat.nunique() == 1                  # the prototype head does not train


def test_before_after_table_pairs_each_client_with_the_pretrained_head(mlp, few):
    _, per_client, _ = lf.compare(mlp, few.federation, ("none", "linear_probe"), num_rounds=2, local_steps=2)
    table = lf.before_after_table(per_client, ("linear_probe", "none", "linear_probe", "full"))
    assert list(table.columns) == ["client", "before", "after", "change", "method"]
    assert list(dict.fromkeys(table.method)) == ["Linear probe", "None (prototypes)"]   # order kept, "full" absent
    acc = per_client[(per_client.metric == "accuracy") & per_client.client.notna()]
    for r in table.itertuples():
        before = acc[(acc.method == "Pretrained (no fine-tuning)") & (acc.client == r.client)]["value"]
        after = acc[(acc.method == r.method) & (acc.client == r.client)]["value"]
        assert (r.before, r.after) == (before.item(), after.item())
        assert r.change == pytest.approx(r.after - r.before, abs=1e-15)
    assert len(table) == 2 * few.federation.num_clients
    with pytest.raises(ValueError, match="modes"):
        lf.before_after_table(per_client, ("full",))
    with pytest.raises(ValueError, match="modes"):
        lf.before_after_table(per_client, ("nonsense",))


# ----------------------------------------------------------------------------- plots

@pytest.fixture(scope="module")
def comparison(mlp, few):
    return lf.compare(mlp, few.federation, ("none", "linear_probe", "lora", "full"), num_rounds=2, local_steps=2,
                      baselines=True)


def test_plot_functions_return_axes(comparison, few, mlp):
    summary, per_client, _ = comparison
    before = per_client[per_client.method == "Pretrained (no fine-tuning)"].drop(columns=["method", "features"])
    after = per_client[per_client.method == "Full"].drop(columns=["method", "features"])
    ba = flu.evaluation.before_after(before, after)
    sweep = pd.DataFrame({"method": ["Linear probe"] * 4 + ["Full"] * 4, "shots": [1, 1, 5, 5] * 2,
                          "accuracy": [0.5, 0.6, 0.7, 0.72, 0.55, 0.6, 0.8, 0.82]})
    errors = pd.DataFrame({"mode": ["lora", "lora", "ffa_lora", "ffa_lora"], "local_steps": [1, 5, 1, 5],
                           "relative_error": [0.0, 0.01, 0.0, 0.0]})
    reference = pd.DataFrame({"quantity": ["q", "q"], "source": ["reference", "ours"], "value": [0.85, 0.9],
                              "method": [None, "Linear probe"]})
    steps = pd.DataFrame({"setting": ["a", "b"], "seconds": [0.01, 0.002], "method": ["Full", "Linear probe"]})
    calls = [
        lambda ax: pf.plot_protocol(ax=ax),
        lambda ax: pf.plot_support_set(lf.support_gallery(few.federation, per_split=2, shape=(1, 8, 8)), ax=ax),
        lambda ax: pf.plot_support_counts(few.table, ax=ax),
        lambda ax: pf.plot_trainable(lf.trainable_table(mlp), ax=ax),
        lambda ax: pf.plot_accuracy_vs_cost(summary, "bytes_up_per_round", ax=ax),
        lambda ax: pf.plot_accuracy_vs_cost(summary, "flops_step", ax=ax),
        lambda ax: pf.plot_sweep(sweep, "shots", ax=ax, reference={"ref": 0.85}),
        lambda ax: pf.plot_before_after(ba, ax=ax),
        lambda ax: pf.plot_before_after(ba.assign(method="Full"), ax=ax),
        lambda ax: pf.plot_reference(reference, ax=ax),
        lambda ax: pf.plot_step_times(steps, ax=ax, baseline="b"),
        lambda ax: pf.plot_factor_error(errors, ax=ax),
    ]
    for call in calls:
        ax = plt.subplots()[1]
        assert call(ax) is ax
    assert isinstance(pf.plot_sweep(sweep, "shots"), matplotlib.axes.Axes)   # makes its own Axes


def test_plots_check_their_tables():
    with pytest.raises(ValueError, match="df"):
        pf.plot_sweep(pd.DataFrame({"x": [1]}), "shots")
    with pytest.raises(TypeError, match="DataFrame"):
        pf.plot_before_after([1, 2, 3])
    with pytest.raises(ValueError, match="baseline"):
        pf.plot_step_times(pd.DataFrame({"setting": ["a"], "seconds": [1.0]}), baseline="b")


def test_plot_before_after_marks_hurt_clients_in_the_title():
    df = pd.DataFrame({"client": [0, 1, 2, 3], "before": [0.5, 0.6, 0.9, 0.4], "after": [0.8, 0.7, 0.7, 0.9]})
    ax = pf.plot_before_after(df)
    assert "25% hurt" in ax.get_title()


# ----------------------------------------------------------------------------- study fixes

def _tiny_encoder():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=16)
    with torch.random.fork_rng():        # a tiny random transformer, without touching the global stream
        torch.manual_seed(0)
        bert = transformers.BertModel(config)
    bert.eval()                          # as from_pretrained leaves it: no dropout (flu.run replays steps)
    return [types.SimpleNamespace(auto_model=bert)]


def test_encoder_body_runs_through_flu_run_and_evaluate():
    body = flu.lessons.study.EncoderBody(_tiny_encoder())
    assert body.transformer.pooler is None      # unused by the mean-pooled output: not trained, not sent
    model = flu.models.FedModel(body, nn.Linear(8, 2))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (12, 1, 6), generator=gen)
    tokens = torch.cat([ids, torch.ones_like(ids)], dim=1)           # (N, 2, L) long
    y = torch.arange(12) % 2
    fed = flu.data.Federation.from_clients([(tokens[:6], y[:6]), (tokens[6:], y[6:])],
                                           test=[(tokens[:3], y[:3]), (tokens[6:9], y[6:9])])
    table = flu.evaluation.evaluate(model, fed)     # casts the tokens to float: must still work
    assert set(table.metric) == {"loss", "accuracy", "f1_macro"}
    hist = flu.run(model, fed, num_rounds=1, local_steps=1, batch_size=4, client_lr=0.01, finetune="full",
                   backend="loop", progress=False)
    assert not any(k.startswith("body.transformer.pooler") for k in hist.params)
    assert int(hist.rounds.trainable_params.iloc[0]) == flu.models.num_params(model)


def test_local_only_row_reports_pooled_accuracy(mlp, few):
    summary, per_client, _ = flu.lessons.study.compare_modes(mlp, few.federation, modes=("linear_probe",),
                                                             num_rounds=2, local_steps=2, baselines=True)
    local = per_client[(per_client.method == "Local only") & (per_client.metric == "accuracy")]
    clients = local[local.client.notna()]
    sizes = few.federation.test_sizes[clients.client.astype(int).to_numpy()]
    pooled = float((clients.value.to_numpy() * sizes).sum() / sizes.sum())
    row = summary.set_index("mode").loc["local_only"]
    assert row["accuracy"] == pytest.approx(pooled)
    assert local[local.client.isna()]["value"].iloc[0] == pytest.approx(pooled)
