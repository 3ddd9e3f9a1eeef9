"""System heterogeneity: device, network and availability profiles on a virtual clock.

Layer: imports ``_core``, ``data`` and ``models`` only (docs/architecture.md). Public names:

- ``profiles(preset, num_clients, seed=0, *, speed_spread=None, bandwidth_spread=None)`` and
  ``check_profiles(df, num_clients)``: per-client devices and links (``PRESETS``, ``COLUMNS``);
- availability over rounds: ``Always``, ``Bernoulli``, ``Diurnal``, ``MarkovOnOff``, ``Churn``
  (subclass ``Availability`` for your own);
- ``assign_modes`` / ``check_modes`` / ``mode_memory_mb``: one fine-tuning mode per client from
  its memory and speed;
- ``Simulation`` (what ``flu.run(..., systems=...)`` takes) and ``staleness_weight``;
- ``clock``: the pinned phase formulas and one synchronous round on the virtual clock;
- ``Compression``: what each client's upload becomes and costs (``flu.run(..., compression=...)``).

docs/systems.md has the columns, units, presets and their sources, and the clock's formulas.
"""
from . import clock
from .compression import Compression
from .dynamics import Always, Availability, Bernoulli, Churn, Diurnal, MarkovOnOff
from .modes import assign_modes, check_modes, mode_memory_mb
from .profiles import COLUMNS, PRESETS, check_profiles, profiles
from .simulation import AGGREGATIONS, Simulation, staleness_weight

__all__ = ["AGGREGATIONS", "COLUMNS", "PRESETS", "Always", "Availability", "Bernoulli", "Churn", "Compression",
           "Diurnal", "MarkovOnOff", "Simulation", "assign_modes", "check_modes", "check_profiles", "clock",
           "mode_memory_mb", "profiles", "staleness_weight"]
