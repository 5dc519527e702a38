"""Fused Triton sigmoid focal loss for mmdetection 3.x.

``import mmdet_focal_triton`` registers ``TritonFocalLoss``, ``TritonQualityFocalLoss``,
``TritonVarifocalLoss`` and ``TritonGaussianFocalLoss`` in mmdet's MODELS registry (when mmdet
is installed) and exposes the functional API ``sigmoid_focal_loss``, ``quality_focal_loss``,
``varifocal_loss``, ``gaussian_focal_loss``; with
mmengine it also registers the data-parallel helpers of ``mmdet_focal_triton.distributed``
(``AverageLogVarsHook``, ``CPUSyncBN``).

torch is checked first: a missing or too old one is an ImportError that names the minimum
(``mmdet_focal_triton.requirements``).
"""
# first: importing it checks torch (the imports below need it)
from .requirements import MIN_TORCH  # noqa: F401

# isort: split
from .functional import (
    gaussian_focal_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
    varifocal_loss,
)
from .ops.backend import backend, get_backend, set_backend
from .ops.checks import (
    check_pending_inputs,
    get_input_checks,
    input_checks_enabled,
    set_input_checks,
)
from .ops.tuning import reset_tuning, set_tuning

__version__ = '0.1.0'

__all__ = ['sigmoid_focal_loss', 'quality_focal_loss', 'varifocal_loss', 'gaussian_focal_loss',
           'set_backend',
           'get_backend', 'backend', 'set_input_checks',
           'get_input_checks', 'input_checks_enabled', 'check_pending_inputs', 'set_tuning',
           'reset_tuning', '__version__']

from .compat import patch_mmengine_torch_load

patch_mmengine_torch_load()

try:
    import mmdet  # noqa: F401
except ImportError:  # the functional API works without mmdet
    pass
else:
    from .config_utils import swap_focal_family, swap_focal_loss  # noqa: F401
    from .family import replace_mmdet_focal_loss  # noqa: F401
    from .focal_loss import TritonFocalLoss  # noqa: F401
    from .gaussian_focal import TritonGaussianFocalLoss  # noqa: F401
    from .quality_focal import TritonQualityFocalLoss  # noqa: F401
    from .varifocal import TritonVarifocalLoss  # noqa: F401

    __all__ += ['TritonFocalLoss', 'TritonQualityFocalLoss', 'TritonVarifocalLoss',
                'TritonGaussianFocalLoss',
                'replace_mmdet_focal_loss', 'swap_focal_loss', 'swap_focal_family']

try:
    import mmengine  # noqa: F401
except ImportError:
    pass
else:
    # registers AverageLogVarsHook (HOOKS) and CPUSyncBN (MODELS) for data-parallel checks
    from .distributed import AverageLogVarsHook, CPUSyncBatchNorm  # noqa: F401

    __all__ += ['AverageLogVarsHook', 'CPUSyncBatchNorm']
