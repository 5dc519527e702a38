#!/usr/bin/env bash
# Distributed training, as mmdetection's tools/dist_train.sh:
#   bash tools/dist_train.sh CONFIG GPUS [train.py args, e.g. --triton-focal --amp --work-dir DIR]
# Multi-node: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 PORT=29500 bash tools/dist_train.sh ...
# The package's launcher (mmdet_focal_triton/cli/dist_train.sh: torchrun, which passes LOCAL_RANK
# in the environment) running this checkout's tools/train.py.
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHONPATH="$HERE/..":$PYTHONPATH TRAIN_SCRIPT="$HERE/train.py" DIST_TRAIN_NAME="$0" \
    exec bash "$HERE/../mmdet_focal_triton/cli/dist_train.sh" "$@"
