"""Fine-tuning modes: masks, exact LoRA merging, FFA-LoRA averaging, full-rank LoRA == full fine-tuning."""
import copy

import pytest
import torch
from torch import nn

import fedlab_utils as flu
from fedlab_utils._core.random import LORA as _LORA, stream
from fedlab_utils.models.finetune import LoRALinear


def small_mlp():
    return flu.models.mlp(5, 7, 3, dtype=torch.float64, seed=2)


def clients(gen, sizes=(6, 11)):
    return [(torch.randn(n, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen))
            for n in sizes]


@pytest.mark.parametrize("mode, expect", [
    ("full", {"body.1.weight", "body.1.bias", "head.weight", "head.bias"}),
    ("linear_probe", {"head.weight", "head.bias"}),
    ("bitfit", {"body.1.bias", "head.weight", "head.bias"}),
    ("lora", {"body.1.lora_A", "body.1.lora_B", "head.weight", "head.bias"}),
    ("ffa_lora", {"body.1.lora_B", "head.weight", "head.bias"}),
])
def test_masks(mode, expect):
    plan = flu.finetune.prepare(small_mlp(), mode)
    assert set(plan.trainable) == expect


def test_last_layers_counts_modules_with_params():
    model = flu.models.mlp(5, [7, 6], 3)
    assert set(flu.finetune.prepare(model, "last_layers", num_layers=2).trainable) == {
        "body.3.weight", "body.3.bias", "head.weight", "head.bias"}
    with pytest.raises(ValueError, match="num_layers"):
        flu.finetune.prepare(model, "last_layers", num_layers=4)


def local_lora_sgd(model, plan, rnd, X, y, steps, lr, train_A=True):
    """Plain PyTorch reference: one client's LoRA training from the round's fresh adapters."""
    net = copy.deepcopy(plan.model)
    start = plan.client_start({k: v.detach() for k, v in net.named_parameters()}, rnd,
                              lambda i: stream(0, rnd, i, _LORA))
    with torch.no_grad():
        for k, v in net.named_parameters():
            if k in start:
                v.copy_(start[k])
    opt_params = [v for k, v in net.named_parameters() if k in plan.trainable]
    for v in net.parameters():
        v.requires_grad_(False)
    for v in opt_params:
        v.requires_grad_(True)
    opt = torch.optim.SGD(opt_params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return dict(net.named_parameters())


@pytest.mark.parametrize("backend", ["vectorized", "loop"])
def test_lora_merges_mean_of_products_exactly(gen, backend):
    data = clients(gen)
    fed = flu.data.Federation.from_clients(data)
    model = small_mlp()
    hist = flu.run(model, fed, num_rounds=1, local_steps=3, client_lr=0.3, batch_size=None, finetune="lora",
                   lora_rank=2, backend=backend, progress=False)
    plan = flu.finetune.prepare(model, "lora", lora_rank=2)
    p = fed.weights()
    locals_ = [local_lora_sgd(model, plan, 1, X, y, 3, 0.3) for X, y in data]
    W = model.body[1].weight + sum(pi * (l["body.1.lora_B"] @ l["body.1.lora_A"]) for pi, l in zip(p, locals_))
    head = sum(pi * l["head.weight"] for pi, l in zip(p, locals_))
    torch.testing.assert_close(hist.params["body.1.weight"], W.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(hist.params["head.weight"], head.detach(), atol=1e-12, rtol=0)
    assert set(hist.params) == {k for k, _ in model.named_parameters()}
    # naive factor averaging is not the same update
    A_bar = sum(pi * l["body.1.lora_A"] for pi, l in zip(p, locals_))
    B_bar = sum(pi * l["body.1.lora_B"] for pi, l in zip(p, locals_))
    naive = model.body[1].weight + B_bar @ A_bar
    assert (naive - W).abs().max() > 1e-6
    # bytes: factors up, dense layer down
    up = (2 * 5 + 7 * 2 + 3 * 7 + 3) * 8
    down = (7 * 5 + 3 * 7 + 3) * 8
    assert hist.rounds.bytes_up[0] == 2 * up and hist.rounds.bytes_down[0] == 2 * down


def test_ffa_lora_averaging_b_is_exact(gen):
    data = clients(gen)
    fed = flu.data.Federation.from_clients(data)
    model = small_mlp()
    hist = flu.run(model, fed, num_rounds=1, local_steps=4, client_lr=0.3, batch_size=None, finetune="ffa_lora",
                   lora_rank=3, progress=False)
    plan = flu.finetune.prepare(model, "ffa_lora", lora_rank=3)
    p = fed.weights()
    locals_ = [local_lora_sgd(model, plan, 1, X, y, 4, 0.3) for X, y in data]
    mean_products = sum(pi * (l["body.1.lora_B"] @ l["body.1.lora_A"]) for pi, l in zip(p, locals_))
    torch.testing.assert_close(hist.params["body.1.weight"], (model.body[1].weight + mean_products).detach(),
                               atol=1e-12, rtol=0)
    assert torch.equal(hist.params["body.1.bias"], model.body[1].bias.detach())


def test_full_rank_lora_reaches_the_least_squares_fit(gen):
    X = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=torch.float64) + 0.3 * torch.randn(40, generator=gen,
                                                                                        dtype=torch.float64)
    fed = flu.data.Federation.from_clients([(X, y)])
    body = nn.Sequential(nn.Linear(4, 4, bias=False))
    model = flu.models.FedModel(body, nn.Linear(4, 1, bias=False)).double()
    with torch.no_grad():
        body[0].weight.copy_(torch.eye(4, dtype=torch.float64) * 0.5)
        model.head.weight.fill_(0.5)
    w_ls = torch.linalg.lstsq(X, y.unsqueeze(1)).solution
    preds = {}
    for mode in ("lora", "full"):
        hist = flu.run(model, fed, num_rounds=150, local_steps=10, client_lr=0.05, batch_size=None, loss="mse",
                       finetune=mode, eval_every=150, progress=False, **({"lora_rank": 4} if mode == "lora" else {}))
        preds[mode] = hist.model(X).detach()
        assert hist.final("loss", split="train") == pytest.approx(
            float(((X @ w_ls - y.unsqueeze(1)) ** 2).mean()), rel=1e-8)
    torch.testing.assert_close(preds["lora"], X @ w_ls, atol=1e-6, rtol=0)
    torch.testing.assert_close(preds["lora"], preds["full"], atol=1e-6, rtol=0)


def test_linear_probe_leaves_body_bit_identical(gen):
    model = flu.models.cnn((1, 8, 8), 3, width=4, features=8)
    fed = flu.data.Federation.from_clients([(torch.randn(10, 64, generator=gen), torch.randint(0, 3, (10,),
                                                                                              generator=gen))])
    hist = flu.run(model, fed, num_rounds=2, finetune="linear_probe", progress=False)
    for k, v in model.named_parameters():
        assert torch.equal(hist.params[k], v.detach()) == k.startswith("body.")


@pytest.mark.parametrize("kwargs, name", [
    (dict(finetune="lora", lora_rank=0), "lora_rank"),
    (dict(finetune="lora", lora_rank=6), "lora_rank"),
    (dict(finetune="adapter"), "finetune"),
    (dict(finetune="none"), "prototype_classifier"),
    (dict(finetune="full", lora_rank=2), "lora_rank"),
    (dict(finetune="lora", algorithm="fedavg", diagnostics=True), "diagnostics"),
])
def test_bad_modes(gen, kwargs, name):
    fed = flu.data.Federation.from_clients(clients(gen))
    with pytest.raises(ValueError, match=name):
        flu.run(small_mlp(), fed, num_rounds=1, progress=False, **kwargs)


def test_cost_counts_flops_by_hand():
    model = flu.models.mlp(5, 7, 3)
    fwd = 2 * 4 * (5 * 7 + 7 * 3)  # batch 4
    full = flu.finetune.cost(model, "full", input_shape=(5,), batch_size=4)
    probe = flu.finetune.cost(model, "linear_probe", input_shape=(5,), batch_size=4)
    assert full["flops_forward"] == probe["flops_forward"] == fwd
    # full: forward + weight grads of both layers + input grad of the head only
    assert full["flops_step"] == fwd + fwd + 2 * 4 * 7 * 3
    assert probe["flops_step"] == fwd + 2 * 4 * 7 * 3
    assert full["trainable_params"] == 5 * 7 + 7 + 7 * 3 + 3 and probe["trainable_params"] == 24
