"""flu.experiments: cached sweeps over configurations x seeds (behaviour, not outputs)."""
import json
import os
import pathlib

import numpy as np
import pandas as pd
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils.experiments import cache as C
from fedlab_utils.experiments import sweeps as S

X = flu.experiments


class Counter:
    """fn(a, b, seed) -> {"score": 10a + b + seed / 10, "one": 1}; counts calls, can fail on call k."""

    def __init__(self, fail_at=None, error=RuntimeError):
        self.calls, self.fail_at, self.error = [], fail_at, error

    def __call__(self, a, b=0, seed=0):
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise self.error("boom")
        self.calls.append((a, b, seed))
        return {"score": 10 * a + b + seed / 10, "one": 1}


def run(fn, d, grid=None, seeds=(0, 1), **kw):
    return X.sweep(fn, grid or {"a": [1, 2], "b": [3, 4]}, seeds, name="t", cache_dir=d, progress=False, **kw)


def files(d):
    return sorted(p.name for p in pathlib.Path(d, "t").iterdir())


def test_lazy_access_and_grid_product():
    assert flu.experiments.sweep is S.sweep
    assert X.grid(a=[1, 2], b=["x", "y"]) == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"},
                                             {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]


def test_table_rows_and_rerun_repeats_nothing(tmp_path):
    fn = Counter()
    t = run(fn, tmp_path)
    assert len(fn.calls) == 8 and t.attrs["sweep"]["computed"] == 8
    assert list(t.columns) == ["a", "b", "seed", "metric", "value"]
    got = t[t.metric == "score"].set_index(["a", "b", "seed"])["value"]
    for a in (1, 2):
        for b in (3, 4):
            for s in (0, 1):
                assert got[(a, b, s)] == pytest.approx(10 * a + b + s / 10)
    again = run(fn, tmp_path)
    assert len(fn.calls) == 8, "a finished sweep must not call fn again"
    assert again.attrs["sweep"]["reused"] == 8 and again.attrs["sweep"]["computed"] == 0
    pd.testing.assert_frame_equal(again, t)
    # a grown grid computes only the new runs
    run(fn, tmp_path, grid={"a": [1, 2, 5], "b": [3, 4]})
    assert len(fn.calls) == 12 and all(c[0] == 5 for c in fn.calls[8:])
    loaded = X.load("t", tmp_path)
    assert len(loaded) == 2 * 12 and len(fn.calls) == 12


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_sweep_resumes_without_redoing(tmp_path, error):
    flaky = Counter(fail_at=3, error=error)
    with pytest.raises(error) as info:
        run(flaky, tmp_path)
    assert any("3 of 8 runs are cached" in n for n in getattr(info.value, "__notes__", []))
    fn = Counter()
    t = run(fn, tmp_path)
    assert t.attrs["sweep"]["reused"] == 3 and len(fn.calls) == 5
    assert set(fn.calls).isdisjoint(flaky.calls) and len(set(fn.calls) | set(flaky.calls)) == 8
    assert not [n for n in files(tmp_path) if n.endswith(".tmp")]


def _entry(d, a, b, seed):
    key = C.run_key({"a": a, "b": b}, seed)
    return pathlib.Path(d, "t", f"{key}.json"), pathlib.Path(d, "t", f"{key}.frame.json")


@pytest.mark.parametrize("damage", ["truncate_result", "garble_result", "garble_manifest", "truncate_manifest",
                                    "drop_result"])
def test_corrupted_entry_is_reported_and_recomputed(tmp_path, damage):
    fn = Counter()
    t = run(fn, tmp_path)
    manifest, result = _entry(tmp_path, 2, 3, 1)
    target = result if "result" in damage else manifest
    data = target.read_bytes()
    if damage.startswith("truncate"):
        target.write_bytes(data[: len(data) // 2])
    elif damage.startswith("garble"):
        target.write_bytes(data.replace(b"2", b"7").replace(b"3", b"9"))
    else:
        target.unlink()
    with pytest.warns(X.CacheWarning, match=target.name if "drop" not in damage else result.name):
        again = run(fn, tmp_path)
    assert fn.calls[8:] == [(2, 3, 1)], "exactly the damaged run is recomputed"
    pd.testing.assert_frame_equal(again, t)
    assert again.attrs["sweep"]["recomputed"] == [str(manifest)]
    with _no_warning():
        run(fn, tmp_path)  # repaired
    assert len(fn.calls) == 9


class _no_warning:
    def __enter__(self):
        import warnings
        self._c = warnings.catch_warnings()
        self._c.__enter__()
        warnings.simplefilter("error", X.CacheWarning)

    def __exit__(self, *exc):
        return self._c.__exit__(*exc)


def test_other_version_or_commit_is_reported_and_recomputed(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "git_commit", lambda: "f" * 40)
    fn = Counter()
    run(fn, tmp_path, grid={"a": [1]}, seeds=[0])
    manifest = pathlib.Path(tmp_path, "t", f"{C.run_key({'a': 1}, 0)}.json")
    m = json.loads(manifest.read_text())
    m["versions"]["fedlab_utils"] = "0.0.1"
    manifest.write_text(json.dumps(m))
    with pytest.warns(X.CacheWarning, match=r"fedlab_utils 0\.0\.1 \(this is " + flu.__version__.replace(".", r"\.")):
        run(fn, tmp_path, grid={"a": [1]}, seeds=[0])
    assert len(fn.calls) == 2
    # the commit counts only when asked for
    monkeypatch.setattr(C, "git_commit", lambda: "e" * 40)
    run(fn, tmp_path, grid={"a": [1]}, seeds=[0])
    assert len(fn.calls) == 2
    with pytest.warns(X.CacheWarning, match="git commit " + "f" * 40):
        run(fn, tmp_path, grid={"a": [1]}, seeds=[0], match=("fedlab_utils", "git"))
    assert len(fn.calls) == 3


def test_manifest_records_configuration_seed_versions_commit_time(tmp_path):
    import numpy

    run(Counter(), tmp_path, grid={"a": [1], "b": [2]}, seeds=[7])
    m = json.loads(pathlib.Path(tmp_path, "t", f"{C.run_key({'a': 1, 'b': 2}, 7)}.json").read_text())
    assert m["config"] == {"a": 1, "b": 2} and m["seed"] == 7
    assert m["versions"]["numpy"] == numpy.__version__ and m["versions"]["torch"] == torch.__version__
    assert m["versions"]["fedlab_utils"] == flu.__version__
    assert m["git_commit"] is None or (len(m["git_commit"]) == 40 and int(m["git_commit"], 16) >= 0)
    assert m["wall_s"] >= 0 and m["fn"].endswith("Counter")
    table = X.manifests("t", tmp_path)
    assert table.loc[0, "seed"] == 7 and table.loc[0, "a"] == 1 and table.loc[0, "version_numpy"] == numpy.__version__


def test_writes_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    target.write_bytes(b"old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        C.atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    monkeypatch.undo()
    # a crash after the result but before the manifest: the run counts as not done
    fn = Counter()
    real = C.atomic_write

    def crash_on_manifest(path, data):
        if path.name.endswith(".json") and not path.name.endswith(".frame.json"):
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(C, "atomic_write", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        run(fn, tmp_path, grid={"a": [1]}, seeds=[0])
    monkeypatch.undo()
    run(fn, tmp_path, grid={"a": [1]}, seeds=[0])
    assert len(fn.calls) == 2
    assert not [n for n in files(tmp_path) if n.endswith(".tmp")]


def test_bad_input_is_named(tmp_path):
    fn = Counter()
    with pytest.raises(ValueError, match="grid"):
        X.sweep(fn, {}, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="grid"):
        X.sweep(fn, [], cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"grid\['a'\]"):
        X.sweep(fn, {"a": [], "b": [1]}, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"\['lr', 'zeta'\]"):
        X.sweep(fn, {"a": [1], "zeta": [1], "lr": [0.1]}, cache_dir=tmp_path, progress=False)
    with pytest.raises(TypeError, match="JSON-able.*object"):
        X.sweep(fn, {"a": [object()]}, cache_dir=tmp_path, progress=False)
    with pytest.raises(TypeError, match="JSON-able"):
        X.sweep(fn, {"a": [float("nan")]}, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="seed"):
        X.sweep(fn, {"a": [1], "seed": [1]}, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="seeds"):
        X.sweep(fn, {"a": [1]}, seeds=[1, 1], cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="missing \\['a'\\]"):
        X.sweep(fn, {"b": [1]}, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="name"):
        X.sweep(fn, {"a": [1]}, name="../escape", cache_dir=tmp_path, progress=False)
    with pytest.raises(TypeError, match="fn must return"):
        X.sweep(lambda a, seed: "text", {"a": [1]}, name="s", cache_dir=tmp_path, progress=False)
    assert fn.calls == [] and not (tmp_path / "t").exists()


def test_summary_matches_student_t(tmp_path):
    t = pd.DataFrame({"alg": ["x"] * 3 + ["y"] * 2, "seed": [0, 1, 2, 0, 1], "value": [1.0, 2.0, 6.0, 4.0, 4.0]})
    s = X.summary(t, by="alg", confidence=0.95).set_index("alg")
    sd = np.std([1.0, 2.0, 6.0], ddof=1)
    assert s.loc["x", "mean"] == pytest.approx(3.0) and s.loc["x", "std"] == pytest.approx(sd)
    half = 4.302652729911275 * sd / np.sqrt(3)  # t_{0.975, 2}
    assert s.loc["x", "ci_low"] == pytest.approx(3 - half) and s.loc["x", "ci_high"] == pytest.approx(3 + half)
    assert s.loc["y", "ci_low"] == s.loc["y", "ci_high"] == 4.0 and s.loc["y", "n"] == 2
    with pytest.raises(ValueError, match="metric"):
        X.summary(t, metric="acc")
    with pytest.raises(ValueError, match="by"):
        X.summary(t, by="nope")


def test_export_csv_and_clear(tmp_path):
    t = run(Counter(), tmp_path)
    out = X.export(t, tmp_path / "results.csv")
    back = pd.read_csv(out)
    assert list(back.columns) == list(t.columns) and np.allclose(back["value"], t["value"])
    (tmp_path / "t" / "keep.txt").write_text("not ours")
    assert X.clear("t", tmp_path) == 16
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["keep.txt"]


def _trial(algorithm, alpha, seed):
    fed = flu.lessons.practice.federation(alpha, seed, num_clients=4)
    model = flu.models.mlp(64, 8, 10, seed=seed)
    return flu.run(model, fed, algorithm, num_rounds=2, local_steps=2, batch_size=8, progress=False, seed=seed)


def test_histories_are_cached_with_history_save(tmp_path):
    calls = []

    def trial(algorithm, alpha, seed):
        calls.append(seed)
        return _trial(algorithm, alpha, seed)

    g = {"algorithm": ["fedavg"], "alpha": [0.5]}
    t = X.sweep(trial, g, [0, 1], name="h", cache_dir=tmp_path, progress=False)
    assert list(t.columns[:3]) == ["algorithm", "alpha", "seed"] and set(t["split"]) == {"train", "test"}
    h = X.result("h", {"algorithm": "fedavg", "alpha": 0.5}, 1, tmp_path)
    assert h == _trial("fedavg", 0.5, 1)
    again = X.sweep(trial, g, [0, 1], name="h", cache_dir=tmp_path, progress=False)
    assert calls == [0, 1]
    pd.testing.assert_frame_equal(again, t)
    pt = next((tmp_path / "h").glob("*.history.pt"))
    pt.write_bytes(pt.read_bytes()[:100])
    with pytest.warns(X.CacheWarning, match=pt.name):
        X.sweep(trial, g, [0, 1], name="h", cache_dir=tmp_path, progress=False)
    assert len(calls) == 3


def test_plot_and_panel(tmp_path):
    import matplotlib.pyplot as plt

    t = pd.DataFrame({"algorithm": ["a", "a", "b", "b"] * 2, "round": [0, 1] * 4, "seed": [0] * 4 + [1] * 4,
                      "metric": "acc", "value": [0.1, 0.5, 0.2, 0.6, 0.3, 0.7, 0.2, 0.8]})
    s = X.summary(t, by=["algorithm", "round"], metric="acc")
    ax = flu.plots.plot_sweep(s, x="round", hue="algorithm")
    assert len(ax.lines) == 2 and len(ax.collections) == 2
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.2, 0.6])
    with pytest.raises(ValueError, match="summary"):
        flu.plots.plot_sweep(X.summary(t, by=["round"], metric="acc").assign(algorithm="a").pipe(
            lambda d: pd.concat([d, d])), x="round", hue="algorithm")
    plt.close("all")
    p = flu.widgets.experiments.sweep_panel(t, choose=("metric",))
    p.confidence.value = 0.9
    assert p.error is None and p.calls >= 1 and p.result["ci_low"].notna().all()
    plt.close("all")
