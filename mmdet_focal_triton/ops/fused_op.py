"""`FusedLossOp`: the op around one fused loss's forward, registered once for every loss.

Each loss (focal, quality focal, varifocal) supplies a forward implementation,
``forward_impl(*tensors, *params, flags, out_dtype, upstream=None) -> (loss, grad)``, whose
tensors start with `pred` and end with `avg_factor`, and `flags` packs the loss's spec. From it
this module makes:
- the `torch.library` op `mmdet_focal_triton::<name>` returning (loss, grad) (grad empty unless
  the spec writes it; float32 for float16 inputs, `autograd.grad_buffer_dtype`), with a fake
  implementation (torch.compile traces it without a graph break) and its autograd
  (`autograd.py`'s glue: the gradient written in the forward is rescaled in place);
- the op `<name>_none_backward` (the backward of reduction='none', recomputed in one pass);
- an eager `torch.autograd.Function` running the same implementation and glue for eager calls
  (dispatching a Python custom op costs tens of microseconds of host time per call; the
  function's non-tensor arguments travel as one tuple, since `Function.apply` costs per
  argument). Both paths give bitwise the same results (tested);
- `__call__`: the loss, differentiable in `pred`, through the registered op when torch.compile
  traces (or when the loss module's FORCE_OP is set, in tests), else the eager Function.
"""
import torch

from . import checks
from .autograd import backward, grad_buffer_dtype, stash
from .backend import use_triton
from .spec import NONE

_functorch_active = torch._C._are_functorch_transforms_active
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def triton_device(pred) -> int | None:
    """The device index of a call that runs the Triton kernels, once what earlier calls' input
    checks reported on that device is raised (a memory read); None: the PyTorch path."""
    if not use_triton(pred):
        return None
    device_index = pred.get_device()
    checks.poll(device_index)
    return device_index


def rows_of(pred) -> tuple:
    """(R, C): pred seen as rows, its first dimension by the rest."""
    R = pred.shape[0]
    return R, (pred.numel() // R if R else pred.shape[1:].numel())


def as_rows(t, R: int, C: int):
    """`t` (pred's shape, or already (R, C)) viewed as (R, C); None stays None."""
    return t if t is None or t.dim() == 2 else t.reshape(R, C)


def run_forward(pred, spec, call: tuple, launch, torch_forward, flags: int, scale: float,
                out_dtype, loss_shape, upstream):
    """The dispatch every loss's `forward_impl` shares, given its inputs already shaped for the
    kernel and its parameters as `call` (inputs, parameters, spec): no launch for an input
    without elements (`empty_result`); the Triton path `launch(*call, flags, out_dtype,
    loss_shape, device_index)`; the PyTorch path `torch_forward(*call, out_dtype, loss_shape)`;
    the gradient in pred's shape."""
    if pred.numel() == 0:
        return empty_result(pred, spec.reduction, spec.write_grad, scale, out_dtype, loss_shape,
                            upstream)
    device_index = triton_device(pred)
    if device_index is None:
        loss, grad = torch_forward(*call, out_dtype, loss_shape)
    else:
        loss, grad = launch(*call, flags, out_dtype, loss_shape, device_index)
    if grad is not None and grad.dim() != pred.dim():  # computed on an (R, C) view of pred
        grad = grad.view(pred.shape)
    return loss, grad


def empty_result(pred, reduction: int, write_grad: bool, scale: float, out_dtype, loss_shape,
                 upstream=None):
    """(loss, grad) of an input without elements: no launch. 'mean' of nothing is NaN (as
    torch.mean, and mmdet); any other loss of nothing is 0 (an empty sum)."""
    dev = pred.device
    grad = (torch.zeros(pred.shape, device=dev, dtype=pred.dtype if upstream is not None
                        else grad_buffer_dtype(pred.dtype))
            if write_grad or upstream is not None else None)
    if upstream is not None:
        return None, grad
    fill = float('nan') if reduction != NONE and scale != scale else 0.0
    return torch.full(loss_shape, fill, dtype=out_dtype, device=dev), grad


def new_outputs(pred2, loss_shape, out_dtype, backward_of_none: bool, write_grad: bool):
    """(loss, grad) buffers of a kernel launch on (R, C)-shaped pred2: the loss (None for the
    backward of 'none'); the gradient when written: the forward's buffer in
    `grad_buffer_dtype` (float32 for float16 inputs), the backward of 'none' in pred's dtype
    (it returns upstream x gradient)."""
    loss = (None if backward_of_none
            else torch.empty(loss_shape, dtype=out_dtype, device=pred2.device))
    if not write_grad:
        return loss, None
    dt = pred2.dtype
    gdt = dt if backward_of_none else grad_buffer_dtype(dt)
    if gdt == dt and pred2.is_contiguous():
        return loss, torch.empty_like(pred2)  # the cheapest allocation to issue
    return loss, torch.empty(pred2.shape, dtype=gdt, device=pred2.device)


def elementwise_loss_shape(spec, pred, avg_factor) -> tuple:
    """The loss's shape for losses whose 'none' is elementwise (focal, varifocal): pred's;
    reduced: avg_factor's (a (1,) avg_factor gives a (1,) loss, as in mmdet), else ()."""
    if spec.reduction == NONE:
        return pred.shape
    return avg_factor.shape if avg_factor is not None else ()


class FusedLossOp:
    """Registers the op, its fake, its 'none' backward, its autograd and its eager Function.

    name: the op's name; tensors / params: the schema of its tensor arguments (`pred` first,
    `avg_factor` last) and of its float parameters (the last one `scale`); spec_cls: the
    loss's spec (`spec.py`); forward_impl: as above (looked up at each call through the given
    callable, so that tests can wrap it); loss_shape(spec, pred, avg_factor): the loss's shape;
    force_op: a callable telling whether eager calls take the registered op too (tests)."""

    def __init__(self, name: str, tensors: str, params: str, spec_cls, forward_impl, loss_shape,
                 force_op=lambda: False):
        self.spec_cls = spec_cls
        self.forward_impl = forward_impl
        self.loss_shape = loss_shape
        self.force_op = force_op
        self.n_tensors = len(tensors.split(','))
        self.n_params = len(params.split(','))
        none_tensors = ', '.join(tensors.split(', ')[:-1])  # no avg_factor
        lib = f'mmdet_focal_triton::{name}'
        self.op = torch.library.custom_op(
            lib, self._op_impl, mutates_args=(),
            schema=f'({tensors}, {params}, int flags, ScalarType out_dtype) -> (Tensor, Tensor)')
        self.op.register_fake(self._fake)
        self.none_op = torch.library.custom_op(
            f'{lib}_none_backward', self.none_backward, mutates_args=(),
            schema=f'(Tensor upstream, {none_tensors}, {params}, int flags) -> Tensor')
        self.none_op.register_fake(
            lambda upstream, pred, *rest: torch.empty_like(
                pred, memory_format=torch.contiguous_format))
        self.op.register_autograd(self._op_backward, setup_context=self._setup_context)
        self.traced = getattr(torch.ops.mmdet_focal_triton, name)
        self.traced_none = getattr(torch.ops.mmdet_focal_triton, f'{name}_none_backward')
        self.Function = self._make_function(''.join(w.title() for w in name.split('_')))
        # Function.apply without its Python wrapper, which binds default arguments (ours have
        # none) and unwraps functorch's dead wrappers (tensors leaked out of a finished
        # torch.func transform: __call__ leaves those to the wrapper)
        self._apply = torch._C._FunctionBase.__dict__['apply'].__get__(None, self.Function)

    # ---- the implementation --------------------------------------------------------------
    def none_backward(self, upstream, *args):
        """upstream * d loss / d pred for reduction='none': args are the tensors without
        avg_factor, then the params and flags."""
        tensors, rest = args[:self.n_tensors - 1], args[self.n_tensors - 1:]
        return self.forward_impl(*tensors, None, *rest, upstream.dtype, upstream)[1]

    def _op_impl(self, *args):
        loss, grad = self.forward_impl(*args)
        return loss, grad if grad is not None else args[0].new_empty((0,))

    def _fake(self, *args):
        pred, avg_factor = args[0], args[self.n_tensors - 1]
        spec = self.spec_cls.unpack(args[-2])
        return (pred.new_empty(self.loss_shape(spec, pred, avg_factor), dtype=args[-1]),
                pred.new_empty(pred.shape, dtype=grad_buffer_dtype(pred.dtype))
                if spec.write_grad else pred.new_empty((0,)))

    def _stash(self, ctx, args, grad, eager):
        """args: the op's arguments (tensors, params, flags, out_dtype)."""
        flags = args[-2]
        stash(ctx, self.spec_cls.unpack(flags).reduction, grad, args[:self.n_tensors - 1],
              (*args[self.n_tensors:self.n_tensors + self.n_params], flags), eager=eager)

    # ---- the registered op's autograd (torch.compile) ------------------------------------
    def _setup_context(self, ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        write_grad = self.spec_cls.unpack(inputs[-2]).write_grad
        self._stash(ctx, inputs, output[1] if write_grad else None, eager=False)

    def _op_backward(self, ctx, grad_loss, _grad_unused):
        grad = backward(ctx, grad_loss, self.none_backward, self.traced_none)
        return (grad,) + (None,) * (self.n_tensors + self.n_params + 1)

    # ---- eager -----------------------------------------------------------------------------
    def _make_function(self, name: str):
        op = self

        def forward(ctx, *args):  # args: tensors, then (params..., flags, out_dtype)
            tensors, rest = args[:-1], args[-1]
            loss, grad = op.forward_impl(*tensors, *rest)
            op._stash(ctx, (*tensors, *rest), grad, eager=True)
            return loss

        def backward_(ctx, grad_loss):
            return (backward(ctx, grad_loss, op.none_backward, None),) + (None,) * op.n_tensors

        return type(f'{name}Function', (torch.autograd.Function,),
                    dict(forward=staticmethod(forward), backward=staticmethod(backward_),
                         __doc__=f'The eager path of mmdet_focal_triton::{name}.'))

    def __call__(self, *args):
        """The loss from the op's arguments, differentiable in `pred`."""
        if self.force_op() or torch.compiler.is_compiling():
            return self.traced(*args)[0]
        n = self.n_tensors
        if _functorch_active() or _wrapped(args[0]) or _wrapped(args[1]):  # torch.func
            return self.Function.apply(*args[:n], args[n:])
        return self._apply(*args[:n], args[n:])
