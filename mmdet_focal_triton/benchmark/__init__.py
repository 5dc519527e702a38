"""Benchmarks of the fused losses against their peers, importable (the tools are thin CLIs).

One concern per module:
  shapes.py       dtypes by name, 'NxC' strings, dense heads' per-level rows (mmdet's priors)
  registry.py     loss families (`LossFamily`) and their implementations (`Impl`)
  losses/         the families: focal (ours, mmcv, mmdet-py, compile, torchvision), qfl and
                  vfl (ours, mmdet-py, compile); common.py: what they share
  references.py   reference patterns of host time (floor pattern, sigmoid-sum, zero-cost)
  timing.py       wall time (do_bench) and copy bandwidth
  profiling.py    GPU time per call from torch.profiler (all kernels, or a loss's own)
  host.py         host time per loss + backward (the method is in its docstring)
  wall.py         wall time / memory of fwd, fwd_nograd, fwd_bwd, bwd
  runner.py       one run over shapes x dtypes x implementations, appended to the CSV
  results.py      the CSV: columns, appending, reading back
  report.py       summary tables (rich)
  plot.py         plots from the CSV (matplotlib)
  console.py      progress, quiet warnings
  e2e.py          training-step cost of the loss in RetinaNet R50-FPN or RTMDet-tiny

    from mmdet_focal_triton.benchmark import BenchConfig, run_benchmark, host_table
    rows = run_benchmark(BenchConfig(mode='host', shapes=[parse_shape('300kx80')]), 'r.csv')
"""
from .e2e import MODELS as E2E_MODELS
from .e2e import VARIANTS as E2E_VARIANTS
from .e2e import E2EConfig, run_e2e
from .host import HostTime, host_time, measure_host
from .losses import families, get_family
from .losses.focal import fused_bytes, make_inputs
from .plot import plot_run
from .profiling import DeviceTime, ProfileWindows, device_time
from .references import FLOOR, REFERENCES, zero_cost_loss
from .registry import Impl, LossFamily, register_family
from .report import e2e_table, host_table, wall_table
from .results import E2E_FIELDS, FIELDS, append_csv, read_csv, run_rows
from .runner import BenchConfig, available_impls, resolve, run_benchmark
from .shapes import DTYPES, default_shapes, level_rows, parse_shape, retinanet_level_rows
from .timing import bench_ms, copy_bandwidth
from .wall import measure_wall

__all__ = ['DTYPES', 'parse_shape', 'default_shapes', 'level_rows', 'retinanet_level_rows',
           'make_inputs', 'fused_bytes', 'Impl', 'LossFamily', 'families', 'get_family',
           'register_family',
           'FLOOR', 'REFERENCES', 'zero_cost_loss', 'bench_ms', 'copy_bandwidth', 'DeviceTime',
           'device_time', 'ProfileWindows', 'HostTime', 'host_time', 'measure_host', 'measure_wall',
           'BenchConfig', 'available_impls', 'resolve', 'run_benchmark', 'FIELDS',
           'E2E_FIELDS', 'append_csv', 'read_csv', 'run_rows', 'wall_table', 'host_table',
           'e2e_table', 'plot_run', 'E2EConfig', 'E2E_MODELS', 'E2E_VARIANTS', 'run_e2e']
