#!/usr/bin/env python
"""Data-parallel parity: RetinaNet trained by `tools/dist_train.sh` on 1 and on 2 processes at
the same total batch, with TritonFocalLoss and with mmdet's FocalLoss, compared iteration by
iteration.

The checkout's entry to ``mmdet-focal-triton ddp-parity`` (``mmdet_focal_triton/cli/ddp_parity.py``,
where the options and examples are), training through this checkout's tools/dist_train.sh:
``python tools/ddp_parity.py --help``.
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # this checkout's package, installed or not
    sys.path.insert(0, str(REPO))

from mmdet_focal_triton.cli.ddp_parity import ALL_RUNS, main, parse_args  # noqa: E402

__all__ = ['ALL_RUNS', 'main', 'parse_args']

if __name__ == '__main__':
    sys.exit(main(dist_train=REPO / 'tools' / 'dist_train.sh'))
