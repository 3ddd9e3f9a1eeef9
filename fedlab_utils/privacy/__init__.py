"""Privacy protection: differential privacy with its accounting, secure aggregation, attacks.

Layer: imports ``_core``, ``data`` and ``models`` only. Not built yet (see docs/architecture.md,
"What comes next").
"""
