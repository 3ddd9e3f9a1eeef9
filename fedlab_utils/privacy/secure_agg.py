"""Secure aggregation by pairwise masking (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS), at teaching level: exact, honest-but-curious, no
signatures, no encryption of the shares in transit, toy key sizes.

Every value lives in the ring Z_{2^64} (numpy uint64 arithmetic wraps exactly). Client u's
masked upload is

    y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)   (mod 2^64),

so the pairwise masks cancel in sum_u y_u and the self mask b_u hides x_u even if u's pairwise
masks are later revealed. The protocol's four rounds:

0. advertise keys: u draws a secret key sk_u and sends pk_u = g^sk_u mod p; the server relays all
   pks. Key agreement is Diffie-Hellman, s_uv = pk_v^sk_u = g^(sk_u sk_v) mod p, in a 127-bit toy
   group (p = 2^127 - 1, g = 3; real deployments use elliptic curves, e.g. X25519).
1. share keys: u Shamir-splits sk_u and b_u t-of-n (Shamir 1979, polynomials of degree t - 1 over
   the field F_q, q = 2^61 - 1, evaluated at x = 1..n) and sends one share of each to every client.
2. masked input: the clients still online send y_u; those in ``dropped`` left after round 1.
3. unmasking: each survivor sends the share of b_v of every survivor v and of sk_d of every dropped d;
   from t shares the server rebuilds b_v (removes the self masks) and sk_d (recomputes s_du with the
   public pk_u and removes the dropped client's pairwise masks that survivors added). It never
   learns both b_u and sk_u of one client.

Secrets and PRG streams come from ``fedlab_utils._core.random`` streams keyed by ``seed``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .._core import checks as chk
from .._core.random import np_stream, seed_value

# stream purposes of this module (apart from _core.random's purposes)
KEYS, MASK, SHARE = 21, 22, 23

RING_BITS = 64
FRAC_BITS = 24                 # floats are quantised to multiples of 2^-24
FIELD = (1 << 61) - 1          # Shamir's prime field F_q (a Mersenne prime)
GROUP, GENERATOR = (1 << 127) - 1, 3   # toy Diffie-Hellman group Z_p^*, p = M127
KEY_BYTES, SHARE_BYTES, ID_BYTES = 16, 8, 4


def shamir_split(secret: int, n: int, t: int, rng: np.random.Generator) -> dict[int, int]:
    """Shares ``{x: f(x)}`` for x = 1..n of a random polynomial f of degree t - 1 over F_q with f(0) = secret."""
    coeffs = [int(secret) % FIELD] + [int(rng.integers(0, FIELD)) for _ in range(t - 1)]
    shares = {}
    for x in range(1, n + 1):
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % FIELD
        shares[x] = acc
    return shares


def shamir_reconstruct(shares: dict[int, int]) -> int:
    """f(0) by Lagrange interpolation over F_q: sum_j y_j prod_{m != j} x_m / (x_m - x_j)."""
    secret = 0
    for j, yj in shares.items():
        num = den = 1
        for m in shares:
            if m != j:
                num = num * m % FIELD
                den = den * (m - j) % FIELD
        secret = (secret + yj * num * pow(den, FIELD - 2, FIELD)) % FIELD
    return secret


def _prg(key: int, n: int) -> np.ndarray:
    """n uniform elements of Z_{2^64} from the stream keyed by ``key``."""
    return np_stream(key % (1 << 63), MASK).bit_generator.random_raw(n).astype(np.uint64)


def _encode(updates, name: str):
    tensors = [torch.as_tensor(u) for u in updates]
    shape = tuple(tensors[0].shape)
    for i, t in enumerate(tensors):
        if tuple(t.shape) != shape:
            chk.fail(name, f"tensors of one shape {shape}", f"shape {tuple(t.shape)} at index {i}")
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer or real tensors, got dtype {t.dtype} at index {i}")
    floating = [t.is_floating_point() for t in tensors]
    if any(floating) != all(floating):
        chk.fail(name, "all integer or all floating-point tensors", [str(t.dtype) for t in tensors])
    if all(floating):
        K = len(tensors)
        big = max(float(t.detach().abs().max()) if t.numel() else 0.0 for t in tensors)
        if not np.isfinite(big) or big * K * 2.0 ** FRAC_BITS >= 2.0 ** 62:
            chk.fail(name, f"finite with |x| * {K} clients < 2^{62 - FRAC_BITS} (the ring's range)", big)
        ints = [torch.round(t.detach().cpu().double() * 2.0 ** FRAC_BITS).to(torch.int64) for t in tensors]
    else:
        ints = [t.detach().cpu().to(torch.int64) for t in tensors]
    return [i.reshape(-1).numpy().view(np.uint64) for i in ints], shape, all(floating)


def secure_sum(updates, dropped=(), seed: int = 0, *, threshold: int | None = None):
    """``(total, transcript)``: the sum of the updates of the clients not in ``dropped``, computed
    from masked uploads only (see the module docstring for the protocol).

    ``updates``: K >= 2 tensors of one shape. Integer tensors are summed exactly modulo 2^64 (the
    total is int64, two's complement); floating tensors are first rounded to multiples of 2^-24, so
    the float64 total is within K 2^-25 of the real sum. ``dropped``: client indices that left after
    the keys were shared (before sending); at least max(2, ``threshold``) must survive.
    ``threshold`` t of the t-of-n Shamir sharing, default K // 2 + 1.

    ``transcript``: ``messages`` and ``bytes`` (totals), ``phases`` (per round: messages, bytes),
    ``clients``, ``survivors``, ``dropped``, ``threshold``, ``values`` (per update), ``masked``
    (survivor -> its masked upload y_u, uint64), ``seconds`` (client, server). Byte counts: keys 16,
    shares 8, ids 4, ring elements 8 bytes.
    """
    if isinstance(updates, torch.Tensor) or not hasattr(updates, "__len__"):
        raise TypeError(f"updates must be a list of tensors, got {type(updates).__name__}")
    K = len(updates)
    if K < 2:
        chk.fail("updates", "a list of at least 2 client tensors", f"{K} tensors")
    seed = seed_value("seed", seed)
    t = K // 2 + 1 if threshold is None else chk.integer("threshold", threshold, low=2, high=K)
    dropped = tuple(dropped)
    drop = sorted({chk.integer("dropped", d, low=0, high=K - 1) for d in dropped})
    if len(drop) != len(dropped):
        chk.fail("dropped", "distinct client indices", dropped)
    alive = [u for u in range(K) if u not in drop]
    if len(alive) < max(2, t):
        chk.fail("dropped", f"leaving at least max(2, threshold={t}) of the {K} clients", tuple(drop))
    xs, shape, floating = _encode(updates, "updates")
    n = xs[0].size
    phases = {}

    def log(phase, messages, nbytes):
        phases[phase] = {"messages": int(messages), "bytes": int(nbytes)}

    tic = time.perf_counter()
    # round 0: keys
    sk, b = [], []
    for u in range(K):
        rng = np_stream(seed, KEYS, u)
        sk.append(int(rng.integers(1, FIELD)))
        b.append(int(rng.integers(0, FIELD)))
    pk = [pow(GENERATOR, s, GROUP) for s in sk]
    log("advertise_keys", 2 * K, K * KEY_BYTES + K * K * KEY_BYTES)
    # round 1: shares (share x = v + 1 goes to client v)
    sk_shares = [shamir_split(sk[u], K, t, np_stream(seed, SHARE, u, 0)) for u in range(K)]
    b_shares = [shamir_split(b[u], K, t, np_stream(seed, SHARE, u, 1)) for u in range(K)]
    log("share_keys", 2 * K, 2 * K * (K - 1) * (2 * SHARE_BYTES + ID_BYTES))
    # round 2: masked inputs of the survivors
    masked = {}
    for u in alive:
        y = xs[u] + _prg(b[u], n)
        for v in range(K):
            if v != u:
                s_uv = pow(pk[v], sk[u], GROUP)
                y = y + _prg(s_uv, n) if u < v else y - _prg(s_uv, n)
        masked[u] = y
    client_s = time.perf_counter() - tic
    log("masked_input", 2 * len(alive), len(alive) * n * RING_BITS // 8 + len(alive) * len(alive) * ID_BYTES)
    # round 3: unmasking from the shares of t survivors
    tic = time.perf_counter()
    helpers = alive[:t]
    total = np.zeros(n, dtype=np.uint64)
    for u in alive:
        total = total + masked[u]
    for u in alive:
        b_u = shamir_reconstruct({h + 1: b_shares[u][h + 1] for h in helpers})
        total = total - _prg(b_u, n)
    for d in drop:
        sk_d = shamir_reconstruct({h + 1: sk_shares[d][h + 1] for h in helpers})
        for u in alive:
            s_ud = pow(pk[u], sk_d, GROUP)  # = s_du, from the public key of u
            total = total - _prg(s_ud, n) if u < d else total + _prg(s_ud, n)
    server_s = time.perf_counter() - tic
    log("unmasking", len(alive), len(alive) * (K - 1) * (SHARE_BYTES + ID_BYTES))

    signed = torch.from_numpy(total.view(np.int64).copy()).reshape(shape)
    out = signed.double() / 2.0 ** FRAC_BITS if floating else signed
    transcript = {
        "messages": sum(p["messages"] for p in phases.values()),
        "bytes": sum(p["bytes"] for p in phases.values()),
        "phases": phases, "clients": K, "survivors": alive, "dropped": drop, "threshold": t, "values": n,
        "masked": masked, "seconds": {"client": client_s, "server": server_s},
    }
    return out, transcript



@dataclass(frozen=True)
class SecureAggregation:
    """``flu.run(..., privacy=flu.privacy.SecureAggregation())``: every round's weighted sum goes
    through :func:`secure_sum`, so the server sees only masked uploads and their total.

    Clients pre-multiply their update by their aggregation weight (u_i = w_i delta_i, the weights
    being public), the server unmasks sum_i u_i. Floats are rounded to multiples of 2^-24 before
    masking, so the aggregate is within K 2^-25 per entry of plain aggregation's (K the round's
    clients), and ``server_lr`` times that after one server step. Round r's protocol is seeded by
    (``seed``, r); ``threshold`` is Shamir's t (default K // 2 + 1, capped at K). A round with
    fewer than two completing clients cannot hide an update and leaves the model unchanged.
    """

    threshold: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.threshold is not None:
            chk.integer("threshold", self.threshold, low=2)
        seed_value("seed", self.seed)
