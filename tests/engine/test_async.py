"""FedAsync and FedBuff on the virtual clock, against their synchronous equivalents and by hand."""
import dataclasses
import math

import pandas as pd
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils.systems import Bernoulli, Simulation, profiles


def federation(sizes=(8, 12, 6, 9), seed=0):
    g = torch.Generator().manual_seed(seed)
    clients = [(torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g))
               for n in sizes]
    return flu.data.Federation.from_clients(clients, test=clients)


def model():
    return flu.models.mlp(3, 5, 2, dtype=torch.float64, seed=4)


def same_devices(n, **cols):
    base = dict(client=list(range(n)), samples_per_s=[40.0] * n, memory_mb=[512.0] * n, download_mbps=[10.0] * n,
                upload_mbps=[5.0] * n, latency_s=[0.05] * n, dropout=[0.0] * n, watts=[2.0] * n,
                energy_budget_j=[math.inf] * n)
    base.update(cols)
    return pd.DataFrame(base)


ARGS = dict(num_rounds=5, local_steps=3, client_lr=0.2, batch_size=4, progress=False, seed=7)


def test_fedbuff_with_a_buffer_of_everyone_is_fedavg_with_uniform_weights():
    fed = federation()
    sync = flu.run(model(), fed, weights="uniform", **ARGS)
    buff = flu.run(model(), fed, systems=Simulation(profiles=same_devices(4), aggregation="fedbuff", buffer_size=4),
                   **ARGS)
    for k in sync.params:
        torch.testing.assert_close(buff.params[k], sync.params[k], rtol=0, atol=1e-12)
    assert (buff.rounds["clients_completed"] == 4).all()
    assert buff.rounds["virtual_time"].is_monotonic_increasing


def test_fedasync_with_one_client_is_local_sgd_rounds():
    fed = flu.data.Federation.from_clients(federation().train[:1])
    sync = flu.run(model(), fed, **ARGS)
    fa = flu.run(model(), fed, systems=Simulation(profiles=same_devices(1), aggregation="fedasync"), **ARGS)
    for k in sync.params:
        torch.testing.assert_close(fa.params[k], sync.params[k], rtol=0, atol=1e-14)


def test_fedasync_arrivals_and_staleness_by_hand():
    """Client 0 takes 1 s per job, client 1 takes 3 s: arrivals at 1, 2, 3 (client 0), 3 (client 1,
    staleness 3, weight (1 + 3) ** -0.5 = 1/2), 4, 5, 6 ..."""
    fed = federation(sizes=(8, 8))
    prof = same_devices(2, samples_per_s=[24.0, 8.0], download_mbps=[math.inf] * 2, upload_mbps=[math.inf] * 2,
                        latency_s=[0.0, 0.0])
    hist = flu.run(model(), fed, systems=Simulation(profiles=prof, aggregation="fedasync"),
                   **{**ARGS, "num_rounds": 6, "local_steps": 3, "batch_size": 8})
    assert hist.rounds["virtual_time"].tolist() == pytest.approx([1, 2, 3, 3, 4, 5])
    done = hist.timeline[(hist.timeline["phase"] == "upload")]
    assert done["client"].tolist() == [0, 0, 0, 1, 0, 0]
    assert flu.systems.staleness_weight(3, 0.5) == pytest.approx(0.5)


def test_async_resume_is_exact(tmp_path):
    fed = federation()
    sim = Simulation(profiles=profiles("phones", 4, seed=2), availability=Bernoulli(0.8), aggregation="fedbuff",
                     buffer_size=2, seed=5)
    args = {**ARGS, "num_rounds": 6, "clients_per_round": 3}
    whole = flu.run(model(), fed, systems=sim, **args)
    again = flu.run(model(), fed, systems=sim, **args)
    assert whole == again
    path = tmp_path / "a.pt"
    flu.run(model(), fed, systems=sim, checkpoint=path, **{**args, "num_rounds": 3})
    resumed = flu.run(model(), fed, systems=sim, resume=path, **args)
    assert resumed == dataclasses.replace(whole, config=resumed.config)


def test_async_runs_that_cannot_complete_or_cannot_be_exact_are_refused():
    fed = federation()
    with pytest.raises(ValueError, match="systems.*dropout"):
        flu.run(model(), fed, systems=Simulation(profiles=same_devices(4, dropout=[1.0] * 4), aggregation="fedasync"),
                **ARGS)
    with pytest.raises(ValueError, match="systems.*available"):
        flu.run(model(), fed, systems=Simulation(profiles=same_devices(4), availability=Bernoulli(0.0),
                                                 aggregation="fedasync"), **ARGS)
    with pytest.raises(ValueError, match="algorithm"):
        flu.run(model(), fed, systems=Simulation(profiles=same_devices(4), aggregation="fedasync"),
                **{**ARGS, "algorithm": "fedadam"})


def test_fedasync_moves_toward_the_arriving_local_model_against_the_newest_x():
    """With s = 1 (staleness 0) and server_lr = 1, x <- x - (x - y_i) = y_i: after client 1's stale
    arrival (round 4 above) the global model IS client 1's local model, trained from round 0's x."""
    fed = federation(sizes=(8, 8))
    prof = same_devices(2, samples_per_s=[24.0, 8.0], download_mbps=[math.inf] * 2, upload_mbps=[math.inf] * 2,
                        latency_s=[0.0, 0.0])
    args = {**ARGS, "num_rounds": 4, "local_steps": 3, "batch_size": 8}
    hist = flu.run(model(), fed, systems=Simulation(profiles=prof, aggregation="fedasync", staleness=0.0),
                   record_params=True, **args)
    alone = flu.run(model(), flu.data.Federation.from_clients(fed.train[1:]), **{**args, "num_rounds": 1})
    for k, v in alone.params.items():
        torch.testing.assert_close(hist.trajectory[4][k], v, rtol=0, atol=1e-14)


def test_fedprox_with_lora_is_refused_by_name_asynchronously_too():
    with pytest.raises(ValueError, match="finetune"):
        flu.run(model(), federation(), finetune="lora", lora_rank=2, algorithm="fedprox",
                systems=Simulation(profiles=same_devices(4), aggregation="fedasync"), **ARGS)
