"""Notebook 08's compute (flu.lessons.hetero_finetune) and figures (flu.plots.hetero), against
independent references: flu.run, hand-computed tiers and counts, the runs the helpers stand for."""
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import fedlab_utils as flu  # noqa: E402
from fedlab_utils.lessons import hetero_finetune as hf  # noqa: E402
from fedlab_utils.views.plots import hetero as ph  # noqa: E402

SIZES = (7, 11, 5, 9)


def federation(sizes=SIZES, seed=0, d=4):
    g = torch.Generator().manual_seed(seed)
    clients = [(torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g))
               for n in sizes]
    return flu.data.Federation.from_clients(clients, test=clients)


def mlp():
    return flu.models.mlp(4, [6, 5], 3, dtype=torch.float64, seed=2)


def devices(n=4, **cols):
    base = dict(client=list(range(n)), samples_per_s=[100.0, 50.0, 10.0, 80.0][:n], memory_mb=[512.0] * n,
                download_mbps=[80.0, 8.0, 1.0, 20.0][:n], upload_mbps=[40.0, 4.0, 1.0, 10.0][:n],
                latency_s=[0.1, 0.2, 0.5, 0.1][:n], dropout=[0.0] * n, watts=[2.0, 3.0, 5.0, 2.0][:n],
                energy_budget_j=[math.inf] * n)
    base.update(cols)
    return pd.DataFrame(base)


TRAIN = dict(num_rounds=3, local_steps=2, batch_size=4, client_lr=0.1, seed=1)


# ------------------------------------------------------------------ mixed aggregation from scratch

@pytest.mark.parametrize("modes", [["full", "last_layers", "linear_probe", "full"],
                                   ["bitfit", "linear_probe", "full", "last_layers"]])
def test_mixed_reference_equals_flu_run(modes):
    fed = federation()
    ref = hf.mixed_reference(mlp(), fed, modes, num_rounds=3, local_steps=2, client_lr=0.3)
    hist = flu.run(mlp(), fed, finetune=modes, num_rounds=3, local_steps=2, client_lr=0.3, batch_size=None,
                   progress=False)
    for k, v in hist.params.items():
        torch.testing.assert_close(ref[k], v, rtol=0, atol=1e-12)
    start = dict(mlp().named_parameters())
    assert any(not torch.equal(ref[k], start[k].detach()) for k in ref)


def test_mixed_reference_keeps_what_nobody_trains_and_refuses_lora():
    fed = federation()
    ref = hf.mixed_reference(mlp(), fed, ["linear_probe"] * 4, num_rounds=2, local_steps=2, client_lr=0.3)
    start = dict(mlp().named_parameters())
    assert torch.equal(ref["body.1.weight"], start["body.1.weight"].detach())
    assert not torch.equal(ref["head.weight"], start["head.weight"].detach())
    with pytest.raises(ValueError, match="modes"):
        hf.mixed_reference(mlp(), fed, ["lora"] * 4)
    with pytest.raises(ValueError, match="one mode per client"):
        hf.mixed_reference(mlp(), fed, ["full"] * 3)


def test_local_update_trains_only_its_mask():
    X, y = federation().train[0]
    out = hf.local_update(mlp(), X, y, {"head.bias"}, steps=3, lr=0.5)
    start = dict(mlp().named_parameters())
    changed = {k for k in out if not torch.equal(out[k], start[k].detach())}
    assert changed == {"head.bias"}


# ------------------------------------------------------------------ modes and devices

def test_mode_table_counts_and_costs():
    model = mlp()
    table = hf.mode_table(model, ("full", "last_layers", "linear_probe"), input_shape=(4,), batch_size=4)
    assert list(table.columns) == ["mode", "trainable_params", "bytes_up", "memory_mb", "cost_vs_full"]
    counts = table.set_index("mode")["trainable_params"]
    assert counts["full"] == (4 * 6 + 6) + (6 * 5 + 5) + (5 * 3 + 3)
    assert counts["last_layers"] == (6 * 5 + 5) + (5 * 3 + 3)
    assert counts["linear_probe"] == 5 * 3 + 3
    assert (table["bytes_up"] == 8 * table["trainable_params"]).all()       # float64
    cost = table.set_index("mode")["cost_vs_full"]
    assert cost["full"] == 1.0 and 0 < cost["linear_probe"] < cost["last_layers"] < 1


def test_assignment_table_follows_the_rule():
    model = mlp()
    prof = devices()
    table = hf.assignment_table(prof, model, input_shape=(4,), batch_size=4)
    t0, t1 = np.quantile(prof["samples_per_s"], [0.66, 0.33])
    by_hand = ["full" if s >= t0 else "last_layers" if s >= t1 else "linear_probe" for s in prof["samples_per_s"]]
    assert table["speed_target"].tolist() == by_hand
    assert table["mode"].tolist() == flu.systems.assign_modes(prof, model, input_shape=(4,), batch_size=4)
    assert not table["capped"].any()
    np.testing.assert_allclose(hf.speed_thresholds(prof), [t0, t1])
    for col in ("tier", "speed_target", "mode", "capped", "memory_need_mb"):
        assert col in table


def test_memory_caps_the_fast_client():
    model = mlp()
    need = hf.mode_table(model, ("full", "last_layers"), input_shape=(4,), batch_size=4).set_index("mode")["memory_mb"]
    prof = devices(memory_mb=[(need["full"] + need["last_layers"]) / 2, 512.0, 512.0, 512.0])
    table = hf.assignment_table(prof, model, input_shape=(4,), batch_size=4)
    assert table.loc[0, "speed_target"] == "full" and table.loc[0, "mode"] == "last_layers"
    assert table.loc[0, "capped"] and table.loc[0, "memory_need_mb"] == pytest.approx(need["last_layers"])


def test_trained_by_counts_the_clients_of_each_layer():
    modes = ["full", "last_layers", "linear_probe", "full"]
    table = hf.trained_by(mlp(), modes, weights=[1.0, 2.0, 3.0, 4.0])
    assert list(table.columns) == ["layer", "name", "mode", "clients", "weight_share"]
    clients = table.groupby("layer", sort=False)["clients"].sum()
    assert clients.to_dict() == {"body.1": 2, "body.3": 3, "head": 4}
    share = table.groupby("layer", sort=False)["weight_share"].sum()
    assert share["body.1"] == pytest.approx(5 / 10) and share["body.3"] == pytest.approx(7 / 10)
    assert share["head"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weights"):
        hf.trained_by(mlp(), modes, weights=[1.0, 2.0])


def test_scheme_label():
    assert hf.scheme_label("full") == "Full (all clients)"
    assert hf.scheme_label(["linear_probe", "lora", "full", "lora"]) == "Assigned (full / LoRA / linear probe)"


# ------------------------------------------------------------------ runs, curves, summary

def test_run_schemes_routes_mode_options_and_equals_flu_run():
    fed, prof = federation(), devices()
    modes = ["full", "lora", "linear_probe", "lora"]
    runs = hf.run_schemes(mlp(), fed, {"full": "full", "mix": modes}, prof, lora_rank=2, **TRAIN)
    sim = flu.systems.Simulation(profiles=prof, seed=1)
    ref = flu.run(mlp(), fed, finetune=modes, systems=sim, lora_rank=2, eval_every=1, progress=False, **TRAIN)
    pd.testing.assert_frame_equal(runs["mix"].rounds, ref.rounds, check_exact=True)
    assert runs["full"].config["finetune"] == "full"


def test_curves_and_summary_against_the_histories():
    fed, prof = federation(), devices()
    runs = hf.run_schemes(mlp(), fed, {"a": "full", "b": "linear_probe"}, prof, **TRAIN)
    curve = hf.curves(runs)
    assert list(curve.columns) == hf.CURVE_COLUMNS
    a = curve[curve.scheme == "a"].set_index("round")
    r = runs["a"].rounds.set_index("round")
    assert a.index.tolist() == [0, 1, 2, 3]
    assert a.loc[0, ["virtual_time", "bytes", "energy_j"]].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(a.loc[1:, "virtual_time"], r["virtual_time"])
    np.testing.assert_allclose(a.loc[1:, "bytes"], (r["bytes_up"] + r["bytes_down"]).cumsum())
    np.testing.assert_allclose(a.loc[1:, "energy_j"], r["energy_j"].cumsum())
    np.testing.assert_allclose(a["accuracy"], runs["a"].curve("accuracy", "test").to_numpy())

    target = float(a["accuracy"].iloc[1:].max())
    table = hf.summary(curve, target=target)
    assert list(table.columns) == hf.SUMMARY_COLUMNS
    row = table.set_index("scheme").loc["a"]
    first = a.index[a["accuracy"] >= target][0]
    assert row["time_to_target"] == a.loc[first, "virtual_time"]
    assert row["accuracy"] == a["accuracy"].iloc[-1] and row["rounds"] == 3
    assert math.isinf(hf.summary(curve, target=1.5).set_index("scheme").loc["a", "time_to_target"])


def test_cached_probe_is_the_probe_with_the_body_in_the_loop():
    fed, prof = federation(), devices()
    loop = hf.curves(hf.run_schemes(mlp(), fed, {"probe": "linear_probe"}, prof, **TRAIN))
    cached = hf.curves(hf.cached_probe(mlp(), fed, prof, label="probe", **TRAIN))
    np.testing.assert_allclose(cached["accuracy"], loop["accuracy"], atol=1e-12)
    np.testing.assert_allclose(cached["virtual_time"], loop["virtual_time"], rtol=1e-12)
    assert cached["bytes"].tolist() == loop["bytes"].tolist()


def test_scale_speed():
    prof = devices()
    assert hf.scale_speed(prof, 2.0)["samples_per_s"].tolist() == [200.0, 100.0, 20.0, 160.0]
    with pytest.raises(ValueError, match="factor"):
        hf.scale_speed(prof, 0.0)


def test_asynchronous_spends_the_jobs_it_is_given():
    fed, prof = federation(), devices()
    args = dict(jobs=8, local_steps=2, batch_size=4, client_lr=0.1, seed=1, evaluations=2)
    fa = hf.asynchronous(mlp(), fed, prof, aggregation="fedasync", server_lr=0.5, **args)
    fb = hf.asynchronous(mlp(), fed, prof, aggregation="fedbuff", buffer_size=2, **args)
    (la, ha), (lb, hb) = next(iter(fa.items())), next(iter(fb.items()))
    assert la.startswith("FedAsync") and lb.startswith("FedBuff")
    assert len(ha.rounds) == 8 and len(hb.rounds) == 4
    assert hb.rounds["clients_completed"].sum() == 8 and ha.rounds["clients_completed"].sum() == 8
    assert sorted(hf.curves(fb)["round"].tolist()) == [0, 2, 4]
    with pytest.raises(ValueError, match="aggregation"):
        hf.asynchronous(mlp(), fed, prof, aggregation="sync", **args)


def test_scenario_memory_share_leaves_out_what_does_not_fit_and_reuses_known_runs():
    fed, prof = federation(), devices()
    model = mlp()
    reference = hf.curves(hf.run_schemes(model, fed, {hf.scheme_label("full"): "full",
                                                      hf.scheme_label("linear_probe"): "linear_probe"}, prof, **TRAIN))
    need = hf.mode_table(model, ("full", "linear_probe"), input_shape=(4,), batch_size=4).set_index("mode")["memory_mb"]
    share = (need["full"] + need["linear_probe"]) / 2 / 512.0     # every phone: between the probe's and full's need
    table, curve, feasible = hf.scenario(model, fed, prof, memory_share=share, reference=reference, **TRAIN)
    assert set(table["mode"]) <= {"last_layers", "linear_probe"}
    assert feasible == {hf.scheme_label("full"): False, hf.scheme_label("linear_probe"): True}
    assert hf.scheme_label("full") not in set(curve["scheme"])
    fake = reference.assign(scheme="known")
    _, again, _ = hf.scenario(model, fed, prof, memory_share=share, known={tuple(table["mode"]): fake}, **TRAIN)
    pd.testing.assert_frame_equal(again, fake)
    with pytest.raises(ValueError, match="speed_low"):
        hf.scenario(model, fed, prof, speed_high=0.3, speed_low=0.5, **TRAIN)


# ------------------------------------------------------------------ text task and its committed result

def test_fit_head_reaches_a_stationary_point():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * torch.randn(40, generator=g, dtype=torch.float64) > 0).long()
    head = hf.fit_head(X, y, steps=3000, lr=1.0)
    W = head["head.weight"].double().requires_grad_(True)
    b = head["head.bias"].double().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(X @ W.T + b, y)
    gW, gb = torch.autograd.grad(loss, (W, b))
    assert gW.norm() < 1e-3 and gb.norm() < 1e-3


def test_text_task_clients_are_the_largest_movies_and_the_head_never_sees_them():
    task = hf.text_task(num_clients=3, shots=2)
    text = flu.pretrained.load_text_embeddings(fast=True)
    movies, counts = np.unique(np.asarray(text.groups), return_counts=True)
    largest = sorted(movies[np.lexsort((movies, -counts))][:3].tolist())
    assert task.movies.tolist() == largest and task.fed.num_clients == 3
    rows = torch.cat([X for X, _ in task.rows.train] + [X for X, _ in task.rows.test]).ravel()
    assert set(np.asarray(text.groups)[rows.numpy()]) == set(largest)
    for (X, y), (r, yr) in zip(task.fed.train, task.rows.train):
        assert torch.equal(X, text.X[r.ravel()]) and torch.equal(y, yr)
    others = ~torch.as_tensor(np.isin(np.asarray(text.groups), largest))
    ref = hf.fit_head(text.X[others], text.y[others])
    assert all(torch.equal(task.head[k], ref[k]) for k in ref)


def test_the_committed_minilm_result_has_its_columns_and_a_bad_file_is_named(tmp_path):
    table = hf.load_minilm_modes()
    assert set(hf.CURVE_COLUMNS) <= set(table.columns)
    schemes = list(dict.fromkeys(table["scheme"]))
    assert schemes[:2] == [hf.scheme_label("full"), hf.scheme_label("linear_probe")]
    assert schemes[2].startswith("Assigned") and set(table.loc[table.scheme == schemes[2], "modes"].iloc[0]
                                                           .split(",")) <= set(hf.TEXT["modes"])
    assert (table.groupby("scheme")["virtual_time"].diff().dropna() > 0).all()
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"scheme": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="path"):
        hf.load_minilm_modes(bad)


# ------------------------------------------------------------------ figures

def test_plots_return_axes():
    fed, prof = federation(), devices()
    model = mlp()
    table = hf.assignment_table(prof, model, input_shape=(4,), batch_size=4)
    needs = hf.mode_table(model, input_shape=(4,), batch_size=4)
    curve = hf.curves(hf.run_schemes(model, fed, {"Full (all clients)": "full",
                                                  hf.scheme_label(table["mode"]): table["mode"].tolist()}, prof,
                                     **TRAIN))
    axes = [ph.plot_assignment(table, thresholds=hf.speed_thresholds(prof), needs=needs),
            ph.plot_trained_by(hf.trained_by(model, table["mode"]), total=4),
            ph.plot_curves(curve, "virtual_time"),
            ph.plot_curves(curve, "bytes", linthresh=1e3, legend=None),
            ph.plot_cost_bars(hf.summary(curve, target=2.0), "time_to_target"),
            ph.plot_cost_bars(hf.summary(curve), "bytes", log=True, fmt=lambda v: f"{v:.0f} B")]
    assert all(isinstance(ax, plt.Axes) for ax in axes)
    assert [t.get_text() for t in axes[4].texts] == ["never", "never"]
    colors = ph.scheme_colors(["Full (all clients)", "Assigned (a)", "Assigned (b)", "FedAsync (x)"])
    assert colors["Full (all clients)"] == flu.plots.method_color("Full")
    assert len(set(colors.values())) == 4
    with pytest.raises(ValueError, match="columns"):
        ph.plot_curves(curve.drop(columns="accuracy"))
    plt.close("all")


def test_tokenised_federation_keeps_the_task_draw_and_reads_each_snippet():
    task = hf.text_task(num_clients=3, shots=2, seed=0)
    snippets = flu.pretrained.load_text_snippets(fast=True)
    seen = []

    def tokenize(texts):       # a stand-in tokenizer: remembers what it read
        seen.extend(texts)
        return torch.ones(len(texts), 2, 7, dtype=torch.long)

    fed = hf.tokenised_federation(task, tokenize, snippets, max_length=7)
    assert fed.sizes.tolist() == task.fed.sizes.tolist() and fed.splits == task.fed.splits
    for (X, y), (rows, y_rows) in zip(fed.train + fed.test, task.rows.train + task.rows.test):
        assert X.shape == (len(y), 2, 7) and torch.equal(y, y_rows)
    expected = [snippets.X[int(j)] for X, y in task.rows.train + task.rows.test if len(y) for j in X.ravel()]
    assert seen == expected
