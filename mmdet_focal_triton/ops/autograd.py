"""Autograd glue shared by the fused losses.

The forward of a reduced loss ('mean' / 'sum') writes d loss / d pred, already multiplied by
weights, normalisation and loss weight. The backward only multiplies that buffer in place by the
upstream gradient (`scale_grad_`: one launch that does no pass over the data when the upstream
gradient is 1, as for a plain sum of losses) and hands it to autograd, which adopts it as
`pred.grad` without a copy (it holds the only reference). float16 inputs are the exception
(`grad_buffer_dtype`): their buffer is float32, and the backward writes upstream x buffer into
a new float16 tensor. For 'none' the forward writes the
elementwise loss, and the backward recomputes the gradient times the upstream gradient in one
fused pass (the loss's own `none_backward`).

Eager calls use a `torch.autograd.Function` (`eager=True` below: tensors kept as attributes of
the context, implementations called directly); under torch.compile the registered
`torch.library` op's autograd runs the same code with saved tensors and the ops' dispatcher.
"""
import torch
from torch import Tensor

from . import checks
from .backend import use_triton
from .launcher import Kernel, clear_on_retune, current_stream, device_guard, int_class
from .spec import NONE
from .tuning import num_programs


def grad_buffer_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the gradient a reduced loss writes in its forward: the input's, but float32
    for float16 inputs. The buffer is written before the upstream gradient is known, so it
    cannot profit from AMP's loss scaling: d loss / d pred of a normalised loss is typically
    1e-9-1e-5 per element, below float16's normal range (6.1e-5), where it would lose its digits
    or flush to 0 (bfloat16 has float32's range). mmengine's fp16 AmpOptimWrapper multiplies the
    upstream gradient by 2^16 or more, and upstream x buffer is representable in float16 again."""
    return torch.float32 if dtype == torch.float16 else dtype


_SCALE_BLOCK = 4096
_SCALE_OPTIONS = dict(num_warps=8)
_scale_kernel = None
# (device, n, grad dtype, scale dtype) -> (programs, compiled entry): a call's whole launch
# data in one lookup once the kernel of its specialisation is compiled
_SCALE_PLANS = clear_on_retune({})


def _scale_grad_impl(grad: Tensor, scale: Tensor) -> None:
    """grad *= scale (one element) in place; on the GPU a persistent grid (4 programs per SM)
    that returns at once when scale == 1."""
    n = grad.numel()
    if n == 0:
        return
    if not use_triton(grad):
        grad.mul_(scale.reshape(()).to(grad.dtype))
        return
    idx = grad.get_device()
    ps = scale.data_ptr()
    plan = _SCALE_PLANS.get((idx, n, grad.dtype, scale.dtype)) if ps & 15 == 0 else None
    if plan is not None:  # direct launch, pointers as ints (launcher.Kernel)
        with device_guard(idx):
            _scale_kernel.run(plan[1], plan[0], current_stream(idx),
                              (grad.data_ptr(), ps, n, _SCALE_BLOCK))
        return
    _scale_grad_first(grad, scale, n, idx, ps)


def _scale_grad_first(grad: Tensor, scale: Tensor, n: int, idx: int, ps: int) -> None:
    """The JIT launch of the rescale (the first of its specialisation, or a misaligned scale),
    which compiles the kernel and makes the plan of later calls."""
    global _scale_kernel
    if _scale_kernel is None:
        from ..kernels.common import scale_kernel

        _scale_kernel = Kernel(scale_kernel)
    programs = num_programs(idx, -(-n // _SCALE_BLOCK), 4)
    key = (idx, grad.dtype, scale.dtype, int_class(n)) if ps & 15 == 0 else None
    with device_guard(idx):
        _scale_kernel.launch(key, programs, current_stream(idx), (grad, scale, n, _SCALE_BLOCK),
                             _SCALE_OPTIONS)
    entry = _scale_kernel.compiled.get(key) if key is not None else None
    if entry is not None:
        _SCALE_PLANS[(idx, n, grad.dtype, scale.dtype)] = (programs, entry)


@torch.library.custom_op('mmdet_focal_triton::scale_grad_', mutates_args=('grad',))
def scale_grad_(grad: Tensor, scale: Tensor) -> None:
    """grad *= scale (one element), in place; costs no pass over grad when scale == 1."""
    _scale_grad_impl(grad, scale)


@scale_grad_.register_fake
def _(grad, scale):
    return None


def stash(ctx, reduction: int, grad: Tensor | None, none_inputs: tuple, none_params: tuple,
          eager: bool) -> None:
    """In the forward: keep what the backward needs. Reduced losses keep the gradient buffer;
    'none' keeps the tensors (pred, target, weight, ...) and parameters of its none_backward."""
    ctx.set_materialize_grads(False)
    ctx.reduction = reduction
    ctx.eager = eager
    if reduction == NONE:
        ctx.save_for_backward(*none_inputs)
        ctx.none_params = none_params
        return
    pred_dtype = none_inputs[0].dtype
    # float16: a float32 buffer, never scaled in place (backward writes a new float16 tensor)
    ctx.cast = pred_dtype if grad is not None and grad.dtype != pred_dtype else None
    ctx.kept = None  # after a first backward: the buffer it handed over (retain_graph=True)
    if eager:
        ctx.grad = grad
    else:
        ctx.has_grad = grad is not None
        if grad is not None:
            ctx.save_for_backward(grad)


_MODIFIED = ('a second backward through the retained graph of a fused loss needs the gradient '
             'that its first backward produced, and that gradient was modified in place since '
             '(zero_grad(set_to_none=False), gradient clipping, accumulation into it): run the '
             'second backward first, or compute the loss again')


def backward(ctx, grad_loss: Tensor | None, none_backward, none_backward_op) -> Tensor | None:
    """d loss / d pred times `grad_loss`. `none_backward(upstream, *inputs, *params)` is the
    loss's fused backward of 'none' (`none_backward_op` its registered op, used when not eager).
    """
    if grad_loss is None:
        return None
    eager = ctx.eager
    if eager or not torch.compiler.is_compiling():
        checks.poll(grad_loss.get_device())  # the forward's input check, if it has reported
    if ctx.reduction == NONE:
        if eager:
            return none_backward(grad_loss, *ctx.saved_tensors, *ctx.none_params)
        return none_backward_op(grad_loss, *ctx.saved_tensors, *ctx.none_params)
    if ctx.kept is not None:
        return _second_backward(ctx, grad_loss)
    if eager:
        grad = ctx.grad
    else:
        grad = ctx.saved_tensors[0] if ctx.has_grad else None
    if grad is None:
        raise RuntimeError('the fused loss ran its forward without computing its gradient (pred '
                           'did not require grad, or grad mode was off)')
    if ctx.cast is not None:  # float16 input, float32 buffer: upstream x buffer, a new tensor
        up = grad_loss.reshape(())
        if type(grad) is not Tensor or torch.compiler.is_compiling():
            return (grad * up).to(ctx.cast)
        # one pass; the buffer stays unscaled, so a second backward (retain_graph) is exact
        return torch.mul(grad, up, out=torch.empty(grad.shape, dtype=ctx.cast,
                                                   device=grad.device))
    if eager:  # the usual case: rescale the buffer in place and hand it over
        ctx.grad = None  # autograd adopts the buffer as pred.grad when we hold no reference
        _scale_grad_impl(grad, grad_loss)
        _keep(ctx, grad, grad_loss)
        return grad
    if type(grad) is not Tensor or torch.compiler.is_compiling():
        # traced by torch.compile / AOTAutograd: a functional multiply, which the compiler
        # fuses (it cannot trace an in-place update of a tensor saved by the forward)
        return (grad * grad_loss.reshape(())).to(grad.dtype)
    torch.ops.mmdet_focal_triton.scale_grad_(grad, grad_loss)
    _keep(ctx, grad, grad_loss)
    return grad


def _keep(ctx, grad: Tensor, scale: Tensor) -> None:
    """After the first backward: what a second one through a retained graph needs. Another
    tensor object on the handed-over memory (it shares the version counter, so an in-place
    change of pred.grad since is detected; the same object would raise the returned gradient's
    reference count, and autograd would copy it instead of adopting it), and the scale applied."""
    kept = ctx.kept = grad.detach()
    ctx.kept_version = kept._version
    ctx.first_scale = scale


def _second_backward(ctx, grad_loss: Tensor) -> Tensor:
    """A second backward through the same graph (retain_graph=True): the buffer was scaled by
    the first upstream gradient; exact when that was 1 (or a power of two)."""
    grad = ctx.kept
    if grad._version != ctx.kept_version:
        raise RuntimeError(_MODIFIED)
    cdt = torch.promote_types(grad.dtype, torch.float32)
    ratio = (grad_loss.to(cdt) / ctx.first_scale.to(cdt)).reshape(())
    return (grad.to(cdt) * ratio).to(grad.dtype)
