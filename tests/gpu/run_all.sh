#!/usr/bin/env bash
# Everything the GPU machine has to run for the docs, in stages that each fit one device call
# (10 minutes), writing logs and results under OUT (default ./gpu_out):
#   bash tests/gpu/run_all.sh tests      # CUDA test grid + tests/test_gpu_scale.py (~3 min)
#   bash tests/gpu/run_all.sh kernels    # per-kernel times by check mode, launch-config sweep (~2 min)
#   bash tests/gpu/run_all.sh bench      # tools/benchmark.py, every shape/dtype/peer (~5 min)
#   bash tests/gpu/run_all.sh e2e        # tools/benchmark_e2e.py, batch 2/8, fp32/fp16/bf16 (~5 min)
#   bash tests/gpu/run_all.sh parity     # tools/parity.py fp32 (+control), fp16, bf16 (~6 min)
#   bash tests/gpu/run_all.sh ddp        # 2 GPUs: tools/ddp_parity.py + the cuda:1 test (~4 min)
# The offline machine needs the carried wheels: source tests/gpu/setup_env.sh (done here).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
source tests/gpu/setup_env.sh
stage=${1:-tests}
case "$stage" in
  tests)
    GPU_VALIDATION_REPORT=$OUT/gpu_validation.jsonl timeout 240 python3 -m pytest \
        tests/test_gpu_scale.py -q -s -p no:cacheprovider 2>&1 | tee "$OUT/gpu_scale.log" \
        | grep -E '^\{|passed|failed|FAILED'
    timeout 300 python3 -m pytest tests/test_functional.py tests/test_bad_inputs.py \
        tests/test_op_registration.py -m cuda -q -n 12 -p no:cacheprovider 2>&1 \
        | tee "$OUT/cuda_grid.log" | grep -E 'passed|failed|FAILED'
    ;;
  kernels)
    timeout 60 python3 tools/perf_probe.py --check-cost 2>&1 | grep -v -i warn \
        | tee "$OUT/check_cost.log"
    timeout 200 python3 tools/sweep_tuning.py --shapes 2.4Mx80 300kx1203 --dtypes fp32 bf16 \
        --block-c 0 16 32 128 --tile 0 2048 4096 --csv "$OUT/sweep.csv" 2>&1 \
        | grep -v -i warn | tee "$OUT/sweep.log"
    ;;
  bench)
    timeout 560 python3 tools/benchmark.py --out-dir "$OUT" 2>&1 | grep -v '━' \
        | tee "$OUT/benchmark.log" | tail -40
    ;;
  e2e)
    timeout 560 python3 tools/benchmark_e2e.py --batch 2 8 --precision fp32 fp16 bf16 \
        --out-dir "$OUT" 2>&1 | tee "$OUT/e2e.log" | grep -v -i warn | tail -30
    ;;
  parity)
    for amp in none fp16 bf16; do
      extra=""
      [ "$amp" = none ] && extra="--control perturbed"
      [ "$amp" = bf16 ] && extra="--losses ours"
      timeout 200 python3 tools/parity.py --device cuda --amp "$amp" $extra \
          --work-dir "$OUT/parity_$amp" > "$OUT/parity_$amp.log" 2>&1
      echo "parity $amp: exit $?"; grep -E '^\[parity\] (PASS|FAIL|run)' "$OUT/parity_$amp.log"
    done
    ;;
  ddp)
    # needs 2 GPUs (nvidia-h200-x2). tools/ddp_parity.py: R50-FPN at (1333, 800), 30 iterations,
    # 5 trainings through tools/dist_train.sh (ours and mmdet's loss, each on 1 GPU x batch 2
    # and 2 GPUs x batch 1, paired synthetic data, SyncBN, TF32 off; plus the control: ours on
    # 1 GPU with each pair's images swapped); exit 0 = every checked comparison passed
    timeout 420 python3 tools/ddp_parity.py --device cuda --iters 30 --control --timeout 150 \
        --no-progress --work-dir "$OUT/ddp_parity" > "$OUT/ddp_parity.log" 2>&1
    echo "ddp_parity: exit $?"
    grep -E 'ddp-parity - INFO - (run|PASS|FAIL)' "$OUT/ddp_parity.log"
    [ -f "$OUT/ddp_parity/summary.md" ] && cat "$OUT/ddp_parity/summary.md"
    GPU_VALIDATION_REPORT=$OUT/gpu_validation_ddp.jsonl timeout 90 python3 -m pytest \
        tests/test_gpu_scale.py -k cuda1 -q -s -p no:cacheprovider 2>&1 \
        | tee "$OUT/gpu_scale_cuda1.log" | grep -E '^\{|passed|failed|FAILED|skipped'
    ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
