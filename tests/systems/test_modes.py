"""Per-client fine-tuning modes from memory and speed."""
import numpy as np
import pytest

import fedlab_utils as flu
from fedlab_utils.systems import assign_modes, check_modes, mode_memory_mb, profiles

SHAPE = (64,)


@pytest.fixture(scope="module")
def model():
    return flu.models.mlp(64, [128, 64], 10)


def need(model, mode, batch_size=16, **options):
    """The memory of a mode in MB, straight from flu.finetune.cost (the independent reference)."""
    return flu.finetune.cost(model, mode, input_shape=SHAPE, batch_size=batch_size, **options)["memory_bytes"] / 2 ** 20


def frame(speeds, memory):
    df = profiles("uniform", len(speeds))
    df["samples_per_s"] = np.asarray(speeds, dtype=float)
    df["memory_mb"] = np.asarray(memory, dtype=float)
    return df


def test_mode_memory_is_finetune_cost_in_mb(model):
    assert mode_memory_mb(model, "full", input_shape=SHAPE) == need(model, "full")
    assert mode_memory_mb(model, "last_layers", input_shape=SHAPE, batch_size=4, num_layers=1) \
        == need(model, "last_layers", batch_size=4, num_layers=1)


def test_speed_thirds_with_ample_memory(model):
    # nine distinct speeds, shuffled: with linear quantiles t(0.66) = 6.28 and t(0.33) = 3.64 on 1..9,
    # speeds 7-9 train fully, 4-6 their last layers, 1-3 a linear probe
    speeds = np.array([5, 9, 1, 7, 3, 8, 2, 6, 4])
    got = assign_modes(frame(speeds, [1e4] * 9), model, input_shape=SHAPE)
    want = ["full" if s >= 7 else "last_layers" if s >= 4 else "linear_probe" for s in speeds]
    assert got == want


def test_fastest_client_gets_full_and_lora_can_take_the_middle(model):
    speeds = [10.0, 1.0, 5.0, 20.0, 2.0, 7.0]
    got = assign_modes(frame(speeds, [1e4] * 6), model, input_shape=SHAPE, modes=("full", "lora", "linear_probe"),
                       lora_rank=2)
    assert got[int(np.argmax(speeds))] == "full"
    assert got == ["full", "linear_probe", "lora", "full", "linear_probe", "lora"]


def test_identical_devices_all_get_the_most_expressive_mode(model):
    assert assign_modes(profiles("uniform", 5), model, input_shape=SHAPE) == ["full"] * 5
    assert assign_modes(profiles("ideal", 4), model, input_shape=SHAPE) == ["full"] * 4


def test_memory_caps_the_speed_target(model):
    full, last, probe = need(model, "full"), need(model, "last_layers"), need(model, "linear_probe")
    assert probe < last < full
    # the fastest client cannot hold full: it gets last_layers; a fast one with only the probe's
    # memory gets the probe; the slowest stays a probe whatever its memory
    speeds = [100.0, 90.0, 50.0, 1.0]
    memory = [(last + full) / 2, probe, 1e4, 1e4]
    got = assign_modes(frame(speeds, memory), model, input_shape=SHAPE)
    assert got == ["last_layers", "linear_probe", "last_layers", "linear_probe"]


def test_never_a_mode_beyond_memory(model):
    rng = np.random.default_rng(0)
    df = profiles("phones", 60, seed=1)
    lo, hi = need(model, "linear_probe"), need(model, "full") * 1.2
    df["memory_mb"] = rng.uniform(lo, hi, 60)
    got = assign_modes(df, model, input_shape=SHAPE)
    for mode, mem in zip(got, df["memory_mb"]):
        assert need(model, mode) <= mem
    assert set(got) == {"full", "last_layers", "linear_probe"}
    check_modes(got, df, model, SHAPE, 16)  # what assign_modes gives always passes the check


def test_client_that_fits_no_mode_is_named(model):
    df = frame([1.0, 2.0, 3.0], [1e4, need(model, "linear_probe") / 2, 1e4])
    with pytest.raises(ValueError, match=r"profiles must be .*client 1"):
        assign_modes(df, model, input_shape=SHAPE)


def test_assign_modes_argument_errors(model):
    df = profiles("phones", 6)
    with pytest.raises(ValueError, match="modes"):
        assign_modes(df, model, input_shape=SHAPE, modes=("full", "sideways", "linear_probe"))
    with pytest.raises(ValueError, match="modes"):
        assign_modes(df, model, input_shape=SHAPE, modes=("full", "full", "linear_probe"))
    with pytest.raises(ValueError, match="speed_quantiles"):
        assign_modes(df, model, input_shape=SHAPE, modes=("full", "linear_probe"))
    with pytest.raises(ValueError, match="speed_quantiles"):
        assign_modes(df, model, input_shape=SHAPE, speed_quantiles=(0.33, 0.66))
    with pytest.raises(ValueError, match="lora_rank"):
        assign_modes(df, model, input_shape=SHAPE, lora_rank=2)  # no LoRA mode listed
    with pytest.raises(TypeError, match="profiles"):
        assign_modes(df.to_dict(), model, input_shape=SHAPE)
    assert assign_modes(df, model, input_shape=SHAPE, modes=("full", "linear_probe"), speed_quantiles=(0.5,)) \
        == ["full" if s >= np.median(df["samples_per_s"]) else "linear_probe" for s in df["samples_per_s"]]


def test_check_modes_names_finetune_and_the_client(model):
    full, probe = need(model, "full"), need(model, "linear_probe")
    df = frame([1.0, 2.0, 3.0], [1e4, (full + probe) / 2, 1e4])
    assert check_modes(["full", "linear_probe", "full"], df, model, SHAPE, 16) == ["full", "linear_probe", "full"]
    with pytest.raises(ValueError, match=r"finetune\[1\]='full' needs .* client 1"):
        check_modes(["full", "full", "full"], df, model, SHAPE, 16)
    with pytest.raises(ValueError, match=r"finetune='full' needs .* client 1"):
        check_modes("full", df, model, SHAPE, 16)
    with pytest.raises(ValueError, match=r"finetune must be one mode per client \(3 modes\)"):
        check_modes(["full", "full"], df, model, SHAPE, 16)
    with pytest.raises(ValueError, match=r"finetune\[2\] must be one of"):
        check_modes(["full", "linear_probe", "everything"], df, model, SHAPE, 16)
    with pytest.raises(TypeError, match="finetune"):
        check_modes(None, df, model, SHAPE, 16)
    # the batch size counts: activations grow with it
    assert need(model, "full", batch_size=64) > need(model, "full")
    check_modes("linear_probe", df, model, SHAPE, 1)


def test_per_mode_options_reach_their_mode(model):
    one = need(model, "last_layers", num_layers=1)
    three = need(model, "last_layers", num_layers=3)
    assert one < three
    df = frame([1.0, 2.0, 3.0], [(one + three) / 2] * 3)
    check_modes("last_layers", df, model, SHAPE, 16, num_layers=1)
    with pytest.raises(ValueError, match="finetune"):
        check_modes("last_layers", df, model, SHAPE, 16, num_layers=3)
