"""The Gaussian-focal-loss operator (mmdet's `GaussianFocalLoss`): one forward that returns the
loss and writes the gradient.

`gaussian_focal_loss(pred, target, weight, pos_inds, pos_labels, avg_factor, alpha, gamma,
pos_weight, neg_weight, scale, flags, out_dtype)` returns the loss (reduced, or elementwise for
'none'); `pred` holds probabilities (the heads' sigmoid outputs) of any shape, contiguous;
`target` the Gaussian heatmap of pred's shape; `weight` None or pred's shape, contiguous;
`pos_inds` / `pos_labels` the positives of CenterNet-update's form (then pred is (N, C), the
kernel computes the negative term of every element and the positives are added by a small
second kernel; `pos_weight` is then their factor relative to `scale`); `flags` packs a
`GaussianFocalSpec`. Dispatch (`fused_op.run_forward`): the family's elementwise kernel with
this loss's element function (`kernels/gaussian_focal.py`, launched by `flat.FlatVariant`), or
the PyTorch implementation (`torch_gaussian_focal.py`); `fused_op.FusedLossOp` makes the eager
`GaussianFocalLossFunction` and the registered op
`torch.ops.mmdet_focal_triton.gaussian_focal_loss`.
"""
import torch
from torch import Tensor

from . import checks, launcher, torch_gaussian_focal
from .flat import FlatVariant
from .fused_op import FusedLossOp, elementwise_loss_shape, run_forward
from .spec import GaussianFocalSpec
from .torch_common import EPS

POS_BLOCK = 128  # positives per step of the positives' kernel
_MODES = (0.0, 2.0, 4.0)  # the exponents `_pow` (kernels/gaussian_focal.py) has a case for
_positives_kernel = launcher.lazy_kernel('gaussian_focal', 'gaussian_positives_kernel')


_Variant = FlatVariant.of(('gaussian_focal', 'gaussian_focal_element'), GaussianFocalSpec)


def _add_positives(pred: Tensor, pos_inds: Tensor, pos_labels: Tensor, avg_factor, loss: Tensor,
                   grad: Tensor | None, alpha: float, alpha_mode: int, factor: float,
                   check: bool, device_index: int) -> None:
    """The positives of the pos_inds form: their loss added to `loss` (one element, in place)
    and their gradient to `grad` (an accumulating scatter: duplicates add up). Triton's JIT
    launch (~20 µs of host time): the form is CenterNet-update's, one call per iteration."""
    npos, dev = pos_inds.numel(), pred.device
    dm = launcher.dummy(device_index, dev)  # the pointer arguments a call leaves unread
    idx = torch.empty(npos, dtype=torch.int64, device=dev)
    pg = torch.empty(npos, dtype=loss.dtype if grad is None else grad.dtype, device=dev)
    args = (pred, pos_inds, pos_labels, idx, pg, loss, checks.flag_arg(device_index) if check
            else dm, dm if avg_factor is None else avg_factor, npos, *pred.shape, alpha, factor,
            EPS, alpha_mode, avg_factor is not None, grad is not None, check, POS_BLOCK)
    with launcher.device_guard(device_index):
        _positives_kernel().launch(None, 1, launcher.current_stream(device_index), args,
                                   dict(num_warps=4))
    if grad is not None:
        grad.view(-1).index_put_((idx,), pg, accumulate=True)


def _launch(pred: Tensor, target: Tensor, weight: Tensor | None, pos_inds: Tensor | None,
            pos_labels: Tensor | None, avg_factor: Tensor | None, upstream: Tensor | None,
            alpha: float, gamma: float, pos_weight: float, neg_weight: float, scale: float,
            spec: GaussianFocalSpec, flags: int, out_dtype: torch.dtype, loss_shape: tuple,
            device_index: int):
    """(loss, grad) from the element kernel, and the pos_inds form's positives added."""
    # the positives add to the sum in fp32: a float16 / bfloat16 result is rounded after
    kdt = torch.float32 if pos_inds is not None and out_dtype.itemsize < 4 else out_dtype
    modes = (launcher.exponent_mode(alpha, _MODES), launcher.exponent_mode(gamma, _MODES),
             spec.neg_only)
    loss, grad = _Variant.run(pred, target, weight, avg_factor, upstream,
                              (alpha, gamma, pos_weight, neg_weight), modes, scale, spec, flags,
                              kdt, loss_shape, device_index)
    check = spec.check and checks._MODE != 'off'
    if pos_inds is not None:
        _add_positives(pred, pos_inds, pos_labels, avg_factor, loss, grad, alpha,
                       modes[0], pos_weight * scale, check, device_index)
        loss = loss.to(out_dtype)
    if check and checks._MODE == 'sync':
        checks.wait_and_poll(device_index)
    return loss, grad


def forward_impl(pred: Tensor, target: Tensor, weight: Tensor | None, pos_inds: Tensor | None,
                 pos_labels: Tensor | None, avg_factor: Tensor | None, alpha: float,
                 gamma: float, pos_weight: float, neg_weight: float, scale: float, flags: int,
                 out_dtype: torch.dtype,
                 upstream: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """(loss, grad): the reduced or elementwise loss (None when `upstream` is given: the
    backward of 'none'), and d loss / d pred (times `upstream`) or None."""
    spec = GaussianFocalSpec.unpack(flags)
    call = (pred.contiguous(), target.contiguous(), None if weight is None
            else weight.contiguous(), pos_inds, pos_labels, avg_factor,
            None if upstream is None else upstream.contiguous(), alpha, gamma, pos_weight,
            neg_weight, scale, spec)
    return run_forward(pred, spec, call, _launch, torch_gaussian_focal.forward, flags, scale,
                       out_dtype, elementwise_loss_shape(spec, pred, avg_factor), upstream)


FORCE_OP = False  # tests: route eager calls through the registered op as well
# the torch.library op `mmdet_focal_triton::gaussian_focal_loss` (+ its 'none' backward), its
# autograd, and the eager GaussianFocalLossFunction; calling it gives the loss
gaussian_focal_loss = FusedLossOp(
    'gaussian_focal_loss',
    'Tensor pred, Tensor target, Tensor? weight, Tensor? pos_inds, Tensor? pos_labels, '
    'Tensor? avg_factor',
    'float alpha, float gamma, float pos_weight, float neg_weight, float scale',
    GaussianFocalSpec, lambda *a: forward_impl(*a), elementwise_loss_shape, lambda: FORCE_OP)
GaussianFocalLossFunction = gaussian_focal_loss.Function
