"""``flu.lessons.practice`` (sweeps over algorithms, alpha and seeds; time to accuracy) and its plots."""
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

import fedlab_utils as flu
from fedlab_utils.views.plots import practice as pp
from fedlab_utils.lessons import practice

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Tiny runs: 6 clients, 3 rounds, 2 local steps, an MLP with 8 hidden units.
SMALL = dict(num_clients=6, num_rounds=3, local_steps=2, hidden=8, cache=False)
ROUNDS = SMALL["num_rounds"]
EVAL = set(practice.EVAL_METRICS)
PER_ROUND = set(practice.DIAGNOSTICS)
KEY = ["algorithm", "alpha", "seed", "round", "metric"]


@pytest.fixture(scope="module")
def sweep():
    return practice.sweep(["fedavg", "scaffold", "fedprox"], [0.3, 3.0], [0, 1], **SMALL)


# ----------------------------------------------------------------------------- sweep

def test_sweep_returns_one_row_per_algorithm_alpha_seed_round_metric(sweep):
    assert list(sweep.columns) == practice.COLUMNS
    assert not sweep.duplicated(KEY).any()
    assert set(sweep["algorithm"]) == {"fedavg", "scaffold", "fedprox"}
    assert set(sweep["alpha"]) == {0.3, 3.0} and set(sweep["seed"]) == {0, 1}
    assert set(sweep["metric"]) == EVAL | PER_ROUND | {"bytes", "seconds"}
    # evaluation metrics, bytes and seconds from round 0; diagnostics from round 1
    rounds = sweep.groupby(["algorithm", "alpha", "seed", "metric"])["round"].apply(lambda r: sorted(r))
    for (_, _, _, metric), r in rounds.items():
        assert r == list(range(0 if metric not in PER_ROUND else 1, ROUNDS + 1)), metric
    per_run = (len(EVAL) + 2) * (ROUNDS + 1) + len(PER_ROUND) * ROUNDS
    assert len(sweep) == 3 * 2 * 2 * per_run
    assert sweep["round"].dtype == np.int64 and sweep["value"].dtype == np.float64
    assert np.isfinite(sweep["value"]).all()


def test_sweep_labels_carry_the_options(sweep):
    labels = sweep.groupby("algorithm")["label"].unique()
    assert list(labels["fedavg"]) == ["FedAvg"]
    assert list(labels["scaffold"]) == ["SCAFFOLD"]
    assert list(labels["fedprox"]) == ["FedProx (mu=1)"]          # practice.DEFAULT_OPTIONS
    assert practice.label("fedprox", {"mu": 0.01}) == "FedProx (mu=0.01)"
    assert practice.label("fedadam") == "FedAdam"


def test_sweep_values_are_those_of_flu_run():
    df = practice.sweep("fedavg", 0.5, 2, **SMALL)
    fed = practice.federation(0.5, 2, num_clients=6)
    model = flu.models.mlp(64, 8, 10, seed=2)
    hist = flu.run(model, fed, "fedavg", num_rounds=ROUNDS, local_steps=2, client_lr=0.05, batch_size=16,
                   diagnostics=True, progress=False, seed=2)
    acc = df[df.metric == "test_accuracy"].set_index("round")["value"]
    pd.testing.assert_series_equal(acc, hist.curve("accuracy", "test"), check_names=False)
    drift = df[df.metric == "client_drift"].set_index("round")["value"]
    np.testing.assert_array_equal(drift.to_numpy(), hist.rounds["client_drift"].to_numpy())
    spent = df[df.metric == "bytes"].sort_values("round")["value"].to_numpy()
    per_round = hist.rounds.bytes_up + hist.rounds.bytes_down
    np.testing.assert_array_equal(spent, np.concatenate([[0], np.cumsum(per_round)]))


def test_scaffold_sends_twice_the_bytes_of_fedavg_per_round(sweep):
    b = sweep[sweep.metric == "bytes"].pivot_table(index=["alpha", "seed", "round"], columns="algorithm",
                                                   values="value")
    assert (b.xs(0, level="round") == 0).all().all()
    later = b[b.index.get_level_values("round") > 0]
    np.testing.assert_allclose(later["scaffold"] / later["fedavg"], 2.0)
    np.testing.assert_allclose(later["fedprox"], later["fedavg"])
    seconds = sweep[sweep.metric == "seconds"].sort_values(["algorithm", "alpha", "seed", "round"])
    assert (seconds.groupby(["algorithm", "alpha", "seed"])["value"].diff().dropna() >= 0).all()


def test_run_history_cache_returns_the_same_run():
    args = dict(num_clients=6, num_rounds=2, local_steps=1, hidden=8)
    first = practice.run_history("fedavg", 0.7, 0, **args)
    assert practice.run_history("fedavg", 0.7, 0, **args) is first
    fresh = practice.run_history("fedavg", 0.7, 0, cache=False, **args)
    assert fresh is not first
    pd.testing.assert_frame_equal(fresh.metrics, first.metrics)
    # a list of local steps (one per client) is cached too
    steps = [1, 2, 1, 2, 1, 2]
    assert practice.run_history("fednova", 0.7, 0, **{**args, "local_steps": steps}) is \
        practice.run_history("fednova", 0.7, 0, **{**args, "local_steps": tuple(steps)})


def test_sweep_rejects_bad_arguments():
    with pytest.raises(ValueError, match="algorithms"):
        practice.sweep(["fedavg", "fedsgd"], [0.5], [0], **SMALL)
    with pytest.raises(ValueError, match="alphas"):
        practice.sweep(["fedavg"], [0.0], [0], **SMALL)
    with pytest.raises(ValueError, match="repeats"):
        practice.sweep(["fedavg"], [0.5, 0.5], [0], **SMALL)
    with pytest.raises(ValueError, match="algorithms"):
        practice.sweep([], [0.5], [0], **SMALL)
    with pytest.raises(ValueError, match="options key"):
        practice.sweep(["fedavg"], [0.5], [0], options={"fedprocs": {"mu": 1}}, **SMALL)
    with pytest.raises(TypeError, match="seeds"):
        practice.sweep(["fedavg"], [0.5], [0.5], **SMALL)


# ----------------------------------------------------------------------------- time to accuracy

def _hand_table():
    """Two algorithms x one alpha x two seeds, 4 rounds; accuracy, bytes, seconds by hand."""
    acc = {("fedavg", 0): [0.1, 0.5, 0.7, 0.8, 0.9], ("fedavg", 1): [0.1, 0.4, 0.6, 0.7, 0.75],
           ("scaffold", 0): [0.1, 0.8, 0.85, 0.9, 0.9], ("scaffold", 1): [0.85, 0.9, 0.9, 0.9, 0.95]}
    per_round = {"fedavg": 100.0, "scaffold": 200.0}
    rows = []
    for (alg, seed), values in acc.items():
        for t, v in enumerate(values):
            rows += [(alg, 0.5, seed, t, "test_accuracy", v),
                     (alg, 0.5, seed, t, "bytes", per_round[alg] * t),
                     (alg, 0.5, seed, t, "seconds", 0.5 * t)]
    return pd.DataFrame(rows, columns=["algorithm", "alpha", "seed", "round", "metric", "value"])


def test_time_to_accuracy_on_a_hand_made_table():
    tta = practice.time_to_accuracy(_hand_table(), 0.8).set_index(["algorithm", "seed"])
    assert len(tta) == 4
    assert tta.loc[("fedavg", 0), "rounds"] == 3 and tta.loc[("fedavg", 0), "bytes"] == 300
    assert tta.loc[("fedavg", 0), "seconds"] == 1.5
    assert not tta.loc[("fedavg", 1), "reached"]
    assert math.isnan(tta.loc[("fedavg", 1), "rounds"]) and math.isnan(tta.loc[("fedavg", 1), "bytes"])
    assert tta.loc[("fedavg", 1), "max_round"] == 4 and tta.loc[("fedavg", 1), "max_bytes"] == 400
    assert tta.loc[("fedavg", 1), "final"] == 0.75
    assert tta.loc[("scaffold", 0), "rounds"] == 1 and tta.loc[("scaffold", 0), "bytes"] == 200
    assert tta.loc[("scaffold", 1), "rounds"] == 0 and tta.loc[("scaffold", 1), "bytes"] == 0  # starts above
    assert list(tta.reset_index()["label"].unique()) == ["FedAvg", "SCAFFOLD"]   # added when missing
    assert (tta["target"] == 0.8).all() and tta["reached"].dtype == bool


def test_time_to_accuracy_without_bytes_and_with_another_metric():
    table = _hand_table()
    only_acc = table[table.metric == "test_accuracy"]
    tta = practice.time_to_accuracy(only_acc, 0.9)
    assert tta["bytes"].isna().all() and tta["seconds"].isna().all()
    assert tta.set_index(["algorithm", "seed"]).loc[("fedavg", 0), "rounds"] == 4
    loss = table.assign(metric=table.metric.replace({"test_accuracy": "train_accuracy"}))
    assert practice.time_to_accuracy(loss, 0.9, metric="train_accuracy")["reached"].sum() == 3
    with pytest.raises(ValueError, match="metric"):
        practice.time_to_accuracy(only_acc, 0.9, metric="test_loss")
    with pytest.raises(TypeError, match="df"):
        practice.time_to_accuracy(only_acc.to_dict(), 0.9)


def test_time_to_accuracy_table_marks_partial_and_missing():
    tta = practice.time_to_accuracy(_hand_table(), 0.8)
    rounds = practice.time_to_accuracy_table(tta, "rounds")
    assert list(rounds.columns) == ["alpha=0.5"]
    assert rounds.loc["FedAvg", "alpha=0.5"] == "3 (1/2)"
    assert practice.time_to_accuracy_table(tta, fmt="{:.1f}").loc["SCAFFOLD", "alpha=0.5"] == "0.5"  # mean of 1, 0
    mb = practice.time_to_accuracy_table(tta, "bytes", fmt="{:.2f}", scale=1e-2)
    assert mb.loc["SCAFFOLD", "alpha=0.5"] == "1.00"                                    # mean(200, 0) / 100
    none = practice.time_to_accuracy_table(practice.time_to_accuracy(_hand_table(), 0.99))
    assert (none == "-").all().all()


def test_final_values(sweep):
    final = practice.final_values(sweep, ["test_accuracy", "client_drift"])
    assert list(final.columns) == ["algorithm", "label", "alpha", "seed", "test_accuracy", "client_drift"]
    assert len(final) == 12
    last = sweep[(sweep["round"] == ROUNDS) & (sweep.metric == "client_drift")]
    np.testing.assert_array_equal(np.sort(final["client_drift"]), np.sort(last["value"]))


# ----------------------------------------------------------------------------- plots

def test_plots_return_axes(sweep):
    ax = pp.plot_bands(sweep, "client_drift", band="range")
    assert ax.get_ylabel().startswith("client drift")
    assert len(ax.lines) == 3 * 2                        # 3 methods x 2 alphas (line styles)
    axes = pp.plot_diagnostics(sweep[sweep.alpha == 0.3])
    assert len(axes) == 6 and axes[0].get_legend() is not None
    tta = practice.time_to_accuracy(sweep, 0.3)
    for value in ("rounds", "bytes", "seconds"):
        assert pp.plot_time_to_accuracy(tta, value) is not None
    assert pp.plot_final_vs_alpha(practice.final_values(sweep), "test_accuracy").get_xscale() == "log"
    with pytest.raises(ValueError, match="band"):
        pp.plot_bands(sweep, "client_drift", band="iqr")
    with pytest.raises(ValueError, match="metric"):
        pp.plot_bands(sweep, "nope")
    plt.close("all")
