"""History: lossless, atomic save/load, named errors, to_frame/final/curve, equality."""
import dataclasses
import json
import os
import pathlib
import zipfile

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils.engine.history import History, metrics_frame


def tiny_run(seed=0, **kw):
    g = torch.Generator().manual_seed(7)
    clients = [(torch.randn(6, 4, generator=g), torch.randint(0, 2, (6,), generator=g)) for _ in range(2)]
    test = [(torch.randn(3, 4, generator=g), torch.randint(0, 2, (3,), generator=g)) for _ in range(2)]
    fed = flu.data.Federation.from_clients(clients, test=test)
    model = torch.nn.Linear(4, 2)
    with torch.no_grad():  # fixed start, independent of the global torch seed
        model.weight.copy_(torch.linspace(-0.5, 0.5, 8).reshape(2, 4))
        model.bias.zero_()
    return flu.run(model, fed, num_rounds=2, local_steps=1, client_lr=0.1, batch_size=None, seed=seed,
                   progress=False, **kw)


@pytest.fixture(scope="module")
def hist():
    return tiny_run(record_params=True)


def full_history(h):
    """``h`` with every optional field filled, as a later resume/personalisation run would."""
    N = 2
    return dataclasses.replace(
        h,
        client_state={"c": torch.arange(N * 8, dtype=torch.float32).reshape(N, 2, 4)},
        server_state={"round": 2, "params": {k: v + 1 for k, v in h.params.items()},
                      "algorithm": {"m": [torch.ones(3), (1, 2.5)], "step": 7}},
        personal_params={k: torch.stack([v, 2 * v]) for k, v in h.params.items()})


# ---------------------------------------------------------------------- save/load
def test_round_trip_equal_and_loadable_with_weights_only(hist, tmp_path):
    h = full_history(hist)
    path = tmp_path / "h.pt"
    assert h.save(path) == path
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "fedlab_utils.History/2"
    back = History.load(path, model=torch.nn.Linear(4, 2))
    assert back == h
    pd.testing.assert_frame_equal(back.metrics, h.metrics)
    pd.testing.assert_frame_equal(back.rounds, h.rounds)
    pd.testing.assert_frame_equal(back.timing, h.timing)
    assert str(back.metrics["client"].dtype) == "Int64" and back.metrics["client"].isna().any()
    assert back.config == h.config
    assert len(back.trajectory) == 3 and all(torch.equal(a[k], b[k]) for a, b in zip(back.trajectory, h.trajectory)
                                             for k in a)
    assert torch.equal(back.client_state["c"], h.client_state["c"])
    assert back.server_state["round"] == 2 and back.server_state["algorithm"]["m"][1] == (1, 2.5)
    for k, v in h.params.items():
        assert torch.equal(back.params[k], v)
        assert torch.equal(back.model.state_dict()[k], v)
        assert torch.equal(back.personal_params[k][1], 2 * v)
        assert torch.equal(back.server_state["params"][k], v + 1)
    assert back.final() == h.final()


def test_equality_sees_every_compared_field_and_ignores_timing(hist):
    h = full_history(hist)
    assert dataclasses.replace(h, timing=h.timing.iloc[:0], model=None) == h
    bumped = {k: v.clone() for k, v in h.params.items()}
    bumped["bias"][0] += 1e-6
    assert dataclasses.replace(h, params=bumped) != h
    assert dataclasses.replace(h, server_state={**h.server_state, "round": 3}) != h
    assert dataclasses.replace(h, personal_params=None) != h
    assert dataclasses.replace(h, trajectory=h.trajectory[:-1]) != h
    assert dataclasses.replace(h, config={**h.config, "seed": 1}) != h
    metrics = h.metrics.copy()
    metrics.loc[0, "value"] += 1
    assert dataclasses.replace(h, metrics=metrics) != h


def test_load_reads_format_1_files(hist, tmp_path):
    def table(df):  # History/1's writer
        return {c: [None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in df[c]]
                for c in df.columns}
    path = tmp_path / "old.pt"
    torch.save({"format": "fedlab_utils.History/1", "metrics": table(hist.metrics), "rounds": table(hist.rounds),
                "timing": table(hist.timing), "config": hist.config, "params": hist.params,
                "trajectory": None, "client_state": {}}, path)
    back = History.load(path)
    pd.testing.assert_frame_equal(back.metrics, hist.metrics)
    assert list(back.rounds["bytes_up"]) == list(hist.rounds["bytes_up"])
    assert back.server_state == {} and back.personal_params is None and back.trajectory is None


def test_config_values_saved_as_plain_json(hist, tmp_path):
    cfg = {**hist.config, "f": np.float64(0.25), "i": np.int64(3), "b": np.bool_(True), "t": (1, np.int32(2)),
           "p": pathlib.Path("/data/x"), "a": np.array([[1.5, 2.0]]), "s": torch.tensor(4),
           "nested": {1: {"q": (np.float32(0.5),)}}}
    path = dataclasses.replace(hist, config=cfg).save(tmp_path / "c.pt")
    back = History.load(path).config
    want = {"f": 0.25, "i": 3, "b": True, "t": [1, 2], "p": "/data/x", "a": [[1.5, 2.0]], "s": 4,
            "nested": {"1": {"q": [0.5]}}}
    for k, v in want.items():
        assert back[k] == v and type(back[k]) is type(v), k
    assert type(back["t"][1]) is int and type(back["nested"]["1"]["q"][0]) is float
    json.dumps(back)
    assert torch.load(path, weights_only=True)["config"]["f"] == 0.25


@pytest.mark.parametrize("bad, kind", [(lambda x: x, "function"), ({1, 2}, "set"), (torch.ones(2), "Tensor"),
                                       ({"deep": object()}, "object")])
def test_config_that_is_not_json_names_key_and_type(hist, tmp_path, bad, kind):
    path = tmp_path / "bad.pt"
    with pytest.raises(ValueError, match=rf"config\['oops'\].*{kind}"):
        dataclasses.replace(hist, config={**hist.config, "oops": bad}).save(path)
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_existing_file_unless_overwrite(hist, tmp_path):
    path = tmp_path / "h.pt"
    path.write_bytes(b"precious")
    with pytest.raises(ValueError, match="overwrite=True") as e:
        hist.save(path)
    assert str(path) in str(e.value)
    assert path.read_bytes() == b"precious"
    hist.save(path, overwrite=True)
    assert History.load(path) == hist
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.pt"]


def test_failed_save_keeps_old_file_and_leaves_no_temp(hist, tmp_path, monkeypatch):
    path = hist.save(tmp_path / "h.pt")
    before = path.read_bytes()
    real_save = torch.save

    def half_then_fail(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        f.seek(len(before) // 2)
        f.truncate()
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        dataclasses.replace(hist, config={**hist.config, "seed": 5}).save(path, overwrite=True)
    with pytest.raises(RuntimeError, match="disk full"):
        hist.save(tmp_path / "new.pt")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.pt"]
    monkeypatch.undo()
    assert History.load(path) == hist


def _plain_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")


@pytest.mark.parametrize("make, message", [
    (lambda p, good: p.write_bytes(b""), "empty"),
    (lambda p, good: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not a History file|corrupted"),
    (lambda p, good: p.write_bytes(good[: len(good) // 2]), "truncated or corrupted"),
    (lambda p, good: p.write_bytes(good[:-100]), "truncated or corrupted"),
    (lambda p, good: torch.save({"w": torch.zeros(2)}, p), r"not a History file \(format tag missing\)"),
    (lambda p, good: torch.save([1, 2], p), "not a History file"),
    (lambda p, good: torch.save({"format": "other/1"}, p), "not a History file"),
    (lambda p, good: torch.save({"format": "fedlab_utils.History/9"}, p), "does not read"),
    (lambda p, good: _plain_zip(p), "not a History file"),
])
def test_load_of_a_bad_file_names_it(hist, tmp_path, make, message):
    good = hist.save(tmp_path / "good.pt").read_bytes()
    path = tmp_path / "bad.pt"
    make(path, good)
    with pytest.raises(ValueError, match=message) as e:
        History.load(path)
    assert str(path) in str(e.value)


def test_load_of_a_missing_key_or_file(hist, tmp_path):
    raw = torch.load(hist.save(tmp_path / "h.pt"), weights_only=True)
    del raw["params"]
    torch.save(raw, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="'params'") as e:
        History.load(tmp_path / "partial.pt")
    assert str(tmp_path / "partial.pt") in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        History.load(tmp_path / "nowhere.pt")
    assert str(tmp_path / "nowhere.pt") in str(e.value)


def test_load_with_a_different_model_names_model(hist, tmp_path):
    path = hist.save(tmp_path / "h.pt")
    with pytest.raises(ValueError, match="model must have the architecture"):
        History.load(path, model=torch.nn.Linear(3, 2))


# ---------------------------------------------------------------------- views
def test_to_frame_keeps_metrics_model_column_and_plots(hist):
    frame = hist.to_frame()
    assert set(frame["model"]) <= {"global", "personal"} and "global" in set(frame["model"])
    assert (frame["config_model"] == hist.config["model"]).all()
    assert (frame["algorithm"] == "fedavg").all() and "federation" in frame.columns
    pd.testing.assert_frame_equal(frame[list(hist.metrics.columns)], hist.metrics)
    assert list(hist.to_frame(keys="seed").columns) == list(hist.metrics.columns) + ["seed"]
    m = hist.metrics
    pooled = m[(m.metric == "accuracy") & (m.split == "test") & (m.model == "global") & m.client.isna()]
    ax = flu.plots.plot_learning_curves(frame)
    try:
        x, y = ax.get_lines()[0].get_data()
        assert list(x) == list(pooled["round"]) and np.allclose(y, pooled["value"])
    finally:
        plt.close(ax.figure)


def test_final_and_curve_name_the_bad_parameter(hist):
    m = hist.metrics
    last = m[(m.metric == "loss") & (m.split == "train") & m.client.isna() & (m["round"] == 2)]
    assert hist.final("loss", "train") == float(last["value"].iloc[0])
    assert list(hist.curve().index) == [0, 1, 2]
    for call in (hist.final, hist.curve):
        with pytest.raises(ValueError, match=r"split must be .*\['test', 'train'\].*'valid'"):
            call(split="valid")
        with pytest.raises(ValueError, match=r"model must be .*\['global'\].*'personal'"):
            call(model="personal")
        with pytest.raises(ValueError, match=r"metric must be .*'f1'"):
            call(metric="f1")


# ---------------------------------------------------------------------- equality, repr
def test_equality_replay_seed_and_foreign_objects(hist):
    again = tiny_run(record_params=True)
    assert again == hist and not (again != hist)
    assert tiny_run(seed=1, record_params=True) != hist
    assert (hist == 3) is False and (hist != "history") is True
    assert hist.__eq__(object()) is NotImplemented
    with pytest.raises(TypeError):
        hash(hist)


def test_repr_and_round_trip_of_an_empty_history(tmp_path):
    empty = History(metrics_frame({}), pd.DataFrame(), pd.DataFrame(), {}, {})
    assert repr(empty) == "History(None, rounds=0, metrics=0 rows)"
    back = History.load(empty.save(tmp_path / "e.pt"))
    assert back == empty and list(back.metrics.columns) == list(empty.metrics.columns)
    assert "rounds=2" in repr(tiny_run())
