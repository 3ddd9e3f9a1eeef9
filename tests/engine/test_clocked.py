"""flu.run on the virtual clock (systems=) and with compressed uploads, against exact references."""
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils.systems import Simulation, profiles
from fedlab_utils.systems.compression import Compression

SIZES = (8, 12, 6)


def federation(sizes=SIZES, seed=0):
    g = torch.Generator().manual_seed(seed)
    clients = [(torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g))
               for n in sizes]
    return flu.data.Federation.from_clients(clients, test=clients)


def model():
    return flu.models.logistic(3, 2, dtype=torch.float64)


def table(n=3, **cols):
    base = dict(client=list(range(n)), samples_per_s=[100.0, 50.0, 10.0], memory_mb=[512.0] * n,
                download_mbps=[80.0, 8.0, 1.0], upload_mbps=[40.0, 4.0, 1.0], latency_s=[0.1, 0.2, 0.5],
                dropout=[0.0] * n, watts=[2.0, 3.0, 5.0], energy_budget_j=[math.inf] * n)
    base.update(cols)
    return pd.DataFrame(base)


ARGS = dict(num_rounds=4, local_steps=3, client_lr=0.2, batch_size=None, progress=False, seed=2)


def assert_same_training(a, b):
    pd.testing.assert_frame_equal(a.metrics, b.metrics, check_exact=True)
    cols = ["round", "clients_selected", "clients_completed", "bytes_up", "bytes_down", "trainable_params"]
    pd.testing.assert_frame_equal(a.rounds[cols], b.rounds[cols], check_exact=True)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k


@pytest.mark.parametrize("algorithm, extra", [("fedavg", {}), ("scaffold", {}), ("fedprox", {"mu": 0.1})])
def test_ideal_profiles_equal_no_simulation_bit_for_bit(algorithm, extra):
    fed = federation(sizes=(8, 12, 6, 9, 7))
    args = {**ARGS, "batch_size": 4, "clients_per_round": 3, "algorithm": algorithm, **extra}
    plain = flu.run(model(), fed, **args)
    ideal = flu.run(model(), fed, systems=Simulation(profiles=profiles("ideal", 5, seed=0)), **args)
    assert_same_training(plain, ideal)
    assert (ideal.rounds["round_time"] == 0).all() and (ideal.rounds["virtual_time"] == 0).all()
    assert plain.timeline is None and len(ideal.timeline) == 4 * 3 * 3


def test_round_time_by_hand():
    fed = federation()
    hist = flu.run(model(), fed, systems=Simulation(profiles=table()), **ARGS)
    nbytes = sum(p.numel() * 8 for p in model().parameters())  # float64 logistic: down = up = all parameters
    down = 0.1 + 8 * nbytes / (1e6 * np.array([80.0, 8.0, 1.0])) + np.array([0, 0.1, 0.4])
    comp = 3 * np.array(SIZES) / np.array([100.0, 50.0, 10.0])
    up = 0.1 + 8 * nbytes / (1e6 * np.array([40.0, 4.0, 1.0])) + np.array([0, 0.1, 0.4])
    end = down + comp + up
    assert hist.rounds["round_time"].tolist() == pytest.approx([end.max()] * 4)
    assert hist.rounds["virtual_time"].tolist() == pytest.approx(list(end.max() * np.arange(1, 5)))
    assert hist.rounds["energy_j"].tolist() == pytest.approx([float((np.array([2.0, 3.0, 5.0]) * end).sum())] * 4)
    first = hist.timeline[hist.timeline["round"] == 1].sort_values(["client", "start"])
    assert first["end"].tolist()[2::3] == pytest.approx(list(end))
    assert set(hist.timeline["outcome"]) == {"completed"}
    assert list(hist.timeline.columns) == ["round", "client", "phase", "start", "end", "outcome"]


def test_a_round_where_everyone_drops_changes_nothing():
    fed = federation()
    hist = flu.run(model(), fed, systems=Simulation(profiles=table(dropout=[1.0, 1.0, 1.0])), **ARGS)
    start = dict(model().named_parameters())
    for k, v in hist.params.items():
        assert torch.equal(v, start[k].detach())
    assert (hist.rounds["clients_completed"] == 0).all() and (hist.rounds["bytes_up"] == 0).all()
    assert (hist.rounds["clients_dropped"] == 3).all()
    assert not hist.metrics["value"].isna().any()
    assert set(hist.timeline["phase"]) == {"download"} and set(hist.timeline["outcome"]) == {"dropped"}


def test_deadline_aggregates_only_the_clients_in_time():
    """Client 2 is always late; with full batches the run equals FedAvg over clients 0 and 1 alone."""
    fed = federation()
    slow = flu.run(model(), fed, systems=Simulation(profiles=table(), policy="deadline", deadline=2.5), **ARGS)
    assert (slow.rounds["clients_late"] == 1).all() and (slow.rounds["clients_completed"] == 2).all()
    assert slow.rounds["round_time"].tolist() == [2.5] * 4
    two = flu.data.Federation.from_clients(federation().train[:2])
    ref = flu.run(model(), two, **ARGS)
    for k in ref.params:
        torch.testing.assert_close(slow.params[k], ref.params[k], rtol=0, atol=1e-14)


def test_partial_work_equals_fewer_local_steps():
    """Client 2 does 2 of its 3 steps by the deadline: the same as local_steps=[3, 3, 2]."""
    fed = federation()
    prof = table()
    nbytes = sum(p.numel() * 8 for p in model().parameters())
    d2 = 0.5 + 8 * nbytes / 1e6
    deadline = d2 + 2 * 6 / 10.0 + d2 + 0.01   # download, two steps of 0.6 s, upload
    part = flu.run(model(), fed, systems=Simulation(profiles=prof, policy="partial_work", deadline=deadline), **ARGS)
    assert set(part.timeline.loc[part.timeline["client"] == 2, "outcome"]) == {"partial"}
    ref = flu.run(model(), fed, **{**ARGS, "local_steps": [3, 3, 2]})
    for k in ref.params:
        assert torch.equal(part.params[k], ref.params[k])


def test_same_seed_replays_the_timeline_and_resume_is_exact(tmp_path):
    fed = federation(sizes=(8, 12, 6, 9, 7))
    sim = Simulation(profiles=profiles("phones", 5, seed=1), availability=flu.systems.Bernoulli(0.7),
                     policy="deadline", deadline=1e4, seed=3)
    args = {**ARGS, "num_rounds": 6, "clients_per_round": 3, "batch_size": 4}
    a = flu.run(model(), fed, systems=sim, **args)
    b = flu.run(model(), fed, systems=sim, **args)
    assert a == b
    path = tmp_path / "c.pt"
    flu.run(model(), fed, systems=sim, checkpoint=path, **{**args, "num_rounds": 2})
    resumed = flu.run(model(), fed, systems=sim, resume=path, **args)
    assert resumed == dataclasses.replace(a, config=resumed.config)  # configs differ only in resume=
    pd.testing.assert_frame_equal(resumed.timeline, a.timeline, check_exact=True)


def test_energy_budget_retires_clients():
    fed = federation()
    hist = flu.run(model(), fed, systems=Simulation(profiles=table(energy_budget_j=[math.inf, math.inf, 1.0])),
                   **ARGS)
    assert hist.rounds["clients_available"].tolist() == [3, 2, 2, 2]


def test_deadline_and_memory_are_checked_before_round_0():
    fed = federation()
    with pytest.raises(ValueError, match="deadline"):
        flu.run(model(), fed, systems=Simulation(profiles=table(), policy="deadline", deadline=0.01), **ARGS)
    with pytest.raises(ValueError, match="finetune.*client 1"):
        flu.run(model(), fed, systems=Simulation(profiles=table(memory_mb=[512.0, 1e-6, 512.0])), **ARGS)
    with pytest.raises(ValueError, match="algorithm"):
        flu.run(model(), fed, systems=Simulation(profiles=table(), aggregation="fedbuff", buffer_size=2),
                **{**ARGS, "algorithm": "scaffold"})


@pytest.mark.parametrize("comp", [Compression("none"), Compression("topk", fraction=1.0)])
def test_lossless_compression_equals_none_bit_for_bit(comp):
    fed = federation()
    plain = flu.run(model(), fed, **{**ARGS, "batch_size": 4})
    packed = flu.run(model(), fed, compression=comp, **{**ARGS, "batch_size": 4})
    assert_same_training(plain, packed)


def test_compressed_bytes_and_error_feedback_state():
    fed = federation()
    hist = flu.run(flu.models.mlp(3, 16, 2, dtype=torch.float64), fed, compression=Compression("topk", fraction=0.1),
                   **ARGS)
    dense = flu.run(flu.models.mlp(3, 16, 2, dtype=torch.float64), fed, **ARGS)
    assert (hist.rounds["bytes_up"] < dense.rounds["bytes_up"]).all()
    assert any(k.startswith("residual.") for k in hist.client_state)
    q = flu.run(model(), fed, compression=Compression("qsgd", levels=4), **ARGS)
    assert (q.rounds["bytes_up"] < flu.run(model(), fed, **ARGS).rounds["bytes_up"]).all()


def test_compression_none_is_no_compression_even_for_lora():
    fed = federation()
    net = flu.models.mlp(3, 8, 2, dtype=torch.float64)
    a = flu.run(net, fed, finetune="lora", lora_rank=2, **ARGS)
    b = flu.run(net, fed, finetune="lora", lora_rank=2, compression=Compression("none"), **ARGS)
    assert_same_training(a, b)


def test_a_clients_dropout_draw_does_not_depend_on_who_else_was_selected():
    from fedlab_utils.engine.clocked import Clocked
    sim = Simulation(profiles=table(dropout=[0.5, 0.5, 0.5]))
    ck = Clocked(sim, *[np.ones(3)] * 7, np.ones(3), np.ones(3), 1, np.ones(3, dtype=np.int64))
    ck.dropout = np.full(3, 0.5)
    both = ck.dropped(np.array([0, 2]), 7)
    alone = ck.dropped(np.array([2]), 7)
    assert both[1] == alone[0]


def test_each_clients_compute_time_uses_its_own_modes_cost():
    """compute_i = steps * b_i * cost(mode_i) / samples_per_s, cost = the mode's FLOPs per step over full's."""
    fed = federation()
    net = flu.models.mlp(3, 16, 2, dtype=torch.float64)
    modes = ["full", "linear_probe", "full"]
    hist = flu.run(net, fed, finetune=modes, systems=Simulation(profiles=table()), **{**ARGS, "num_rounds": 1})
    full = flu.finetune.cost(net, "full", input_shape=(3,), batch_size=12)["flops_step"]
    probe = flu.finetune.cost(net, "linear_probe", input_shape=(3,), batch_size=12)["flops_step"]
    cost = np.array([1.0, probe / full, 1.0])
    want = 3 * np.array(SIZES) * cost / np.array([100.0, 50.0, 10.0])
    compute = hist.timeline[hist.timeline["phase"] == "compute"].sort_values("client")
    assert (compute["end"] - compute["start"]).tolist() == pytest.approx(list(want))
    up = hist.timeline[hist.timeline["phase"] == "upload"].sort_values("client")
    head = sum(p.numel() * 8 for k, p in net.named_parameters() if k.startswith("head."))
    nbytes = np.array([sum(p.numel() * 8 for p in net.parameters()), head, sum(p.numel() * 8 for p in net.parameters())])
    upload = np.array([0.1, 0.2, 0.5]) + 8 * nbytes / (1e6 * np.array([40.0, 4.0, 1.0]))
    assert (up["end"] - up["start"]).tolist() == pytest.approx(list(upload))
