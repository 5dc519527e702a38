"""Config helpers: make any mmdet config that uses ``FocalLoss`` use ``TritonFocalLoss``.

Typical use, from a script or notebook::

    from mmdet_focal_triton import swap_focal_loss
    from mmdet_focal_triton.mm_utils import load_mmdet_config

    cfg = load_mmdet_config('retinanet/retinanet_r50_fpn_1x_coco.py')  # or Config.fromfile(path)
    n = swap_focal_loss(cfg)   # -> 1: bbox_head.loss_cls is now TritonFocalLoss

``tools/train.py --triton-focal CONFIG`` does the same for any config on the command line.
"""
from collections.abc import MutableMapping
from typing import Any

__all__ = ['swap_focal_loss', 'PACKAGE_IMPORT']

PACKAGE_IMPORT = 'mmdet_focal_triton'
_TARGET = 'TritonFocalLoss'
_SOURCE = 'FocalLoss'


def _swapped_type(t: Any) -> Any:
    """The replacement for a ``type`` value, or None if it does not name mmdet's FocalLoss.

    * ``'FocalLoss'`` -> ``'TritonFocalLoss'``;
    * ``'mmdet.FocalLoss'`` -> ``'mmdet.TritonFocalLoss'``: the scope is kept, so a config of
      another OpenMMLab codebase (e.g. mmyolo, default_scope='mmyolo') that borrows mmdet's loss
      still finds ``TritonFocalLoss`` in mmdet's registry, where it is registered;
    * the class ``mmdet.models.losses.FocalLoss`` itself (pure-python / lazy-import configs) ->
      the class ``TritonFocalLoss``.

    Anything else (another scope's ``'x.FocalLoss'``, ``FocalLossCost``, ``QualityFocalLoss``,
    ``GaussianFocalLoss``, ... and ``TritonFocalLoss`` itself) is left alone.
    """
    if isinstance(t, str):
        if t == _SOURCE:
            return _TARGET
        if t == f'mmdet.{_SOURCE}':
            return f'mmdet.{_TARGET}'
        return None  # another scope's 'X.FocalLoss' is not mmdet's: not ours to replace
    if isinstance(t, type):
        if t.__name__ == _SOURCE and t.__module__.split('.')[0] == 'mmdet':
            from .focal_loss import TritonFocalLoss
            return TritonFocalLoss
        return None
    # mmengine's LazyObject (lazy-import configs: ``from mmdet.models.losses import FocalLoss``):
    # replaced by a LazyObject, so the config stays lazy and dumpable
    if type(t).__name__ == 'LazyObject' and type(t).__module__.startswith('mmengine.'):
        module = t.__dict__.get('_module')
        if (t.__dict__.get('_imported') == _SOURCE and isinstance(module, str)
                and module.split('.')[0] == 'mmdet'):
            return type(t)(PACKAGE_IMPORT, _TARGET, t.__dict__.get('location'))
    return None


def _swap_in(node: Any, seen: set) -> int:
    # plain dict access (dict.get / dict.values) on purpose: mmengine's ConfigDict builds lazy
    # objects on attribute and item access, the raw values are what a lazy config holds
    if id(node) in seen:
        return 0
    if isinstance(node, MutableMapping):
        seen.add(id(node))
        get = dict.get if isinstance(node, dict) else type(node).get
        values = dict.values if isinstance(node, dict) else type(node).values
        count = 0
        if 'type' in node:
            new = _swapped_type(get(node, 'type'))
            if new is not None:
                node['type'] = new
                count += 1
        for value in list(values(node)):
            count += _swap_in(value, seen)
        return count
    if isinstance(node, (list, tuple)):
        seen.add(id(node))
        return sum(_swap_in(v, seen) for v in node)
    return 0


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if hasattr(cfg, 'get') else default


def _ensure_custom_import(cfg: Any) -> None:
    """Make ``cfg.custom_imports`` import this package, merging with what is there."""
    ci = _get(cfg, 'custom_imports')
    if ci is None:
        cfg['custom_imports'] = dict(imports=[PACKAGE_IMPORT], allow_failed_imports=False)
        return
    if not isinstance(ci, MutableMapping):
        raise TypeError(f'cfg.custom_imports must be a dict, got {type(ci).__name__}')
    imports = ci.get('imports', [])
    if isinstance(imports, str):
        imports = [imports]
    imports = list(imports)
    # 'mmdet_focal_triton.override' imports the package too (and also replaces FocalLoss
    # globally): either way TritonFocalLoss is registered.
    if not any(m == PACKAGE_IMPORT or str(m).startswith(PACKAGE_IMPORT + '.') for m in imports):
        imports.append(PACKAGE_IMPORT)
    ci['imports'] = imports
    # keep the user's choice if they made one; mmengine's default (and ours) is False, so a
    # missing package is an import error, not a confusing registry KeyError later
    if 'allow_failed_imports' not in ci:
        ci['allow_failed_imports'] = False


def swap_focal_loss(cfg: Any) -> int:
    """Replace every ``FocalLoss`` in ``cfg.model`` with ``TritonFocalLoss``, in place.

    Walks ``cfg['model']`` (dicts and lists at any depth: ``bbox_head.loss_cls``, RPN heads,
    DETR-family heads, the detector inside a semi-supervised wrapper, ...) and rewrites every
    dict whose ``type`` is exactly ``'FocalLoss'`` (or ``'mmdet.FocalLoss'``, which becomes
    ``'mmdet.TritonFocalLoss'``, or mmdet's FocalLoss class) to ``TritonFocalLoss``; all the other
    arguments (``use_sigmoid``, ``gamma``, ``alpha``, ``reduction``, ``loss_weight``,
    ``activated``) are kept as they are, so the loss is the same. Dicts of other types are
    never touched: ``FocalLossCost`` (Hungarian matching costs), ``QualityFocalLoss``,
    ``GaussianFocalLoss``, ``VarifocalLoss`` ... stay what they are.

    It also makes sure ``cfg.custom_imports`` imports ``mmdet_focal_triton`` (added to an
    existing ``custom_imports``, whose other imports and ``allow_failed_imports`` are kept;
    a new one gets ``allow_failed_imports=False``), so the saved config (the copy the Runner
    writes into its work_dir) rebuilds on its own. That entry is added even when nothing was
    swapped.

    Args:
        cfg: an ``mmengine.Config`` or a plain dict with a ``model`` key.

    Returns:
        int: the number of loss dicts swapped (0 if the model uses no FocalLoss, or has
        already been swapped: calling it twice is harmless).
    """
    if not hasattr(cfg, 'get') or not hasattr(cfg, '__setitem__'):
        raise TypeError(f'cfg must be an mmengine Config or a dict, got {type(cfg).__name__}')
    model = _get(cfg, 'model')
    if model is None:
        raise KeyError('cfg has no "model" entry: pass the whole config (swap_focal_loss '
                       'looks for FocalLoss inside cfg.model)')
    count = _swap_in(model, set())
    _ensure_custom_import(cfg)
    return count
