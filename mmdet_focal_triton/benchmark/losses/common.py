"""Pieces the loss families share: our input-check mode around a measurement, one
torch.compile per peer for every shape, the positive rows of a dense head's level, the byte floor
of a fused loss, and the peers of a loss whose mmdet module and function take the same
arguments as ours."""
from __future__ import annotations

import contextlib

import torch

_COMPILED: dict = {}


@contextlib.contextmanager
def input_checks(mode):
    """Our loss's input-check mode ('async', 'sync', 'off') inside the block."""
    import mmdet_focal_triton as mft

    old = mft.get_input_checks()
    mft.set_input_checks(mode)
    try:
        yield
    finally:
        mft.set_input_checks(old)


def compile_once(key: str, build):
    """torch.compile(build(), dynamic=True), compiled once per `key`: one graph with dynamic
    shapes for every shape of a run."""
    if key not in _COMPILED:
        import torch._dynamo as dynamo

        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 64)
        # host mode passes avg_factor as a Python float, different at every shape: one graph
        # for all of them (the default since torch 2.6; explicit for older versions)
        dynamo.config.specialize_float = False
        _COMPILED[key] = torch.compile(build(), dynamic=True)
    return _COMPILED[key]


def positives(N, g, frac=0.01):
    """A bool (N,) mask of about `frac` of the rows, the first row always among them (so that
    a tiny problem has a positive too)."""
    pos = torch.rand(N, generator=g) < frac
    if N:
        pos[0] = True
    return pos


def fused_bytes(N, C, dtype, mode, elem_bytes=0, row_bytes=0):
    """Bytes a fused implementation must move in `mode`: pred (N x C of `dtype`), `elem_bytes`
    per element (a dense target) and `row_bytes` per row (labels, scores, weights), and the
    gradient it writes in the forward ('fwd_bwd', 'fwd'); NaN for 'bwd' (= fwd_bwd - fwd),
    which has no floor of its own: a fused forward leaves nothing for the backward to move."""
    if mode == 'bwd':
        return float('nan')
    esize = torch.tensor([], dtype=dtype).element_size()
    b = N * C * (esize + elem_bytes) + N * row_bytes
    if mode in ('fwd_bwd', 'fwd'):
        b += N * C * esize
    return b


def module_peers(key: str, ours, mmdet_module, mmdet_function, loss: str, function: str,
                 kernels: tuple[str, ...]) -> dict:
    """The implementations of a loss whose peers are mmdet's module and torch.compile of mmdet's
    function: 'ours' (input checks async), 'mmdet-py', 'compile'. `ours` / `mmdet_module` /
    `mmdet_function` build them (imported on use); `loss`: mmdet's class name (ours is
    Triton<loss>), `function`: mmdet's function's name; `kernels`: our kernels' names."""
    from ..registry import Impl

    def compiled():
        return compile_once(key, mmdet_function)

    return {i.name: i for i in [
        Impl('ours', ours, f'Triton{loss}', kernels=kernels, on_cpu=True,
             context=lambda: input_checks('async')),
        Impl('mmdet-py', mmdet_module, f"mmdet's {loss} (Python)", on_cpu=True),
        Impl('compile', compiled, f"torch.compile of mmdet's {function} (dynamic shapes)"),
    ]}
