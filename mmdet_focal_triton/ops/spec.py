"""Compact descriptions of a fused-loss call.

A call is described by a few small integers and booleans (reduction, weight layout, target
form, ...). Python code passes them around as a `NamedTuple` with named fields; the
`torch.library` op receives them packed into one int (`pack`), and unpacks them through a cache
(`unpack`: a dict lookup per call), instead of a dozen positional arguments.
"""
import functools
from typing import NamedTuple

REDUCTIONS = {'none': 0, 'mean': 1, 'sum': 2}
NONE, MEAN, SUM = 0, 1, 2
WEIGHT_NONE, WEIGHT_ROW, WEIGHT_ELEM = 0, 1, 2
_BITS = 2  # every field fits in two bits


def pack(spec: tuple) -> int:
    flags = 0
    for i, value in enumerate(spec):
        flags |= int(value) << (_BITS * i)
    return flags


@functools.cache
def unpack(cls, flags: int):
    """The `cls` (a spec NamedTuple) packed in `flags`; bool fields come back as bools."""
    values = []
    for i, name in enumerate(cls._fields):
        v = (flags >> (_BITS * i)) & ((1 << _BITS) - 1)
        values.append(bool(v) if cls.__annotations__[name] is bool else v)
    return cls(*values)


def _cached_pack():
    cache = {}

    def flags(*values) -> int:
        f = cache.get(values)
        if f is None:
            f = cache[values] = pack(values)
        return f
    return flags


def packed(cls):
    """Give a spec NamedTuple `spec.pack()`, `Spec.flags(*values)` (the same int from the
    field values, cached: what a call computes, without building the tuple) and
    `Spec.unpack(flags)` (cached)."""
    cls.pack = pack
    cls.flags = staticmethod(_cached_pack())
    cls.unpack = classmethod(unpack)
    return cls


@packed
class FocalSpec(NamedTuple):
    """One call of the sigmoid focal loss."""
    reduction: int  # NONE, MEAN or SUM
    weight_mode: int  # WEIGHT_NONE, WEIGHT_ROW (one per row) or WEIGHT_ELEM (one per element)
    index_target: bool  # class indices (R,) with C = background, else a dense (R, C) target
    activated: bool  # pred holds probabilities, not logits
    write_grad: bool  # compute d loss / d pred in the forward (reduced losses)
    check: bool  # report labels outside [0, C] / probabilities outside [0, 1]


@packed
class QualityFocalSpec(NamedTuple):
    """One call of the quality focal loss (mmdet's `QualityFocalLoss`)."""
    reduction: int  # NONE (per-row losses), MEAN or SUM
    weighted: bool  # a weight multiplies each row's loss (one per row, or one for all)
    index_target: bool  # (labels (R,), scores (R,)) with C = background, else a dense (R, C)
    activated: bool  # pred holds probabilities, not logits
    write_grad: bool  # compute d loss / d pred in the forward (reduced losses)
    check: bool  # report labels outside [0, C] / probabilities outside [0, 1]


@packed
class VarifocalSpec(NamedTuple):
    """One call of the varifocal loss (mmdet's `VarifocalLoss`)."""
    reduction: int  # NONE, MEAN or SUM
    weighted: bool  # a weight of pred's shape (possibly a broadcast view) multiplies the loss
    iou_weighted: bool  # elements with target > 0 are weighted by their target
    write_grad: bool  # compute d loss / d pred in the forward (reduced losses)


@packed
class GaussianFocalSpec(NamedTuple):
    """One call of the Gaussian focal loss (mmdet's `GaussianFocalLoss`)."""
    reduction: int  # NONE, MEAN or SUM
    weighted: bool  # a weight of pred's shape multiplies the loss
    neg_only: bool  # the pos_inds form: the kernel computes the negative term of every element,
    #                 the positives listed by pos_inds are added by the host
    write_grad: bool  # compute d loss / d pred in the forward (reduced losses)
    check: bool  # report probabilities outside [0, 1]
