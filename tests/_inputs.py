"""Shared input builders for the op tests."""
import contextlib
import os
import zlib

import pytest
import torch
from conftest import INTERPRETER

import mmdet_focal_triton as mft

# Where the op runs: PyTorch on CPU, the Triton kernels through the interpreter on CPU, CUDA;
# the Triton kernels in both layouts of contiguous inputs ('rows', and 'flat': ops/tuning.py).
_NEEDS_INTERPRETER = pytest.mark.skipif(not INTERPRETER,
                                        reason='TRITON_INTERPRET=1 is set only without a GPU')
IMPLS = [
    pytest.param('cpu', id='cpu-torch'),
    pytest.param('interp', id='cpu-triton-interpreter', marks=_NEEDS_INTERPRETER),
    pytest.param('cuda', id='cuda-triton', marks=pytest.mark.cuda),
]
# the focal loss's tests: also its flat layout (the rows layout above)
FOCAL_IMPLS = IMPLS + [
    pytest.param('interp-flat', id='cpu-triton-interpreter-flat', marks=_NEEDS_INTERPRETER),
    pytest.param('cuda-flat', id='cuda-triton-flat', marks=pytest.mark.cuda),
]


def device_of(impl):
    return 'cuda' if impl.startswith('cuda') else 'cpu'


@contextlib.contextmanager
def _layout(name):
    """Both layouts for contiguous inputs, whatever the launch table picks for the shape."""
    mft.set_tuning(layout=name)
    try:
        yield
    finally:
        mft.set_tuning(layout=None)


@contextlib.contextmanager
def impl_context(impl):
    backend = {'cpu': 'torch', 'interp': 'triton', 'interp-flat': 'triton'}.get(impl)
    with mft.backend(backend) if backend else contextlib.nullcontext(), \
            _layout('flat' if impl.endswith('flat') else 'rows'):
        yield


# A different seed per test case, reproducible across runs; FOCAL_TEST_SEED shifts them all
# (e.g. a CI job can draw a fresh set every run).
SEED_OFFSET = int(os.environ.get('FOCAL_TEST_SEED', '0'))


def make_generator(*key):
    g = torch.Generator()
    g.manual_seed((zlib.crc32(repr(key).encode()) + SEED_OFFSET) % (2 ** 31))
    return g


def make_pred(N, C, dtype, device, g, layout='contiguous', scale=3.0, activated=False):
    """Logits (or probabilities) of shape (N, C) with the requested memory layout."""
    shape = {'contiguous': (N, C), 'strided': (N, 2 * C), 'transposed': (C, N)}[layout]
    base = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if activated:
        base = torch.sigmoid(base)
    base = base.to(dtype).to(device)
    if layout == 'strided':  # every other column of a wider tensor
        return base[:, ::2]
    if layout == 'transposed':  # column-major
        return base.t()
    return base


def non_contiguous(target):
    """The same target values in a non-contiguous tensor: class indices (and QFL's scores) as a
    stride-2 view, a dense (N, C) target column-major."""
    if isinstance(target, tuple):
        return tuple(non_contiguous(t) for t in target)
    if target.dim() == 1:
        return torch.stack([target, target], dim=1)[:, 0]
    return target.t().contiguous().t()


def make_target(kind, N, C, device, g):
    if kind == 'index':
        # about a third positives, the rest background (= C)
        lab = torch.randint(0, C, (N,), generator=g)
        bg = torch.rand(N, generator=g) < 0.66
        lab[bg] = C
        return lab.to(device)
    if kind == 'onehot':
        lab = torch.randint(0, C + 1, (N,), generator=g)
        return torch.nn.functional.one_hot(lab, C + 1)[:, :C].float().to(device)
    if kind == 'soft':
        return torch.rand(N, C, generator=g).to(device)
    raise ValueError(kind)


def make_weight(kind, N, C, device, g):
    if kind == 'none':
        return None
    if kind == 'row':
        return torch.rand(N, generator=g).to(device)
    if kind == 'row1':
        return torch.rand(N, 1, generator=g).to(device)
    if kind == 'elem':
        return torch.rand(N, C, generator=g).to(device)
    if kind == 'flat':
        return torch.rand(N * C, generator=g).to(device)
    raise ValueError(kind)


def make_avg_factor(kind, device):
    return {
        None: None,
        'int': 13,
        'float': 7.5,
        't0': torch.tensor(11.0, device=device),
        't1': torch.tensor([9.0], device=device),
        'tlong': torch.tensor(6, device=device),
    }[kind]
