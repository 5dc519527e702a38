"""Functional API of the focal family, mmdet 3.3.0's semantics on any device:
`sigmoid_focal_loss` (FocalLoss), `quality_focal_loss`, `varifocal_loss`,
`gaussian_focal_loss`."""
import math
import numbers

import torch
from torch import Tensor

from .ops import checks
from .ops.focal import focal_loss
from .ops.gaussian_focal import gaussian_focal_loss as _gaussian_focal_op
from .ops.quality_focal import quality_focal_loss as _quality_focal_op
from .ops.spec import (
    MEAN,
    NONE,
    REDUCTIONS,
    WEIGHT_ELEM,
    WEIGHT_NONE,
    WEIGHT_ROW,
    FocalSpec,
    GaussianFocalSpec,
    QualityFocalSpec,
    VarifocalSpec,
)
from .ops.varifocal import varifocal_loss as _varifocal_op

EPS = float(torch.finfo(torch.float32).eps)  # mmdet's avg_factor epsilon

__all__ = ['sigmoid_focal_loss', 'quality_focal_loss', 'varifocal_loss', 'gaussian_focal_loss']


def _finite(v) -> bool:
    """A finite real number (not a bool); the common float case without the ABC check."""
    return ((type(v) is float or (isinstance(v, numbers.Real) and not isinstance(v, bool)))
            and math.isfinite(v))


_INDEX_DTYPES = {torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16,
                 torch.uint32, torch.uint64}


def _check_tensor(name: str, t, pred: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    # ints and flags first: creating torch.device objects costs more than the whole check
    if (t.get_device() != pred.get_device() or t.is_cuda != pred.is_cuda
            or t.is_meta != pred.is_meta) and t.device != pred.device:
        raise ValueError(f'{name} is on {t.device} but pred is on {pred.device}; '
                         'put them on the same device')


def _weight_mode(weight: Tensor | None, pred: Tensor) -> tuple[int, Tensor | None]:
    """Classify `weight` the way mmdet's py_sigmoid_focal_loss broadcasts it."""
    if weight is None:
        return WEIGHT_NONE, None
    _check_tensor('weight', weight, pred)
    if weight.shape == pred.shape:
        return WEIGHT_ELEM, weight
    N = pred.shape[0]
    if pred.dim() == 2 and weight.dim() >= 1 and weight.shape[0] == N and weight.numel() == N:
        # (N,) or (N, 1): one weight per anchor
        return WEIGHT_ROW, weight if weight.dim() == 1 else weight.reshape(N)
    if pred.dim() == 2 and weight.numel() == pred.numel() and weight.shape[0] != N:
        return WEIGHT_ELEM, weight.reshape(pred.shape)  # flattened N*C (FSAF)
    raise ValueError(
        f'weight of shape {tuple(weight.shape)} does not fit pred of shape {tuple(pred.shape)}: '
        f'expected {tuple(pred.shape)}' + (f', ({N},) or {pred.numel()} elements flattened'
                                           if pred.dim() == 2 else ''))


def _out_dtype(pred: Tensor, weight: Tensor | None, avg_factor, reduction: str) -> torch.dtype:
    """The dtype mmdet's FocalLoss returns for these inputs (torch type promotion)."""
    dt = pred.dtype
    if weight is not None and weight.dtype != dt:  # loss * weight, both with dimensions
        dt = torch.promote_types(dt, weight.dtype)
    if reduction == 'mean' and isinstance(avg_factor, Tensor):
        # loss.sum() (0-d) / (avg_factor + eps): eps turns an integer avg_factor into float32
        af = avg_factor.dtype if avg_factor.is_floating_point() else torch.get_default_dtype()
        dt = af if avg_factor.dim() > 0 else torch.promote_types(dt, af)
    return dt


def _avg_factor(avg_factor, reduction: str, pred: Tensor):
    """(tensor on pred's device or None, number or None) of an avg_factor, checked as mmdet's
    weight_reduce_loss uses it."""
    if avg_factor is None:
        return None, None
    if isinstance(avg_factor, Tensor):
        if avg_factor.numel() != 1 or avg_factor.dim() > 1:
            raise ValueError('avg_factor must be a number or a one-element tensor of shape () '
                             f'or (1,), got shape {tuple(avg_factor.shape)}')
        if avg_factor.is_complex() or avg_factor.dtype == torch.bool:
            raise TypeError(f'avg_factor must be real, got dtype {avg_factor.dtype}')
        af = avg_factor.detach() if avg_factor.requires_grad else avg_factor
        if af.get_device() != pred.get_device() or af.is_cuda != pred.is_cuda:
            af = af.to(pred.device, non_blocking=True)
        value = None
    elif type(avg_factor) is float or (isinstance(avg_factor, numbers.Real)
                                       and not isinstance(avg_factor, bool)):
        af, value = None, float(avg_factor)
    else:
        raise TypeError('avg_factor must be None, a number or a one-element tensor, got '
                        f'{type(avg_factor).__name__}')
    if reduction == 'sum':
        raise ValueError('avg_factor can not be used with reduction="sum"')
    return af, value


def sigmoid_focal_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None,
                       gamma: float = 2.0, alpha: float = 0.25, reduction: str = 'mean',
                       avg_factor: None | float | int | Tensor = None, *,
                       activated: bool = False, loss_weight: float = 1.0) -> Tensor:
    """Sigmoid focal loss with exactly the semantics of mmdet 3.3.0's ``FocalLoss``.

    Args:
        pred: logits of shape (N, C), or any shape with a dense target. With ``activated=True``,
            probabilities in [0, 1] instead of logits. fp32, fp16, bf16 (fp64 too); the
            arithmetic is fp32 on CUDA whatever the dtype. Any strides.
        target: either class indices of shape (N,) and integer dtype, where ``c`` in [0, C-1]
            marks column c positive and ``C`` means background (mmcv's convention, what every
            mmdet 3.x head passes; no one-hot matrix is built), or a dense target of pred's shape
            (one-hot or soft, in [0, 1]).
        weight: None, pred's shape, (N,) / (N, 1) per anchor, or N*C elements flattened (FSAF).
        gamma, alpha: focal parameters (gamma >= 0).
        reduction: 'none', 'mean' or 'sum'.
        avg_factor: None, a number, or a one-element tensor (0-d or shape (1,), which gives a
            shape-(1,) loss as in mmdet). With 'mean' the loss is ``sum / (avg_factor + eps)``;
            ignored with 'none'; an error with 'sum'. A tensor is never synchronised to the host.
        activated: pred holds probabilities (TOOD, DDQ): plain BCE on them, as mmdet.
        loss_weight: multiplies the result (folded into the kernel, so the upstream gradient of
            a plain sum of losses stays 1 and the backward pass costs nothing).

    Returns:
        The loss in the dtype mmdet returns (pred's, promoted by weight / avg_factor tensors).
        An empty input gives 0 for 'sum' and with avg_factor, an empty tensor for 'none', and
        NaN for 'mean' without avg_factor (torch's mean of nothing, like mmdet).

    Costs and checks: on CUDA one kernel launch reads pred, target and weight once and, when
    pred needs a gradient, writes d loss / d pred in the same pass; no (N, C) loss tensor is
    written for 'mean' / 'sum'; the sum is finished inside that launch in a fixed order
    (deterministic). The backward is one more launch, which does nothing when the upstream
    gradient is 1. Class labels outside [0, C] (and probabilities outside [0, 1] when activated)
    are detected inside that pass, at no extra read of the data. By default the ValueError is
    raised without a host synchronisation: the kernel writes a flag in pinned host memory, read
    at the next call, in the backward of that loss, or by
    ``mmdet_focal_triton.check_pending_inputs()``; on CPU the call itself raises.
    ``set_input_checks('sync')`` raises in the call itself at the cost of one
    device-to-host synchronisation; ``set_input_checks(False)`` (or MMDET_FOCAL_TRITON_CHECK=off)
    turns the check off: such labels then count as background, and nothing reads out of bounds.
    Argument errors (types, shapes, devices) cost nothing on the device and raise
    TypeError / ValueError naming the argument.
    """
    if not isinstance(pred, Tensor):
        raise TypeError(f'pred must be a torch.Tensor, got {type(pred).__name__}')
    if not pred.is_floating_point():
        raise TypeError(f'pred must be a floating-point tensor, got dtype {pred.dtype}')
    if pred.dim() == 0:
        raise ValueError('pred must have at least one dimension')
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if not _finite(gamma) or gamma < 0:
        raise ValueError(f'gamma must be a finite number >= 0, got {gamma!r}')
    if not _finite(alpha):
        raise ValueError(f'alpha must be a finite number, got {alpha!r}')
    if type(loss_weight) is not float and not isinstance(loss_weight, numbers.Real):
        raise TypeError(f'loss_weight must be a number, got {type(loss_weight).__name__}')
    _check_tensor('target', target, pred)
    if target.dim() == pred.dim():
        index_target = False
        if target.shape != pred.shape:
            raise ValueError(f'a dense target must have pred\'s shape {tuple(pred.shape)}, got '
                             f'{tuple(target.shape)}')
    else:
        index_target = True
        if pred.dim() != 2 or target.dim() != 1 or target.shape[0] != pred.shape[0]:
            raise ValueError(
                f'target of shape {tuple(target.shape)} does not fit pred of shape '
                f'{tuple(pred.shape)}: expected class indices of shape (N,) with pred (N, C), '
                'or a dense target of pred\'s shape')
        if target.dtype not in _INDEX_DTYPES:
            raise TypeError(f'class-index target must have an integer dtype, got {target.dtype}')
    if target.requires_grad:
        raise ValueError('target must not require grad: the fused focal loss differentiates '
                         'with respect to pred only')
    weight_mode, weight = _weight_mode(weight, pred)
    if weight is not None and weight.requires_grad:
        raise ValueError('weight must not require grad: the fused focal loss differentiates '
                         'with respect to pred only')

    red, af_tensor, scale = _reduction_and_scale(avg_factor, reduction, pred, loss_weight,
                                                 pred.numel())
    out_dtype = _out_dtype(pred, weight, af_tensor, reduction)
    write_grad = red != NONE and pred.requires_grad and torch.is_grad_enabled()
    check = checks._MODE != 'off' and (index_target or activated)
    flags = FocalSpec.flags(red, weight_mode, index_target, bool(activated), write_grad, check)
    return focal_loss(pred, target, weight, af_tensor, float(gamma), float(alpha), scale, flags,
                      out_dtype)


# ---- the rest of mmdet's focal family: QualityFocalLoss, VarifocalLoss ---------------------
_DTYPES: dict = {}


def _family_out_dtype(base: torch.dtype, weight: Tensor | None,
                      af: Tensor | None) -> torch.dtype:
    """The dtype of mmdet's `weight_reduce_loss(loss, weight, reduction, avg_factor)` for a loss
    of dtype `base` with dimensions: `loss * weight`, then `loss.sum() / (avg_factor + eps)`
    (`af`: a tensor avg_factor of a 'mean'), by torch's own promotion (cached)."""
    key = (base, None if weight is None else (weight.dtype, weight.dim() == 0),
           None if af is None else (af.dtype, af.dim() == 0))
    dt = _DTYPES.get(key)
    if dt is None:
        loss = torch.ones(1, dtype=base)
        if weight is not None:
            loss = loss * torch.ones(() if weight.dim() == 0 else (1,), dtype=weight.dtype)
        if af is not None:
            loss = loss.sum() / (torch.ones(() if af.dim() == 0 else (1,), dtype=af.dtype) + EPS)
        dt = _DTYPES[key] = loss.dtype
    return dt


def _family_common(pred: Tensor, reduction: str, loss_weight) -> None:
    if not isinstance(pred, Tensor):
        raise TypeError(f'pred must be a torch.Tensor, got {type(pred).__name__}')
    if not pred.is_floating_point():
        raise TypeError(f'pred must be a floating-point tensor, got dtype {pred.dtype}')
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if type(loss_weight) is not float and not isinstance(loss_weight, numbers.Real):
        raise TypeError(f'loss_weight must be a number, got {type(loss_weight).__name__}')


def _no_grad_input(name: str, t: Tensor) -> None:
    if t.requires_grad:
        raise ValueError(f'{name} must not require grad: the fused loss differentiates with '
                         'respect to pred only')


def _broadcasts_to(shape, target) -> bool:
    """Whether `shape` broadcasts to `target` without changing it (torch's rules)."""
    return len(shape) <= len(target) and all(
        a in (1, b) for a, b in zip(reversed(shape), reversed(target)))


def _real_target(name: str, t: Tensor) -> Tensor:
    if t.is_complex():
        raise TypeError(f'{name} must be real, got dtype {t.dtype}')
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def _dense_target(target, pred: Tensor) -> Tensor:
    """A target of pred's shape (VFL, Gaussian), checked; booleans viewed as uint8."""
    _check_tensor('target', target, pred)
    if target.shape != pred.shape:
        raise ValueError(f"target must have pred's shape {tuple(pred.shape)}, got "
                         f'{tuple(target.shape)}')
    target = _real_target('target', target)
    _no_grad_input('target', target)
    return target


def _broadcast_weight(weight, pred: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """(weight as given, or viewed as real; the same broadcast to pred's shape: a view with 0
    strides where it broadcasts), checked as mmdet's elementwise `loss * weight` takes it."""
    if weight is None:
        return None, None
    _check_tensor('weight', weight, pred)
    _no_grad_input('weight', weight)
    if not _broadcasts_to(weight.shape, pred.shape):
        raise ValueError(f'weight of shape {tuple(weight.shape)} does not broadcast to '
                         f'pred\'s shape {tuple(pred.shape)}')
    weight = _real_target('weight', weight)
    return weight, weight if weight.shape == pred.shape else weight.expand(pred.shape)


def _reduction_and_scale(avg_factor, reduction: str, pred: Tensor, loss_weight,
                         count: int) -> tuple[int, Tensor | None, float]:
    """(the reduction's code, the avg_factor tensor a 'mean' divides by in the kernel (else
    None), the factor of the summed loss): loss_weight, divided for 'mean' by a number
    avg_factor + eps, or without avg_factor by `count` (the elements or rows averaged)."""
    af_tensor, af_value = _avg_factor(avg_factor, reduction, pred)
    red = REDUCTIONS[reduction]
    af_tensor = af_tensor if red == MEAN else None
    scale = float(loss_weight)
    if red == MEAN and af_tensor is None:
        if af_value is not None:
            scale = scale / (af_value + EPS)
        else:
            scale = scale / count if count else float('nan')
    return red, af_tensor, scale


def _write_grad(red: int, pred: Tensor) -> bool:
    """Whether the forward writes d loss / d pred: a reduced loss of a pred that needs it."""
    return red != NONE and pred.requires_grad and torch.is_grad_enabled()


def quality_focal_loss(pred: Tensor, target, weight: Tensor | None = None,
                       reduction: str = 'mean', avg_factor: None | float | int | Tensor = None,
                       beta: float = 2.0, *, activated: bool = False,
                       loss_weight: float = 1.0) -> Tensor:
    """Quality focal loss with exactly the semantics of mmdet 3.3.0's ``QualityFocalLoss``
    (GFL, RTMDet, TOOD, DDQ; its functions ``quality_focal_loss``,
    ``quality_focal_loss_with_prob`` and ``quality_focal_loss_tensor_target``), fused.

    Element loss, p = sigmoid(pred) (pred itself with ``activated=True``) and t the element's
    quality target: ``BCE(pred, t) * |p - t| ** beta``; each row is summed over the classes,
    then weighted and reduced.

    Args:
        pred: (N, C) logits (probabilities with ``activated=True``); with a dense target any
            (N, C, ...) shape (the sum runs over dim 1). fp32, fp16, bf16, fp64; fp32 arithmetic.
        target: ``(labels, scores)`` (a tuple or list of two tensors, as mmdet's heads pass):
            integer class indices (N,) with ``C`` = background, and the quality score (N,) of
            each row's labelled class; or a dense quality target of pred's shape (one-hot with
            soft values). No one-hot matrix is built for the pair.
        weight: None, or a weight of the per-row loss: shape (N,) (the per-row loss's shape
            (N, ...) for dense N-d targets), or anything that broadcasts to it without changing
            it ((), (1,)).
        reduction: 'none' (the per-row loss, shape (N,)), 'mean' (over rows) or 'sum'.
        avg_factor: None, a number or a one-element tensor (0-d, or (1,) which gives a (1,)
            loss); with 'mean' the loss is ``sum / (avg_factor + eps)``; an error with 'sum'.
        beta: the exponent of the modulating factor (>= 0).
        activated: pred holds probabilities (DDQ's auxiliary loss).
        loss_weight: multiplies the result (folded into the kernel).

    Returns:
        The loss in the dtype mmdet returns (pred's, promoted by weight / avg_factor tensors).

    Labels outside [0, C] (and probabilities outside [0, 1] when activated) raise a ValueError
    like ``sigmoid_focal_loss`` (asynchronously on CUDA: see ``set_input_checks``); mmdet counts
    such labels as background, which is what the loss does with the checks off.
    """
    _family_common(pred, reduction, loss_weight)
    if not _finite(beta) or beta < 0:
        raise ValueError(f'beta must be a finite number >= 0, got {beta!r}')
    score = None
    if isinstance(target, Tensor):  # quality_focal_loss_tensor_target
        _check_tensor('target', target, pred)
        if target.shape != pred.shape:
            raise ValueError(f"a dense target must have pred's shape {tuple(pred.shape)}, got "
                             f'{tuple(target.shape)}')
        if pred.dim() < 2:
            raise ValueError('pred must have at least two dimensions (N, C, ...) with a dense '
                             f'target (the loss sums over dim 1), got shape {tuple(pred.shape)}')
        target = _real_target('target', target)
        _no_grad_input('target', target)
        index_target = False
        rows_shape = pred.shape[:1] + pred.shape[2:]
    elif isinstance(target, (tuple, list)):
        assert len(target) == 2, ('target for QFL must be a tuple of two elements, including '
                                  'category label and quality label, respectively')
        target, score = target
        _check_tensor('target[0] (labels)', target, pred)
        _check_tensor('target[1] (scores)', score, pred)
        if pred.dim() != 2:
            raise ValueError('pred must have shape (N, C) with (labels, scores) targets, got '
                             f'{tuple(pred.shape)}')
        N = pred.shape[0]
        if target.dim() != 1 or score.dim() != 1 or target.shape[0] != N or score.shape[0] != N:
            raise ValueError(f'labels and scores must have shape ({N},) for pred of shape '
                             f'{tuple(pred.shape)}, got {tuple(target.shape)} and '
                             f'{tuple(score.shape)}')
        if target.dtype not in _INDEX_DTYPES:
            raise TypeError(f'labels must have an integer dtype, got {target.dtype}')
        if not score.is_floating_point():
            raise TypeError(f'scores must have a floating-point dtype, got {score.dtype}')
        if score.requires_grad:
            _no_grad_input('target[1] (scores)', score)
        index_target = True
        rows_shape = pred.shape[:1]
    else:
        raise TypeError('target must be a (labels, scores) pair or a tensor of pred\'s shape, '
                        f'got {type(target).__name__}')
    C = pred.shape[1]
    pred2, target2 = pred, target
    if pred.dim() > 2:  # (N, C, ...): classes last, one row per (n, ...)
        pred2 = pred.movedim(1, -1).reshape(-1, C)
        target2 = target.movedim(1, -1).reshape(-1, C)
    if weight is not None:
        _check_tensor('weight', weight, pred)
        if weight.requires_grad:
            _no_grad_input('weight', weight)
        if weight.dtype == torch.bool or weight.is_complex():
            weight = _real_target('weight', weight)
        if weight.shape == rows_shape:  # the common case: one weight per row
            w = weight if weight.dim() == 1 else weight.reshape(-1)
        elif _broadcasts_to(weight.shape, rows_shape):
            w = weight.expand(rows_shape).reshape(-1)
        else:
            hint = (f'; mmdet would broadcast ({pred.shape[0]},) * {tuple(weight.shape)} to a '
                    'square matrix' if weight.dim() == 2 and weight.shape[-1] == 1 else '')
            raise ValueError(
                f'weight of shape {tuple(weight.shape)} does not fit the per-row loss of shape '
                f'{tuple(rows_shape)} (QualityFocalLoss sums each row over the classes, then '
                f'multiplies by weight): expected {tuple(rows_shape)} or a shape that '
                f'broadcasts to it{hint}')
    else:
        w = None
    red, af_tensor, scale = _reduction_and_scale(avg_factor, reduction, pred, loss_weight,
                                                 pred2.shape[0])
    out_dtype = _family_out_dtype(pred.dtype, weight, af_tensor)
    write_grad = _write_grad(red, pred)
    check = checks._MODE != 'off' and (index_target or activated)
    flags = QualityFocalSpec.flags(red, w is not None, index_target, bool(activated),
                                   write_grad, check)
    loss = _quality_focal_op(pred2, target2, score, w, af_tensor, float(beta), scale, flags,
                             out_dtype)
    if red == NONE and pred.dim() > 2:
        loss = loss.reshape(rows_shape)
    return loss


def varifocal_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None,
                   alpha: float = 0.75, gamma: float = 2.0, iou_weighted: bool = True,
                   reduction: str = 'mean', avg_factor: None | float | int | Tensor = None, *,
                   loss_weight: float = 1.0) -> Tensor:
    """Varifocal loss with exactly the semantics of mmdet 3.3.0's ``varifocal_loss`` /
    ``VarifocalLoss`` (VFNet), fused.

    Element loss, p = sigmoid(pred): ``BCE(pred, t) * t`` (``* 1`` without ``iou_weighted``)
    where t > 0, ``alpha * BCE(pred, t) * |p - t| ** gamma`` where t <= 0; the gradient flows
    through the modulating factor as in mmdet (which does not detach it).

    Args:
        pred: logits, (N, C) or any shape. fp32, fp16, bf16, fp64; fp32 arithmetic.
        target: IoU-aware classification target of pred's shape (any real dtype).
        weight: None or a tensor that broadcasts to pred's shape ((N, C), (N, 1), (C,), ()...).
        alpha, gamma, iou_weighted: mmdet's parameters (gamma >= 0).
        reduction, avg_factor, loss_weight: as ``sigmoid_focal_loss``.

    Returns:
        The loss in the dtype mmdet returns: at least float32 (mmdet's focal weight is a float32
        tensor), promoted by weight / avg_factor tensors.
    """
    _family_common(pred, reduction, loss_weight)
    if pred.dim() == 0:
        raise ValueError('pred must have at least one dimension')
    if not _finite(gamma) or gamma < 0:
        raise ValueError(f'gamma must be a finite number >= 0, got {gamma!r}')
    if not _finite(alpha):
        raise ValueError(f'alpha must be a finite number, got {alpha!r}')
    target = _dense_target(target, pred)
    weight, w = _broadcast_weight(weight, pred)
    red, af_tensor, scale = _reduction_and_scale(avg_factor, reduction, pred, loss_weight,
                                                 pred.numel())
    out_dtype = _family_out_dtype(torch.promote_types(pred.dtype, torch.float32), weight,
                                  af_tensor)
    write_grad = _write_grad(red, pred)
    flags = VarifocalSpec.flags(red, w is not None, bool(iou_weighted), write_grad)
    return _varifocal_op(pred, target, w, af_tensor, float(alpha), float(gamma), scale, flags,
                         out_dtype)


def _positives(pos_inds, pos_labels, pred: Tensor, reduction: str, weight) -> tuple:
    """CenterNet-update's (pos_inds, pos_labels), checked: two integer vectors of one length (a
    boolean row mask for pos_inds is turned into its indices)."""
    if pos_inds is None:
        if pos_labels is not None:
            raise ValueError('pos_labels is given without pos_inds: pass both or neither')
        return None, None
    if pos_labels is None:
        raise ValueError('pos_inds is given without pos_labels: pass both or neither')
    _check_tensor('pos_inds', pos_inds, pred)
    _check_tensor('pos_labels', pos_labels, pred)
    if pred.dim() != 2:
        raise ValueError('pred must have shape (N, C) with pos_inds / pos_labels, got '
                         f'{tuple(pred.shape)}')
    if reduction == 'none':
        raise ValueError("reduction='none' can not be used with pos_inds: the positives' loss "
                         "(one per positive) and the negatives' (pred's shape) have no common "
                         'shape (mmdet would broadcast them against each other)')
    if weight is not None:
        raise ValueError('weight can not be used with pos_inds (mmdet ignores it in that form)')
    if pos_inds.dtype == torch.bool:
        pos_inds = pos_inds.nonzero().squeeze(1)
    for name, t in (('pos_inds', pos_inds), ('pos_labels', pos_labels)):
        if t.dtype not in _INDEX_DTYPES or t.dim() != 1:
            raise TypeError(f'{name} must be a 1-d tensor of integers, got dtype {t.dtype} and '
                            f'shape {tuple(t.shape)}')
    if pos_inds.shape != pos_labels.shape:
        raise ValueError('pos_inds and pos_labels must have one length, got '
                         f'{tuple(pos_inds.shape)} and {tuple(pos_labels.shape)}')
    return pos_inds, pos_labels


def gaussian_focal_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None,
                        alpha: float = 2.0, gamma: float = 4.0, pos_weight: float = 1.0,
                        neg_weight: float = 1.0, reduction: str = 'mean',
                        avg_factor: None | float | int | Tensor = None, *,
                        pos_inds: Tensor | None = None, pos_labels: Tensor | None = None,
                        loss_weight: float = 1.0) -> Tensor:
    """Gaussian focal loss with the semantics of mmdet 3.3.0's ``GaussianFocalLoss`` (CenterNet,
    CenterNet-update, CornerNet, CentripetalNet; its functions ``gaussian_focal_loss`` and
    ``gaussian_focal_loss_with_pos_inds``), fused.

    Element loss, p the predicted probability and t the Gaussian target:
    ``pos_weight * -log(p) * (1 - p) ** alpha`` where t == 1, and
    ``neg_weight * -log(1 - p) * p ** alpha * (1 - t) ** gamma`` elsewhere.

    Args:
        pred: probabilities in [0, 1] (the heads' sigmoid outputs), any shape. fp32, fp16,
            bf16, fp64; fp32 arithmetic. Values outside [0, 1] raise a ValueError, like the
            other losses' label checks (asynchronously on CUDA: see ``set_input_checks``).
        target: the Gaussian heatmap of pred's shape, in [0, 1], 1 at the positives.
        weight: None or a tensor that broadcasts to pred's shape (the dense form only).
        alpha, gamma: the exponents (>= 0); pos_weight, neg_weight: the two terms' factors.
        reduction, avg_factor, loss_weight: as ``sigmoid_focal_loss``.
        pos_inds, pos_labels: CenterNet-update's form: pred (N, C), the positives are the
            elements (pos_inds[k], pos_labels[k]) (rows and classes, integer vectors of one
            length; a boolean row mask is accepted for pos_inds), the target only weights the
            negative term, which covers every element. The two terms are reduced separately
            (a 'mean' without avg_factor divides the positives' sum by their number) and added.

    Returns:
        The loss in the dtype mmdet returns (pred's and target's, promoted by weight /
        avg_factor tensors).

    Where it differs from mmdet, on purpose: mmdet adds eps = 1e-12 inside its logs; here the
    logs are exact. Where p is neither 0 nor 1 the two agree to ~1e-12 / p relative; at p = 0
    for a positive (p = 1 for a negative) the loss is +inf, as mathematics has it, where mmdet
    returns 27.6 and a gradient of ~1e12; a term whose factor is 0 is 0, never 0 * inf. In the
    pos_inds form, reduction='none' and weight raise a ValueError (mmdet broadcasts the two
    terms' shapes against each other, and ignores weight).
    """
    _family_common(pred, reduction, loss_weight)
    if pred.dim() == 0:
        raise ValueError('pred must have at least one dimension')
    for name, v in (('alpha', alpha), ('gamma', gamma)):
        if not _finite(v) or v < 0:
            raise ValueError(f'{name} must be a finite number >= 0, got {v!r}')
    for name, v in (('pos_weight', pos_weight), ('neg_weight', neg_weight)):
        if not _finite(v):
            raise ValueError(f'{name} must be a finite number, got {v!r}')
    target = _dense_target(target, pred)
    pos_inds, pos_labels = _positives(pos_inds, pos_labels, pred, reduction, weight)
    weight, w = _broadcast_weight(weight, pred)
    numel = pred.numel()
    red, af_tensor, scale = _reduction_and_scale(avg_factor, reduction, pred, loss_weight, numel)
    pos_factor = float(pos_weight)
    if pos_inds is not None and red == MEAN and avg_factor is None:
        # the positives' own mean: pos_weight / their number, relative to scale (1 / numel)
        npos = pos_inds.numel()
        pos_factor = pos_factor * numel / npos if npos else float('nan')
    out_dtype = _family_out_dtype(torch.promote_types(pred.dtype, target.dtype), weight,
                                  af_tensor)
    write_grad = _write_grad(red, pred)
    check = checks._MODE != 'off'
    flags = GaussianFocalSpec.flags(red, w is not None, pos_inds is not None, write_grad, check)
    return _gaussian_focal_op(pred, target, w, pos_inds, pos_labels, af_tensor, float(alpha),
                              float(gamma), pos_factor, float(neg_weight), scale, flags,
                              out_dtype)
