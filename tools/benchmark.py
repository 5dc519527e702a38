#!/usr/bin/env python
"""Benchmark the fused losses against their peers; append rows to a CSV and plot from it.

The checkout's entry to ``mmdet-focal-triton benchmark`` (``mmdet_focal_triton/cli/benchmark.py``,
where the options and examples are): ``python tools/benchmark.py --help``.
"""
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:  # this checkout's package, installed or not
    sys.path.insert(0, REPO)

# the developer scripts under tools/dev import DTYPES, copy_bandwidth, ... from here
from mmdet_focal_triton.cli.benchmark import (  # noqa: E402
    DTYPES,
    copy_bandwidth,
    fused_bytes,
    main,
    make_inputs,
    parse_args,
    parse_shape,
)

__all__ = ['DTYPES', 'copy_bandwidth', 'fused_bytes', 'make_inputs', 'parse_shape', 'main',
           'parse_args']

if __name__ == '__main__':
    sys.exit(main())
