"""Privacy protection: differential privacy with its accounting, secure aggregation, attacks.

Layer: imports ``_core``, ``data`` and ``models`` only (docs/architecture.md). Opacus, TenSEAL,
pandas and scipy load on first call. Public names:

- ``epsilon(noise_multiplier, sample_rate, rounds, delta, accountant="rdp"|"prv")`` and
  ``noise_multiplier(target_epsilon, sample_rate, rounds, delta)``: Opacus' accountants for the
  sampled Gaussian mechanism (``accounting``);
- ``DPFedAvg``: the record of DP-FedAvg (McMahan et al. 2018) with fixed or adaptive clipping
  (Andrew et al. 2021) and its pure per-round math: ``clip_updates``, ``aggregate``, ``next_clip``,
  ``accounting_noise_multiplier`` (``dp``), and ``DPSGD``, sample-level DP-SGD inside clients;
- ``secure_sum``: Bonawitz et al. 2017 pairwise masking over Z_{2^64} with Shamir recovery of
  dropped clients (``secure_agg``; ``shamir_split``, ``shamir_reconstruct``), and
  ``SecureAggregation``, the record that makes ``flu.run`` aggregate through it;
- ``encrypted_sum``: summation of CKKS ciphertexts through TenSEAL (``homomorphic``);
- ``invert_gradients`` and ``reconstruction_error``: DLG / iDLG / Geiping et al. gradient
  inversion and its best-match error (``attacks``).
"""
from .accounting import epsilon, noise_multiplier
from .attacks import Reconstruction, idlg_labels, invert_gradients, reconstruction_error
from .dp import DPSGD, DPFedAvg
from .homomorphic import encrypted_sum
from .secure_agg import SecureAggregation, secure_sum, shamir_reconstruct, shamir_split

__all__ = ["DPFedAvg", "DPSGD", "Reconstruction", "SecureAggregation", "encrypted_sum", "epsilon", "idlg_labels", "invert_gradients",
           "noise_multiplier", "reconstruction_error", "secure_sum", "shamir_reconstruct", "shamir_split"]
