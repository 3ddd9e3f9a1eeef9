"""Summation under homomorphic encryption: CKKS (Cheon, Kim, Kim and Song 2017, "Homomorphic
Encryption for Arithmetic of Approximate Numbers", ASIACRYPT) through TenSEAL (Benaissa et al. 2021).

A key holder makes a CKKS context and gives clients and server its public part; client i encrypts
its flattened update (chunks of N/2 slots, N = ``poly_modulus_degree``, values scaled by
Delta = 2^``scale_bits``); the server adds the ciphertexts without seeing any value; only the sum
goes back to the key holder for decryption. CKKS is approximate: each fresh public-key
encryption adds noise of canonical-embedding norm at most (Cheon et al. 2017, Lemma 1)

    B_clean = 8 sqrt(2) sigma N + 6 sigma sqrt(N) + 16 sigma sqrt(h N),   sigma = 3.2, h <= N,

plus encoding's rounding (at most sqrt(N) / 2 per slot, scaled), so a sum of K encryptions
decrypts within K (B_clean + sqrt(N)) / Delta of the exact sum in every slot (``error_bound``,
about 6e-6 for K = 10, N = 8192, Delta = 2^40; observed errors are ~100x smaller).
TenSEAL is imported on call; without it the function raises ImportError with the install line.
"""
from __future__ import annotations

import math
import time

import torch

from .._core import checks as chk

DEGREES = (8192, 16384, 32768)
SIGMA = 3.2  # SEAL's error standard deviation


def error_bound(clients: int, poly_modulus_degree: int = 8192, scale_bits: int = 40) -> float:
    """``K (B_clean + sqrt(N)) / 2^scale_bits`` with h = N: the per-slot bound on |decrypted sum - sum|."""
    N = poly_modulus_degree
    b_clean = 8 * math.sqrt(2) * SIGMA * N + 6 * SIGMA * math.sqrt(N) + 16 * SIGMA * N
    return clients * (b_clean + math.sqrt(N)) / 2.0 ** scale_bits


def _tenseal():
    try:
        import tenseal
    except ImportError as err:
        raise ImportError("flu.privacy.encrypted_sum needs TenSEAL: pip install tenseal==0.3.18") from err
    return tenseal


def encrypted_sum(updates, poly_modulus_degree: int = 8192, scale_bits: int = 40):
    """``(total, transcript)``: the sum of K real tensors of one shape, computed on CKKS ciphertexts.

    ``total`` is float64 with the updates' shape, within ``transcript["error_bound"]`` of the exact
    sum in every entry (module docstring). ``poly_modulus_degree`` N in (8192, 16384, 32768),
    coefficient moduli (60, ``scale_bits``, 60) bits, ``scale_bits`` in [20, 50].

    ``transcript``: ``bytes_per_client`` (serialized ciphertexts, list), ``ciphertexts_per_client``,
    ``public_context_bytes`` (sent to each client and the server), ``sum_bytes`` (server -> key
    holder), ``messages`` and ``bytes`` (totals, context distribution included), ``seconds``
    (``keygen``, ``encrypt`` per client, ``add``, ``decrypt``), ``error_bound``.
    """
    chk.option("poly_modulus_degree", poly_modulus_degree, DEGREES)
    scale_bits = chk.integer("scale_bits", scale_bits, low=20, high=50)
    if isinstance(updates, torch.Tensor) or not hasattr(updates, "__len__"):
        raise TypeError(f"updates must be a list of tensors, got {type(updates).__name__}")
    K = len(updates)
    if K < 1:
        chk.fail("updates", "a non-empty list of client tensors", updates)
    tensors = [torch.as_tensor(u) for u in updates]
    shape = tuple(tensors[0].shape)
    for i, t in enumerate(tensors):
        if tuple(t.shape) != shape:
            chk.fail("updates", f"tensors of one shape {shape}", f"shape {tuple(t.shape)} at index {i}")
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"updates must hold real tensors, got dtype {t.dtype} at index {i}")
        chk.finite_tensor("updates", t.double())
    flat = [t.detach().cpu().double().reshape(-1).tolist() for t in tensors]
    n = len(flat[0])
    ts = _tenseal()
    slots = poly_modulus_degree // 2
    chunks = [(a, min(a + slots, n)) for a in range(0, n, slots)] or [(0, 0)]

    tic = time.perf_counter()
    secret_ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=poly_modulus_degree,
                            coeff_mod_bit_sizes=[60, scale_bits, 60], n_threads=1)
    secret_ctx.global_scale = 2.0 ** scale_bits
    public = secret_ctx.copy()
    public.make_context_public()
    # a sum needs neither relinearisation nor Galois keys: ship the public key only
    public_bytes = public.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                                    save_relin_keys=False)
    keygen_s = time.perf_counter() - tic

    uploads, enc_s = [], []
    for x in flat:  # client i: encrypt with the public context
        tic = time.perf_counter()
        ctx = ts.context_from(public_bytes)
        uploads.append([ts.ckks_vector(ctx, x[a:b]).serialize() for a, b in chunks])
        enc_s.append(time.perf_counter() - tic)

    tic = time.perf_counter()  # server: add ciphertexts, never decrypts
    server_ctx = ts.context_from(public_bytes)
    acc = [ts.ckks_vector_from(server_ctx, c) for c in uploads[0]]
    for up in uploads[1:]:
        for j, c in enumerate(up):
            acc[j] += ts.ckks_vector_from(server_ctx, c)
    summed = [v.serialize() for v in acc]
    add_s = time.perf_counter() - tic

    tic = time.perf_counter()  # key holder: decrypts the sum only
    values = []
    for c, (a, b) in zip(summed, chunks):
        values += ts.ckks_vector_from(secret_ctx, c).decrypt()[: b - a]
    dec_s = time.perf_counter() - tic

    per_client = [sum(len(c) for c in up) for up in uploads]
    sum_bytes = sum(len(c) for c in summed)
    total = torch.tensor(values, dtype=torch.float64).reshape(shape)
    transcript = {
        "clients": K, "values": n, "ciphertexts_per_client": len(chunks), "bytes_per_client": per_client,
        "public_context_bytes": len(public_bytes), "sum_bytes": sum_bytes,
        "messages": (K + 1) + K + 1, "bytes": (K + 1) * len(public_bytes) + sum(per_client) + sum_bytes,
        "seconds": {"keygen": keygen_s, "encrypt": enc_s, "add": add_s, "decrypt": dec_s},
        "error_bound": error_bound(K, poly_modulus_degree, scale_bits),
        "poly_modulus_degree": poly_modulus_degree, "scale_bits": scale_bits,
    }
    return total, transcript
