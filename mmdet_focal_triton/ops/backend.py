"""Which implementation runs a call: the Triton kernels or the PyTorch code of the same math.

'auto' (default): Triton on CUDA tensors, PyTorch on CPU tensors. 'triton': Triton everywhere
(on CPU tensors through Triton's interpreter, which needs TRITON_INTERPRET=1 before triton is
imported: how CI runs the kernels). 'torch': PyTorch everywhere. Also settable with the
environment variable MMDET_FOCAL_TRITON_BACKEND.
"""
import contextlib
import os

from torch import Tensor

try:  # triton is optional on CPU-only machines
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    HAS_TRITON = False

BACKENDS = ('auto', 'triton', 'torch')
INTERPRETER = os.environ.get('TRITON_INTERPRET') == '1'
_BACKEND = os.environ.get('MMDET_FOCAL_TRITON_BACKEND', 'auto')


def set_backend(name: str) -> None:
    """'auto' (Triton on CUDA, PyTorch on CPU), 'triton' (Triton everywhere: on CPU tensors this
    needs TRITON_INTERPRET=1 set before triton is imported) or 'torch' (PyTorch everywhere)."""
    global _BACKEND
    if name not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {name!r}")
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


@contextlib.contextmanager
def backend(name: str):
    """Context manager form of `set_backend`."""
    old = _BACKEND
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def use_triton(t: Tensor) -> bool:
    """Whether a call on `t` runs the Triton kernels (else the PyTorch implementation)."""
    if _BACKEND == 'torch':
        return False
    if t.is_cuda:
        if not HAS_TRITON:
            raise RuntimeError('mmdet_focal_triton needs the `triton` package for CUDA tensors')
        return True
    if _BACKEND == 'triton':
        if not HAS_TRITON or not INTERPRETER:
            raise RuntimeError("backend 'triton' on CPU tensors needs triton and "
                               'TRITON_INTERPRET=1')
        return True
    return False
