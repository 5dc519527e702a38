"""The loss families the benchmarks know; each module registers one (see ``registry.py``)."""
from ..registry import FAMILIES, LossFamily
from . import focal, gaussian_focal, quality_focal, varifocal  # noqa: F401


def families() -> dict[str, LossFamily]:
    """Every registered family: the built-in ones (imported above) and any registered since."""
    return FAMILIES


def get_family(name: str) -> LossFamily:
    if name not in FAMILIES:
        raise ValueError(f'unknown loss {name!r}; known: {", ".join(FAMILIES)}')
    return FAMILIES[name]
