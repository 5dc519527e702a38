"""Pieces the loss families share: our input-check mode around a measurement, one
torch.compile per peer for every shape, the positive rows of a dense head's level."""
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
