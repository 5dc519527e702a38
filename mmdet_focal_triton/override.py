"""Importing this module makes ``type='FocalLoss'`` build ``TritonFocalLoss`` (opt-in).

Use from a config you can add one line to but not otherwise edit::

    custom_imports = dict(imports=['mmdet_focal_triton.override'], allow_failed_imports=False)
"""
from .focal_loss import replace_mmdet_focal_loss

replace_mmdet_focal_loss()
