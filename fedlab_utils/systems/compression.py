"""Compression of the clients' uploads: what each client sends, and how many bytes it costs.

``Compression(method, ...)`` transforms a batch of client model updates, one row per client, per
parameter tensor, and counts the encoded size of each client's upload:

- ``"none"``: the update itself, ``numel * element_size`` bytes.
- ``"qsgd"``: Alistarh, Grubic, Li, Tomioka and Vojnovic (2017), "QSGD: Communication-Efficient
  SGD via Gradient Quantization and Encoding", NeurIPS. With s = ``levels`` and v one client's
  update of one tensor (flattened), Q(v)_j = ||v||_2 sign(v_j) xi_j / s, where
  xi_j = l_j + Bernoulli(r_j - l_j), r_j = s |v_j| / ||v||_2 and l_j = floor(r_j). Then
  E[Q(v)] = v and E||Q(v) - v||^2 <= min(n / s^2, sqrt(n) / s) ||v||^2 (their Lemma 3.1; see
  ``variance_bound``). Encoded as one norm at the update's dtype plus one signed level in
  {-s, ..., s} per entry, in the smallest integer dtype holding +-s.
- ``"topk"``: keeps the k = ceil(fraction * n) entries of largest magnitude (ties go to the lower
  index), zeroes the rest; k values at the update's dtype plus k int64 indices, or the dense size
  when that is no larger. With ``error_feedback`` (Stich, Cordonnier and Jaggi (2018),
  "Sparsified SGD with Memory", NeurIPS) the client compresses delta + residual and keeps
  residual' = (delta + residual) - decoded for its next upload.
- ``"float16"``: rounds to half precision and back, 2 bytes per entry.

Randomness (QSGD only) comes from the package's one seeded stream,
``stream(seed, round, client, COMPRESS)``: replayable, and independent per client and round.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._core import checks as chk
from .._core import random as rnd

METHODS = ("none", "qsgd", "topk", "float16")
_INT_SIZES = ((127, 1), (32767, 2), (2**31 - 1, 4))  # int8, int16, int32; int64 beyond


def level_bytes(levels: int) -> int:
    """Bytes of the smallest signed integer dtype holding +-``levels`` (int8/16/32/64)."""
    levels = chk.integer("levels", levels, low=1)
    return next((size for top, size in _INT_SIZES if levels <= top), 8)


def topk_count(fraction: float, numel: int) -> int:
    """k = ceil(fraction * numel), at least 1 for a non-empty tensor (``fraction * numel`` is
    taken to 1e-9 relative precision first, so that 0.07 of 100 is 7, not 8)."""
    if numel == 0:
        return 0
    x = fraction * numel
    return min(numel, max(1, math.ceil(x - 1e-9 * x)))


def variance_bound(v: torch.Tensor, levels: int) -> float:
    """QSGD's bound on the variance of Q(v) (Alistarh et al. 2017, Lemma 3.1):
    E||Q(v) - v||^2 <= min(n / s^2, sqrt(n) / s) ||v||_2^2, n = v.numel(), s = ``levels``."""
    s = chk.integer("levels", levels, low=1)
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"v must be a torch.Tensor, got {type(v).__name__}")
    n = v.numel()
    norm2 = float(torch.linalg.vector_norm(v.detach().to(torch.float64))) ** 2
    return min(n / s**2, math.sqrt(n) / s) * norm2


@dataclass(frozen=True)
class Compression:
    """How clients encode their model updates (see the module docstring for the math).

    method: ``"none"``, ``"qsgd"``, ``"topk"`` or ``"float16"``; levels: QSGD's s, an int >= 1;
    fraction: top-k's share of entries kept, in (0, 1]; error_feedback: top-k keeps the dropped
    remainder per client and adds it to the next update; seed: an int in [0, 2**63) for QSGD's
    stochastic rounding.
    """

    method: str = "none"
    levels: int = 16
    fraction: float = 0.01
    error_feedback: bool = True
    seed: int = 0

    def __post_init__(self):
        chk.option("method", self.method, METHODS)
        object.__setattr__(self, "levels", chk.integer("levels", self.levels, low=1))
        object.__setattr__(self, "fraction", chk.real("fraction", self.fraction, low=0.0, high=1.0,
                                                      low_open=True))
        if not isinstance(self.error_feedback, bool):
            raise TypeError(f"error_feedback must be a bool, got {self.error_feedback!r} "
                            f"of type {type(self.error_feedback).__name__}")
        object.__setattr__(self, "seed", rnd.seed_value("seed", self.seed))

    # ------------------------------------------------------------------------------------------
    def compress(self, delta: dict, residual: dict | None, round: int, clients: torch.Tensor):
        """Encode and decode the updates ``delta`` of the clients ``clients`` in round ``round``.

        delta: ``{name: Tensor (K, ...)}``, row i is the update of client ``clients[i]``;
        residual: ``None`` or the top-k error-feedback state, ``{name: Tensor (K, ...)}`` aligned
        with ``delta`` (the caller keeps it per client and gathers the rows of ``clients``);
        ``None`` counts as zeros. Returns ``(decoded, bytes_per_client, new_residual)``:
        ``decoded`` has ``delta``'s keys, shapes and dtypes (what the server receives),
        ``bytes_per_client`` an int64 tensor (K,) of encoded sizes summed over the tensors,
        ``new_residual`` the next state for ``"topk"`` with ``error_feedback``, else ``None``.
        """
        clients, k_rows = self._check_inputs(delta, residual, round, clients)
        nbytes = torch.zeros(k_rows, dtype=torch.int64)
        if self.method == "none":
            for d in delta.values():
                nbytes += _numel(d) * d.element_size()
            return dict(delta), nbytes, None
        if self.method == "float16":
            for d in delta.values():
                nbytes += _numel(d) * 2
            return {name: d.to(torch.float16).to(d.dtype) for name, d in delta.items()}, nbytes, None
        if self.method == "qsgd":
            return self._qsgd(delta, round, clients, nbytes)
        return self._topk(delta, residual, nbytes)

    # ------------------------------------------------------------------------------------------
    def _qsgd(self, delta, round, clients, nbytes):
        s = self.levels
        per_level = level_bytes(s)
        sizes = [_numel(d) for d in delta.values()]
        # one stream per client, consumed tensor by tensor in the dict's order
        uniforms = [[] for _ in sizes]
        for client in clients.tolist():
            g = rnd.stream(self.seed, round, client, rnd.COMPRESS)
            for j, n in enumerate(sizes):
                uniforms[j].append(torch.rand(n, generator=g, dtype=torch.float64))
        decoded = {}
        for (name, d), n, u in zip(delta.items(), sizes, uniforms):
            nbytes += d.element_size() + n * per_level
            v = d.reshape(d.shape[0], n)
            u = (torch.stack(u) if u else torch.empty(0, n, dtype=torch.float64)).to(d.device)
            norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)          # sent at d's dtype
            safe = torch.where(norm > 0, norm, torch.ones_like(norm))
            r = (s * v.abs() / safe).clamp(max=s)                              # in [0, s]
            low = torch.floor(r)
            xi = low + (u < (r - low).to(torch.float64)).to(r.dtype)
            q = norm * (torch.sign(v) * xi) / s
            decoded[name] = torch.where(norm > 0, q, torch.zeros_like(q)).reshape(d.shape)
        return decoded, nbytes, None

    def _topk(self, delta, residual, nbytes):
        feedback = self.error_feedback
        decoded, new_residual = {}, ({} if feedback else None)
        for name, d in delta.items():
            n = _numel(d)
            k = topk_count(self.fraction, n)
            dense = n * d.element_size()
            nbytes += min(k * (d.element_size() + 8), dense)
            x = d
            if feedback and residual is not None:
                res = residual[name]
                x = torch.where(res != 0, d + res, d)   # exactly d where there is nothing to add
            v = x.reshape(x.shape[0], n)
            if k == n:
                out = v
                kept = torch.ones_like(v, dtype=torch.bool)
            else:
                # stable sort on -|v|: equal magnitudes keep index order, ties go to the lower index
                order = torch.sort(-v.abs(), dim=1, stable=True).indices[:, :k]
                kept = torch.zeros_like(v, dtype=torch.bool).scatter_(1, order, True)
                out = torch.where(kept, v, torch.zeros_like(v))
            decoded[name] = out.reshape(d.shape)
            if feedback:
                new_residual[name] = torch.where(kept, torch.zeros_like(v), v).reshape(d.shape)
        return decoded, nbytes, new_residual

    def _check_inputs(self, delta, residual, round, clients):
        if not isinstance(delta, dict):
            raise TypeError(f"delta must be a dict of tensors, got {type(delta).__name__}")
        chk.integer("round", round, low=0)
        clients = torch.as_tensor(clients)
        if clients.ndim != 1 or (clients.numel() and clients.is_floating_point()):
            chk.fail("clients", "a 1-D tensor of integer client ids",
                     f"a {clients.dtype} tensor of shape {tuple(clients.shape)}")
        clients = clients.to(torch.int64)
        if clients.numel() and int(clients.min()) < 0:
            chk.fail("clients", "non-negative client ids", int(clients.min()))
        k_rows = clients.numel()
        for name, d in delta.items():
            if not isinstance(d, torch.Tensor) or not d.is_floating_point():
                chk.fail(f"delta[{name!r}]", "a floating-point tensor", d)
            if d.ndim < 1 or d.shape[0] != k_rows:
                chk.fail(f"delta[{name!r}]", f"a tensor with one row per client ({k_rows})",
                         f"shape {tuple(d.shape)}")
            chk.finite_tensor(f"delta[{name!r}]", d)
        if residual is not None:
            if not isinstance(residual, dict) or set(residual) != set(delta):
                chk.fail("residual", "None or a dict with delta's keys",
                         sorted(residual) if isinstance(residual, dict) else residual)
            for name, d in delta.items():
                r = residual[name]
                if not isinstance(r, torch.Tensor) or r.shape != d.shape or r.dtype != d.dtype:
                    chk.fail(f"residual[{name!r}]", f"a {d.dtype} tensor of shape {tuple(d.shape)}",
                             f"{getattr(r, 'dtype', type(r).__name__)} of shape "
                             f"{tuple(getattr(r, 'shape', ()))}")
        return clients, k_rows


def _numel(d: torch.Tensor) -> int:
    """Entries per client row."""
    return math.prod(d.shape[1:])
