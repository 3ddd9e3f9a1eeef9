"""Small models with a ``.body`` (features) and a ``.head`` (task classifier), no BatchNorm.

BatchNorm keeps running statistics that federated averaging treats badly (Hsieh et al. 2020,
"The Non-IID Data Quagmire"), so every model here is BatchNorm-free. ``FedModel.forward`` is
``head(body(x))``; fine-tuning modes (``flu.finetune``) select parameters by these two names.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._core import checks as chk
from .._core.random import INIT, seed_value, stream


class FedModel(nn.Module):
    """``y_hat = head(body(x))``: the body maps inputs to features, the head to logits."""

    def __init__(self, body: nn.Module, head: nn.Module, name: str = "model"):
        super().__init__()
        self.body = body
        self.head = head
        self.name = name

    def forward(self, x):
        return self.head(self.body(x))

    def features(self, x):
        return self.body(x)


class Reshape(nn.Module):
    """Reshape each sample to ``shape`` (digits arrive flat, a CNN wants (C, H, W))."""

    def __init__(self, *shape: int):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self):
        return f"shape={self.shape}"


def _activation(name: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}
    chk.option("activation", name, acts)
    return acts[name]()


def mlp(in_features: int = 64, hidden: int | list[int] = 128, num_classes: int = 10, *,
        activation: str = "relu", dtype: torch.dtype = torch.float32, seed: int = 0) -> FedModel:
    """Multi-layer perceptron ``in -> hidden... -> num_classes`` (ReLU by default).

    ``hidden`` is one width or a list of widths (one hidden layer each). Initialised from a
    private generator seeded by ``seed`` (PyTorch's default uniform init), never global state.
    """
    chk.integer("in_features", in_features, low=1)
    chk.integer("num_classes", num_classes, low=1)
    widths = [hidden] if not isinstance(hidden, (list, tuple)) else list(hidden)
    if not widths:
        chk.fail("hidden", "a positive int or a non-empty list of them", hidden)
    for w in widths:
        chk.integer("hidden", w, low=1)
    layers: list[nn.Module] = [nn.Flatten()]
    prev = in_features
    for w in widths:
        layers += [_quiet(lambda: nn.Linear(prev, w)), _activation(activation)]
        prev = w
    model = FedModel(nn.Sequential(*layers), _quiet(lambda: nn.Linear(prev, num_classes)),
                     name=f"mlp({in_features}-{'-'.join(map(str, widths))}-{num_classes})")
    return _init(model, dtype, seed)


def logistic(in_features: int, num_classes: int = 2, *, bias: bool = True,
             dtype: torch.dtype = torch.float32, seed: int = 0) -> FedModel:
    """Multinomial logistic regression: an identity body and a linear head.

    ``num_classes=1`` gives a single-logit binary model (``loss="cross_entropy"`` is then the
    binary cross-entropy on the logit). ``bias=False`` with ``l2 > 0`` makes the objective
    strongly convex in every direction, the setting of the convergence theory (``flu.convergence``).
    """
    chk.integer("in_features", in_features, low=1)
    chk.integer("num_classes", num_classes, low=1)
    model = FedModel(nn.Flatten(), _quiet(lambda: nn.Linear(in_features, num_classes, bias=bias)),
                     name=f"logistic({in_features}-{num_classes})")
    return _init(model, dtype, seed, zero=True)


def linear(in_features: int, out_features: int = 1, *, bias: bool = False,
           dtype: torch.dtype = torch.float64, seed: int = 0) -> FedModel:
    """Linear regression ``y_hat = x W^T (+ b)``, zero-initialised; float64 by default (exact checks)."""
    chk.integer("in_features", in_features, low=1)
    chk.integer("out_features", out_features, low=1)
    model = FedModel(nn.Flatten(), _quiet(lambda: nn.Linear(in_features, out_features, bias=bias)),
                     name=f"linear({in_features}-{out_features})")
    return _init(model, dtype, seed, zero=True)


def cnn(input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, *,
        width: int = 16, features: int = 64, dtype: torch.dtype = torch.float32, seed: int = 0) -> FedModel:
    """A small CNN without BatchNorm: two 3x3 conv + ReLU + 2x2 max-pool blocks, then a dense layer.

    Accepts flat inputs too (digits: ``input_shape=(1, 8, 8)``). ``features`` is the width of
    the body's output, the input of the linear head.
    """
    if len(input_shape) != 3 or any(isinstance(s, bool) or int(s) < 1 for s in input_shape):
        chk.fail("input_shape", "(channels, height, width) with positive entries", input_shape)
    c, h, w = (int(s) for s in input_shape)
    chk.integer("num_classes", num_classes, low=1)
    chk.integer("width", width, low=1)
    chk.integer("features", features, low=1)
    h2, w2 = h // 4, w // 4
    if h2 < 1 or w2 < 1:
        chk.fail("input_shape", "at least 4x4 pixels (two 2x2 poolings)", input_shape)
    body = _quiet(lambda: nn.Sequential(
        Reshape(c, h, w),
        nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * h2 * w2, features), nn.ReLU(),
    ))
    model = FedModel(body, _quiet(lambda: nn.Linear(features, num_classes)), name=f"cnn({c}x{h}x{w}-{num_classes})")
    return _init(model, dtype, seed)


def _quiet(build):
    """Run ``build()`` without advancing the global RNG (PyTorch layers draw an init on creation;
    ``_init`` then overwrites it from a private generator)."""
    with torch.random.fork_rng(devices=[]):
        return build()


def _init(model: nn.Module, dtype: torch.dtype, seed: int, zero: bool = False) -> nn.Module:
    """Seeded re-initialisation (PyTorch's default scheme) without touching the global RNG."""
    gen = stream(seed_value("seed", seed), INIT)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                if zero:
                    module.weight.zero_()
                else:
                    fan_in = module.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in)
                    module.weight.uniform_(-bound, bound, generator=gen)
                if module.bias is not None:
                    if zero:
                        module.bias.zero_()
                    else:
                        bound = 1.0 / math.sqrt(module.weight[0].numel())
                        module.bias.uniform_(-bound, bound, generator=gen)
    return model.to(dtype)


def head_prefix(model: nn.Module) -> str:
    """Parameter-name prefix of the head: ``"head."`` for ``FedModel``, else the last module that
    owns parameters (``""`` when that is the model itself, e.g. a plain ``nn.Linear``)."""
    if isinstance(getattr(model, "head", None), nn.Module) and any(True for _ in model.head.parameters()):
        return "head."
    owners = layer_prefixes(model)
    if not owners:
        chk.fail("model", "a module with at least one parameter", type(model).__name__)
    return owners[-1]


def layer_prefixes(model: nn.Module) -> list[str]:
    """Prefixes of the modules that own parameters, in forward (registration) order."""
    return [name + "." if name else "" for name, mod in model.named_modules()
            if any(True for _ in mod.parameters(recurse=False))]


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
