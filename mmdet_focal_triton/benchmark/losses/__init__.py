"""The loss families the benchmarks know; each module registers one (see ``registry.py``)."""
from . import focal, quality_focal, varifocal  # noqa: F401
