"""Functional API: `sigmoid_focal_loss`, mmdet 3.3.0 `FocalLoss` semantics on any device."""
import math
import numbers

import torch
from torch import Tensor

from . import ops

__all__ = ['sigmoid_focal_loss']


def _check_tensor(name: str, t, pred: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    if t.device != pred.device:
        raise ValueError(f'{name} is on {t.device} but pred is on {pred.device}; '
                         'put them on the same device')


def _weight_mode(weight: Tensor | None, pred: Tensor) -> tuple[int, Tensor | None]:
    """Classify `weight` the way mmdet's py_sigmoid_focal_loss broadcasts it."""
    if weight is None:
        return ops.WEIGHT_NONE, None
    _check_tensor('weight', weight, pred)
    if weight.shape == pred.shape:
        return ops.WEIGHT_ELEM, weight
    N = pred.shape[0]
    if pred.dim() == 2 and weight.dim() >= 1 and weight.shape[0] == N and weight.numel() == N:
        return ops.WEIGHT_ROW, weight.reshape(N)  # (N,) or (N, 1): one weight per anchor
    if pred.dim() == 2 and weight.numel() == pred.numel() and weight.shape[0] != N:
        return ops.WEIGHT_ELEM, weight.reshape(pred.shape)  # flattened N*C (FSAF)
    raise ValueError(
        f'weight of shape {tuple(weight.shape)} does not fit pred of shape {tuple(pred.shape)}: '
        f'expected {tuple(pred.shape)}' + (f', ({N},) or {pred.numel()} elements flattened'
                                           if pred.dim() == 2 else ''))


def _out_dtype(pred: Tensor, weight: Tensor | None, avg_factor, reduction: str) -> torch.dtype:
    """The dtype mmdet's FocalLoss returns for these inputs (torch type promotion)."""
    dt = pred.dtype
    if weight is not None:  # loss * weight, both with dimensions
        dt = torch.promote_types(dt, weight.dtype)
    if reduction == 'mean' and isinstance(avg_factor, Tensor):
        # loss.sum() (0-d) / (avg_factor + eps): eps turns an integer avg_factor into float32
        af = avg_factor.dtype if avg_factor.is_floating_point() else torch.get_default_dtype()
        dt = af if avg_factor.dim() > 0 else torch.promote_types(dt, af)
    return dt


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

    Costs and checks: on CUDA one fused pass reads pred, target and weight once and, when pred
    needs a gradient, writes d loss / d pred in the same pass; no (N, C) loss tensor is written
    for 'mean' / 'sum'; the sum is reduced deterministically by a second one-program kernel.
    Class labels outside [0, C] (and probabilities outside [0, 1] when activated) are detected
    inside that pass, at no extra read of the data. By default the ValueError is raised without
    a host synchronisation: on CUDA at the first point after the call where the flag is known
    without waiting (the backward of that loss, the next call, or
    ``mmdet_focal_triton.check_pending_inputs()``); on CPU in the call itself.
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
    if reduction not in ops.REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if not isinstance(gamma, numbers.Real) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f'gamma must be a finite number >= 0, got {gamma!r}')
    if not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise ValueError(f'alpha must be a finite number, got {alpha!r}')
    if not isinstance(loss_weight, numbers.Real):
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
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f'class-index target must have an integer dtype, got {target.dtype}')
    if target.requires_grad:
        raise ValueError('target must not require grad: the fused focal loss differentiates '
                         'with respect to pred only')
    weight_mode, weight = _weight_mode(weight, pred)
    if weight is not None and weight.requires_grad:
        raise ValueError('weight must not require grad: the fused focal loss differentiates '
                         'with respect to pred only')

    af_tensor = None
    af_value = None
    if avg_factor is not None:
        if isinstance(avg_factor, Tensor):
            if avg_factor.numel() != 1 or avg_factor.dim() > 1:
                raise ValueError('avg_factor must be a number or a one-element tensor of shape () '
                                 f'or (1,), got shape {tuple(avg_factor.shape)}')
            if avg_factor.is_complex() or avg_factor.dtype == torch.bool:
                raise TypeError(f'avg_factor must be real, got dtype {avg_factor.dtype}')
            af_tensor = avg_factor.detach().to(pred.device, non_blocking=True)
        elif isinstance(avg_factor, numbers.Real) and not isinstance(avg_factor, bool):
            af_value = float(avg_factor)
        else:
            raise TypeError('avg_factor must be None, a number or a one-element tensor, got '
                            f'{type(avg_factor).__name__}')
        if reduction == 'sum':
            raise ValueError('avg_factor can not be used with reduction="sum"')

    red = ops.REDUCTIONS[reduction]
    numel = pred.numel()
    scale = float(loss_weight)
    if red == ops.MEAN and af_tensor is None:
        if af_value is not None:
            scale = scale / (af_value + ops.EPS)
        else:
            scale = scale / numel if numel else float('nan')
    out_dtype = _out_dtype(pred, weight, af_tensor if red == ops.MEAN else None, reduction)
    write_grad = red != ops.NONE and pred.requires_grad and torch.is_grad_enabled()
    check = ops.input_checks_enabled() and (index_target or activated)
    loss, _ = ops.focal_loss(
        pred, target, weight, af_tensor if red == ops.MEAN else None, float(gamma), float(alpha),
        scale, scale, red, weight_mode, index_target, bool(activated), write_grad, check,
        out_dtype)
    return loss
