"""The varifocal loss as VFNet's head computes it (mmdet's `VarifocalLoss`), and what computes
it.

Every implementation computes mmdet's VFL (alpha 0.75, gamma 2, IoU-weighted, mean reduction)
of (N, C) logits with VFNet's dense IoU target, no weight and avg_factor = the number of
positives:
  ours       TritonVarifocalLoss (fused Triton kernels; gradient written in the forward)
  mmdet-py   mmdet's `VarifocalLoss` module (Python)
  compile    torch.compile of mmdet's `varifocal_loss` function
Default shapes: VFNet R50-FPN calls the loss once per batch over all its levels (800x1344,
P3 .. P7, rows from mmdet's own prior generator): batch 2 and batch 16.
"""
from __future__ import annotations

import torch

from ..registry import LossFamily, register_family
from ..shapes import RETINANET_IMG, TINY_SHAPES, level_rows
from .common import fused_bytes as dense_bytes
from .common import module_peers, positives

ALPHA, GAMMA = 0.75, 2.0
OUR_KERNELS = ('varifocal_loss_kernel', 'scale_kernel')
VFNET = 'vfnet/vfnet_r50_fpn_1x_coco.py'
TARGET_DTYPE = torch.float32


def make_inputs(N, C, dtype, device, seed=0):
    """A VFNet batch: logits ~ 2 randn; the dense fp32 IoU target: about 1 % positive rows (the
    first always) with the IoU of their class in [1e-6, 1] (VFNet clamps it), zeros elsewhere; no
    weight; avg_factor = the number of positives as a 0-d tensor. pred requires grad."""
    g = torch.Generator(device='cpu').manual_seed(seed)
    pred = (torch.randn(N, C, generator=g) * 2).to(device=device, dtype=dtype)
    pos = positives(N, g)
    labels = torch.randint(0, C, (int(pos.sum()),), generator=g)
    target = torch.zeros(N, C, dtype=TARGET_DTYPE)
    target[pos.nonzero()[:, 0], labels] = torch.rand(int(pos.sum()), generator=g).clamp(min=1e-6)
    avg_factor = torch.tensor(float(max(int(pos.sum()), 1)))
    return pred.requires_grad_(True), target.to(device), None, avg_factor.to(device)


def fused_bytes(N, C, dtype, mode):
    """Bytes a fused implementation must move in `mode`: the logits, the dense fp32 target, and
    the gradient it writes in the forward (`common.fused_bytes`)."""
    return dense_bytes(N, C, dtype, mode, elem_bytes=TARGET_DTYPE.itemsize)


def vfnet_rows(batch: int, img_hw=RETINANET_IMG) -> int:
    """Rows of VFNet R50-FPN's one loss call at `batch` images of `img_hw` (all levels)."""
    return sum(level_rows(VFNET, batch, img_hw))


def default_shapes(quick: bool = False) -> list[tuple[str, int, int]]:
    """VFNet's batch 2 and batch 16 (80 classes); tiny ones if `quick`."""
    if quick:
        return list(TINY_SHAPES)
    return [(f'vfnet-b{b}', vfnet_rows(b), 80) for b in (2, 16)]


def _ours():
    from mmdet_focal_triton import TritonVarifocalLoss

    return TritonVarifocalLoss(alpha=ALPHA, gamma=GAMMA, iou_weighted=True)


def _mmdet_module():
    from mmdet.models.losses import VarifocalLoss

    return VarifocalLoss(use_sigmoid=True, alpha=ALPHA, gamma=GAMMA, iou_weighted=True)


def _mmdet_function():
    from mmdet.models.losses.varifocal_loss import varifocal_loss

    def vfl(pred, target, weight=None, avg_factor=None):
        return varifocal_loss(pred, target, weight, ALPHA, GAMMA, True, 'mean', avg_factor)
    return vfl


IMPLS = module_peers('vfl', _ours, _mmdet_module, _mmdet_function, 'VarifocalLoss',
                     'varifocal_loss', OUR_KERNELS)

VFL = register_family(LossFamily(
    name='vfl', doc='varifocal loss (VFNet)', make_inputs=make_inputs, fused_bytes=fused_bytes,
    default_shapes=default_shapes, impls=IMPLS))
