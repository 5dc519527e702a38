"""mmdet's focal family and this package's replacements: the one table the swap, the override,
the parity tools and the tests read (a new loss of the family is one more entry).

    FocalLoss          -> TritonFocalLoss          (RetinaNet, FCOS, ATSS, DINO, ...)
    QualityFocalLoss   -> TritonQualityFocalLoss   (GFL, RTMDet, TOOD, DDQ, LD, ...)
    VarifocalLoss      -> TritonVarifocalLoss      (VFNet)
    GaussianFocalLoss  -> TritonGaussianFocalLoss  (CenterNet, CornerNet, CentripetalNet)
"""
import importlib

# mmdet's loss name -> ours
FOCAL_FAMILY = {
    'FocalLoss': 'TritonFocalLoss',
    'QualityFocalLoss': 'TritonQualityFocalLoss',
    'VarifocalLoss': 'TritonVarifocalLoss',
    'GaussianFocalLoss': 'TritonGaussianFocalLoss',
}
# mmdet's loss name -> the module of this package that defines ours (imported on first use:
# they need mmdet)
_MODULES = {'FocalLoss': 'focal_loss', 'QualityFocalLoss': 'quality_focal',
            'VarifocalLoss': 'varifocal', 'GaussianFocalLoss': 'gaussian_focal'}


def our_class(name: str) -> type:
    """Our class for one of mmdet's loss names."""
    module = importlib.import_module(f'{__package__}.{_MODULES[name]}')
    return getattr(module, FOCAL_FAMILY[name])


def replace_mmdet_focal_loss(losses=tuple(FOCAL_FAMILY)) -> None:
    """Opt-in: make ``type='FocalLoss'`` in any config build ``TritonFocalLoss``, and likewise
    for the rest of the family (``losses``: which of mmdet's names; default all four).

    Overwrites those entries of mmdet's MODELS registry for this process, so that also the losses
    a module builds from its own defaults (DDQ's auxiliary QualityFocalLoss) are ours. For
    configs you cannot edit; otherwise prefer ``type='TritonFocalLoss'`` (etc.) or the swap
    helper (``mmdet_focal_triton.swap_focal_loss``). Importing ``mmdet_focal_triton.override``
    (e.g. from a config's ``custom_imports``) does the same for all four.
    """
    import mmdet.models.losses  # noqa: F401  (register mmdet's own losses first)
    from mmdet.registry import MODELS

    if isinstance(losses, str):
        losses = (losses,)
    for name in losses:
        if name not in FOCAL_FAMILY:
            raise ValueError(f'losses must name mmdet losses among {sorted(FOCAL_FAMILY)}, got '
                             f'{name!r}')
        MODELS.register_module(name=name, module=our_class(name), force=True)


def call_reduction(module, reduction_override, sigmoid: bool = True) -> str:
    """The reduction of one call of a family module, as mmdet's modules decide it:
    `reduction_override` if given (asserted to be one of mmdet's), else the module's own; a
    module built with ``use_sigmoid=False`` (`sigmoid`) raises NotImplementedError, as mmdet's."""
    assert reduction_override in (None, 'none', 'mean', 'sum'), \
        f"reduction_override must be None, 'none', 'mean' or 'sum', got {reduction_override!r}"
    if sigmoid and not module.use_sigmoid:
        raise NotImplementedError
    return reduction_override if reduction_override else module.reduction
