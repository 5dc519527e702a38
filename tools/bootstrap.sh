#!/usr/bin/env bash
# Create (or reuse) the project virtualenv and install the pinned OpenMMLab stack into it.
#
# Called by the Makefile; safe to run by hand:  bash tools/bootstrap.sh [VENV_DIR]
#
# The OpenMMLab stack does not install on a modern machine with a plain `pip install`
# (see README, "Troubleshooting the mm stack"). Every pin below says why it is what it is.
# The expensive step, building mmcv 2.1.0 with its compiled ops from the PyPI sdist, happens
# once per (python, torch, CUDA) combination: the wheel is kept in a per-user cache
# (${MMDET_FOCAL_TRITON_CACHE:-~/.cache/mmdet-focal-triton}/wheels) and reused by every later
# run and every other clone on the machine.
#
# Environment knobs:
#   PYTHON=python3.11     interpreter that creates the venv (default: python3)
#   TORCH_SPEC=...        torch requirement (default torch==2.13.0; a GPU user may point this at
#                         the CUDA build they already use, e.g. "torch==2.11.0")
#   MMCV_CUDA=0|1         force the mmcv CUDA-ops build off/on (default: auto-detect)
set -euo pipefail

VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}

# --- pins -------------------------------------------------------------------------------
# torch 2.13: the version this project is developed and tested against on CPU; its CPU wheel
# is what CI installs. Any torch >= 2.6 works (torch.library.triton_op); GPU users keep theirs.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# setuptools >=77 (torch 2.13 requires it) and <82: mmcv 2.1.0's setup.py and mmengine 0.10.7's
# `mmdet::` config resolution both import pkg_resources, which setuptools 82 removed.
SETUPTOOLS_SPEC='setuptools>=77,<82'
# triton 3.6: the version on our reference GPU machine (torch 2.11+cu130). On CPU it serves the
# Triton interpreter (TRITON_INTERPRET=1), which runs our kernels in the test suite.
TRITON_SPEC='triton==3.6.0'
# mmengine 0.10.7: the last release; mmdet 3.3.0 needs >=0.7.1,<1.0.0.
MMENGINE_SPEC='mmengine==0.10.7'
# mmcv 2.1.0: mmdet 3.3.0 asserts mmcv < 2.2.0 at import. Built from the sdist with its ops
# (mmcv-lite cannot serve: `import mmdet.models` loads mmcv.ops, which needs mmcv._ext).
MMCV_VERSION='2.1.0'
# mmdet 3.3.0: the current mmdetection 3.x release, whose FocalLoss we reproduce.
MMDET_SPEC='mmdet==3.3.0'
# numpy 2 (mmcv 2.1.0's ops do not use the numpy C API), below 2.4: numpy 2.4 refuses int() of a
# one-element array, which triton 3.6's interpreter does for loop bounds (`range(0, n, BLOCK)`).
NUMPY_SPEC='numpy>=2,<2.4'
# test / tooling dependencies (not pinned tightly: nothing in them is version-sensitive here)
# (pytest-xdist: the suite runs a worker per core, pyproject.toml's addopts)
DEV_SPECS=('pytest>=8' 'pytest-timeout' 'pytest-xdist' 'matplotlib>=3.8' 'pycocotools>=2.0.8'
           'rich>=13' 'ruff')
# optional packages some mmdet 3.3.0 configs need to build their model (tests/test_mmdet_configs.py
# builds every config of the focal family): scikit-image for BoxInst; fairscale for Grounding
# DINO's checkpointing (those configs then need Hugging Face transformers and a download of
# bert-base-uncased, so they still do not build offline: listed in that test). Built against the
# venv's torch (no build isolation); mmpretrain is left out: its models import torchvision, and the
# only torchvision wheel available offline is a CUDA build whose ops do not load with the CPU torch.
CONFIG_SPECS=('fairscale==0.4.13' 'scikit-image==0.26.0')

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }
# The steps and pip's own output (and any warnings a machine's pip configuration adds to every
# call) go to $LOG: the terminal gets a line to start, the mmcv build if there is one, and the
# result. A failing step prints the end of its output and the log's path.
step() { printf '== %s\n' "$*" >>"$LOG"; }

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    made="new virtualenv $VENV ($($PYTHON -V 2>&1))"
else
    made="virtualenv $VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off)
LOG="$VENV/bootstrap.log"
: > "$LOG"
log "$made: installing the pinned stack (torch, mmcv, mmengine, mmdet, test tools);" \
    "pip's output in $LOG"
run_logged() {
    if ! "$@" >>"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        log "failed: $* (full output: $LOG)"
        exit 1
    fi
}

step "build tools: $SETUPTOOLS_SPEC wheel"
run_logged "${PIP[@]}" -q "$SETUPTOOLS_SPEC" wheel

step "torch: $TORCH_SPEC, $NUMPY_SPEC, $TRITON_SPEC"
run_logged "${PIP[@]}" -q "$TORCH_SPEC" "$NUMPY_SPEC" "$TRITON_SPEC"

# --- mmcv with ops, built once and cached -----------------------------------------------
# CUDA ops only when both a CUDA toolkit (nvcc) and a CUDA build of torch are present: a machine
# may have nvcc but a CPU-only torch, and mmcv cannot build CUDA ops against that.
read -r PYTAG TORCH_VER TORCH_CUDA < <("$PY" - <<'PY'
import sys, torch
print(f"cp{sys.version_info[0]}{sys.version_info[1]}", torch.__version__.split('+')[0],
      torch.version.cuda or "none")
PY
)
if [ -z "${MMCV_CUDA:-}" ]; then
    if command -v nvcc >/dev/null 2>&1 && [ "$TORCH_CUDA" != none ]; then MMCV_CUDA=1; else MMCV_CUDA=0; fi
fi
if [ "$MMCV_CUDA" = 1 ]; then VARIANT="cu${TORCH_CUDA}"; else VARIANT=cpu; fi
CACHE=${MMDET_FOCAL_TRITON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmdet-focal-triton}
WHEELDIR="$CACHE/wheels/mmcv-$MMCV_VERSION-$PYTAG-torch$TORCH_VER-$VARIANT"

if "$PY" -c "import mmcv, mmcv._ext, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
    step "mmcv $MMCV_VERSION with ops already installed"
else
    if ! ls "$WHEELDIR"/mmcv-*.whl >/dev/null 2>&1; then
        log "building mmcv $MMCV_VERSION ($VARIANT ops) from the sdist; once per machine, ~10 min on 2 cores"
        mkdir -p "$WHEELDIR"
        # --no-build-isolation: the build must see the venv's torch (in an isolated env it does
        # not, and silently skips the ops) and the venv's setuptools<82 (pkg_resources).
        run_logged env MMCV_WITH_OPS=1 FORCE_CUDA="$MMCV_CUDA" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
            "$PY" -m pip wheel --disable-pip-version-check --no-build-isolation --no-deps \
            --no-binary mmcv -w "$WHEELDIR.tmp" "mmcv==$MMCV_VERSION"
        mv "$WHEELDIR.tmp"/mmcv-*.whl "$WHEELDIR"/ && rm -rf "$WHEELDIR.tmp"
    else
        step "reusing cached mmcv wheel from $WHEELDIR"
    fi
    # --no-deps: mmcv's wheel asks for opencv-python, whose cv2 needs libGL.so.1, absent on
    # headless machines; its runtime deps are installed explicitly below, with the headless cv2.
    run_logged "${PIP[@]}" -q --no-deps "$WHEELDIR"/mmcv-*.whl
fi
# mmcv 2.1.0 runtime requirements (requirements/runtime.txt), with opencv-python-headless in place
# of opencv-python (same cv2 module, no GUI libraries needed).
run_logged "${PIP[@]}" -q addict packaging Pillow pyyaml yapf opencv-python-headless

step "$MMENGINE_SPEC $MMDET_SPEC + dev tools"
run_logged "${PIP[@]}" -q "$MMENGINE_SPEC" "$MMDET_SPEC" "${DEV_SPECS[@]}"

step "packages of mmdet configs: ${CONFIG_SPECS[*]}"
run_logged "${PIP[@]}" -q --no-build-isolation "${CONFIG_SPECS[@]}" "$TORCH_SPEC" "$NUMPY_SPEC" \
    "$SETUPTOOLS_SPEC"

step "this package (editable)"
run_logged "${PIP[@]}" -q --no-build-isolation --no-deps -e .

"$PY" - <<'PY'
import mmcv, mmdet, mmengine, torch, triton
from mmcv.ops import nms  # noqa: F401  (compiled ops present)
import mmdet.models  # noqa: F401
import mmdet_focal_triton
print(f"[bootstrap] ok: torch {torch.__version__}, triton {triton.__version__}, mmengine "
      f"{mmengine.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}")
PY
