#!/usr/bin/env bash
# Distributed training with the installed package, as mmdetection's tools/dist_train.sh:
#   mmdet-focal-triton dist-train CONFIG GPUS [train arguments, e.g. --triton-focal --amp --work-dir DIR]
# Multi-node: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 PORT=29500 mmdet-focal-triton dist-train ...
# Uses torchrun (python -m torch.distributed.run), which passes LOCAL_RANK in the environment, to
# run `python -m mmdet_focal_triton.cli.train` (`mmdet-focal-triton train`) in every process.
# Without CUDA, GPUS CPU processes train over gloo. PYTHON: the interpreter (default: python).
# TRAIN_SCRIPT: a training script to run instead (a checkout's tools/dist_train.sh: its train.py).

USAGE="usage: ${DIST_TRAIN_NAME:-mmdet-focal-triton dist-train} CONFIG GPUS [train arguments]"
if [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    echo "$USAGE"
    echo
    sed -n '2,8s/^# \{0,1\}//p' "$0"
    exit 0
fi
if [ $# -lt 2 ]; then
    echo "$USAGE" >&2
    exit 2
fi

CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}
if [ -n "$TRAIN_SCRIPT" ]; then ENTRY=("$TRAIN_SCRIPT"); else ENTRY=(-m mmdet_focal_triton.cli.train); fi

"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "${ENTRY[@]}" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
