"""One fine-tuning mode per client: mixed aggregation against a plain PyTorch reference."""
import copy

import pandas as pd
import pytest
import torch

import fedlab_utils as flu

SIZES = (7, 11, 5, 9)


def federation(seed=0):
    g = torch.Generator().manual_seed(seed)
    clients = [(torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g))
               for n in SIZES]
    return flu.data.Federation.from_clients(clients, test=clients)


def model():
    return flu.models.mlp(4, 6, 3, dtype=torch.float64, seed=2)


def trains(mode, name):
    if mode == "full":
        return True
    if mode == "linear_probe":
        return name.startswith("head.")
    if mode == "bitfit":
        return name.startswith("head.") or name.endswith("bias")
    raise AssertionError(mode)


def reference(modes, rounds, steps, lr):
    """Plain PyTorch: each client runs full-batch SGD on its mode's parameters; each parameter is
    the n_i-weighted mean over the clients whose mode trained it (the others keep x)."""
    global_model = model()
    fed = federation()
    for _ in range(rounds):
        x = {k: v.detach().clone() for k, v in global_model.named_parameters()}
        locals_ = []
        for (X, y), mode in zip(fed.train, modes):
            net = copy.deepcopy(global_model)
            params = [p for k, p in net.named_parameters() if trains(mode, k)]
            opt = torch.optim.SGD(params, lr=lr)
            for _ in range(steps):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(X), y).backward()
                opt.step()
            locals_.append(dict(net.named_parameters()))
        with torch.no_grad():
            for k, p in global_model.named_parameters():
                who = [i for i, m in enumerate(modes) if trains(m, k)]
                if who:
                    n = torch.tensor([float(SIZES[i]) for i in who], dtype=torch.float64)
                    p.copy_(sum(w * locals_[i][k] for w, i in zip(n / n.sum(), who)))
                else:
                    p.copy_(x[k])
    return dict(global_model.named_parameters())


@pytest.mark.parametrize("backend", ["vectorized", "loop"])
def test_mixed_aggregation_matches_a_plain_reference(backend):
    modes = ["full", "linear_probe", "bitfit", "full"]
    hist = flu.run(model(), federation(), finetune=modes, num_rounds=3, local_steps=2, client_lr=0.3,
                   batch_size=None, backend=backend, progress=False)
    ref = reference(modes, rounds=3, steps=2, lr=0.3)
    for k, v in ref.items():
        torch.testing.assert_close(hist.params[k], v.detach(), rtol=0, atol=1e-12)
    assert hist.config["finetune"] == modes


@pytest.mark.parametrize("mode", ["full", "linear_probe", "last_layers", "lora"])
def test_the_same_mode_for_every_client_is_that_mode_bit_for_bit(mode):
    fed = federation()
    args = dict(num_rounds=2, local_steps=2, client_lr=0.1, batch_size=4, clients_per_round=3, seed=1,
                progress=False)
    a = flu.run(model(), fed, finetune=mode, **args)
    b = flu.run(model(), fed, finetune=[mode] * 4, **args)
    pd.testing.assert_frame_equal(a.metrics, b.metrics, check_exact=True)
    pd.testing.assert_frame_equal(a.rounds, b.rounds, check_exact=True)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)


def test_lora_clients_enter_as_their_dense_product_and_bytes_follow_the_modes():
    fed = federation()
    modes = ["lora", "linear_probe", "lora", "full"]
    hist = flu.run(model(), fed, finetune=modes, lora_rank=2, num_rounds=2, local_steps=2, client_lr=0.1,
                   batch_size=None, progress=False)
    start = dict(model().named_parameters())
    assert not torch.equal(hist.params["body.1.weight"], start["body.1.weight"])   # LoRA and full train it
    head = sum(p.numel() * 8 for k, p in model().named_parameters() if k.startswith("head."))
    lora = head + 2 * (4 + 6) * 8                                                    # head + A (2x4) + B (6x2)
    full = sum(p.numel() * 8 for p in model().parameters())
    assert (hist.rounds["bytes_up"] == 2 * lora + head + full).all()
    assert (hist.rounds["bytes_down"] == 4 * full).all()  # someone trains every dense parameter


def test_a_parameter_nobody_trained_stays():
    hist = flu.run(model(), federation(), finetune=["linear_probe", "bitfit", "linear_probe", "bitfit"],
                   num_rounds=2, local_steps=2, client_lr=0.3, batch_size=None, progress=False)
    start = dict(model().named_parameters())
    assert torch.equal(hist.params["body.1.weight"], start["body.1.weight"].detach())
    assert not torch.equal(hist.params["body.1.bias"], start["body.1.bias"].detach())


@pytest.mark.parametrize("kwargs, match", [
    (dict(finetune=["full", "ffa_lora", "full", "full"]), "finetune"),
    (dict(finetune=["full", "linear_probe", "full", "full"], algorithm="scaffold"), "finetune.*scaffold"),
    (dict(finetune=["full", "linear_probe", "full"]), "finetune.*one mode per client"),
    (dict(finetune=["full", "nope", "full", "full"]), r"finetune\[1\]"),
    (dict(finetune=["full", "linear_probe", "full", "full"],
          compression=flu.systems.Compression("topk", fraction=0.5)), "compression"),
])
def test_mixtures_that_cannot_be_exact_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flu.run(model(), federation(), num_rounds=1, progress=False, **kwargs)


def test_each_client_memory_is_checked_for_its_own_mode():
    prof = flu.systems.profiles("uniform", 4, seed=0)
    full_mb = flu.systems.mode_memory_mb(model(), "full", input_shape=(4,), batch_size=4)
    probe_mb = flu.systems.mode_memory_mb(model(), "linear_probe", input_shape=(4,), batch_size=4)
    prof["memory_mb"] = [10.0, (probe_mb + full_mb) / 2, 10.0, 10.0]
    sim = flu.systems.Simulation(profiles=prof)
    args = dict(num_rounds=1, batch_size=4, progress=False, systems=sim)
    flu.run(model(), federation(), finetune=["full", "linear_probe", "full", "full"], **args)
    with pytest.raises(ValueError, match="finetune.*client 1"):
        flu.run(model(), federation(), finetune=["full", "full", "full", "linear_probe"], **args)


def test_fedprox_with_a_lora_client_in_the_mix_is_refused_by_name():
    with pytest.raises(ValueError, match="finetune"):
        flu.run(model(), federation(), algorithm="fedprox", finetune=["lora", "full", "full", "full"],
                num_rounds=1, progress=False)
