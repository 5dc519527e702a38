"""Importing this module makes mmdet's focal family build ours (opt-in): ``type='FocalLoss'``
builds ``TritonFocalLoss``, ``'QualityFocalLoss'`` ``TritonQualityFocalLoss``,
``'VarifocalLoss'`` ``TritonVarifocalLoss`` and ``'GaussianFocalLoss'``
``TritonGaussianFocalLoss``, also where a module builds the loss from its own
defaults (DDQ's auxiliary loss).

Use from a config you can add one line to but not otherwise edit::

    custom_imports = dict(imports=['mmdet_focal_triton.override'], allow_failed_imports=False)
"""
from .family import replace_mmdet_focal_loss

replace_mmdet_focal_loss()
