"""Launch configuration of the fused kernels: block shape, warps, grid density, math variant.

Resolved once per (C, element size) and cached: nothing of it is recomputed per call. Three
layers, the first that sets a value wins:
1. `TUNING` overrides (tools/dev/sweep_tuning.py, or MMDET_FOCAL_TRITON_TUNING='{"tile": 2048}'),
   changed through `set_tuning` / `reset_tuning`, which drop the cache;
2. the table measured on an H200 (notes/perf.md) for C = 80 and C = 1203;
3. the rules: the flat layout where rows do not start 16-byte aligned (C * element size not a
   multiple of 16), else row blocks of `default_block_c` columns; `_DEFAULT_CONFIG`.
"""
import json
import os

import torch

TUNING = {
    'layout': None,  # 'rows' (row blocks x column chunks) or 'flat' (contiguous inputs only)
    'flat_block': None,  # elements per block of the flat layout
    'tile': None,  # BLOCK_R * BLOCK_C elements per chunk (rows layout)
    'block_c': None,  # column chunk width
    'num_warps': None,
    'programs_per_sm': None,  # persistent grid: this many programs per multiprocessor
    'fast_math': None,  # MUFU lg2 / rcp on the GPU (False: the accurate expansions)
    'maxnreg': None,  # register cap per thread (0: none); default: two programs per SM
    'interpreter_programs': 3,  # grid size under the Triton interpreter (CPU)
}
_DEFAULT_CONFIG = dict(num_warps=8, programs_per_sm=8, fast_math=True, flat_block=2048)
# Measured best (tools/dev/sweep_tuning.py on an H200, notes/perf.md) per (C, element size).
_MEASURED_CONFIG = {
    (80, 4): dict(layout='rows', block_c=32, tile=1024),
    (80, 2): dict(layout='rows'),
    (1203, 4): dict(layout='flat', flat_block=2048),
    (1203, 2): dict(layout='flat', flat_block=2048),
}
_CACHE: dict = {}
_SM_COUNT: dict = {}
ON_RETUNE = []  # callables that forget what a change of configuration invalidates (launcher.py)


def set_tuning(**values) -> None:
    """Override launch parameters (keys of TUNING; None restores the default) for later calls."""
    unknown = set(values) - set(TUNING)
    if unknown:
        raise ValueError(f'unknown tuning keys {sorted(unknown)}; known: {sorted(TUNING)}')
    TUNING.update(values)
    _CACHE.clear()
    for forget in ON_RETUNE:  # compiled kernels and launch data depend on the configuration
        forget()


def reset_tuning() -> None:
    set_tuning(**{k: None for k in TUNING if k != 'interpreter_programs'},
               interpreter_programs=3)


FLAT_MAX_C = 2 ** 21  # the flat layout finds an element's row by an fp32 multiply: exact below


def _tuning_from_env() -> None:
    raw = os.environ.get('MMDET_FOCAL_TRITON_TUNING')
    if raw:
        values = json.loads(raw)
        unknown = set(values) - set(TUNING)
        if unknown:
            raise ValueError(f'MMDET_FOCAL_TRITON_TUNING: unknown keys {sorted(unknown)}; '
                             f'known: {sorted(TUNING)}')
        TUNING.update(values)


_tuning_from_env()


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def default_block_c(C: int) -> int:
    """The column chunk that pads the fewest lanes, the widest among equals (80 -> 16, five
    chunks; 1203 -> 64, 19 chunks; C <= 16 -> one chunk of next_power_of_2(C))."""
    if C <= 16:
        return _next_power_of_2(max(C, 1))
    return min((16, 32, 64, 128), key=lambda w: (-(-C // w) * w - C, -w))


def launch_config(C: int, dtype: torch.dtype) -> dict:
    """Layout ('rows' or 'flat'; flat applies to contiguous inputs), block shape (block_r rows x
    block_c columns; flat_block elements), num_warps, programs_per_sm, fast_math and the compile
    options (num_warps, maxnreg) for C classes of `dtype` (cached)."""
    key = (C, dtype.itemsize)
    cfg = _CACHE.get(key)
    if cfg is None:
        measured = _MEASURED_CONFIG.get(key, {})
        block_c = TUNING['block_c'] or measured.get('block_c') or default_block_c(C)
        tile = TUNING['tile'] or measured.get('tile') or (2048 if block_c <= 16 else 1024)
        cfg = dict(_DEFAULT_CONFIG)
        # rows whose start is not 16-byte aligned (C * size % 16 != 0) cost the row layout its
        # vector accesses: those take the flat layout (for contiguous inputs)
        cfg['layout'] = 'flat' if (C * dtype.itemsize) % 16 else 'rows'
        cfg.update({k: v for k, v in measured.items() if k in cfg})
        cfg.update({k: v for k, v in TUNING.items() if v is not None and k in cfg})
        cfg.update(block_r=max(1, tile // block_c), block_c=block_c)
        maxnreg = TUNING['maxnreg']
        if maxnreg is None:
            maxnreg = measured.get('maxnreg')
        if (maxnreg is None and block_c >= 64 and cfg['num_warps'] == 8
                and cfg['layout'] == 'rows'):
            # wide chunks (large C): two 8-warp programs per SM. Uncapped, ptxas takes 152
            # registers at C = 1203 fp32 (one program per SM) where 116 suffice without spills
            maxnreg = 128
        cfg['options'] = dict(num_warps=cfg['num_warps'], **({'maxnreg': maxnreg} if maxnreg
                                                             else {}))
        _CACHE[key] = cfg
    return cfg


def sm_count(device_index: int) -> int:
    n = _SM_COUNT.get(device_index)
    if n is None:
        n = _SM_COUNT[device_index] = torch.cuda.get_device_properties(
            device_index).multi_processor_count
    return n


def num_programs(device_index: int, num_blocks: int, programs_per_sm: int) -> int:
    """Size of a persistent grid over `num_blocks` blocks (device -1: the CPU interpreter)."""
    if device_index < 0:
        return max(1, min(num_blocks, TUNING['interpreter_programs']))
    return max(1, min(num_blocks, sm_count(device_index) * programs_per_sm))
