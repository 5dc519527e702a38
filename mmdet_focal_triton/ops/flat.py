"""The launch of the family's elementwise skeleton (`kernels/flat.py`) for a loss that supplies
only its element function: `FlatVariant.of(element, spec)`, the launch class of one such loss
(GaussianFocalLoss).

A call passes its contiguous tensors, its float parameters (`params`, up to four) and its
compile-time modes (`modes`, up to three ints or bools), handed to the element function in order;
`run` returns (loss, grad) as every loss's `_launch` does (`fused_op.run_forward`).
"""
import importlib

from . import checks
from .fused_op import new_outputs
from .launcher import (
    Variant,
    clear_on_retune,
    dtype_of,
    int_class,
    lazy_kernel,
    misaligned,
    variant,
)
from .torch_common import EPS


class FlatVariant(Variant):
    """The launch data of one variant of `flat_loss_kernel` for one loss (launcher.Variant).

    A loss's subclass (`of`) has its own KERNEL (the compiled kernels of different element
    functions are kept apart), ELEMENT ((module of kernels/, name) of its element function),
    SPEC (its spec class, with `weighted` and `check` fields) and CACHE (its variants, by the
    key (device_index, flags, backward_of_none, check, modes, has_af))."""

    KERNEL = ELEMENT = SPEC = CACHE = None
    CONFIG = dict(options=dict(num_warps=8), programs_per_sm=8)  # a streaming kernel
    BLOCK = 2048  # elements per block: 8 per thread of 8 warps (two 16-byte loads of fp32)

    def __init__(self, device_index: int, flags: int, backward_of_none: bool, check: bool,
                 modes: tuple, has_af: bool, device):
        spec = self.SPEC.unpack(flags)
        super().__init__(self.KERNEL(), self.CONFIG, self.BLOCK, device_index, device, spec,
                         backward_of_none, check=check)
        module, name = self.ELEMENT
        element = getattr(importlib.import_module(f'{__package__.rsplit(".", 1)[0]}.kernels.'
                                                  f'{module}'), name)
        self.tail = (element, *modes, *(0,) * (3 - len(modes)), spec.weighted, has_af,
                     backward_of_none, self.write_loss, self.reduce, self.write_grad, check,
                     self.BLOCK, 1024)

    @classmethod
    def of(cls, element: tuple, spec) -> type:
        """The launch class of the loss whose element function is `element` ((module of
        kernels/, name)) and whose spec class is `spec`."""
        return type(f'{element[1]}_variant', (cls,), dict(
            KERNEL=lazy_kernel('flat', 'flat_loss_kernel'), ELEMENT=element, SPEC=spec,
            CACHE=clear_on_retune({})))

    def args(self, ptrs, call):
        n, num_blocks, params, scale = call
        return (*ptrs, n, num_blocks, *params, scale, EPS, *self.tail)

    @classmethod
    def run(cls, pred, target, weight, avg_factor, upstream, params: tuple,
            modes: tuple, scale: float, spec, flags: int, out_dtype, loss_shape: tuple,
            device_index: int):
        """(loss, grad) of the loss on contiguous pred / target / weight / upstream (None where
        absent); `params`: four floats (pad with 0.0)."""
        backward_of_none = upstream is not None
        vkey = (device_index, flags, backward_of_none, spec.check and checks._MODE != 'off',
                modes, avg_factor is not None)
        v = variant(cls.CACHE, vkey, cls, pred.device)
        d = v.dummy_ptr
        ptrs = (pred.data_ptr(), target.data_ptr(), d if weight is None else weight.data_ptr(),
                d if upstream is None else upstream.data_ptr(),
                d if avg_factor is None else avg_factor.data_ptr())
        n = pred.numel()
        num_blocks = -(-n // cls.BLOCK)
        key = (vkey, pred.dtype, int_class(n), int_class(num_blocks), target.dtype,
               dtype_of(weight), dtype_of(upstream), dtype_of(avg_factor), out_dtype,
               misaligned(ptrs))
        loss, grad = new_outputs(pred, loss_shape, out_dtype, backward_of_none, v.write_grad)
        v.launch(key, num_blocks, device_index, (pred, target, weight, upstream, avg_factor),
                 ptrs, loss, grad, (n, num_blocks, params, scale))
        return loss, grad
