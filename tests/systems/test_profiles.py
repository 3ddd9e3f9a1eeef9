"""Device and network profiles: columns, seeded replay, log-normal spreads, validation."""
import math

import numpy as np
import pandas as pd
import pytest

from fedlab_utils.systems import COLUMNS, check_profiles, profiles

PRESETS = ["ideal", "uniform", "phones", "edge_mix", "cross_silo"]


@pytest.mark.parametrize("preset", PRESETS)
def test_columns_rows_and_a_valid_frame(preset):
    df = profiles(preset, 7, seed=3)
    assert list(df.columns) == ["client", "samples_per_s", "memory_mb", "download_mbps", "upload_mbps", "latency_s",
                                "dropout", "watts", "energy_budget_j"]
    assert df["client"].tolist() == list(range(7)) and df["client"].dtype == np.int64
    assert all(df[c].dtype == np.float64 for c in COLUMNS[1:])
    pd.testing.assert_frame_equal(check_profiles(df, 7), df)


@pytest.mark.parametrize("preset", PRESETS)
def test_same_seed_same_frame_and_a_client_does_not_depend_on_n(preset):
    pd.testing.assert_frame_equal(profiles(preset, 9, seed=5), profiles(preset, 9, seed=5))
    pd.testing.assert_frame_equal(profiles(preset, 9, seed=5).iloc[:4], profiles(preset, 4, seed=5))


def test_another_seed_gives_other_devices():
    a, b = profiles("phones", 20, seed=0), profiles("phones", 20, seed=1)
    assert not np.allclose(a["samples_per_s"], b["samples_per_s"])


def test_ideal_is_infinitely_fast_and_free():
    df = profiles("ideal", 5)
    for c in ("samples_per_s", "download_mbps", "upload_mbps", "energy_budget_j", "memory_mb"):
        assert np.isinf(df[c]).all(), c
    assert (df["latency_s"] == 0).all() and (df["dropout"] == 0).all() and (df["watts"] == 0).all()


def test_uniform_devices_are_identical():
    df = profiles("uniform", 6, seed=11)
    assert (df.drop(columns="client").nunique() == 1).all()


def test_spreads_are_the_sigma_of_the_log():
    # log(speed) ~ N(log median, s^2): the sample sd of the log over many clients is close to s,
    # and download / upload share one z per client, so their log-ratio is constant.
    df = profiles("phones", 4000, seed=2, speed_spread=0.5, bandwidth_spread=0.25)
    assert np.std(np.log(df["samples_per_s"]), ddof=1) == pytest.approx(0.5, rel=0.05)
    assert np.std(np.log(df["download_mbps"]), ddof=1) == pytest.approx(0.25, rel=0.05)
    ratio = np.log(df["download_mbps"] / df["upload_mbps"])
    assert np.ptp(ratio) < 1e-9
    # same draws, sigma doubled: log s_wide = log m + 2 * 0.5 z, so 2 log s - log s_wide = log m for
    # every client (m: the phones median, 75 samples/s as documented)
    wide = profiles("phones", 4000, seed=2, speed_spread=1.0)
    log_median = 2 * np.log(df["samples_per_s"]) - np.log(wide["samples_per_s"])
    np.testing.assert_allclose(log_median, np.log(75.0), rtol=0, atol=1e-9)


def test_zero_spread_puts_everyone_at_the_median_and_tiers_follow_speed():
    flat = profiles("phones", 50, seed=4, speed_spread=0.0, bandwidth_spread=0.0)
    assert flat["samples_per_s"].nunique() == 1 and flat["download_mbps"].nunique() == 1
    df = profiles("phones", 300, seed=4)
    # faster devices never carry less memory or draw less power (tiers by speed)
    order = np.argsort(df["samples_per_s"].to_numpy())
    assert np.all(np.diff(df["memory_mb"].to_numpy()[order]) >= 0)
    assert np.all(np.diff(df["watts"].to_numpy()[order]) >= 0)
    assert df["memory_mb"].nunique() == 3
    # about a third per tier (terciles of a normal)
    shares = df["memory_mb"].value_counts(normalize=True)
    assert shares.between(0.25, 0.42).all()


def test_phone_dropout_within_its_range_and_a_finite_battery():
    df = profiles("phones", 200, seed=9)
    assert df["dropout"].between(0.06, 0.10).all() and df["dropout"].nunique() > 100
    assert np.isfinite(df["energy_budget_j"]).all() and (df["energy_budget_j"] > 0).all()


def test_unknown_preset_and_bad_arguments_are_named():
    with pytest.raises(ValueError, match="preset"):
        profiles("laptops", 3)
    with pytest.raises(ValueError, match="num_clients"):
        profiles("phones", 0)
    with pytest.raises(ValueError, match="speed_spread"):
        profiles("phones", 3, speed_spread=-0.1)
    with pytest.raises(ValueError, match="bandwidth_spread"):
        profiles("phones", 3, bandwidth_spread=math.nan)
    with pytest.raises(ValueError, match="seed"):
        profiles("phones", 3, seed=-1)


def _frame():
    return profiles("phones", 5, seed=0)


@pytest.mark.parametrize("column, value, constraint", [
    ("samples_per_s", -1.0, "> 0"), ("samples_per_s", 0.0, "> 0"), ("memory_mb", 0.0, "> 0"),
    ("download_mbps", -2.0, "> 0"), ("upload_mbps", math.nan, "> 0"), ("latency_s", -0.1, ">= 0 and finite"),
    ("latency_s", math.inf, ">= 0 and finite"), ("dropout", 1.5, r"in \[0, 1\]"), ("dropout", -0.01, r"in \[0, 1\]"),
    ("watts", -1.0, ">= 0 and finite"), ("energy_budget_j", 0.0, "> 0"),
])
def test_check_profiles_names_the_column_the_constraint_and_the_client(column, value, constraint):
    df = _frame()
    df.loc[3, column] = value
    with pytest.raises(ValueError, match=rf"profiles\['{column}'\] must be {constraint}, got .* for client 3"):
        check_profiles(df, 5)


def test_check_profiles_message_shape():
    df = _frame()
    df.loc[3, "samples_per_s"] = -1.0
    with pytest.raises(ValueError) as err:
        check_profiles(df, 5)
    assert str(err.value) == "profiles['samples_per_s'] must be > 0, got -1.0 for client 3"


def test_check_profiles_accepts_inf_where_allowed_and_sorts_clients():
    df = _frame()
    for c in ("samples_per_s", "memory_mb", "download_mbps", "upload_mbps", "energy_budget_j"):
        df.loc[1, c] = math.inf
    df["device"] = list("abcde")  # extra columns are kept after the standard ones
    shuffled = df.iloc[[4, 2, 0, 1, 3]]
    out = check_profiles(shuffled, 5)
    assert out["client"].tolist() == [0, 1, 2, 3, 4]
    assert list(out.columns) == list(COLUMNS) + ["device"]
    assert out["device"].tolist() == list("abcde")
    assert np.isinf(out.loc[1, "samples_per_s"])


def test_check_profiles_structure_errors():
    df = _frame()
    with pytest.raises(ValueError, match="watts"):
        check_profiles(df.drop(columns="watts"), 5)
    with pytest.raises(ValueError, match=r"profiles must have one row per client \(6 rows\), got 5 rows"):
        check_profiles(df, 6)
    bad = df.copy()
    bad["client"] = [0, 1, 2, 2, 4]
    with pytest.raises(ValueError, match=r"profiles\['client'\]"):
        check_profiles(bad, 5)
    bad = df.copy()
    bad["latency_s"] = bad["latency_s"].astype(object)
    bad.loc[2, "latency_s"] = "fast"
    with pytest.raises(ValueError, match=r"profiles\['latency_s'\] must be a number, got 'fast' for client 2"):
        check_profiles(bad, 5)
    with pytest.raises(TypeError, match="profiles"):
        check_profiles(df.to_dict(), 5)
