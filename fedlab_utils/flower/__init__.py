"""The Flower bridge (optional dependency, imported only when used): the same experiments on
Flower's simulation and deployment engines. Not built yet (see docs/architecture.md)."""
