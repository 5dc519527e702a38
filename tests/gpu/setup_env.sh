# Source on the GPU machine (no network): installs the carried OpenMMLab wheels (.gpu-wheels/,
# copied from shared/device-wheels) into /tmp/site and puts them and this checkout on PYTHONPATH.
#   source tests/gpu/setup_env.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-wheels/*.whl \
    2>&1 | grep -v -i warning
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
python3 - <<'PY'
import torch, triton, mmcv, mmdet, mmengine
print(f'{torch.cuda.get_device_name()} x{torch.cuda.device_count()}: torch {torch.__version__}, '
      f'triton {triton.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, '
      f'mmengine {mmengine.__version__}')
PY
