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


# ------------------------------------------------------------------ hand-written chain step

NARROW = 32   # a stacked Linear with fewer outputs computes its output transposed (2x faster here)
_ELEMENTWISE = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Identity: "identity"}


def linear_chain(module: nn.Module, prefix: str = "") -> list | None:
    """``module`` as a flat list of layers when it is a chain of ``Linear`` layers, element-wise
    ``ReLU``/``Tanh``/``Sigmoid``/``GELU``/``Identity`` and ``Flatten()`` in ``nn.Sequential``
    containers and ``flu.models`` body/head models (what ``flu.models.mlp`` and
    ``flu.models.logistic`` build): ``[("linear", prefix), ("relu", None), ...]``; None for any
    other model (a subclass with its own ``forward`` included). Such a chain's forward is
    :func:`chain_forward` and its local SGD step :func:`chain_sgd_step`."""
    from .nets import FedModel
    if type(module) is nn.Linear:
        return [("linear", prefix)]
    kind = _ELEMENTWISE.get(type(module))
    if kind is not None:
        return [(kind, None)]
    if type(module) is nn.GELU:
        return [("gelu", module.approximate)]
    if type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
        return [("flatten", None)]
    if any(True for _ in module.parameters(recurse=False)):
        return None
    children = dict(module.named_children())
    if type(module).forward is nn.Sequential.forward:
        names = list(children)
    elif type(module).forward is FedModel.forward and set(children) == {"body", "head"}:
        names = ["body", "head"]
    else:
        return None
    layers = []
    for name in names:
        sub = linear_chain(children[name], f"{prefix}{name}.")
        if sub is None:
            return None
        layers += sub
    return layers


def chain_forward(layers: list, params: dict, x: torch.Tensor) -> torch.Tensor:
    """The model's own forward (the same kernels as its modules) for a :func:`linear_chain`, with
    ``params`` (unstacked) in place of its parameters: ``functional_call`` without its overhead."""
    fresh = False   # x is this function's own buffer: activations may overwrite it
    for kind, prefix in layers:
        if kind == "linear":
            x = nn.functional.linear(x, params[prefix + "weight"], params.get(prefix + "bias"))
        elif kind == "flatten":
            x = x.flatten(1)
            continue
        elif kind == "relu":
            x = x.relu_() if fresh else torch.relu(x)
        elif kind == "tanh":
            x = x.tanh_() if fresh else torch.tanh(x)
        elif kind == "sigmoid":
            x = x.sigmoid_() if fresh else torch.sigmoid(x)
        elif kind == "gelu":
            x = nn.functional.gelu(x, approximate=prefix)
        fresh = kind != "identity" or fresh
    return x


def chain_sgd_step(layers: list, params: dict, stacked: frozenset, trained: frozenset, x: torch.Tensor,
                   y: torch.Tensor, w: torch.Tensor, loss: str, lr: float, out: dict | None = None) -> None:
    """One SGD step ``P_k <- P_k - lr grad_k sum_b w_kb loss(f(P_k; x_kb), y_kb)`` of every client k
    at once on the stacked tensors of ``params`` named in ``trained``: in place, or into ``out``
    (same names; then ``params`` is left alone and may hold expanded views, e.g. every client
    starting from x).

    The same arithmetic as autograd on :func:`stacked_forward` (the clients do not interact), with
    the backward pass written out for a :func:`linear_chain`: for a Linear layer z = a W^T + b with
    output gradient G (K, B, out), grad W_k = G_k^T a_k, grad b_k = sum_b G_kb and the input
    gradient G W (taken before W moves); each weight is updated where its gradient is formed
    (``baddbmm``), so no (K, ...) gradient buffer exists. A stacked tensor that is one value
    expanded over the clients runs as one shared matmul. The loss gradient at the logits o:
    softmax(o) - onehot(y) for cross-entropy (sigmoid(o) - y for one logit), 2 (o - t) / C for
    MSE, each times w."""
    K, B = x.shape[:2]

    def get(name):   # (tensor, per client?) with an expanded stacked tensor as its one shared value
        t = params.get(name)
        if t is None or name not in stacked:
            return t, False
        return (t[0], False) if t.stride(0) == 0 else (t, True)

    h = x
    saved = []                      # per layer: its input (Linear), output (activations), shape (Flatten)
    for kind, prefix in layers:
        if kind == "linear":
            saved.append(h)
            (W, Wk), (b, bk) = get(prefix + "weight"), get(prefix + "bias")
            if Wk and W.shape[1] < NARROW:   # few outputs: z^T = W a^T is faster
                bias = None if b is None else (b.unsqueeze(2) if bk else b.view(1, -1, 1).expand(K, -1, 1))
                hT = h.transpose(1, 2)
                h = (torch.bmm(W, hT) if bias is None else torch.baddbmm(bias, W, hT)).transpose(1, 2)
            elif Wk:
                bias = None if b is None else (b.unsqueeze(1) if bk else b.expand(K, 1, -1))
                h = torch.bmm(h, W.transpose(1, 2)) if bias is None else torch.baddbmm(bias, h, W.transpose(1, 2))
            else:
                h = h @ W.T
                if b is not None:
                    h = h + (b.unsqueeze(1) if bk else b)
        elif kind == "flatten":
            saved.append(h.shape)
            h = h.reshape(K, B, -1)
        elif kind == "gelu":
            saved.append(h)   # GELU's backward takes its input
            h = nn.functional.gelu(h, approximate=prefix)
        else:
            h = h.relu() if kind == "relu" else h.tanh() if kind == "tanh" else h.sigmoid() if kind == "sigmoid" else h
            saved.append(h)
    G = _loss_grad(h, y, w, loss)
    # below layer i, does any parameter train? (input gradients are needed only down to there)
    need = [False] * (len(layers) + 1)
    for i, (kind, prefix) in enumerate(layers):
        need[i + 1] = need[i] or (kind == "linear" and any(prefix + s in trained for s in ("weight", "bias")))
    for i in range(len(layers) - 1, -1, -1):
        if not need[i + 1]:
            break
        kind, prefix = layers[i]
        if kind == "linear":
            a = saved[i]
            wn, bn = prefix + "weight", prefix + "bias"
            W, Wk = get(wn)
            grad_in = None
            if need[i]:
                grad_in = torch.bmm(G, W) if Wk else G @ W
            if wn in trained:
                if out is None:
                    params[wn].baddbmm_(G.transpose(1, 2), a, alpha=-lr)
                else:
                    torch.baddbmm(params[wn], G.transpose(1, 2), a, alpha=-lr, out=out[wn])
            if bn in trained and params.get(bn) is not None:
                if out is None:
                    params[bn].sub_(G.sum(1), alpha=lr)
                else:
                    torch.sub(params[bn], G.sum(1), alpha=lr, out=out[bn])
            G = grad_in
        elif kind == "flatten":
            G = G.reshape(saved[i])
        elif kind == "relu":
            G = torch.ops.aten.threshold_backward(G, saved[i], 0)
        elif kind == "tanh":
            G = torch.ops.aten.tanh_backward(G, saved[i])
        elif kind == "sigmoid":
            G = torch.ops.aten.sigmoid_backward(G, saved[i])
        elif kind == "gelu":
            G = torch.ops.aten.gelu_backward(G, saved[i], approximate=prefix)


def _loss_grad(out: torch.Tensor, y: torch.Tensor, w: torch.Tensor, loss: str) -> torch.Tensor:
    """``d/d out sum_kb w_kb loss(out_kb, y_kb)`` (``flu._core.losses.sample_losses``)."""
    wc = w.unsqueeze(-1)
    if loss == "cross_entropy":
        if out.shape[-1] == 1:
            return (torch.sigmoid(out) - y.to(out.dtype).unsqueeze(-1)) * wc
        G = torch.softmax(out, -1).mul_(wc)
        return G.scatter_add_(-1, y.unsqueeze(-1), -wc)
    C = out.shape[-1]
    if not y.is_floating_point() and C > 1:
        target = torch.nn.functional.one_hot(y, C).to(out.dtype)
    else:
        target = y.to(out.dtype)
    if target.dim() == out.dim() - 1:
        target = target.unsqueeze(-1)
    return (out - target).mul_(wc * (2.0 / C))
