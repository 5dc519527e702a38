"""The focal family in mmdet's world: registry, swap, override, shipped configs, tools/train.py,
and every mmdet 3.3.0 config whose model uses QualityFocalLoss or VarifocalLoss.

* TritonQualityFocalLoss / TritonVarifocalLoss build from config dicts; importing the package
  leaves mmdet's classes in place; replace_mmdet_focal_loss() / mmdet_focal_triton.override
  replace all three losses (and the tests restore them).
* swap_focal_loss / swap_focal_family rewrite QualityFocalLoss and VarifocalLoss too (strings,
  scoped strings, classes, LazyObjects), keep their arguments, and can be restricted.
* configs/{rtmdet,gfl,vfnet}: each is its mmdet base with the loss swapped, and builds.
* every mmdet config using QualityFocalLoss / VarifocalLoss (found cheaply: the configs that
  name them, and every config inheriting from one of those), after swap_focal_loss, builds a
  model whose losses are ours, with the config's arguments. DDQ-DETR's auxiliary loss is built
  from DDQAuxLoss's defaults, out of a config's reach: the override replaces it.
"""
import ast
import copy
import glob
import importlib
import importlib.util
import json
import os.path as osp
import re
import sys

import mmdet
import pytest
import torch
from mmdet.models.losses import FocalLoss as MMDetFocalLoss
from mmdet.models.losses import QualityFocalLoss as MMDetQFL
from mmdet.models.losses import VarifocalLoss as MMDetVFL
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config, ConfigDict
from mmengine.utils import import_modules_from_strings

import mmdet_focal_triton
from mmdet_focal_triton import (
    TritonFocalLoss,
    TritonQualityFocalLoss,
    TritonVarifocalLoss,
    swap_focal_family,
    swap_focal_loss,
)

register_all_modules(init_default_scope=True)


@pytest.fixture(autouse=True)
def _mmdet_scope():
    """mmdet's registry scope for every test, whatever an earlier test module left current
    (a Runner built elsewhere makes 'mmengine' the current scope)."""
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope('mmdet'):
        yield

pytestmark = pytest.mark.usefixtures('one_torch_thread')

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MMDET_CONFIGS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')
SHIPPED = sorted(glob.glob(osp.join(REPO, 'configs', '*', '*triton-qfl*.py'))
                 + glob.glob(osp.join(REPO, 'configs', '*', '*triton-vfl*.py')))
FAMILY_TYPES = ('QualityFocalLoss', 'mmdet.QualityFocalLoss', 'VarifocalLoss',
                'mmdet.VarifocalLoss')
OURS = {'QualityFocalLoss': TritonQualityFocalLoss, 'VarifocalLoss': TritonVarifocalLoss}
MMDETS = {'FocalLoss': MMDetFocalLoss, 'QualityFocalLoss': MMDetQFL, 'VarifocalLoss': MMDetVFL}


def walk_dicts(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk_dicts(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from walk_dicts(v)


def family_dicts(model_cfg, types=FAMILY_TYPES):
    return [d for d in walk_dicts(model_cfg) if isinstance(d.get('type'), str)
            and d['type'] in types]


def offline_model_cfg(model_cfg):
    """A copy that builds without the network (no pretrained weights, no teacher checkpoint),
    with LD's `teacher_config` (a path relative to mmdet's repository) resolved in the wheel."""
    model_cfg = copy.deepcopy(model_cfg)
    for d in walk_dicts(model_cfg):
        for key in ('pretrained', 'teacher_ckpt'):
            if key in d:
                d[key] = None
        if isinstance(d.get('backbone'), dict):
            d['backbone']['init_cfg'] = None
        tc = d.get('teacher_config')
        if isinstance(tc, str) and tc.startswith('configs/'):
            d['teacher_config'] = osp.join(MMDET_CONFIGS, tc[len('configs/'):])
    return model_cfg


def resolve_mmdet_path(path):
    assert path.startswith('mmdet::'), path
    return osp.join(MMDET_CONFIGS, path[len('mmdet::'):])


def strip_scope(node):
    if isinstance(node, dict):
        return {k: strip_scope(v) for k, v in node.items() if k != '_scope_'}
    if isinstance(node, (list, tuple)):
        return type(node)(strip_scope(v) for v in node)
    return node


def base_of(config_file):
    """The `_base_` of a config file (a str or a list), read from its source, or None."""
    tree = ast.parse(open(config_file).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', None) == '_base_':
            return ast.literal_eval(node.value)
    return None


def resolved_bases(config_file):
    bases = base_of(config_file)
    bases = [] if bases is None else [bases] if isinstance(bases, str) else list(bases)
    here = osp.dirname(config_file)
    return [resolve_mmdet_path(b) if b.startswith('mmdet::') else osp.normpath(osp.join(here, b))
            for b in bases]


def _missing_package(exc):
    while exc is not None:
        for name in re.findall(r"No module named '([\w.]+)'|([\w-]+) is not installed",
                               str(exc)):
            top = (name[0] or name[1]).split('.')[0].replace('-', '_')
            if importlib.util.find_spec(top) is None:
                return top
        exc = exc.__cause__ or exc.__context__
    return None


# ------------------------------------------------------------------------------- registry
def test_build_from_config_dicts_and_import_leaves_mmdet_alone():
    importlib.reload(mmdet_focal_triton)  # importing (again) replaces nothing
    assert MODELS.get('QualityFocalLoss') is MMDetQFL
    assert MODELS.get('VarifocalLoss') is MMDetVFL
    assert type(MODELS.build(dict(type='QualityFocalLoss'))) is MMDetQFL
    assert type(MODELS.build(dict(type='mmdet.TritonQualityFocalLoss'))) is TritonQualityFocalLoss
    assert type(MODELS.build(dict(type='TritonVarifocalLoss'))) is TritonVarifocalLoss
    q = MODELS.build(dict(type='TritonQualityFocalLoss', beta=1.5, activated=True))
    assert (q.beta, q.activated) == (1.5, True)


@pytest.fixture
def restore_family():
    yield
    for name, cls in MMDETS.items():
        MODELS.register_module(name=name, module=cls, force=True)
    assert all(MODELS.get(name) is cls for name, cls in MMDETS.items())


def test_replace_mmdet_focal_loss_covers_the_family(restore_family):
    mmdet_focal_triton.replace_mmdet_focal_loss(losses=('QualityFocalLoss',))
    assert MODELS.get('QualityFocalLoss') is TritonQualityFocalLoss
    assert MODELS.get('FocalLoss') is MMDetFocalLoss and MODELS.get('VarifocalLoss') is MMDetVFL
    mmdet_focal_triton.replace_mmdet_focal_loss()
    assert MODELS.get('FocalLoss') is TritonFocalLoss
    assert MODELS.get('VarifocalLoss') is TritonVarifocalLoss
    built = MODELS.build(dict(type='QualityFocalLoss', beta=1.0, loss_weight=2.0))
    assert type(built) is TritonQualityFocalLoss and (built.beta, built.loss_weight) == (1.0, 2.0)
    with pytest.raises(ValueError, match='losses must name'):
        mmdet_focal_triton.replace_mmdet_focal_loss(losses=('GaussianFocalLoss',))


def test_override_module_replaces_the_family(restore_family):
    if 'mmdet_focal_triton.override' in sys.modules:
        importlib.reload(sys.modules['mmdet_focal_triton.override'])
    else:
        import_modules_from_strings(['mmdet_focal_triton.override'])  # as custom_imports does
    assert MODELS.get('FocalLoss') is TritonFocalLoss
    assert MODELS.get('QualityFocalLoss') is TritonQualityFocalLoss
    assert MODELS.get('VarifocalLoss') is TritonVarifocalLoss


def test_ddq_auxiliary_loss_needs_the_override(restore_family):
    """DDQAuxLoss builds its QualityFocalLoss (activated=True) from its own defaults: the config
    swap cannot reach it, the override does."""
    from mmdet.models.losses.ddq_detr_aux_loss import DDQAuxLoss

    assert type(DDQAuxLoss().loss_cls) is MMDetQFL
    mmdet_focal_triton.replace_mmdet_focal_loss()
    aux = DDQAuxLoss().loss_cls
    assert type(aux) is TritonQualityFocalLoss and aux.activated is True
    # and it computes mmdet's numbers on what DDQ passes: probabilities, (labels, scores)
    g = torch.Generator().manual_seed(0)
    p = torch.rand(30, 80, generator=g).clamp(1e-4, 1 - 1e-4).requires_grad_(True)
    target = (torch.randint(0, 81, (30,), generator=g), torch.rand(30, generator=g))
    w = torch.ones(30)
    ours = aux(p, target, w, avg_factor=1.0)
    theirs = MMDetQFL(activated=True)(p, target, w, avg_factor=1.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------- swap helper
def _model_with_the_family():
    return dict(
        type='SomeDetector',
        bbox_head=dict(type='TOODHead',
                       initial_loss_cls=dict(type='FocalLoss', gamma=2.0, alpha=0.25,
                                             activated=True),
                       loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, activated=True,
                                     beta=2.0, loss_weight=1.0)),
        aux=[dict(loss_cls=dict(type='mmdet.QualityFocalLoss', beta=1.5)),
             (dict(loss_cls=dict(type='VarifocalLoss', alpha=0.5, gamma=1.0,
                                 iou_weighted=False)),)],
        others=dict(dfl=dict(type='DistributionFocalLoss'), gfl=dict(type='GaussianFocalLoss'),
                    mine=dict(type='mmyolo.QualityFocalLoss'),
                    already=dict(type='TritonVarifocalLoss')))


@pytest.mark.parametrize('kind', ['dict', 'Config'])
def test_swap_family_nested(kind):
    raw = dict(model=_model_with_the_family())
    cfg = Config(copy.deepcopy(raw)) if kind == 'Config' else copy.deepcopy(raw)
    assert swap_focal_family(cfg) == {'FocalLoss': 1, 'QualityFocalLoss': 2, 'VarifocalLoss': 1}
    m = cfg['model']
    assert m['bbox_head']['initial_loss_cls']['type'] == 'TritonFocalLoss'
    assert m['bbox_head']['loss_cls'] == dict(raw['model']['bbox_head']['loss_cls'],
                                              type='TritonQualityFocalLoss')
    assert m['aux'][0]['loss_cls'] == dict(type='mmdet.TritonQualityFocalLoss', beta=1.5)
    assert m['aux'][1][0]['loss_cls'] == dict(raw['model']['aux'][1][0]['loss_cls'],
                                              type='TritonVarifocalLoss')
    others = m['others'].to_dict() if kind == 'Config' else m['others']
    assert others == raw['model']['others']
    assert 'mmdet_focal_triton' in cfg['custom_imports']['imports']
    assert swap_focal_loss(cfg) == 0  # idempotent


def test_swap_can_be_restricted():
    cfg = dict(model=_model_with_the_family())
    assert swap_focal_loss(cfg, losses=('FocalLoss',)) == 1
    assert cfg['model']['bbox_head']['loss_cls']['type'] == 'QualityFocalLoss'
    assert swap_focal_family(cfg, losses='VarifocalLoss')['VarifocalLoss'] == 1
    assert cfg['model']['bbox_head']['loss_cls']['type'] == 'QualityFocalLoss'
    with pytest.raises(ValueError, match='losses must name'):
        swap_focal_loss(cfg, losses=('CrossEntropyLoss',))


def test_swap_family_class_and_lazy_types():
    from mmengine.config.lazy import LazyObject

    cfg = dict(model=dict(
        a=dict(type=MMDetQFL, beta=1.0),
        b=dict(type=LazyObject('mmdet.models.losses', 'VarifocalLoss'), alpha=0.5),
        c=dict(type=LazyObject('mmdet.models.losses', 'QualityFocalLoss')),
        d=dict(type=LazyObject('othercodebase.losses', 'QualityFocalLoss')),
        e=dict(type=TritonQualityFocalLoss)))
    assert swap_focal_family(cfg) == {'FocalLoss': 0, 'QualityFocalLoss': 2, 'VarifocalLoss': 1}
    assert cfg['model']['a']['type'] is TritonQualityFocalLoss
    lazy = cfg['model']['b']['type']
    assert isinstance(lazy, LazyObject) and lazy.build() is TritonVarifocalLoss
    assert cfg['model']['c']['type'].build() is TritonQualityFocalLoss
    assert str(cfg['model']['d']['type']) == 'QualityFocalLoss'
    assert cfg['model']['e']['type'] is TritonQualityFocalLoss


# ------------------------------------------------------------------------------- shipped configs
def test_shipped_family_configs_exist():
    names = {osp.relpath(p, osp.join(REPO, 'configs')) for p in SHIPPED}
    assert names >= {'rtmdet/rtmdet_tiny_triton-qfl_8xb32-300e_coco.py',
                     'gfl/gfl_r50_fpn_triton-qfl_1x_coco.py',
                     'vfnet/vfnet_r50_fpn_triton-vfl_1x_coco.py'}
    readme = open(osp.join(REPO, 'configs', 'README.md')).read()
    for n in names:
        assert osp.basename(n) in readme, f'{n} is not listed in configs/README.md'


@pytest.mark.parametrize('config_file', SHIPPED, ids=lambda p: osp.relpath(p, REPO))
def test_shipped_family_config_is_base_with_swapped_loss_and_builds(config_file):
    cfg = Config.fromfile(config_file)
    base = Config.fromfile(resolve_mmdet_path(base_of(config_file)))
    assert cfg.custom_imports == dict(imports=['mmdet_focal_triton'], allow_failed_imports=False)
    base_losses = family_dicts(base.model.to_dict())
    assert base_losses and not family_dicts(cfg.model.to_dict())
    expected = copy.deepcopy(base)
    assert swap_focal_loss(expected) == len(base_losses)
    got, want = strip_scope(cfg.to_dict()), strip_scope(expected.to_dict())
    assert got == want, sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    model = MODELS.build(offline_model_cfg(cfg.model))
    loss, base_loss = model.bbox_head.loss_cls, base.model.bbox_head.loss_cls
    assert type(loss) is OURS[base_loss.type]
    for key, value in base_loss.items():
        if key != 'type':
            assert getattr(loss, key) == value, key


def test_train_tool_swaps_the_family():
    spec = importlib.util.spec_from_file_location('mmdet_focal_triton_train_tool_family',
                                                  osp.join(REPO, 'tools', 'train.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = tool.build_cfg(tool.parse_args(['mmdet::tood/tood_r50_fpn_1x_coco.py',
                                          '--triton-focal']))
    head = cfg.model.bbox_head
    assert head.initial_loss_cls.type == 'TritonFocalLoss'
    assert head.loss_cls.type == 'TritonQualityFocalLoss' and head.loss_cls.activated is True
    cfg = tool.build_cfg(tool.parse_args(['mmdet::vfnet/vfnet_r50_fpn_1x_coco.py']))
    assert cfg.model.bbox_head.loss_cls.type == 'VarifocalLoss'  # nothing without the flag


# ------------------------------------------------------------------------------- all mmdet configs
def discover_family_configs():
    """Configs that name QualityFocalLoss / VarifocalLoss, every config that inherits from one of
    them (any depth), and the DDQ configs (whose auxiliary loss is one); loaded, and split into
    the ones whose model holds a family loss dict, the others, and load errors."""
    files = sorted(glob.glob(osp.join(MMDET_CONFIGS, '**', '*.py'), recursive=True))
    words = ('QualityFocalLoss', 'VarifocalLoss', 'DDQDETRHead')
    candidates = {f for f in files if any(w in open(f).read() for w in words)}
    bases = {f: set(resolved_bases(f)) for f in files}
    while True:
        more = {f for f in files if f not in candidates and bases[f] & candidates}
        if not more:
            break
        candidates |= more
    uses, others, errors = {}, {}, {}
    for f in sorted(candidates):
        rel = osp.relpath(f, MMDET_CONFIGS)
        try:
            cfg = Config.fromfile(f, import_custom_modules=False)
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors[rel] = e
            continue
        model = cfg.get('model')
        if isinstance(model, dict) and family_dicts(model.to_dict()):
            uses[rel] = cfg
        else:
            others[rel] = cfg
    return uses, others, errors


@pytest.fixture(scope='module')
def family_configs():
    return discover_family_configs()


def test_family_configs_discovered(family_configs):
    uses, others, errors = family_configs
    assert not errors, errors
    for name in ('rtmdet/rtmdet_tiny_8xb32-300e_coco.py', 'rtmdet/rtmdet_s_8xb32-300e_coco.py',
                 'rtmdet/rtmdet-ins_s_8xb32-300e_coco.py', 'gfl/gfl_r50_fpn_1x_coco.py',
                 'tood/tood_r50_fpn_1x_coco.py', 'vfnet/vfnet_r50_fpn_1x_coco.py',
                 'vfnet/vfnet_x101-64x4d-mdconv-c3-c5_fpn_ms-2x_coco.py',
                 'ld/ld_r18-gflv1-r101_fpn_1x_coco.py'):
        assert name in uses, name
    assert len(uses) >= 40
    assert any(n.startswith('ddq/') for n in others)


def _family_modules(model):
    """The family loss modules of a built model, outside a distillation teacher (a frozen model
    built by the detector from its own config file: its losses never run)."""
    teacher = getattr(model, 'teacher_model', None)
    skip = {id(m) for m in teacher.modules()} if teacher is not None else set()
    return [m for m in model.modules() if id(m) not in skip
            and isinstance(m, (MMDetQFL, MMDetVFL, MMDetFocalLoss, TritonFocalLoss))]


def test_every_mmdet_family_config_builds_with_ours(family_configs):
    """swap_focal_loss(cfg) on each config whose model uses QualityFocalLoss or VarifocalLoss
    gives a model that builds, whose loss modules are all ours, with their arguments. Configs
    whose swapped, offline model dict is identical to one already built (schedule variants)
    are built once. A config that cannot build here must name a package that is not
    installed."""
    uses, _, _ = family_configs
    built, known, failures = {}, {}, {}
    for rel, cfg in uses.items():
        cfg = copy.deepcopy(cfg)
        counts = swap_focal_family(cfg)
        model_cfg = offline_model_cfg(cfg.model.to_dict())
        assert not family_dicts(model_cfg), rel
        assert counts['QualityFocalLoss'] + counts['VarifocalLoss'] >= 1, rel
        key = json.dumps(model_cfg, sort_keys=True, default=repr)
        if key in built:
            built[key].append(rel)
            continue
        built[key] = [rel]
        try:
            if cfg.get('custom_imports'):
                import_modules_from_strings(**cfg.custom_imports)
            model = MODELS.build(ConfigDict(model_cfg))
        except Exception as e:  # noqa: BLE001 - sorted out below
            pkg = _missing_package(e)
            (known if pkg else failures)[rel] = (pkg, e)
            continue
        losses = _family_modules(model)
        ours = (TritonFocalLoss, TritonQualityFocalLoss, TritonVarifocalLoss)
        wrong = [type(m).__name__ for m in losses if type(m) not in ours]
        n_family = sum(isinstance(m, (MMDetQFL, MMDetVFL)) for m in losses)
        if wrong or n_family < counts['QualityFocalLoss'] + counts['VarifocalLoss']:
            failures[rel] = (None, AssertionError(f'loss modules after the swap: {wrong}'))
            continue
        # each of ours carries the arguments of a dict it was built from
        dicts = [{k: v for k, v in d.items() if k != 'type'}
                 for d in walk_dicts(model_cfg) if str(d.get('type', '')).startswith(
                     ('Triton', 'mmdet.Triton'))]
        for m in losses:
            if not any(all(getattr(m, k, None) == v for k, v in d.items()) for d in dicts):
                failures[rel] = (None, AssertionError(f'{type(m).__name__} lost its arguments'))
        del model
    print(f'\n{len(uses)} mmdet configs use QualityFocalLoss / VarifocalLoss; '
          f'{len(built)} distinct model dicts built')
    for rel, (pkg, _) in sorted(known.items()):
        print(f'  cannot build here (needs {pkg!r}, not installed): {rel}')
    assert not failures, 'configs that do not build after swap_focal_loss:\n' + '\n'.join(
        f'{rel}: {type(e).__name__}: {e}' for rel, (_, e) in sorted(failures.items()))
    assert len(built) - len(known) >= 25
