#!/usr/bin/env bash
# Everything the GPU machine has to run for the docs, in stages that each fit one device call
# (10 minutes), writing logs and results under OUT (default ./gpu_out):
#   bash tests/gpu/run_all.sh tests      # CUDA test grid + tests/test_gpu_scale.py (~3 min)
#   bash tests/gpu/run_all.sh bench      # tools/benchmark.py, every shape/dtype/peer (~5 min)
#   bash tests/gpu/run_all.sh e2e        # tools/benchmark_e2e.py, batch 2/8, fp32/fp16/bf16 (~5 min)
#   bash tests/gpu/run_all.sh parity     # tools/parity.py fp32 (+control), fp16, bf16 (~6 min)
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
  *) echo "unknown stage $stage"; exit 2 ;;
esac
