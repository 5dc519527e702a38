"""The Gaussian-focal-loss operator (mmdet's `GaussianFocalLoss`): one forward that returns the
loss and writes the gradient.

`gaussian_focal_loss(pred, target, weight, pos_inds, pos_labels, avg_factor, alpha, gamma,
pos_weight, neg_weight, scale, flags, out_dtype)` returns the loss (reduced, or elementwise for
'none'); `pred` holds probabilities (the heads' sigmoid outputs) of any shape, contiguous;
`target` the Gaussian heatmap of pred's shape; `weight` None or pred's shape, contiguous;
`pos_inds` / `pos_labels` the positives of CenterNet-update's form (then pred is (N, C), the
kernel computes the negative term of every element and the positives are added by a small
second kernel; `pos_weight` is then their factor relative to `scale`); `flags` packs a
`GaussianFocalSpec`. Dispatch, launch and autograd follow `ops/focal.py`: the Triton kernels
(`kernels/gaussian_focal.py`, launched directly by `launcher.Kernel`) or the PyTorch
implementation (`torch_gaussian_focal.py`); `fused_op.FusedLossOp` makes the eager
`GaussianFocalLossFunction` and the registered op
`torch.ops.mmdet_focal_triton.gaussian_focal_loss`.
"""
import torch
from torch import Tensor

from . import checks, torch_gaussian_focal
from .fused_op import (
    FusedLossOp,
    elementwise_loss_shape,
    empty_result,
    new_outputs,
    triton_device,
)
from .launcher import (
    Variant,
    clear_on_retune,
    current_stream,
    device_guard,
    dtype_of,
    dummy,
    int_class,
    lazy_kernel,
    misaligned,
    variant,
)
from .spec import GaussianFocalSpec
from .torch_common import EPS

_CONFIG = dict(options=dict(num_warps=8), programs_per_sm=8)  # a streaming elementwise kernel
BLOCK = 2048  # elements per block: 8 per thread of 8 warps (two 16-byte loads of fp32)
POS_BLOCK = 128  # positives per step of the positives' kernel


_kernel = lazy_kernel('gaussian_focal', 'gaussian_focal_loss_kernel')
_positives_kernel = lazy_kernel('gaussian_focal', 'gaussian_positives_kernel')


def exponent_mode(e: float) -> int:
    """The kernels' ALPHA_MODE / GAMMA_MODE of an exponent: 0, 2, 4 (those values), 1 (any)."""
    return int(e) if e in (0.0, 2.0, 4.0) else 1


class _Variant(Variant):
    """Launch data of one variant (launcher.Variant): the constexpr arguments, a function of the
    variant key alone."""

    def __init__(self, device_index, flags, check, backward_of_none, alpha_mode, gamma_mode,
                 has_af, device):
        spec = GaussianFocalSpec.unpack(flags)
        super().__init__(_kernel(), _CONFIG, BLOCK, device_index,
                         device, spec, backward_of_none, check=check)
        self.tail = (alpha_mode, gamma_mode, spec.neg_only, spec.weighted, has_af,
                     backward_of_none, self.write_loss, self.reduce, self.write_grad, check,
                     BLOCK, 1024)

    def args(self, ptrs, call):
        n, num_blocks, alpha, gamma, pos_weight, neg_weight, scale = call
        return (*ptrs, n, num_blocks, alpha, gamma, pos_weight, neg_weight, scale, EPS,
                *self.tail)


_VARIANTS: dict = clear_on_retune({})


def _launch(pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: Tensor | None,
            upstream: Tensor | None, params: tuple, spec: GaussianFocalSpec, flags: int,
            out_dtype: torch.dtype, loss_shape: tuple, device_index: int):
    """Run the fused kernel on contiguous inputs: returns (loss, grad)."""
    alpha, gamma = params[:2]
    backward_of_none = upstream is not None
    check = spec.check and checks._MODE != 'off'
    vkey = (device_index, flags, check, backward_of_none, exponent_mode(alpha),
            exponent_mode(gamma), avg_factor is not None)
    v = variant(_VARIANTS, vkey, _Variant, pred.device)
    d = v.dummy_ptr
    ptrs = (pred.data_ptr(), target.data_ptr(), d if weight is None else weight.data_ptr(),
            d if upstream is None else upstream.data_ptr(),
            d if avg_factor is None else avg_factor.data_ptr())
    n = pred.numel()
    num_blocks = -(-n // BLOCK)
    key = (vkey, pred.dtype, int_class(n), int_class(num_blocks), target.dtype,
           dtype_of(weight), dtype_of(upstream), dtype_of(avg_factor), out_dtype,
           misaligned(ptrs))
    loss, grad = new_outputs(pred, loss_shape, out_dtype, backward_of_none, v.write_grad)
    v.launch(key, num_blocks, device_index, (pred, target, weight, upstream, avg_factor), ptrs,
             loss, grad, (n, num_blocks, *params))
    return loss, grad


def _add_positives(pred: Tensor, pos_inds: Tensor, pos_labels: Tensor, avg_factor, loss: Tensor,
                   grad: Tensor | None, alpha: float, factor: float, check: bool,
                   device_index: int) -> None:
    """The positives of the pos_inds form: their loss added to `loss` (one element, in place)
    and their gradient to `grad` (an accumulating scatter: duplicates add up). Triton's JIT
    launch (~20 µs of host time): the form is CenterNet-update's, one call per iteration."""
    npos = pos_inds.numel()
    dev = pred.device
    dm = dummy(device_index, dev)  # the pointer arguments a call leaves unread
    idx = pg = dm
    if grad is not None:
        idx = torch.empty(npos, dtype=torch.int64, device=dev)
        pg = torch.empty(npos, dtype=grad.dtype, device=dev)
    args = (pred, pos_inds, pos_labels, idx, pg, loss, checks.flag_arg(device_index) if check
            else dm, dm if avg_factor is None else avg_factor, npos, pred.shape[0],
            pred.shape[1], alpha, factor, EPS, exponent_mode(alpha), avg_factor is not None,
            grad is not None, check, POS_BLOCK)
    with device_guard(device_index):
        _positives_kernel().launch(None, 1, current_stream(device_index), args,
                                                    dict(num_warps=4))
    if grad is not None:
        grad.view(-1).index_put_((idx,), pg, accumulate=True)


def forward_impl(pred: Tensor, target: Tensor, weight: Tensor | None, pos_inds: Tensor | None,
                 pos_labels: Tensor | None, avg_factor: Tensor | None, alpha: float,
                 gamma: float, pos_weight: float, neg_weight: float, scale: float, flags: int,
                 out_dtype: torch.dtype,
                 upstream: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """(loss, grad): the reduced or elementwise loss (None when `upstream` is given: the
    backward of 'none'), and d loss / d pred (times `upstream`) or None."""
    spec = GaussianFocalSpec.unpack(flags)
    loss_shape = elementwise_loss_shape(spec, pred, avg_factor)
    if pred.numel() == 0:
        return empty_result(pred, spec.reduction, spec.write_grad, scale, out_dtype,
                            loss_shape, upstream)
    p = pred.contiguous()
    t = target.contiguous()
    w = None if weight is None else weight.contiguous()
    up = None if upstream is None else upstream.contiguous()
    device_index = triton_device(pred)
    if device_index is None:
        loss, grad = torch_gaussian_focal.forward(p, t, w, pos_inds, pos_labels, avg_factor,
                                                  up, alpha, gamma, pos_weight, neg_weight,
                                                  scale, spec, out_dtype, loss_shape)
    else:
        # the positives add to the sum in fp32: a float16 / bfloat16 result is rounded after
        kdt = (torch.float32 if pos_inds is not None and out_dtype.itemsize < 4
               else out_dtype)
        loss, grad = _launch(p, t, w, avg_factor, up, (alpha, gamma, pos_weight, neg_weight,
                                                       scale), spec, flags, kdt, loss_shape,
                             device_index)
        if pos_inds is not None:
            _add_positives(p, pos_inds, pos_labels, avg_factor, loss, grad, alpha,
                           pos_weight * scale, spec.check and checks._MODE != 'off',
                           device_index)
            loss = loss.to(out_dtype)
        if spec.check and checks._MODE == 'sync':
            checks.wait_and_poll(device_index)
    if grad is not None and grad.shape != pred.shape:
        grad = grad.view(pred.shape)
    return loss, grad


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
