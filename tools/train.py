#!/usr/bin/env python
"""Train a detector with mmengine's Runner, as mmdet's tools/train.py does, plus --triton-focal.

The checkout's entry to ``mmdet-focal-triton train`` (``mmdet_focal_triton/cli/train.py``):

    python tools/train.py configs/retinanet/retinanet_r50_fpn_triton-focal_1x_coco.py
    python tools/train.py mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py --triton-focal
    bash tools/dist_train.sh CONFIG 8 [--triton-focal] [--amp] ...
"""
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:  # this checkout's package, installed or not
    sys.path.insert(0, REPO)

from mmdet_focal_triton.cli.train import (  # noqa: E402
    FOCAL_FAMILY,
    build_cfg,
    build_runner,
    main,
    parse_args,
    resolve_config,
    setup_cpu_distributed,
    shutdown_distributed,
    swap_focal_family,
    swap_focal_loss,
)

__all__ = ['FOCAL_FAMILY', 'build_cfg', 'build_runner', 'main', 'parse_args', 'resolve_config',
           'setup_cpu_distributed', 'shutdown_distributed', 'swap_focal_family',
           'swap_focal_loss']

if __name__ == '__main__':
    main()
