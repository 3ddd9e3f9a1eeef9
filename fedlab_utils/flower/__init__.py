"""The Flower bridge: ``flu.run``'s experiments executed by Flower (https://flower.ai).

``flu.flower.run(model, federation, algorithm, ..., engine="simulation" | "deployment" |
"inprocess", supernodes=2)`` takes ``flu.run``'s arguments for the optimisation algorithms and
returns a ``History`` with the same tables, plus who took part in each round. One ServerApp and
one ClientApp (``flu.flower.apps``) split ``flu.run``'s round between server and SuperNodes and
call the workbook's own client and server rules, so a seed gives ``flu.run``'s parameters to
rounding. Flower is optional: it is imported on first use, and a missing install is an error
saying what to install. See docs/flower.md.
"""
from .bridge import require_flower, run
from .spec import ALGORITHMS, ENGINES, FLWR_PIN

__all__ = ["ALGORITHMS", "ENGINES", "FLWR_PIN", "require_flower", "run"]
