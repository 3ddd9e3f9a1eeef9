"""Forward pass of K stacked copies of one model: the vectorised-clients primitive.

Every client's parameters are stacked along a leading client axis (``params[name]`` has shape
``(K, *p.shape)``), and so are the inputs (``x`` of shape ``(K, B, ...)``). Common layers run as
one batched kernel (``torch.baddbmm`` for Linear, a grouped convolution for Conv2d, a reshape
for parameter-free layers); any other module falls back to ``torch.func.vmap`` over
``functional_call``. Parameters not stacked (frozen, shared by all clients) are passed as plain
tensors and broadcast. Gradients come from one ``autograd`` call on the summed client losses:
the clients do not interact, so the gradient block of client k is client k's own gradient.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def stacked_forward(module: nn.Module, params: dict, x: torch.Tensor, stacked: frozenset, prefix: str = ""):
    """Apply ``module`` with per-client ``params`` to ``x`` of shape ``(K, B, ...)``."""
    K, B = x.shape[:2]
    if not _has_params(module):
        if isinstance(module, (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.Identity)):
            return module(x)
        out = module(x.reshape(K * B, *x.shape[2:]))
        return out.reshape(K, B, *out.shape[1:])
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            x = stacked_forward(child, params, x, stacked, f"{prefix}{name}.")
        return x
    if isinstance(module, nn.Linear):
        return _linear(params, x, stacked, prefix)
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        return _conv2d(module, params, x, stacked, prefix)
    own_rule = getattr(module, "stacked_forward", None)
    if callable(own_rule):  # a layer that knows its K-client forward (e.g. a LoRA layer)
        return own_rule(params, x, stacked, prefix)
    children = dict(module.named_children())
    if set(children) == {"body", "head"} and not any(True for _ in module.parameters(recurse=False)):
        z = stacked_forward(module.body, params, x, stacked, prefix + "body.")
        return stacked_forward(module.head, params, z, stacked, prefix + "head.")
    return _vmap_fallback(module, params, x, stacked, prefix)


def _linear(params, x, stacked, prefix):
    W, b = params[prefix + "weight"], params.get(prefix + "bias")
    K = x.shape[0]
    flat = x.reshape(K, -1, x.shape[-1])
    if prefix + "weight" in stacked:
        out = torch.bmm(flat, W.transpose(1, 2)) if b is None else torch.baddbmm(
            b.unsqueeze(1) if prefix + "bias" in stacked else b.expand(K, 1, -1), flat, W.transpose(1, 2))
    else:
        out = flat @ W.T
        if b is not None:
            out = out + (b.unsqueeze(1) if prefix + "bias" in stacked else b)
    return out.reshape(*x.shape[:-1], W.shape[-2])


def _conv2d(module, params, x, stacked, prefix):
    K, B = x.shape[:2]
    W, b = params[prefix + "weight"], params.get(prefix + "bias")
    if prefix + "weight" not in stacked:
        out = nn.functional.conv2d(x.reshape(K * B, *x.shape[2:]), W,
                                   None if (b is None or prefix + "bias" in stacked) else b,
                                   module.stride, module.padding, module.dilation, module.groups)
        out = out.reshape(K, B, *out.shape[1:])
        if b is not None and prefix + "bias" in stacked:
            out = out + b[:, None, :, None, None]
        return out
    C, H, Wd = x.shape[2:]
    grouped = x.transpose(0, 1).reshape(B, K * C, H, Wd)
    bias = None
    if b is not None:
        bias = b.reshape(-1) if prefix + "bias" in stacked else b.repeat(K)
    out = nn.functional.conv2d(grouped, W.reshape(-1, *W.shape[2:]), bias, module.stride, module.padding,
                               module.dilation, module.groups * K)
    return out.reshape(B, K, -1, *out.shape[2:]).transpose(0, 1)


def _vmap_fallback(module, params, x, stacked, prefix):
    own = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    names = sorted(own)
    dims = tuple(0 if prefix + n in stacked else None for n in names)

    def call(tensors, xi):
        return functional_call(module, dict(zip(names, tensors)), (xi,))

    return vmap(call, in_dims=(dims, 0))(tuple(own[n] for n in names), x)
