"""flu.lessons.systems (notebook 07): device costs by the clock's formulas, run tables, policies,
time to accuracy, participation and energy, against hand computations."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils.lessons import systems as ls

SIZES = (8, 12, 6, 10)


def federation(sizes=SIZES, seed=0):
    g = torch.Generator().manual_seed(seed)
    clients = [(torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g))
               for n in sizes]
    return flu.data.Federation.from_clients(clients, test=clients)


def model():
    return flu.models.logistic(3, 2, dtype=torch.float64)


def table(**cols):
    base = dict(client=[0, 1, 2, 3], samples_per_s=[100.0, 50.0, 10.0, 40.0], memory_mb=[512.0, 1024.0, 512.0, 2048.0],
                download_mbps=[80.0, 8.0, 1.0, 20.0], upload_mbps=[40.0, 4.0, 1.0, 10.0],
                latency_s=[0.1, 0.2, 0.5, 0.1], dropout=[0.0] * 4, watts=[2.0, 3.0, 5.0, 1.0],
                energy_budget_j=[math.inf] * 4)
    base.update(cols)
    return pd.DataFrame(base)


TRAIN = dict(num_rounds=4, local_steps=3, client_lr=0.2, batch_size=4, clients_per_round=None, seed=1)


# ------------------------------------------------------------------ device table

def test_device_table_is_the_clock_by_hand():
    prof = table()
    dev = ls.device_table(prof, model(), local_steps=3, batch_size=10, sizes=SIZES)
    nbytes = 3 * 2 * 8 + 2 * 8                                    # logistic(3, 2) in float64
    b = np.minimum(10, np.array(SIZES))
    down = prof.latency_s + 8 * nbytes / (1e6 * prof.download_mbps)
    comp = 3 * b / prof.samples_per_s
    up = prof.latency_s + 8 * nbytes / (1e6 * prof.upload_mbps)
    np.testing.assert_allclose(dev.download_s, down, rtol=1e-12)
    np.testing.assert_allclose(dev.compute_s, comp, rtol=1e-12)
    np.testing.assert_allclose(dev.upload_s, up, rtol=1e-12)
    np.testing.assert_allclose(dev.round_j, prof.watts * (down + comp + up), rtol=1e-12)
    assert dev.tier.tolist() == ["low", "mid", "low", "high"]
    assert ls.model_bytes(model()) == nbytes


def test_device_table_times_match_a_run():
    """The device table's round time is what wait_all records when every client trains in full."""
    fed = federation()
    dev = ls.device_table(table(), model(), local_steps=3, batch_size=4, sizes=fed.sizes)
    hist = ls.simulate(fed, model(), table(), **TRAIN)
    assert hist.rounds["round_time"].tolist() == pytest.approx([dev.round_s.max()] * 4, rel=1e-12)


def test_slow_links_divides_both_bandwidths():
    slow = ls.slow_links(table(), 100.0)
    np.testing.assert_allclose(slow.upload_mbps, table().upload_mbps / 100)
    np.testing.assert_allclose(slow.download_mbps, table().download_mbps / 100)
    assert slow.samples_per_s.equals(table().samples_per_s)
    with pytest.raises(ValueError, match="factor"):
        ls.slow_links(table(), 0.0)


# ------------------------------------------------------------------ runs and tables

def test_run_table_columns_round_zero_and_cumulative_costs():
    fed = federation()
    runs = ls.policy_runs(fed, model(), table(), ["wait_all", "deadline"], deadline=2.0, **TRAIN)
    t = ls.run_table(runs)
    assert list(t.columns) == ["policy", *ls.TABLE_COLUMNS]
    assert len(t) == 2 * (4 + 1)
    start = t[t["round"] == 0]
    assert (start[["virtual_time", "bytes", "bytes_up", "energy_j"]] == 0).all().all()
    for p, h in runs.items():
        mine = t[(t.policy == p) & (t["round"] > 0)]
        np.testing.assert_array_equal(mine.bytes, np.cumsum(h.rounds.bytes_up + h.rounds.bytes_down))
        np.testing.assert_allclose(mine.energy_j, np.cumsum(h.rounds.energy_j))
        np.testing.assert_allclose(mine.virtual_time, np.cumsum(h.rounds.round_time))
        m = h.metrics
        acc = m[m.client.isna() & (m.split == "test") & (m.metric == "accuracy")].sort_values("round")
        np.testing.assert_array_equal(t[t.policy == p].accuracy, acc.value)
    # client 2 needs 2 * (0.5 + 8 * 64 / 1e6) + 3 * 4 / 10 = 2.201 s > 2 s: late every round
    dl = t[(t.policy == "deadline") & (t["round"] > 0)]
    assert (dl.clients_late == 1).all() and (dl.round_time == 2.0).all()


def test_dropping_late_clients_never_completes_more_than_waiting():
    fed = federation(sizes=(8, 12, 6, 10, 9, 7))
    prof = flu.systems.profiles("phones", 6, seed=3, speed_spread=1.2)
    args = {**TRAIN, "num_rounds": 8, "clients_per_round": 4}
    dev = ls.device_table(prof, model(), local_steps=3, batch_size=4, sizes=fed.sizes)
    runs = ls.policy_runs(fed, model(), prof, deadline=float(dev.round_s.median()), over_select=1.5, **args)
    done = {p: h.rounds.clients_completed.to_numpy() for p, h in runs.items()}
    assert (done["deadline"] <= done["wait_all"]).all()
    assert (done["deadline"] < done["wait_all"]).any()          # the deadline bites at least once
    assert (done["over_select"] <= 4).all()
    assert (runs["over_select"].rounds.clients_selected == 6).all()   # ceil(1.5 * 4) selected
    # the same selection and drop-outs: only lateness differs
    assert (runs["deadline"].rounds.clients_dropped == runs["wait_all"].rounds.clients_dropped).all()


def test_time_to_accuracy_on_a_hand_made_table():
    t = pd.DataFrame({
        "policy": ["a"] * 4 + ["b"] * 4,
        "round": [0, 1, 2, 3] * 2,
        "accuracy": [0.1, 0.5, 0.9, 0.95, 0.1, 0.4, 0.6, 0.7],
        "virtual_time": [0, 2.0, 4.0, 6.0, 0, 1.0, 2.0, 3.0],
        "bytes": [0, 10, 20, 30, 0, 5, 10, 15],
        "energy_j": [0, 1.5, 3.0, 4.5, 0, 1, 2, 3],
    })
    out = ls.time_to_accuracy(t, 0.9).set_index("policy")
    assert out.loc["a", "reached"] and out.loc["a", "rounds"] == 2 and out.loc["a", "virtual_time"] == 4.0
    assert out.loc["a", "bytes"] == 20 and out.loc["a", "energy_j"] == 3.0 and out.loc["a", "final_accuracy"] == 0.95
    assert not out.loc["b", "reached"]
    assert all(math.isinf(out.loc["b", c]) for c in ("rounds", "virtual_time", "bytes", "energy_j"))
    assert out.loc["b", "total_time"] == 3.0
    assert ls.time_to_accuracy(t, 0.1).set_index("policy")["rounds"].tolist() == [0, 0]   # round 0 counts
    with pytest.raises(ValueError, match="table"):
        ls.time_to_accuracy(t.drop(columns="bytes"), 0.5)


def test_participation_covers_every_client_and_round():
    fed = federation()
    prof = table(dropout=[0.0, 0.0, 0.0, 0.5])
    runs = ls.policy_runs(fed, model(), prof, ["wait_all", "deadline"], deadline=2.0,
                          **{**TRAIN, "clients_per_round": 3})
    part = ls.participation(runs, 4)
    assert len(part) == 2 * 4 * 4 and list(part.columns) == ["policy", "round", "client", "outcome"]
    for p, h in runs.items():
        mine = part[part.policy == p]
        busy = mine[mine.outcome != "idle"].groupby("round").size()
        assert busy.tolist() == h.rounds.clients_selected.tolist()
        done = mine[mine.outcome.isin(["completed", "partial"])].groupby("round").size().reindex(range(1, 5),
                                                                                             fill_value=0)
        assert done.tolist() == h.rounds.clients_completed.tolist()
    assert set(part[(part.policy == "deadline") & (part.client == 2)].outcome) <= {"late", "idle"}


def test_energy_by_client_is_watts_times_busy_time():
    fed = federation()
    prof = table()
    runs = ls.policy_runs(fed, model(), prof, ["wait_all", "deadline"], deadline=2.0, **TRAIN)
    e = ls.energy_by_client(runs, prof)
    for p, h in runs.items():
        mine = e[e.policy == p].set_index("client")
        assert mine.energy_j.sum() == pytest.approx(h.rounds.energy_j.sum(), rel=1e-12)
        assert (mine.rounds_selected == 4).all()
    dl = e[e.policy == "deadline"].set_index("client")
    # client 2 is late every round: busy until the deadline, all of it lost
    assert dl.loc[2, "busy_s"] == pytest.approx(4 * 2.0) and dl.loc[2, "wasted_j"] == pytest.approx(5.0 * 4 * 2.0)
    assert dl.loc[2, "rounds_completed"] == 0 and (dl.drop(index=2).wasted_j == 0).all()
    assert (e[e.policy == "wait_all"].wasted_j == 0).all()


def test_compression_runs_count_bytes_as_encoded():
    fed = federation()
    runs = ls.compression_runs(fed, model(), table(), {"none": flu.systems.Compression("none"),
                                                       "half": flu.systems.Compression("float16")}, **TRAIN)
    t = ls.run_table(runs, "compression")
    last = t[t["round"] == 4].set_index("compression")
    per_upload = 8 * 2                                      # 8 parameters, 2 bytes each in float16
    assert last.loc["half", "bytes_up"] == 4 * 4 * per_upload
    assert last.loc["none", "bytes_up"] == 4 * last.loc["half", "bytes_up"]   # float64: 8 bytes an entry
    assert last.loc["half", "virtual_time"] < last.loc["none", "virtual_time"]
    with pytest.raises(TypeError, match="compressions"):
        ls.compression_runs(fed, model(), table(), {"bad": "float16"}, **TRAIN)


def test_default_churn_and_availability_counts():
    settings = ls.default_availability(8, 10)
    churn = settings["churn"][1]
    counts = [int(churn.available(r, 8).sum()) for r in range(1, 11)]
    # clients 0-3 from the start, 4-7 join at round 5; clients 0-1 leave at round 5
    assert counts == [4] * 4 + [6] * 6
    fed = federation()
    runs = ls.availability_runs(fed, model(), table(), {"half": (flu.systems.Bernoulli(0.5), None)}, **TRAIN)
    avail = runs["half"].rounds.clients_available.tolist()
    u = [flu.systems.Bernoulli(0.5).available(r, 4, seed=1) for r in range(1, 5)]
    assert avail == [int(a.sum()) for a in u]
    with pytest.raises(ValueError, match="settings"):
        ls.availability_runs(fed, model(), table(), {"x": (0.5, None)}, **TRAIN)


def test_scenario_runs_the_policy_next_to_wait_all():
    fed = federation()
    sc = ls.scenario(fed, model(), speed_spread=0.0, bandwidth_spread=0.0, link_factor=10.0, dropout=0.25,
                     availability=1.0, policy="partial_work", deadline=5.0, num_rounds=2, clients_per_round=None,
                     local_steps=3, batch_size=4)
    assert set(sc.runs) == {"wait_all", "partial_work"} and set(sc.table.policy) == {"wait_all", "partial_work"}
    assert (sc.profiles.dropout == 0.25).all()
    phones = flu.systems.profiles("phones", 4, seed=0, speed_spread=0.0, bandwidth_spread=0.0)
    np.testing.assert_allclose(sc.profiles.upload_mbps, phones.upload_mbps / 10)
    assert sc.profiles.samples_per_s.nunique() == 1
    only = ls.scenario(fed, model(), policy="wait_all", num_rounds=1, clients_per_round=None, local_steps=3,
                       batch_size=4)
    assert set(only.runs) == {"wait_all"}
    with pytest.raises(ValueError, match="policy"):
        ls.scenario(fed, model(), policy="fastest")
