"""System heterogeneity: device, network and availability profiles on a virtual clock.

Layer: imports ``_core``, ``data`` and ``models`` only. ``flu.run(systems=...)`` refuses any value
but None until the simulation is built (see docs/architecture.md, "What comes next").
"""
