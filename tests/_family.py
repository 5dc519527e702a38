"""The focal family as the tests see it: one entry per loss, so that a test is written once and
parametrised over the losses (a new loss is one more entry).

Each entry says how to call the loss (ours, its float64 reference, mmdet's module, ours), what
its inputs look like (target and weight kinds, its parameters and the values worth testing),
and which backends run it. Calls use keywords only: the functional forms, the references and
the modules all take `pred, target, weight` and then keywords (`reduction`, `avg_factor`,
`loss_weight` and the loss's own parameters).
"""
import dataclasses
from collections.abc import Callable
from types import ModuleType

import torch
from _family_inputs import make_qfl_target, make_row_weight, make_vfl_target, make_vfl_weight
from _inputs import FOCAL_IMPLS, IMPLS, make_target, make_weight
from mmdet.models.losses import FocalLoss, QualityFocalLoss, VarifocalLoss
from reference import reference_focal_loss
from reference_family import reference_quality_focal_loss, reference_varifocal_loss

import mmdet_focal_triton as mft
from mmdet_focal_triton.ops import focal, quality_focal, varifocal


@dataclasses.dataclass(frozen=True)
class Loss:
    name: str  # the test id
    fn: Callable  # our functional form
    reference: Callable  # the float64 transcription of mmdet's formula
    module: type  # our mmdet module
    mmdet_module: type  # mmdet's, which ours subclasses or mirrors
    op: ModuleType  # ops/<loss>.py (FORCE_OP, forward_impl)
    backends: list  # pytest params: where the op runs
    targets: tuple  # target kinds of make_target (the first: what heads pass most)
    weights: tuple  # weight kinds of make_weight
    make_target: Callable  # (kind, N, C, device, generator) -> target
    make_weight: Callable  # (kind, N, C, device, generator) -> weight or None
    params: dict  # the loss's own parameters, mmdet's defaults
    param_values: dict  # values of each parameter worth testing
    activated: bool  # has activated=True (probabilities for pred)
    index_target: str | None  # the target kind holding class indices, if any
    row_loss: bool  # 'none' gives one loss per row (QFL sums over the classes)
    from_labels: Callable  # (labels (N,), scores (N,), C) -> the target heads would pass
    dense_shapes: tuple  # (pred shape, weight shape) of dense targets beyond (N, C)

    def __repr__(self):
        return self.name

    def call(self, pred, target, weight=None, **kw):
        return self.fn(pred, target, weight, **kw)

    def ref(self, pred, target, weight=None, **kw):
        """The float64 reference on CPU copies of the inputs."""
        return self.reference(cpu(pred), cpu(target), cpu(weight),
                              **{k: cpu(v) for k, v in kw.items()})

    def loss_shape(self, pred):
        """The shape of the 'none' loss."""
        return pred.shape[:1] + pred.shape[2:] if self.row_loss else pred.shape


def cpu(t):
    """t on the CPU (tensors, pairs of tensors); anything else unchanged."""
    if isinstance(t, tuple):
        return tuple(cpu(x) for x in t)
    return t.cpu() if isinstance(t, torch.Tensor) else t


def floats_to(t, dtype):
    """t with its floating-point tensors (also in pairs) in `dtype`: mmdet computes a float64
    loss in float64 only when scores, targets, weights and avg_factor are float64 too."""
    if isinstance(t, tuple):
        return tuple(floats_to(x, dtype) for x in t)
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return t.to(dtype)
    return t


def _qfl_weight(kind, N, C, device, g):
    return make_row_weight(kind, N, device, g)


def _dense_from_labels(labels, scores, C):
    """(N, C) zeros with each row's score at its label (background rows, label C: all zero)."""
    hit = labels[:, None] == torch.arange(C, device=labels.device)
    return torch.where(hit, scores[:, None].float(), torch.zeros((), device=labels.device))


FOCAL = Loss(
    name='focal', fn=mft.sigmoid_focal_loss, reference=reference_focal_loss,
    module=mft.TritonFocalLoss, mmdet_module=FocalLoss, op=focal, backends=FOCAL_IMPLS,
    targets=('index', 'onehot', 'soft'), weights=('none', 'row', 'row1', 'elem', 'flat'),
    make_target=make_target, make_weight=make_weight,
    params=dict(gamma=2.0, alpha=0.25),
    param_values=dict(gamma=[0.0, 0.5, 1.0, 2.0, 3.5], alpha=[0.25, 0.5, -1.0]),
    activated=True, index_target='index', row_loss=False,
    from_labels=lambda labels, scores, C: labels,
    dense_shapes=(((2, 9, 80), (2, 9, 80)), ((50,), (50,)), ((3, 4, 5, 6), (3, 4, 5, 6))))

QFL = Loss(
    name='qfl', fn=mft.quality_focal_loss, reference=reference_quality_focal_loss,
    module=mft.TritonQualityFocalLoss, mmdet_module=QualityFocalLoss, op=quality_focal,
    backends=IMPLS, targets=('tuple', 'dense'), weights=('none', 'row', 'scalar', 'one'),
    make_target=make_qfl_target, make_weight=_qfl_weight,
    params=dict(beta=2.0), param_values=dict(beta=[0.0, 0.5, 1.0, 2.0, 3.5]),
    activated=True, index_target='tuple', row_loss=True,
    from_labels=lambda labels, scores, C: (labels, scores),
    dense_shapes=(((3, 80, 5), (3, 5)), ((3, 80, 5), (5,)), ((2, 7, 4, 3), (2, 4, 3))))

VFL = Loss(
    name='vfl', fn=mft.varifocal_loss, reference=reference_varifocal_loss,
    module=mft.TritonVarifocalLoss, mmdet_module=VarifocalLoss, op=varifocal, backends=IMPLS,
    targets=('iou', 'soft'), weights=('none', 'elem', 'row1', 'col', 'scalar'),
    make_target=make_vfl_target, make_weight=make_vfl_weight,
    params=dict(alpha=0.75, gamma=2.0, iou_weighted=True),
    param_values=dict(alpha=[0.75, 0.0, 2.0], gamma=[0.0, 0.5, 1.0, 2.0, 3.5],
                      iou_weighted=[True, False]),
    activated=False, index_target=None, row_loss=False, from_labels=_dense_from_labels,
    dense_shapes=(((2, 9, 80), (9, 1)), ((50,), ()), ((3, 4, 5, 6), (3, 4, 5, 6))))

LOSSES = (FOCAL, QFL, VFL)
BY_NAME = {loss.name: loss for loss in LOSSES}
