"""The torch this package needs, checked at import.

torch is not in the package's install requirements (setup.cfg says why: pip would replace an
older torch, and the mmcv ops compiled against it would stop loading). So ``import
mmdet_focal_triton`` checks it here (importing this module runs ``check_torch``), before anything
else imports torch, and says what is wrong
in an ImportError rather than failing somewhere inside.
"""
from __future__ import annotations

# The oldest torch the tests pass on (CPU; docs/install.md has the runs). On 2.5.1 the eager
# calls pass, but torch.compile of the custom op fails in inductor, and its triton 3.1.0 fails
# our kernels; 2.6 is the first torch that ships triton >= 3.2.
MIN_TORCH = (2, 6)


def parse_version(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string: '2.6.0+cu124', '2.7.0a0+git1234', '2.13.0'."""
    if not isinstance(version, str):
        raise TypeError(f'version must be a str, got {type(version).__name__}')
    parts = version.split('+')[0].split('.')
    try:
        return int(parts[0]), int(''.join(c for c in parts[1] if c.isdigit()) or 'x')
    except (IndexError, ValueError):
        raise ValueError(f'version: cannot read major.minor from {version!r}') from None


def _want() -> str:
    return '.'.join(map(str, MIN_TORCH))


def check_torch() -> str:
    """Import torch and check its version; returns it. ImportError, naming the minimum, when
    torch is missing or older."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f'mmdet_focal_triton needs PyTorch >= {_want()}, and none is importable ({e}). pip '
            'does not install torch with this package, so that it never replaces the torch your '
            'mmcv was built against: install the torch build for your machine first '
            f"(e.g. pip install 'torch>={_want()}'), see docs/install.md") from e
    found = getattr(torch, '__version__', '?')
    try:
        too_old = parse_version(found) < MIN_TORCH
    except (TypeError, ValueError):
        too_old = False  # an unusual version string: let the imports below be the judge
    if too_old:
        raise ImportError(
            f'mmdet_focal_triton needs PyTorch >= {_want()}, found torch {found} '
            f'({getattr(torch, "__file__", "?")}). Installing this package left your torch as '
            'it is; upgrade torch (and rebuild mmcv against it), or use this package in an '
            f'environment with torch >= {_want()}. See docs/install.md.')
    return found


check_torch()
