"""What can be benchmarked: loss families, each with its implementations and its inputs.

A `LossFamily` (focal, and later quality focal / varifocal) says how to build the inputs of one
problem (N rows x C classes, a dtype, a device), which implementations compute it (`Impl`: ours
and the peers), how many bytes a fused implementation must move, and its default shapes. The
reference patterns of host-time measurement (`references.py`) are loss-independent `Impl`s.

Every implementation is called the same way, as mmdet's loss modules are:
``fn(pred, target, weight, avg_factor=avg_factor)`` -> a loss tensor that ``.backward()`` takes,
where ``target`` is whatever the family's ``make_inputs`` returns (class indices for focal).
Adding a family is adding a module under ``losses/`` that calls `register_family`, and one import
line in ``losses/__init__.py`` (whose `families` / `get_family` list them); adding a peer is
adding an `Impl` to the family's dict.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Impl:
    """One implementation (or reference pattern).

    Args:
        name: its name on the command line and in the CSV.
        build: returns ``fn(pred, target, weight, avg_factor=...)``; may raise (a failing peer
            is recorded as a failed row, not hidden).
        doc: one line for --help.
        context: a context manager factory entered around every use (e.g. input checks off).
        kernels: name fragments of its own GPU kernels, for profiles that count only the loss.
        on_cpu: in the default set of a CPU run.
    """
    name: str
    build: Callable[[], Callable]
    doc: str = ''
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    kernels: tuple[str, ...] = ()
    on_cpu: bool = False


@dataclass(frozen=True)
class LossFamily:
    """A loss and everything that computes it.

    Args:
        name: 'focal', ...
        doc: one line.
        make_inputs: ``(N, C, dtype, device, seed=0) -> (pred, target, weight, avg_factor)``,
            pred requiring grad, avg_factor a 0-d tensor on the device.
        fused_bytes: ``(N, C, dtype, mode) -> bytes`` a fused implementation must move.
        default_shapes: ``(quick) -> [(name, N, C), ...]``.
        impls: name -> `Impl`, ours first.
        ours: the name of our implementation (the numerator of the ratios).
    """
    name: str
    doc: str
    make_inputs: Callable
    fused_bytes: Callable
    default_shapes: Callable
    impls: dict[str, Impl] = field(default_factory=dict)
    ours: str = 'ours'


FAMILIES: dict[str, LossFamily] = {}


def register_family(family: LossFamily) -> LossFamily:
    FAMILIES[family.name] = family
    return family
