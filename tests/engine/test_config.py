"""flu.run's configuration: every value used is recorded, options are typed records routed to
the algorithm or the fine-tuning mode, and bad arguments are refused before round 0."""
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import fedlab_utils as flu
from fedlab_utils.algorithms import Algorithm, ClientResult, Options, local_delta, sgd_step, weighted_sum


def fed(seed=0, d=4, classes=3, sizes=(6, 9, 5)):
    g = torch.Generator().manual_seed(seed)
    clients = [(torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)) for n in sizes]
    return flu.data.Federation.from_clients(clients, test=clients)


def small_run(**kwargs):
    args = dict(num_rounds=1, local_steps=1, batch_size=None, progress=False)
    return flu.run(kwargs.pop("model", flu.models.mlp(4, 5, 3)), kwargs.pop("federation", fed()), **{**args, **kwargs})


def test_config_records_defaults_the_run_used():
    h = small_run(algorithm="fedprox")
    assert h.config["mu"] == 0.01 and h.config["server_lr"] == 1.0
    h = small_run(algorithm="fedadam")
    assert (h.config["beta1"], h.config["beta2"], h.config["tau"], h.config["server_lr"]) == (0.9, 0.99, 1e-3, 1e-2)
    h = small_run(finetune="lora")
    assert h.config["lora_rank"] == 4 and h.config["finetune"] == "lora"
    h = small_run(finetune="last_layers", num_layers=1)
    assert h.config["num_layers"] == 1
    json.dumps(h.config)  # plain JSON
    for key in ("model", "federation", "algorithm", "num_rounds", "local_steps", "client_lr", "batch_size",
                "clients_per_round", "sampling", "weights", "loss", "l2", "eval_every", "backend", "seed",
                "checkpoint", "resume", "systems", "privacy", "compression"):
        assert key in h.config, key


def test_numpy_values_from_a_sweep_are_accepted_and_recorded_plainly(tmp_path):
    h = small_run(algorithm="fedprox", mu=np.logspace(-2, 0, 3)[1], client_lr=np.float32(0.05), seed=np.int64(3))
    assert type(h.config["mu"]) is float and type(h.config["seed"]) is int
    h.save(tmp_path / "h.pt")
    assert flu.History.load(tmp_path / "h.pt") == h


def counting(option_name):
    """A user's own Algorithm whose option is called ``option_name``."""
    Opts = __import__("dataclasses").make_dataclass("Opts", [(option_name, int, 1)], bases=(Options,), frozen=True)

    def client(batch):
        return ClientResult(local_delta(batch, batch.train()))

    def server(srv):
        return sgd_step(srv.params, weighted_sum(srv.delta, srv.weights), srv.server_lr), srv.server_state

    return Algorithm("mine", client, server, options=Opts())


def test_a_users_algorithm_may_name_an_option_like_a_mode_option():
    h = small_run(algorithm=counting("num_layers"), num_layers=3)  # finetune="full" takes no num_layers
    assert h.config["num_layers"] == 3
    with pytest.raises(ValueError, match="num_layers.*both"):
        small_run(algorithm=counting("num_layers"), finetune="last_layers", num_layers=1)


def test_dict_options_of_a_users_algorithm_become_a_record():
    alg = Algorithm("dicty", lambda b: ClientResult(local_delta(b, b.train())),
                    lambda s: (sgd_step(s.params, weighted_sum(s.delta, s.weights), s.server_lr), s.server_state),
                    options={"k": 2})
    assert alg.options.k == 2 and alg.options["k"] == 2
    assert small_run(algorithm=alg, k=5).config["k"] == 5


@dataclass(frozen=True)
class _Strict(Options):
    rho: float = 0.5

    def __post_init__(self):
        if not 0 < self.rho < 1:
            raise ValueError(f"rho must be in (0, 1), got {self.rho!r}")


@pytest.mark.parametrize("kwargs, name", [
    (dict(lora_rank=2), "lora_rank"),                       # belongs to the LoRA modes, not to "full"
    (dict(finetune="lora", num_layers=2), "num_layers"),
    (dict(finetune="last_layers", num_layers=0), "num_layers"),
    (dict(finetune="nope"), "finetune"),
    (dict(finetune=["full"]), "finetune"),
    (dict(seed=-1), "seed"),
    (dict(seed=2 ** 63), "seed"),
    (dict(num_rounds=0), "num_rounds"),
    (dict(local_steps=[1, 2]), "local_steps"),
    (dict(local_steps=[1, 0, 2]), "local_steps"),
    (dict(client_lr=-0.1), "client_lr"),
    (dict(client_lr=float("inf")), "client_lr"),
    (dict(clients_per_round=4), "clients_per_round"),
    (dict(sampling="bernoulli"), "sampling"),
    (dict(weights="size"), "weights"),
    (dict(loss="hinge"), "loss"),
    (dict(l2=-1.0), "l2"),
    (dict(eval_every=0), "eval_every"),
    (dict(backend="gpu"), "backend"),
    (dict(checkpoint_every=0), "checkpoint_every"),
    (dict(client_lr=lambda rnd: 0.1), "client_lr"),            # a schedule of the wrong shape
    (dict(client_lr=lambda rnd, step: "fast"), "client_lr"),
    (dict(client_lr=lambda rnd, step: float("nan")), "client_lr"),
    (dict(algorithm="fedprox", mu=-1.0), "mu"),
    (dict(algorithm="fedprox", momentum=0.9), "momentum"),
    (dict(algorithm=Algorithm("strict", None, None, options=_Strict()), rho=2.0), "rho"),
])
def test_bad_arguments_are_refused_before_round_0(kwargs, name):
    with pytest.raises(ValueError, match=name):
        small_run(**kwargs)


@pytest.mark.parametrize("kwargs, name", [(dict(seed=1.0), "seed"), (dict(seed=True), "seed"),
                                          (dict(progress="yes"), "progress"), (dict(model="mlp"), "model"),
                                          (dict(federation=[(1, 2)]), "federation"),
                                          (dict(checkpoint=3), "checkpoint"),
                                          (dict(finetune="lora", lora_rank=1.5), "lora_rank"),
                                          (dict(systems="phones"), "systems"), (dict(compression="qsgd"), "compression"),
                                          (dict(privacy=1.0), "privacy")])
def test_wrong_types_are_type_errors(kwargs, name):
    with pytest.raises(TypeError, match=name):
        small_run(**kwargs)


def test_server_round_says_who_completed():
    seen = []

    def server(srv):
        seen.append((srv.clients.tolist(), srv.completed.tolist()))
        return sgd_step(srv.params, weighted_sum(srv.delta, srv.weights), srv.server_lr), srv.server_state

    alg = Algorithm("spy", lambda b: ClientResult(local_delta(b, b.train())), server)
    small_run(algorithm=alg, clients_per_round=2, num_rounds=3, seed=4)
    for rnd, (clients, completed) in enumerate(seen, start=1):
        sel, _ = flu.engine.select_clients(3, 2, torch.tensor([6, 9, 5], dtype=torch.float64) / 20, "uniform", 4, rnd)
        assert clients == sel.tolist() and completed == [True, True]


def test_help_documents_every_argument():
    import inspect
    doc = flu.run.__doc__
    for name in inspect.signature(flu.run).parameters:
        assert f"{name}:" in doc or f"**{name}:" in doc or f", {name}" in doc or f"{name}," in doc, name
    assert "DESIGN" not in doc
    assert flu.History.__doc__ and "metrics" in flu.History.__doc__
