"""The sigmoid focal loss as a RetinaNet head computes it, and what computes it.

Every implementation computes the mean focal loss (gamma 2, alpha 0.25) of (N, C) logits with
class-index targets (background = C), per-anchor weights and an avg_factor:
  ours          TritonFocalLoss (fused Triton kernels; gradient written in the forward pass)
  ours-nocheck  the same with the label-range check off
  mmcv          mmdet's FocalLoss on CUDA = mmcv's CUDA op (`mmcv.ops.sigmoid_focal_loss`)
  mmdet-py      mmdet's python path: one-hot + `py_sigmoid_focal_loss`
  compile       torch.compile of that python path
  torchvision   torchvision.ops.sigmoid_focal_loss on the one-hot target (+ weight, avg_factor)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import Impl, LossFamily, register_family
from ..shapes import default_shapes
from .common import compile_once, input_checks
from .common import fused_bytes as dense_bytes

GAMMA, ALPHA = 2.0, 0.25
OUR_KERNELS = ('focal_loss_kernel', 'scale_kernel')
MMCV_KERNELS = ('sigmoid_focal_loss_forward', 'sigmoid_focal_loss_backward')


def make_inputs(N, C, dtype, device, seed=0):
    """RetinaNet-like inputs: logits ~ 2 randn, ~1 % positive anchors, a few ignored anchors
    (weight 0), avg_factor = number of positives as a 0-d tensor. pred requires grad."""
    g = torch.Generator(device='cpu').manual_seed(seed)
    pred = (torch.randn(N, C, generator=g) * 2).to(device=device, dtype=dtype)
    labels = torch.full((N,), C, dtype=torch.long)
    pos = torch.rand(N, generator=g) < 0.01  # ~1 % positive anchors, like RetinaNet
    labels[pos] = torch.randint(0, C, (int(pos.sum()),), generator=g)
    weights = (torch.rand(N, generator=g) > 0.02).float()  # a few ignored anchors
    avg_factor = torch.tensor(float(max(int(pos.sum()), 1)))
    return (pred.requires_grad_(True), labels.to(device), weights.to(device),
            avg_factor.to(device))


def fused_bytes(N, C, dtype, mode):
    """Bytes a fused implementation must move in `mode`: the logits, an int64 label and an fp32
    weight per row, and the gradient it writes in the forward; NaN for 'bwd'
    (`common.fused_bytes`)."""
    return dense_bytes(N, C, dtype, mode, row_bytes=8 + 4)


def _one_hot(labels, C):
    return F.one_hot(labels, num_classes=C + 1)[:, :C]


def _ours():
    from mmdet_focal_triton import TritonFocalLoss

    return TritonFocalLoss(gamma=GAMMA, alpha=ALPHA)


def _mmcv():
    from mmdet.models.losses.focal_loss import sigmoid_focal_loss

    def mmcv_fn(p, lab, w, avg_factor=None):
        if not p.is_cuda:
            raise RuntimeError('mmcv CUDA op: CUDA only')
        return sigmoid_focal_loss(p, lab, w, GAMMA, ALPHA, 'mean', avg_factor)
    return mmcv_fn


def _mmdet_py():
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss

    def py(p, lab, w, avg_factor=None):
        return py_sigmoid_focal_loss(p, _one_hot(lab, p.shape[1]), w, GAMMA, ALPHA, 'mean',
                                     avg_factor)
    return py


def _compiled():
    return compile_once('focal', _mmdet_py)


def _torchvision():
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    def tv(p, lab, w, avg_factor=None):
        loss = tv_focal(p, _one_hot(lab, p.shape[1]).to(p.dtype), ALPHA, GAMMA, 'none')
        return (loss * w[:, None]).sum() / (avg_factor + torch.finfo(torch.float32).eps)
    return tv


IMPLS = {i.name: i for i in [
    Impl('ours', _ours, 'TritonFocalLoss', kernels=OUR_KERNELS, on_cpu=True,
         context=lambda: input_checks('async')),
    Impl('ours-nocheck', _ours, 'TritonFocalLoss, label-range check off', kernels=OUR_KERNELS,
         context=lambda: input_checks('off')),
    Impl('mmcv', _mmcv, "mmdet's FocalLoss on CUDA: mmcv's CUDA op", kernels=MMCV_KERNELS),
    Impl('mmdet-py', _mmdet_py, "mmdet's python path (one-hot + py_sigmoid_focal_loss)",
         on_cpu=True),
    Impl('compile', _compiled, 'torch.compile of the python path (dynamic shapes)'),
    Impl('torchvision', _torchvision, 'torchvision.ops.sigmoid_focal_loss on the one-hot'),
]}

FOCAL = register_family(LossFamily(
    name='focal', doc='sigmoid focal loss (RetinaNet, FCOS, ATSS, ...)', make_inputs=make_inputs,
    fused_bytes=fused_bytes, default_shapes=default_shapes, impls=IMPLS))
