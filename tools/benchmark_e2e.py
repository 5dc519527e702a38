#!/usr/bin/env python
"""End-to-end cost of the classification loss in a detector's training step.

The checkout's entry to ``mmdet-focal-triton benchmark-e2e``
(``mmdet_focal_triton/cli/benchmark_e2e.py``, where the options and examples are):
``python tools/benchmark_e2e.py --help``.
"""
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:  # this checkout's package, installed or not
    sys.path.insert(0, REPO)

from mmdet_focal_triton.cli.benchmark_e2e import main  # noqa: E402

__all__ = ['main']

if __name__ == '__main__':
    sys.exit(main())
