#!/usr/bin/env bash
# Everything the GPU machine has to run for the docs, in stages that each fit one device call
# (10 minutes), writing logs and results under OUT (default ./gpu_out):
#   bash tests/gpu/run_all.sh tests      # CUDA test grid + tests/test_gpu_scale.py (~3 min)
#   bash tests/gpu/run_all.sh kernels    # per-kernel times by check mode, launch-config sweep (~2 min)
#   bash tests/gpu/run_all.sh bench      # tools/benchmark.py: wall/memory, every shape/dtype/peer (~5 min)
#   bash tests/gpu/run_all.sh host       # tools/benchmark.py --mode host: host/wall/GPU us per call,
#                                        # every peer + floor patterns, fp32/bf16 (~5 min)
#   bash tests/gpu/run_all.sh e2e        # tools/benchmark_e2e.py, batch 2/8, fp32/fp16/bf16 (~5 min)
#   bash tests/gpu/run_all.sh parity     # make parity's default: RetinaNet fp32, control, bf16 (< 8 min)
#   bash tests/gpu/run_all.sh parity_faults  # slightly wrong losses must fail; tests/parity (~4 min)
#   bash tests/gpu/run_all.sh accuracy   # ours / mmdet / mmcv vs float64, 300 cases; tests (~3 min)
#   bash tests/gpu/run_all.sh ddp        # 2 GPUs: tools/ddp_parity.py + the cuda:1 test (~4 min)
#   bash tests/gpu/run_all.sh family     # QualityFocalLoss / VarifocalLoss: CUDA grid, heads,
#                                        # > 2**31 elements, AMP, determinism (< 8 min)
#   bash tests/gpu/run_all.sh gaussian   # GaussianFocalLoss: its CUDA tests, > 2**31 elements, AMP;
#                                        # the CUDA grid of the three others; benchmark at CenterNet
#                                        # b2 / b16 against mmdet and torch.compile (< 9 min)
#   bash tests/gpu/run_all.sh family-bench  # QFL / VFL: host mode at every level, wall mode at
#                                        # the largest, fp32/bf16; RTMDet-tiny e2e b32 (< 9 min)
#   bash tests/gpu/run_all.sh parity-all # parity + parity_faults + accuracy, concurrently (< 10 min)
#   bash tests/gpu/run_all.sh fp16       # float16 gradients: CUDA tests + RetinaNet fp16 parity (~4 min)
#   bash tests/gpu/run_all.sh rtmdet     # RTMDet-tiny parity, fp32, both losses + control (< 10 min)
#   bash tests/gpu/run_all.sh launch     # the launch path: launch tests, focal + family CUDA
#                                        # grids (< 9.5 min)
#   bash tests/gpu/run_all.sh family-bound  # QFL / VFL host vs baseline, floor, mmdet and
#                                        # x.sigmoid().sum(); wall ratios (< 5 min)
#   bash tests/gpu/run_all.sh host-round # host us vs the previous version (.baseline) and the
#                                        # floor, focal / QFL / VFL; QFL host mode (< 9.5 min)
#   bash tests/gpu/run_all.sh family-round  # VFL host mode, QFL / VFL wall, RTMDet-tiny e2e
#   bash tests/gpu/run_all.sh grid-numbers  # the whole CUDA grid in two stages: the float64
#   bash tests/gpu/run_all.sh grid-rest  # grids of test_family_numbers.py (3,907 cases), then
#                                        # every other cuda test but the at-scale modules
#                                        # (5,165; 2,899 of them took 143 s on an H100 at -n 15);
#                                        # a stage the limit stops resumes: copy its
#                                        # $OUT/<stage>-*.xml into .gpu-resume/, carry it, run
#                                        # the stage again (tests/_resume.py); GRID_LIMIT_S
#                                        # (default 540) shortens a stage to share a call
#   bash tests/gpu/run_all.sh wall-probe # GaussianFocalLoss: why wall mode exceeds host mode at
#                                        # CenterNet b16 (this checkout vs .baseline) (< 4 min)
#   bash tests/gpu/run_all.sh quick      # one call validating a change of the ops: newest focal
#                                        # tests, family grid, parity fp32, accuracy, key benches
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
    # every test marked cuda but the at-scale modules above and test_family_gpu.py (family):
    # the full CUDA grids of the three losses, bad inputs, the launch path, fp16, heads
    timeout 400 python3 -m pytest tests -m cuda --ignore=tests/test_gpu_scale.py \
        --ignore=tests/test_family_gpu.py -q -n 12 -p no:cacheprovider 2>&1 \
        | tee "$OUT/cuda_grid.log" | grep -E 'passed|failed|FAILED'
    ;;
  kernels)
    timeout 60 python3 tools/dev/perf_probe.py --check-cost 2>&1 | grep -v -i warn \
        | tee "$OUT/check_cost.log"
    timeout 200 python3 tools/dev/sweep_tuning.py --shapes 2.4Mx80 300kx1203 --dtypes fp32 bf16 \
        --block-c 0 16 32 128 --tile 0 2048 4096 --csv "$OUT/sweep.csv" 2>&1 \
        | grep -v -i warn | tee "$OUT/sweep.log"
    ;;
  bench)
    # on timeout (SIGTERM) the tools still print the table of what they measured
    timeout 560 python3 tools/benchmark.py --out-dir "$OUT" 2>&1 \
        | tee "$OUT/benchmark.log" | tail -55
    ;;
  host)
    timeout 560 python3 tools/benchmark.py --mode host --out-dir "$OUT" 2>&1 \
        | tee "$OUT/benchmark_host.log" | tail -45
    ;;
  e2e)
    timeout 560 python3 tools/benchmark_e2e.py --batch 2 8 --precision fp32 fp16 bf16 \
        --out-dir "$OUT" 2>&1 | tee "$OUT/e2e.log" | tail -25
    ;;
  parity)
    # the default of `make parity` on a CUDA machine (the venv set-up aside): RetinaNet fp32 with
    # both losses, mmdet's control, ours under AMP bf16; done when it prints PASS (exit 0) within
    # 8 minutes, bbox_mAP >= 0.5 for both losses (docs/parity.md)
    t0=$SECONDS; timeout 580 python3 tools/parity.py --work-dir "$OUT/parity" \
        > "$OUT/parity.out" 2>&1
    echo "parity: exit $? after $((SECONDS - t0)) s"; tail -n 45 "$OUT/parity.out"
    ;;
  parity_faults)
    # success: each "fault X: exit 1" with its "failed: per-call check ..." line, then pytest
    # "passed" with no failure (the short runs of tests/parity/test_run.py train on the GPU)
    for fault in alpha gamma loss_weight background; do
      timeout 100 python3 tools/parity.py --device cuda --iters 3 --losses ours \
          --inject-fault "$fault" --num-train 8 --num-val 4 \
          --work-dir "$OUT/parity_fault_$fault" > "$OUT/parity_fault_$fault.out" 2>&1
      echo "fault $fault: exit $? (expected 1)"; grep -m1 'failed:' "$OUT/parity_fault_$fault.out"
    done
    timeout 240 python3 -m pytest tests/parity/test_run.py tests/parity/test_check.py \
        tests/parity/test_compare.py -q -p no:cacheprovider -rs 2>&1 \
        | tee "$OUT/parity_tests.log" | tail -n 8
    ;;
  accuracy)
    # success: "ours | 300/300" on cuda and cpu; mmdet's misses on cuda include "mmcv's
    # log(max(1 - p, FLT_MIN)) cap"; pytest "passed" with no failure and no cuda test skipped
    timeout 240 python3 -m mmdet_focal_triton.parity.accuracy --device cuda --cases 300 \
        --out "$OUT/accuracy_cuda" 2>&1 | grep -v -i warn
    timeout 120 python3 -m mmdet_focal_triton.parity.accuracy --device cpu --cases 300 \
        --out "$OUT/accuracy_cpu" 2>&1 | grep -v -i warn
    timeout 120 python3 -m pytest tests/parity/test_accuracy.py tests/parity/test_reference.py \
        -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/accuracy_tests.log" | tail -n 6
    ;;
  ddp)
    # needs 2 GPUs (nvidia-h200-x2). tools/ddp_parity.py: R50-FPN at (1333, 800), 30 iterations,
    # 5 trainings through tools/dist_train.sh (ours and mmdet's loss, each on 1 GPU x batch 2
    # and 2 GPUs x batch 1, paired synthetic data, SyncBN, TF32 off; plus the control: ours on
    # 1 GPU with each pair's images swapped); exit 0 = every checked comparison passed
    timeout 420 python3 tools/ddp_parity.py --device cuda --iters 30 --control --timeout 150 \
        --work-dir "$OUT/ddp_parity" > "$OUT/ddp_parity.out" 2>&1
    echo "ddp_parity: exit $?"
    cat "$OUT/ddp_parity.out"
    [ -f "$OUT/ddp_parity/summary.md" ] && cat "$OUT/ddp_parity/summary.md"
    GPU_VALIDATION_REPORT=$OUT/gpu_validation_ddp.jsonl timeout 90 python3 -m pytest \
        tests/test_gpu_scale.py -k cuda1 -q -s -p no:cacheprovider 2>&1 \
        | tee "$OUT/gpu_scale_cuda1.log" | grep -E '^\{|passed|failed|FAILED|skipped'
    ;;
  family)
    # the family's CUDA tests (the whole grids of QFL and VFL in the family modules, bad
    # inputs, mmdet's heads), then the at-scale tests
    timeout 300 python3 -m pytest tests/test_family_numbers.py tests/test_family_mmdet.py tests/test_family_autograd.py \
        tests/test_bad_inputs.py tests/test_family_heads.py -m cuda -k "qfl or vfl or head" \
        -q -n 12 -p no:cacheprovider 2>&1 | tee "$OUT/family_grid.log" \
        | grep -E 'passed|failed|FAILED'
    GPU_VALIDATION_REPORT=$OUT/gpu_validation_family.jsonl timeout 150 python3 -m pytest \
        tests/test_family_gpu.py -q -s -p no:cacheprovider 2>&1 | tee "$OUT/family_gpu.log" \
        | grep -E '^\{|passed|failed|FAILED|skipped'
    ;;
  gaussian)
    # GaussianFocalLoss: its CUDA tests (float64 grids, pos_inds form, mmdet, checks, direct
    # launch), then the at-scale ones; the three other losses' CUDA grids (their results must
    # not have moved); the benchmark (wall: time and peak memory, host: us per call) at
    # CenterNet R18's batch 2 and 16 against mmdet's module and torch.compile of its function
    timeout 150 python3 -m pytest tests/test_gaussian_focal.py tests/test_launch_path.py -m cuda \
        -q -n 12 -p no:cacheprovider 2>&1 | tee "$OUT/gaussian_grid.log" \
        | grep -E 'passed|failed|FAILED'
    GPU_VALIDATION_REPORT=$OUT/gpu_validation_gaussian.jsonl timeout 120 python3 -m pytest \
        tests/test_family_gpu.py -k gaussian -q -s -p no:cacheprovider 2>&1 \
        | tee "$OUT/gaussian_gpu.log" | grep -E '^\{|passed|failed|FAILED|skipped'
    timeout 150 python3 -m pytest tests/test_family_numbers.py tests/test_family_mmdet.py \
        tests/test_family_autograd.py -m cuda -q -n 12 -p no:cacheprovider 2>&1 \
        | tee "$OUT/family_grid.log" | grep -E 'passed|failed|FAILED'
    timeout 60 python3 tools/benchmark.py --loss gaussian --dtypes fp32 bf16 \
        --impls ours mmdet-py compile --out-dir "$OUT" 2>&1 \
        | tee "$OUT/gaussian_wall.log" | tail -12
    timeout 60 python3 tools/benchmark.py --loss gaussian --mode host --dtypes fp32 \
        --impls ours mmdet-py compile floor --host-budget 0.1 --out-dir "$OUT" 2>&1 \
        | tee "$OUT/gaussian_host.log" | tail -10
    ;;
  family-bench)
    # QFL at RTMDet-s's levels of batch 32 and GFL's of batch 2, VFL at VFNet's batch 2 and 16:
    # host mode at every level (ours, mmdet's module, torch.compile of mmdet's function, the
    # floor pattern), wall mode at each family's largest level; then RTMDet-tiny's training
    # step (640x640, batch 32). Each command's timeout keeps the stage under 9 minutes; a
    # timed-out tool still prints the table of what it measured.
    timeout 95 python3 tools/benchmark.py --loss qfl --mode host --dtypes fp32 bf16 \
        --impls ours mmdet-py compile floor --host-budget 0.1 --out-dir "$OUT" 2>&1 \
        | tee "$OUT/family_qfl_host.log" | tail -22
    timeout 150 python3 tools/benchmark.py --loss vfl --mode host --dtypes fp32 bf16 \
        --impls ours mmdet-py compile floor --host-budget 0.1 --out-dir "$OUT" 2>&1 \
        | tee "$OUT/family_vfl_host.log" | tail -10
    timeout 35 python3 tools/benchmark.py --loss qfl --shapes 204800x80 --dtypes fp32 bf16 \
        --impls ours mmdet-py compile --out-dir "$OUT" 2>&1 \
        | tee "$OUT/family_qfl_wall.log" | tail -8
    timeout 35 python3 tools/benchmark.py --loss vfl --shapes 358400x80 --dtypes fp32 bf16 \
        --impls ours mmdet-py compile --out-dir "$OUT" 2>&1 \
        | tee "$OUT/family_vfl_wall.log" | tail -8
    timeout 180 python3 tools/benchmark_e2e.py --model rtmdet-tiny --batch 32 \
        --precision fp32 bf16 --variants mmdet ours zero --warmup 3 --steps 20 --rounds 3 \
        --profile-steps 3 --out-dir "$OUT" 2>&1 | tee "$OUT/family_e2e.log" | tail -12
    ;;
  quick)
    # one device call (< 10 min) validating a change of the ops: the newest focal tests, the
    # family's CUDA grid and at-scale tests, parity fp32, the mmcv accuracy finding, and the key
    # benchmarks (focal wall at 2.4Mx80 / 300kx1203, host at 300kx1203, QFL / VFL host mode)
    timeout 45 python3 -m pytest tests/test_family_autograd.py tests/test_family_numbers.py \
        -k "focal and (autograd or label)" -m cuda -q -n 8 -p no:cacheprovider \
        > "$OUT/focal_new.log" 2>&1; grep -E 'passed|failed|FAILED' "$OUT/focal_new.log" | tail -5
    timeout 100 python3 -m pytest tests/test_family_numbers.py tests/test_family_mmdet.py tests/test_family_autograd.py \
        tests/test_bad_inputs.py tests/test_family_heads.py -m cuda -k "qfl or vfl or head" \
        -q -n 14 -p no:cacheprovider > "$OUT/family_grid.log" 2>&1
    grep -E 'passed|failed|FAILED' "$OUT/family_grid.log" | tail -8
    GPU_VALIDATION_REPORT=$OUT/gpu_validation_family.jsonl timeout 45 python3 -m pytest \
        tests/test_family_gpu.py -q -s -p no:cacheprovider > "$OUT/family_gpu.log" 2>&1
    grep -E '^\{|passed|failed|FAILED' "$OUT/family_gpu.log" | cut -c1-240
    timeout 150 python3 tools/parity.py --device cuda --work-dir "$OUT/parity_none" \
        > "$OUT/parity_none.out" 2>&1; echo "parity none: exit $?"
    tail -n 24 "$OUT/parity_none.out"
    timeout 50 python3 -m mmdet_focal_triton.parity.accuracy --device cuda --cases 300 \
        --out "$OUT/accuracy_cuda" > "$OUT/accuracy_cuda.log" 2>&1
    grep -v -i warn "$OUT/accuracy_cuda.log" | tail -n 14
    timeout 60 python3 tools/benchmark.py --shapes 2.4Mx80 300kx1203 --dtypes fp32 bf16 \
        --impls ours compile mmcv --out-dir "$OUT/wall" > "$OUT/wall.log" 2>&1
    tail -n 9 "$OUT/wall.log"
    timeout 30 python3 tools/benchmark.py --mode host --shapes 300kx1203 --dtypes fp32 bf16 \
        --impls ours floor compile mmcv --out-dir "$OUT/host" > "$OUT/host.log" 2>&1
    tail -n 6 "$OUT/host.log"
    timeout 45 python3 tools/benchmark.py --loss qfl --mode host --dtypes fp32 \
        --impls ours mmdet-py compile floor --host-budget 0.1 --out-dir "$OUT/qfl" \
        > "$OUT/qfl.log" 2>&1; tail -n 14 "$OUT/qfl.log"
    timeout 25 python3 tools/benchmark.py --loss vfl --mode host --dtypes fp32 \
        --impls ours mmdet-py compile floor --host-budget 0.1 --out-dir "$OUT/vfl" \
        > "$OUT/vfl.log" 2>&1; tail -n 7 "$OUT/vfl.log"
    ;;
  parity-all)
    # the parity, parity_faults and accuracy stages at once, in two waves of concurrent
    # processes (< 10 min): verdicts only, timings of this stage mean nothing
    for amp in none fp16 bf16; do
      extra=""
      [ "$amp" = none ] && extra="--control perturbed"
      [ "$amp" = bf16 ] && extra="--losses ours"
      ( t0=$SECONDS; timeout 400 python3 tools/parity.py --device cuda --amp "$amp" \
          $extra --work-dir "$OUT/parity_$amp" > "$OUT/parity_$amp.out" 2>&1
        echo "exit $? after $((SECONDS - t0)) s" >> "$OUT/parity_$amp.out" ) &
    done
    OMP_NUM_THREADS=4 timeout 300 python3 -m mmdet_focal_triton.parity.accuracy --device cuda \
        --cases 300 --out "$OUT/accuracy_cuda" > "$OUT/accuracy_cuda.log" 2>&1 &
    OMP_NUM_THREADS=2 timeout 300 python3 -m mmdet_focal_triton.parity.accuracy --device cpu \
        --cases 300 --out "$OUT/accuracy_cpu" > "$OUT/accuracy_cpu.log" 2>&1 &
    wait
    for fault in alpha gamma loss_weight background; do
      timeout 150 python3 tools/parity.py --device cuda --iters 3 --losses ours \
          --inject-fault "$fault" --num-train 8 --num-val 4 \
          --work-dir "$OUT/parity_fault_$fault" > "$OUT/parity_fault_$fault.out" 2>&1 &
    done
    timeout 170 python3 -m pytest tests/parity/test_run.py tests/parity/test_check.py \
        tests/parity/test_compare.py tests/parity/test_accuracy.py \
        tests/parity/test_reference.py -q -p no:cacheprovider -rs \
        > "$OUT/parity_tests.log" 2>&1 &
    wait
    for amp in none fp16 bf16; do
      echo "== parity $amp: $(tail -n 1 "$OUT/parity_$amp.out")"
      grep -E '^\[parity\]|: ok in|: failed|PASS|FAIL|failed:' "$OUT/parity_$amp.out" \
          | grep -v -i warn | cut -c1-260 | head -n 14
      grep -h 'Iter(train) \[ *300/300\]' "$OUT"/parity_$amp/*/*/*.log 2>/dev/null \
          | cut -c1-200
    done
    for fault in alpha gamma loss_weight background; do
      echo "fault $fault (expected 1): $(grep -m1 -E 'failed:' "$OUT/parity_fault_$fault.out" \
          | cut -c1-200)"
    done
    echo "== accuracy"; grep -v -i warn "$OUT/accuracy_cuda.log" | tail -n 14
    grep -v -i warn "$OUT/accuracy_cpu.log" | tail -n 6
    echo "== parity tests"; tail -n 6 "$OUT/parity_tests.log"
    ;;
  fp16)
    # the float16 gradient under AMP loss scaling (float32 buffer): the CUDA tests of the three
    # losses, the focal grid's float16 cases, and RetinaNet parity in fp16 (ours must pass its
    # per-call check; mmdet's fp16 run turns NaN in mmcv's op: exit 2, or 0)
    ( t0=$SECONDS; timeout 400 python3 tools/parity.py --device cuda --amp fp16 \
          --work-dir "$OUT/parity_fp16" > "$OUT/parity_fp16.out" 2>&1
      echo "exit $? after $((SECONDS - t0)) s" >> "$OUT/parity_fp16.out" ) &
    timeout 200 python3 -m pytest tests/test_fp16_gradient.py tests/test_family_numbers.py tests/test_family_mmdet.py tests/test_family_autograd.py \
        -m cuda -k "fp16 or float16 or half" -q -n 4 \
        -p no:cacheprovider > "$OUT/fp16_tests.log" 2>&1
    grep -E 'passed|failed|FAILED' "$OUT/fp16_tests.log" | tail -n 6
    wait
    echo "== parity fp16: $(tail -n 1 "$OUT/parity_fp16.out")"
    grep -E ': ok in|: failed|PASS|FAIL|failed:' "$OUT/parity_fp16.out" | cut -c1-300
    ;;
  rtmdet)
    # RTMDet-tiny parity (QualityFocalLoss), fp32, both losses, alone in a call (< 10 min): two
    # trainings, and a third (the control) when an mAP difference exceeds its floor; done when
    # bbox_mAP >= 0.5 for both losses (docs/parity.md)
    t0=$SECONDS; timeout 560 python3 tools/parity.py --device cuda --model rtmdet-tiny \
        --work-dir "$OUT/parity_rtmdet_none" > "$OUT/parity_rtmdet_none.out" 2>&1
    echo "== rtmdet fp32 (both): exit $? after $((SECONDS - t0)) s"
    grep -E ': ok in|: failed|FAILED|PASS|FAIL|failed:|│|\[parity\]' \
        "$OUT/parity_rtmdet_none.out" | cut -c1-240 | tail -n 40
    ;;
  launch)
    # the shared launch path (launcher.Variant deciding what a launch writes, direct launches
    # for the whole family, the C-level Function.apply, the retained-graph guard) on the GPU:
    # the launch tests, then the focal and family CUDA grids (< 9.5 min; the RTMDet-tiny
    # parity is the `rtmdet` stage, alone in its call)
    timeout 150 python3 -m pytest tests/test_launch_path.py tests/test_family_autograd.py -q \
        -n 6 -p no:cacheprovider > "$OUT/launch_tests.log" 2>&1
    echo "launch tests: $(grep -E 'passed|failed' "$OUT/launch_tests.log" | tail -1)"
    grep -E '^FAILED|Error' "$OUT/launch_tests.log" | head -n 8
    timeout 230 python3 -m pytest tests/test_family_numbers.py tests/test_family_mmdet.py tests/test_family_autograd.py tests/test_bad_inputs.py \
        -m cuda -k focal -q -n 12 -p no:cacheprovider > "$OUT/focal_grid.log" 2>&1
    echo "focal grid: $(grep -E 'passed|failed' "$OUT/focal_grid.log" | tail -1)"
    grep -E '^FAILED' "$OUT/focal_grid.log" | head -n 8
    timeout 180 python3 -m pytest tests/test_family_numbers.py tests/test_family_mmdet.py tests/test_family_autograd.py \
        tests/test_bad_inputs.py tests/test_family_heads.py tests/test_fp16_gradient.py \
        -m cuda -k "qfl or vfl or head" -q -n 12 -p no:cacheprovider > "$OUT/family_grid.log" 2>&1
    echo "family grid: $(grep -E 'passed|failed' "$OUT/family_grid.log" | tail -1)"
    grep -E '^FAILED' "$OUT/family_grid.log" | head -n 8
    ;;
  family-bound)
    # QFL / VFL host time against the previous version, the floor pattern, mmdet, and
    # x.sigmoid().sum() (two native ops: what no eager loss + backward goes below), with the
    # wall ratios mmdet / ours and mmdet / sigmoid (< 5 min)
    [ -d .baseline/mft_old ] && base="--baseline .baseline" || base=""
    for loss in qfl vfl; do
      timeout 140 python3 tools/dev/host_probe.py --loss $loss $base --dtypes fp32 bf16 2>&1 \
          | grep -v -i warn | tee "$OUT/bound_$loss.log" | tail -n 18
    done
    ;;
  host-round)
    # host time per loss + backward of this checkout against the previous version (.baseline,
    # made by tools/dev/make_baseline.sh and carried), the floor pattern and mmdet, in
    # interleaved rounds (tools/dev/host_probe.py); then tools/benchmark.py's host mode for QFL
    # with its peers (torch.compile included) (< 9.5 min)
    [ -d .baseline/mft_old ] && base="--baseline .baseline" || base=""
    timeout 150 python3 tools/dev/host_probe.py $base --dtypes fp32 bf16 2>&1 \
        | grep -v -i warn | tee "$OUT/probe_focal.log" | tail -n 18
    for loss in qfl vfl; do
      timeout 90 python3 tools/dev/host_probe.py --loss $loss $base --dtypes fp32 bf16 2>&1 \
          | grep -v -i warn | tee "$OUT/probe_$loss.log" | tail -n 18
    done
    timeout 200 python3 tools/benchmark.py --loss qfl --mode host --dtypes fp32 bf16 \
        --impls ours mmdet-py compile floor --host-budget 0.1 --out-dir "$OUT" 2>&1 \
        | tee "$OUT/family_qfl_host.log" | tail -22
    ;;
  family-round)
    # VFL host mode with its peers, QFL / VFL wall time at the largest levels, RTMDet-tiny's
    # training step fp32 and bf16 (< 8 min)
    timeout 150 python3 tools/benchmark.py --loss vfl --mode host --dtypes fp32 bf16 \
        --impls ours mmdet-py compile floor --host-budget 0.1 --out-dir "$OUT" 2>&1 \
        | tee "$OUT/family_vfl_host.log" | tail -10
    timeout 40 python3 tools/benchmark.py --loss qfl --shapes 204800x80 --dtypes fp32 bf16 \
        --impls ours mmdet-py compile --out-dir "$OUT" 2>&1 \
        | tee "$OUT/family_qfl_wall.log" | tail -8
    timeout 40 python3 tools/benchmark.py --loss vfl --shapes 358400x80 --dtypes fp32 bf16 \
        --impls ours mmdet-py compile --out-dir "$OUT" 2>&1 \
        | tee "$OUT/family_vfl_wall.log" | tail -8
    timeout 200 python3 tools/benchmark_e2e.py --model rtmdet-tiny --batch 32 \
        --precision fp32 bf16 --variants mmdet ours zero --warmup 3 --steps 20 --rounds 3 \
        --profile-steps 3 --out-dir "$OUT" 2>&1 | tee "$OUT/family_e2e.log" | tail -12
    ;;
  grid-numbers|grid-rest)
    # the CUDA grid in two stages (the `tests` and `launch` stages' subsets did not fit one call
    # on 2026-12-05: 5,036 of 6,171 cases in 498 s on an H100); a JUnit XML of what ran. On an
    # H200 (2026-12-05, -n 15) grid-rest took 289 s, grid-numbers 546 + 318 s (two calls, the
    # second resuming): three device calls for the whole grid
    if [ "$stage" = grid-numbers ]; then
      files=(tests/test_family_numbers.py)
    else
      files=(tests --ignore=tests/test_family_numbers.py --ignore=tests/test_gpu_scale.py
             --ignore=tests/test_family_gpu.py)
    fi
    # what earlier calls of this stage passed (their reports, carried in .gpu-resume/) is
    # deselected (tests/_resume.py); SIGINT makes pytest write the report of what ran
    shopt -s nullglob
    done_xml=(.gpu-resume/"$stage"-*.xml)
    shopt -u nullglob
    resume=$(IFS=:; echo "${done_xml[*]}")
    [ -n "$resume" ] && echo "$stage: resuming after ${#done_xml[@]} report(s): $resume"
    t0=$SECONDS
    PYTEST_RESUME_JUNIT="$resume" timeout -s INT "${GRID_LIMIT_S:-540}" \
        python3 -m pytest "${files[@]}" -m cuda -q -n 15 -p no:cacheprovider \
        --junitxml="$OUT/$stage-$(date +%H%M%S).xml" > "$OUT/$stage.log" 2>&1
    echo "$stage: exit $? in $((SECONDS - t0)) s"
    tail -n 1 "$OUT/$stage.log"; grep -E '^FAILED|^ERROR' "$OUT/$stage.log" | head -n 12
    ;;
  wall-probe)
    # GaussianFocalLoss at CenterNet b16: do_bench (flushed, as wall mode) against a back-to-back
    # loop (as host mode) and synchronised calls, avg_factor tensor / float, this checkout and
    # .baseline, torch.profiler tables; then host mode with a tensor avg_factor
    [ -d .baseline/mft_old ] && base="--baseline .baseline" || base=""
    # the whole log to the file first (a `tee | head` pipe stops tee, and the log, at head's end)
    timeout 150 python3 tools/dev/gaussian_wall_probe.py $base 2>&1 | grep -v -i warn \
        > "$OUT/wall_probe.log"
    head -n 8 "$OUT/wall_probe.log"
    timeout 60 python3 tools/benchmark.py --loss gaussian --mode host --avg-factor tensor \
        --dtypes fp32 --impls ours compile floor --host-budget 0.1 \
        --out-dir "$OUT/gaussian_host_tensor" 2>&1 | tee "$OUT/gaussian_host_tensor.log" \
        | tail -n 6
    ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
