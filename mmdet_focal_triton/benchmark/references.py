"""Reference patterns for host time: the least an eager loss + backward can cost on this host.

They take a loss's arguments and ignore all but ``pred``:
  floor        an autograd.Function whose forward allocates a gradient-sized buffer and a 0-d
               output and makes one trivial Triton launch (the normal JIT launch,
               ``kernel[(1,)](...)``), and whose backward makes one trivial launch and returns
               the buffer: the pattern of a fused loss that writes its gradient in the forward
  floor-nobwd  the same without the launch in the backward
  sigmoid-sum  ``pred.sigmoid().sum()``: two ATen ops and their backward
  zero         the zero-cost stand-in of the end-to-end benchmark,
               ``pred.reshape(-1)[:1].sum() * 0.0``
"""
from __future__ import annotations

import torch

from .registry import Impl

FLOOR = 'floor'


def zero_cost_loss(pred: torch.Tensor) -> torch.Tensor:
    """0, with a gradient of zeros for pred: the cheapest loss that still gives the logits a
    gradient (a slice, a sum, a product, and their backward)."""
    return pred.reshape(-1)[:1].sum() * 0.0


_KERNEL = []


def _trivial_kernel():
    """A Triton kernel that stores one 0 (compiled once per pointer dtype)."""
    if not _KERNEL:
        import triton
        import triton.language as tl

        @triton.jit
        def trivial_kernel(Out):
            tl.store(Out, 0.0)

        _KERNEL.append(trivial_kernel)
    return _KERNEL[0]


def _floor_function(launch_in_backward: bool):
    kernel = _trivial_kernel()

    class FloorPattern(torch.autograd.Function):
        @staticmethod
        def forward(ctx, pred):
            grad = torch.empty_like(pred)
            out = torch.empty((), dtype=torch.float32, device=pred.device)
            kernel[(1,)](out)
            ctx.grad = grad
            return out

        @staticmethod
        def backward(ctx, grad_out):
            grad = ctx.grad
            if launch_in_backward:
                kernel[(1,)](grad)
            return grad

    def floor(pred, target=None, weight=None, avg_factor=None):
        return FloorPattern.apply(pred)
    return floor


def _sigmoid_sum():
    return lambda pred, target=None, weight=None, avg_factor=None: pred.sigmoid().sum()


def _zero():
    return lambda pred, target=None, weight=None, avg_factor=None: zero_cost_loss(pred)


REFERENCES = {i.name: i for i in [
    Impl(FLOOR, lambda: _floor_function(True), 'autograd.Function, one trivial Triton launch in '
         'the forward and one in the backward', on_cpu=True),
    Impl('floor-nobwd', lambda: _floor_function(False), 'the same, no launch in the backward',
         on_cpu=True),
    Impl('sigmoid-sum', _sigmoid_sum, 'pred.sigmoid().sum()', on_cpu=True),
    Impl('zero', _zero, "the end-to-end benchmark's zero-cost stand-in", on_cpu=True),
]}
