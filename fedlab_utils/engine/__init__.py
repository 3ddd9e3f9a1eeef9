"""The engine: ``flu.run`` (validate -> set up -> one function per round -> History)."""
from .._core.random import stream
from .._core.runtime import tune_allocator
from .history import History
from .runner import run
from .sampling import batch_plan, select_clients

__all__ = ["History", "batch_plan", "run", "select_clients", "stream", "tune_allocator"]
