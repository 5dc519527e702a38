"""The fused-loss operators, one concern per module:

- `backend.py`   which implementation runs a call (Triton kernels or PyTorch)
- `checks.py`    input checks reported without a host synchronisation (sticky host-mapped flag)
- `spec.py`      compact descriptions of a call (`FocalSpec`, `QualityFocalSpec`,
                 `VarifocalSpec`, packed into one int for the op)
- `tuning.py`    launch configuration per (C, dtype): block shape, warps, grid
- `launcher.py`  compiled-kernel cache and direct launch; per-stream reduction workspace
- `autograd.py`  glue shared by the losses: gradient written in the forward, rescaled in place
- `focal.py`     the focal-loss operator: host side, torch.library op, eager autograd Function
- `torch_focal.py`  the PyTorch implementation of the focal loss (CPU path)
- `quality_focal.py`, `varifocal.py`  the quality focal / varifocal operators (mmdet's
                 `QualityFocalLoss`, `VarifocalLoss`), laid out as `focal.py`
- `torch_quality_focal.py`, `torch_varifocal.py`  their PyTorch implementations (CPU path)

Public controls are re-exported by the package (`mmdet_focal_triton.set_backend`, ...).
"""
