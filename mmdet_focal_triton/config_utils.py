"""Config helpers: make any mmdet config use the fused losses of this package.

mmdet's focal family and its replacements (same arguments, same results):

    FocalLoss          -> TritonFocalLoss          (RetinaNet, FCOS, ATSS, DINO, ...)
    QualityFocalLoss   -> TritonQualityFocalLoss   (GFL, RTMDet, TOOD, DDQ, LD, ...)
    VarifocalLoss      -> TritonVarifocalLoss      (VFNet)
    GaussianFocalLoss  -> TritonGaussianFocalLoss  (CenterNet, CornerNet, CentripetalNet)

Typical use, from a script or notebook::

    from mmdet_focal_triton import swap_focal_loss
    from mmdet_focal_triton.mm_utils import load_mmdet_config

    cfg = load_mmdet_config('retinanet/retinanet_r50_fpn_1x_coco.py')  # or Config.fromfile(path)
    n = swap_focal_loss(cfg)   # -> 1: bbox_head.loss_cls is now TritonFocalLoss

``tools/train.py --triton-focal CONFIG`` does the same for any config on the command line.
"""
from collections.abc import Iterable, MutableMapping
from typing import Any

from .family import FOCAL_FAMILY, our_class

__all__ = ['swap_focal_loss', 'swap_focal_family', 'FOCAL_FAMILY', 'PACKAGE_IMPORT']

PACKAGE_IMPORT = 'mmdet_focal_triton'


def _swapped_type(t: Any, losses: frozenset) -> tuple[str, Any] | None:
    """(mmdet's loss name, the replacement) for a ``type`` value naming one of `losses`, or None.

    * ``'FocalLoss'`` -> ``'TritonFocalLoss'`` (and the rest of the family likewise);
    * ``'mmdet.FocalLoss'`` -> ``'mmdet.TritonFocalLoss'``: the scope is kept, so a config of
      another OpenMMLab codebase (e.g. mmyolo, default_scope='mmyolo') that borrows mmdet's loss
      still finds ours in mmdet's registry, where it is registered;
    * the class ``mmdet.models.losses.FocalLoss`` itself (pure-python / lazy-import configs) ->
      our class.

    Anything else (another scope's ``'x.FocalLoss'``, ``FocalLossCost``,
    ``DistributionFocalLoss``, ... and our own classes) is left alone.
    """
    if isinstance(t, str):
        name = t[len('mmdet.'):] if t.startswith('mmdet.') else t
        if name in losses:
            return name, t[:len(t) - len(name)] + FOCAL_FAMILY[name]
        return None  # another scope's 'X.FocalLoss' is not mmdet's: not ours to replace
    if isinstance(t, type):
        if t.__name__ in losses and t.__module__.split('.')[0] == 'mmdet':
            return t.__name__, our_class(t.__name__)
        return None
    # mmengine's LazyObject (lazy-import configs: ``from mmdet.models.losses import FocalLoss``):
    # replaced by a LazyObject, so the config stays lazy and dumpable
    if type(t).__name__ == 'LazyObject' and type(t).__module__.startswith('mmengine.'):
        module = t.__dict__.get('_module')
        name = t.__dict__.get('_imported')
        if name in losses and isinstance(module, str) and module.split('.')[0] == 'mmdet':
            return name, type(t)(PACKAGE_IMPORT, FOCAL_FAMILY[name], t.__dict__.get('location'))
    return None


def _swap_in(node: Any, seen: set, losses: frozenset, counts: dict) -> None:
    # plain dict access (dict.get / dict.values) on purpose: mmengine's ConfigDict builds lazy
    # objects on attribute and item access, the raw values are what a lazy config holds
    if id(node) in seen:
        return
    if isinstance(node, MutableMapping):
        seen.add(id(node))
        get = dict.get if isinstance(node, dict) else type(node).get
        values = dict.values if isinstance(node, dict) else type(node).values
        if 'type' in node:
            new = _swapped_type(get(node, 'type'), losses)
            if new is not None:
                node['type'] = new[1]
                counts[new[0]] += 1
        for value in list(values(node)):
            _swap_in(value, seen, losses, counts)
    elif isinstance(node, (list, tuple)):
        seen.add(id(node))
        for v in node:
            _swap_in(v, seen, losses, counts)


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
    # 'mmdet_focal_triton.override' imports the package too (and also replaces the focal
    # family globally): either way our losses are registered.
    if not any(m == PACKAGE_IMPORT or str(m).startswith(PACKAGE_IMPORT + '.') for m in imports):
        imports.append(PACKAGE_IMPORT)
    ci['imports'] = imports
    # keep the user's choice if they made one; mmengine's default (and ours) is False, so a
    # missing package is an import error, not a confusing registry KeyError later
    if 'allow_failed_imports' not in ci:
        ci['allow_failed_imports'] = False


def swap_focal_family(cfg: Any, losses: Iterable[str] = tuple(FOCAL_FAMILY)) -> dict:
    """`swap_focal_loss`, returning how many dicts of each of mmdet's loss types it replaced:
    ``{'FocalLoss': n1, 'QualityFocalLoss': n2, 'VarifocalLoss': n3,
    'GaussianFocalLoss': n4}``."""
    if not hasattr(cfg, 'get') or not hasattr(cfg, '__setitem__'):
        raise TypeError(f'cfg must be an mmengine Config or a dict, got {type(cfg).__name__}')
    if isinstance(losses, str):
        losses = (losses,)
    losses = frozenset(losses)
    unknown = losses - set(FOCAL_FAMILY)
    if unknown:
        raise ValueError(f'losses must name mmdet losses among {sorted(FOCAL_FAMILY)}, got '
                         f'{sorted(unknown)}')
    model = _get(cfg, 'model')
    if model is None:
        raise KeyError('cfg has no "model" entry: pass the whole config (swap_focal_loss '
                       'looks for the focal losses inside cfg.model)')
    counts = dict.fromkeys(FOCAL_FAMILY, 0)
    _swap_in(model, set(), losses, counts)
    _ensure_custom_import(cfg)
    return counts


def swap_focal_loss(cfg: Any, losses: Iterable[str] = tuple(FOCAL_FAMILY)) -> int:
    """Replace every loss of mmdet's focal family in ``cfg.model`` with ours, in place.

    ``FocalLoss`` -> ``TritonFocalLoss``, ``QualityFocalLoss`` -> ``TritonQualityFocalLoss``,
    ``VarifocalLoss`` -> ``TritonVarifocalLoss``, ``GaussianFocalLoss`` ->
    ``TritonGaussianFocalLoss`` (``losses`` restricts it to some of mmdet's names, e.g.
    ``losses=('FocalLoss',)``).

    Walks ``cfg['model']`` (dicts and lists at any depth: ``bbox_head.loss_cls``, RPN heads,
    DETR-family heads, TOOD's ``initial_loss_cls``, the detector inside a semi-supervised
    wrapper, ...) and rewrites every dict whose ``type`` is exactly one of those names (or
    ``'mmdet.<name>'``, which becomes ``'mmdet.<ours>'``, or mmdet's class) to ours; all the
    other arguments (``gamma``, ``alpha``, ``beta``, ``iou_weighted``, ``reduction``,
    ``loss_weight``, ``activated``, ...) are kept as they are, so the loss is the same. Dicts of
    other types are never touched: ``FocalLossCost`` (Hungarian matching costs),
    ``DistributionFocalLoss`` ... stay what they are. A loss that a module builds from its own
    default arguments, not from the config (DDQ's auxiliary
    ``QualityFocalLoss``), is out of a config's reach: ``mmdet_focal_triton.override`` replaces
    those too.

    It also makes sure ``cfg.custom_imports`` imports ``mmdet_focal_triton`` (added to an
    existing ``custom_imports``, whose other imports and ``allow_failed_imports`` are kept;
    a new one gets ``allow_failed_imports=False``), so the saved config (the copy the Runner
    writes into its work_dir) rebuilds on its own. That entry is added even when nothing was
    swapped.

    Args:
        cfg: an ``mmengine.Config`` or a plain dict with a ``model`` key.
        losses: which of mmdet's losses to replace (default: all four).

    Returns:
        int: the number of loss dicts swapped (0 if the model uses none of them, or has already
        been swapped: calling it twice is harmless). `swap_focal_family` gives them per type.
    """
    return sum(swap_focal_family(cfg, losses).values())
