"""Analysis of runs: per-client evaluation and convergence theory (constants, bounds, fixed points)."""
from . import convergence, evaluation

__all__ = ["convergence", "evaluation"]
