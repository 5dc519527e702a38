"""The quality focal loss as RTMDet and GFL heads compute it (mmdet's `QualityFocalLoss`), and
what computes it.

Every implementation computes mmdet's QFL (beta 2, mean reduction) of (N, C) logits with the
``(labels, scores)`` target of RTMDet / GFL (background = C), per-row weights and an avg_factor:
  ours          TritonQualityFocalLoss (fused Triton kernels; gradient written in the forward)
  ours-nocheck  the same with the label-range check off
  mmdet-py      mmdet's `QualityFocalLoss` module (Python: (N, C) temporaries, a `nonzero()`)
  compile       torch.compile of mmdet's `quality_focal_loss` function
Default shapes: RTMDet-s's levels at batch 32 (640x640, P3 .. P5) and GFL R50-FPN's at batch 2
(800x1344, P3 .. P7), rows from mmdet's own prior generators.
"""
from __future__ import annotations

import torch

from ..registry import Impl, LossFamily, register_family
from ..shapes import RETINANET_IMG, TINY_SHAPES, level_rows
from .common import compile_once, input_checks, positives
from .common import fused_bytes as dense_bytes

BETA = 2.0
OUR_KERNELS = ('quality_focal_loss_kernel', 'scale_kernel')
RTMDET_S = ('rtmdet-s-b32', 'rtmdet/rtmdet_s_8xb32-300e_coco.py', 32, (640, 640))
GFL = ('gfl-b2', 'gfl/gfl_r50_fpn_1x_coco.py', 2, RETINANET_IMG)


def make_inputs(N, C, dtype, device, seed=0):
    """An RTMDet / GFL level: logits ~ 2 randn; about 1 % positive rows (the first always) with
    a quality score in (0, 1], the rest background (label C, score 0); fp32 scores and weights
    of ones, as the heads pass them; avg_factor = the number of positives as a 0-d tensor (GFL's;
    RTMDet passes 1.0, which costs the same). pred requires grad."""
    g = torch.Generator(device='cpu').manual_seed(seed)
    pred = (torch.randn(N, C, generator=g) * 2).to(device=device, dtype=dtype)
    pos = positives(N, g)
    labels = torch.full((N,), C, dtype=torch.long)
    labels[pos] = torch.randint(0, C, (int(pos.sum()),), generator=g)
    scores = torch.zeros(N)
    scores[pos] = torch.rand(int(pos.sum()), generator=g).clamp(min=1e-6)
    avg_factor = torch.tensor(float(max(int(pos.sum()), 1)))
    return (pred.requires_grad_(True), (labels.to(device), scores.to(device)),
            torch.ones(N, device=device), avg_factor.to(device))


def fused_bytes(N, C, dtype, mode):
    """Bytes a fused implementation must move in `mode`: the logits, an int64 label, an fp32
    score and an fp32 weight per row, and the gradient it writes in the forward
    (`common.fused_bytes`)."""
    return dense_bytes(N, C, dtype, mode, row_bytes=8 + 4 + 4)


def default_shapes(quick: bool = False) -> list[tuple[str, int, int]]:
    """RTMDet-s's levels at batch 32, then GFL's at batch 2 (80 classes); tiny ones if `quick`."""
    if quick:
        return list(TINY_SHAPES)
    return [(f'{name}-P{lvl + 3}', n, 80) for name, config, batch, img in (RTMDET_S, GFL)
            for lvl, n in enumerate(level_rows(config, batch, img))]


def scores_in_pred_dtype(fn):
    """`fn` given the scores in pred's dtype (mmdet's QFL fails on fp16 / bf16 logits with fp32
    scores): cast once per target tensor and dtype, outside the timed calls."""
    cache = {}

    def call(pred, target, weight=None, avg_factor=None):
        labels, scores = target
        if scores.dtype != pred.dtype:
            if cache.get('src') is not scores or cache['dst'].dtype != pred.dtype:
                cache.update(src=scores, dst=scores.to(pred.dtype))
            scores = cache['dst']
        return fn(pred, (labels, scores), weight, avg_factor=avg_factor)
    return call


def _ours():
    from mmdet_focal_triton import TritonQualityFocalLoss

    return TritonQualityFocalLoss(beta=BETA)


def _mmdet_module():
    from mmdet.models.losses import QualityFocalLoss

    return scores_in_pred_dtype(QualityFocalLoss(use_sigmoid=True, beta=BETA))


def _mmdet_function():
    from mmdet.models.losses.gfocal_loss import quality_focal_loss

    def qfl(pred, target, weight=None, avg_factor=None):
        return quality_focal_loss(pred, target, weight, beta=BETA, reduction='mean',
                                  avg_factor=avg_factor)
    return qfl


def _compiled():
    return scores_in_pred_dtype(compile_once('qfl', _mmdet_function))


IMPLS = {i.name: i for i in [
    Impl('ours', _ours, 'TritonQualityFocalLoss', kernels=OUR_KERNELS, on_cpu=True,
         context=lambda: input_checks('async')),
    Impl('ours-nocheck', _ours, 'TritonQualityFocalLoss, label-range check off',
         kernels=OUR_KERNELS, context=lambda: input_checks('off')),
    Impl('mmdet-py', _mmdet_module, "mmdet's QualityFocalLoss (Python)", on_cpu=True),
    Impl('compile', _compiled, "torch.compile of mmdet's quality_focal_loss (dynamic shapes)"),
]}

QFL = register_family(LossFamily(
    name='qfl', doc='quality focal loss (RTMDet, GFL, TOOD, DDQ)', make_inputs=make_inputs,
    fused_bytes=fused_bytes, default_shapes=default_shapes, impls=IMPLS))
