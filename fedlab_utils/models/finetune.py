"""Fine-tuning modes as parameter masks: which parameters train and which travel.

As in Optax's ``masked``/``freeze`` transforms, a mode never changes the optimiser; it selects
parameter names (adding low-rank adapters first for the LoRA modes). The head is task-specific,
so it trains in every mode.

==============  ==========================================================================
``full``        every parameter
``linear_probe`` the head only; the body is frozen (Kornblith et al. 2019)
``last_layers`` the last ``num_layers`` modules that own parameters (head included)
``bitfit``      the body's biases and the head (Ben Zaken et al. 2022)
``lora``        adapters ``W + B A`` (rank ``lora_rank``, scaling 1) on the body's Linear layers
                (Hu et al. 2022). Averaging A and B separately is not averaging B A, so the
                server merges the exact weighted mean of the products into W and clients start
                fresh adapters (A from a shared seed, B = 0) next round: the download is the
                dense layer, the upload the factors.
``ffa_lora``    A frozen and shared, only B (and the head) trains and travels; averaging B is
                exactly averaging B A (Sun et al. 2024, "Improving LoRA in privacy-preserving FL")
==============  ==========================================================================
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .._core import checks as chk
from .._core.random import INIT, stream
from . import batched
from .nets import head_prefix, layer_prefixes

MODES = ("full", "linear_probe", "last_layers", "bitfit", "lora", "ffa_lora")
OPTIONS = {"last_layers": {"num_layers": 2}, "lora": {"lora_rank": 4}, "ffa_lora": {"lora_rank": 4}}
ALL_OPTIONS = {name for opts in OPTIONS.values() for name in opts}


class LoRALinear(nn.Module):
    """``y = x W^T + b + (x A^T) B^T``: a frozen Linear plus a rank-r update B A (scaling 1)."""

    def __init__(self, base: nn.Linear, rank: int, generator: torch.Generator):
        super().__init__()
        self.weight = nn.Parameter(base.weight.detach().clone())
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone())
        self.lora_A = nn.Parameter(lora_init(rank, base.in_features, base.weight.dtype, generator))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias) + (x @ self.lora_A.T) @ self.lora_B.T

    def stacked_forward(self, params, x, stacked, prefix):
        """The K-client forward (``flu.models.batched``'s protocol for custom layers)."""
        return _stacked_lora(self, params, x, stacked, prefix)


def lora_init(rank, in_features, dtype, generator):
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's Linear init, as in Hu et al.'s code); B starts at 0."""
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(rank, in_features, generator=generator, dtype=torch.float64) * 2 - 1).mul(bound).to(dtype)


def _stacked_lora(module, params, x, stacked, prefix):
    base = batched._linear(params, x, stacked, prefix)
    A, B = params[prefix + "lora_A"], params[prefix + "lora_B"]
    K = x.shape[0]
    flat = x.reshape(K, -1, x.shape[-1])
    z = torch.bmm(flat, A.transpose(1, 2)) if prefix + "lora_A" in stacked else flat @ A.T
    z = torch.bmm(z, B.transpose(1, 2)) if prefix + "lora_B" in stacked else z @ B.T
    return base + z.reshape(*x.shape[:-1], B.shape[-2])




@dataclass(frozen=True)
class Plan:
    """What a mode trains. ``model`` is the network the clients run (adapters added),
    ``trainable`` the names clients train and upload, ``server`` the names of the global state
    the server updates and broadcasts (differs from ``trainable`` only for ``lora``)."""

    model: nn.Module
    trainable: tuple
    mode: str
    options: dict
    server: tuple = ()
    adapters: tuple = ()  # prefixes of LoRALinear layers
    original: nn.Module | None = field(default=None, repr=False)

    def client_start(self, x: dict, rnd: int, generator_for) -> dict:
        """Clients' starting values of the trainable parameters in round ``rnd``."""
        if self.mode != "lora":
            return {k: x[k] for k in self.trainable}
        start = {k: x[k] for k in self.trainable if k in x}
        for i, p in enumerate(self.adapters):
            W = x[p + "weight"]
            start[p + "lora_A"] = lora_init(self.options["lora_rank"], W.shape[1], W.dtype, generator_for(i))
            start[p + "lora_B"] = torch.zeros(W.shape[0], self.options["lora_rank"], dtype=W.dtype)
        return start

    def to_server(self, local: dict, x: dict) -> dict:
        """Clients' results in the server's coordinates: for ``lora`` the effective dense weights
        ``W + B_i A_i``, so delta_i = -B_i A_i and averaging deltas merges the products exactly."""
        if self.mode != "lora":
            return local
        out = {k: v for k, v in local.items() if k in x}
        for p in self.adapters:
            out[p + "weight"] = x[p + "weight"].unsqueeze(0) + torch.bmm(local[p + "lora_B"], local[p + "lora_A"])
        return out

    def merged(self, params: dict) -> dict:
        """Parameters of the original architecture (adapters merged: W + B A)."""
        out = {k: v for k, v in params.items() if not k.endswith(("lora_A", "lora_B"))}
        for p in self.adapters:
            out[p + "weight"] = params[p + "weight"] + params[p + "lora_B"] @ params[p + "lora_A"]
        return out


def resolve_options(mode: str, **options) -> dict:
    """``mode``'s options with defaults filled in (``num_layers`` 2, ``lora_rank`` 4), checked as
    far as they can be without the model; unknown names are errors."""
    if mode == "none":
        chk.fail("finetune", "a trainable mode: the training-free baseline 'none' is "
                 "flu.fewshot.prototype_classifier, not an flu.run mode", mode)
    chk.option("finetune", mode, MODES)
    allowed = OPTIONS.get(mode, {})
    for key in options:
        if key not in allowed:
            chk.fail(key, f"an option of finetune={mode!r} (options: {sorted(allowed) or 'none'})", options[key])
    opts = {**allowed, **options}
    for key, value in opts.items():
        chk.integer(key, value, low=1)
    return opts


def prepare(model: nn.Module, mode: str = "full", seed: int = 0, **options) -> Plan:
    """The :class:`Plan` of ``mode`` for ``model``; options (``num_layers``, ``lora_rank``) checked here."""
    opts = resolve_options(mode, **options)
    original = model
    model = copy.deepcopy(model)
    names = [n for n, _ in model.named_parameters()]
    head = head_prefix(model)
    in_head = [n for n in names if n.startswith(head)]
    adapters: tuple = ()
    if mode == "full":
        chosen = names
    elif mode == "linear_probe":
        chosen = in_head
    elif mode == "bitfit":
        chosen = [n for n in names if n.endswith("bias") or n.startswith(head)]
    elif mode == "last_layers":
        layers = layer_prefixes(model)
        k = chk.integer("num_layers", opts["num_layers"], low=1, high=len(layers))
        chosen = [n for n in names if n.startswith(tuple(layers[-k:]))]
    else:
        adapters = _add_adapters(model, head, opts, seed)
        names = [n for n, _ in model.named_parameters()]
        factors = ("lora_A", "lora_B") if mode == "lora" else ("lora_B",)
        chosen = [n for n in names if n.startswith(head) or n.endswith(factors)]
    server = tuple(chosen)
    if mode == "lora":
        server = tuple(n for n in names if n.startswith(head)) + tuple(p + "weight" for p in adapters)
    return Plan(model, tuple(chosen), mode, opts, server, adapters, original)


def _add_adapters(model: nn.Module, head: str, opts: dict, seed: int) -> tuple:
    linears = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, nn.Linear) and not (name + ".").startswith(head)]
    if not linears:
        chk.fail("finetune", "a model whose body has Linear layers (LoRA adapts them)", "none found")
    max_rank = min(min(m.in_features, m.out_features) for _, m in linears)
    rank = chk.integer("lora_rank", opts["lora_rank"], low=1, high=max_rank)
    prefixes = []
    for i, (name, mod) in enumerate(linears):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        gen = stream(seed, i, INIT)
        setattr(parent, child, LoRALinear(mod, rank, gen))
        prefixes.append(name + ".")
    return tuple(prefixes)


def cost(model: nn.Module, mode: str = "full", *, input_shape, batch_size: int = 16, **options) -> dict:
    """Estimated cost of one local step of ``mode`` (from layer shapes; CPU torch has no counters).

    FLOPs count 2 per multiply-add of Linear and Conv2d layers: the forward pass, the weight
    gradients of layers whose weights train (bias gradients are neglected), and the input gradients of every layer above the lowest
    trainable one (backpropagation stops there). Full fine-tuning is therefore about 3x the
    forward pass; a linear probe is about 1x plus the head. Memory: parameters, gradients of the
    trainable ones, and the activations kept for the backward pass (inputs of the layers it visits).
    """
    plan = prepare(model, mode, **options)
    chk.integer("batch_size", batch_size, low=1)
    trainable = set(plan.trainable)
    layers = []

    def hook(name):
        def fn(mod, inp, out):
            x = inp[0]
            if isinstance(mod, nn.Conv2d):
                macs = out[0].numel() * mod.weight[0].numel()
            elif isinstance(mod, LoRALinear):
                macs = x.shape[-1] * mod.weight.shape[0] + mod.lora_A.numel() + mod.lora_B.numel()
            else:
                macs = x.shape[-1] * mod.weight.shape[0]
            own = {name + "." + k for k, _ in mod.named_parameters(recurse=False)}
            weights = {name + "." + k for k in ("weight", "lora_A", "lora_B")}
            layers.append((macs * batch_size, x[0].numel() * batch_size * x.element_size(), bool(own & trainable),
                           bool(weights & trainable)))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in plan.model.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, LoRALinear))]
    try:
        with torch.no_grad():
            dtype = next(plan.model.parameters()).dtype
            plan.model(torch.zeros(1, *input_shape, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    first = next((i for i, (_, _, t, _) in enumerate(layers) if t), len(layers))
    fwd = sum(m for m, _, _, _ in layers)
    weight_grads = sum(m for m, _, _, w in layers if w)
    input_grads = sum(m for i, (m, _, _, _) in enumerate(layers) if i > first)
    params = dict(plan.model.named_parameters())
    nbytes = {k: v.numel() * v.element_size() for k, v in params.items()}
    return {"mode": mode, "trainable_params": sum(params[k].numel() for k in trainable),
            "flops_forward": 2 * fwd, "flops_step": 2 * (fwd + weight_grads + input_grads),
            "memory_bytes": sum(nbytes.values()) + sum(nbytes[k] for k in trainable)
            + sum(a for i, (_, a, _, _) in enumerate(layers) if i >= first)}
