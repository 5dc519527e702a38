#!/usr/bin/env python
"""Train the same detector with mmdet's focal-family loss and with ours, and judge the swap.

The checkout's entry to ``mmdet-focal-triton parity`` (``mmdet_focal_triton/cli/parity.py``,
where the options and examples are): ``python tools/parity.py --help``.
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # this checkout's package, installed or not
    sys.path.insert(0, str(REPO))

from mmdet_focal_triton.cli.parity import FAULTS, MODELS, main, parse_args  # noqa: E402

__all__ = ['FAULTS', 'MODELS', 'main', 'parse_args']

if __name__ == '__main__':
    sys.exit(main(program=True))
