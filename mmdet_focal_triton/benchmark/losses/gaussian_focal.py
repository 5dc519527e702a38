"""The Gaussian focal loss as CenterNet's head computes it (mmdet's `GaussianFocalLoss`), and
what computes it.

Every implementation computes mmdet's loss (alpha 2, gamma 4, mean reduction) of the center
heatmap of CenterNet R18 (512 x 512 crops: B x 80 x 128 x 128 probabilities) with its Gaussian
target, no weight and avg_factor = the number of objects:
  ours       TritonGaussianFocalLoss (one fused Triton kernel; gradient written in the forward)
  mmdet-py   mmdet's `GaussianFocalLoss` module (Python: ~8 heatmap-sized temporaries)
  compile    torch.compile of mmdet's `gaussian_focal_loss` function
Default shapes: batch 2 and batch 16. A problem's N x C elements are laid out as
(N / 16384) x C x 128 x 128 heatmaps when N is a multiple of 128 x 128, else as (N, C).
"""
from __future__ import annotations

import torch

from ..registry import LossFamily, register_family
from ..shapes import TINY_SHAPES
from .common import fused_bytes as dense_bytes
from .common import module_peers

ALPHA, GAMMA = 2.0, 4.0
OUR_KERNELS = ('flat_loss_kernel', 'scale_kernel')  # the family's elementwise kernel
HW = 128 * 128  # CenterNet's 512 x 512 input at stride 4
TARGET_DTYPE = torch.float32


def make_inputs(N, C, dtype, device, seed=0):
    """A CenterNet batch: probabilities sigmoid(2 randn) in [0.004, 0.996] (bfloat16 keeps them
    off 0 and 1, where the loss is infinite and mmdet's eps makes its numbers differ); a
    Gaussian-like target: about 0.05 % peaks (exactly 1; the first element always), small
    values elsewhere (u ** 8 of uniform u, mostly ~0); avg_factor = the number of peaks as a
    0-d tensor. pred requires grad."""
    g = torch.Generator(device='cpu').manual_seed(seed)
    shape = (N // HW, C, 128, 128) if N and N % HW == 0 else (N, C)
    pred = torch.sigmoid(torch.randn(shape, generator=g) * 2).clamp(0.004, 0.996)
    target = torch.rand(shape, generator=g) ** 8
    peaks = torch.rand(shape, generator=g) < 5e-4
    peaks.view(-1)[:1] = True
    target[peaks] = 1.0
    avg_factor = torch.tensor(float(max(int(peaks.sum()), 1)))
    return (pred.to(device=device, dtype=dtype).requires_grad_(True),
            target.to(device=device, dtype=TARGET_DTYPE), None, avg_factor.to(device))


def fused_bytes(N, C, dtype, mode):
    """Bytes a fused implementation must move in `mode`: the probabilities, the fp32 target,
    and the gradient it writes in the forward (`common.fused_bytes`)."""
    return dense_bytes(N, C, dtype, mode, elem_bytes=TARGET_DTYPE.itemsize)


def default_shapes(quick: bool = False) -> list[tuple[str, int, int]]:
    """CenterNet at batch 2 and batch 16 (80 classes); tiny ones if `quick`."""
    if quick:
        return list(TINY_SHAPES)
    return [(f'centernet-b{b}', b * HW, 80) for b in (2, 16)]


def _registry_call(module):
    """The registry's call `fn(pred, target, weight, avg_factor=...)` on a GaussianFocalLoss
    module, whose third positional argument is `pos_inds` (CenterNet-update's form)."""
    def call(pred, target, weight=None, avg_factor=None):
        return module(pred, target, weight=weight, avg_factor=avg_factor)
    return call


def _ours():
    from mmdet_focal_triton import TritonGaussianFocalLoss

    return _registry_call(TritonGaussianFocalLoss(alpha=ALPHA, gamma=GAMMA))


def _mmdet_module():
    from mmdet.models.losses import GaussianFocalLoss

    return _registry_call(GaussianFocalLoss(alpha=ALPHA, gamma=GAMMA))


def _mmdet_function():
    from mmdet.models.losses.gaussian_focal_loss import gaussian_focal_loss

    def gfl(pred, target, weight=None, avg_factor=None):
        return gaussian_focal_loss(pred, target, weight, alpha=ALPHA, gamma=GAMMA,
                                   reduction='mean', avg_factor=avg_factor)
    return gfl


IMPLS = module_peers('gaussian', _ours, _mmdet_module, _mmdet_function, 'GaussianFocalLoss',
                     'gaussian_focal_loss', OUR_KERNELS)

GAUSSIAN = register_family(LossFamily(
    name='gaussian', doc='Gaussian focal loss (CenterNet, CornerNet, CentripetalNet)',
    make_inputs=make_inputs, fused_bytes=fused_bytes, default_shapes=default_shapes,
    impls=IMPLS))
