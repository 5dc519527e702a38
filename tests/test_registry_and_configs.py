"""The package in mmdet's world: registry, the opt-in replacement of mmdet's losses, the config
swap helper, the shipped configs and tools/train.py, for the whole focal family.

* TritonFocalLoss, TritonQualityFocalLoss, TritonVarifocalLoss and TritonGaussianFocalLoss build
  from config dicts
  (tests/test_family_mmdet.py: their arguments); importing the package leaves mmdet's classes in
  place; replace_mmdet_focal_loss() / mmdet_focal_triton.override replace them (the tests
  restore them), also where a module builds its loss from its own defaults (DDQ).
* swap_focal_loss / swap_focal_family: nested dicts and lists, scoped types, classes and lazy
  (LazyObject) types, FocalLossCost & co. untouched, custom_imports merged, idempotent,
  restricted to some losses, mmengine.Config and plain dicts, a dumped config that rebuilds.
* configs/**: each shipped config is exactly its mmdet base with the losses swapped (so their
  arguments are the base's) plus custom_imports, and its model builds with ours in place.
* tools/train.py: mmdet's command line and config handling plus --triton-focal; runner_type.
(Every mmdet 3.3.0 config of the family: tests/test_mmdet_configs.py.)
"""
import copy
import glob
import importlib
import importlib.util
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from _configs import (
    FAMILY,
    base_name,
    base_of,
    loss_dicts,
    offline_model_cfg,
    resolve_mmdet_path,
    strip_scope,
)
from mmdet.models.losses import FocalLoss as MMDetFocalLoss
from mmdet.models.losses import GaussianFocalLoss as MMDetGFL
from mmdet.models.losses import QualityFocalLoss as MMDetQFL
from mmdet.models.losses import VarifocalLoss as MMDetVFL
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.utils import import_modules_from_strings

import mmdet_focal_triton
from mmdet_focal_triton import (
    TritonFocalLoss,
    TritonGaussianFocalLoss,
    TritonQualityFocalLoss,
    TritonVarifocalLoss,
    swap_focal_family,
    swap_focal_loss,
)

register_all_modules(init_default_scope=True)




pytestmark = pytest.mark.usefixtures('one_torch_thread', 'mmdet_scope')

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# the three-line configs of configs/README.md (configs/ holds other tools' configs too)
SHIPPED = sorted(glob.glob(osp.join(REPO, 'configs', '*', '*triton-*.py')))
OURS = {'FocalLoss': TritonFocalLoss, 'QualityFocalLoss': TritonQualityFocalLoss,
        'VarifocalLoss': TritonVarifocalLoss, 'GaussianFocalLoss': TritonGaussianFocalLoss}
MMDETS = {'FocalLoss': MMDetFocalLoss, 'QualityFocalLoss': MMDetQFL, 'VarifocalLoss': MMDetVFL,
          'GaussianFocalLoss': MMDetGFL}


# ------------------------------------------------------------------------------- registry
def test_import_does_not_replace_mmdets_losses():
    importlib.reload(mmdet_focal_triton)  # importing (again) replaces nothing
    for name in FAMILY:
        assert MODELS.get(name) is MMDETS[name]
        assert type(MODELS.build(dict(type=name))) is MMDETS[name]
        assert MODELS.get(f'Triton{name}') is OURS[name]


@pytest.fixture
def restore_family():
    yield
    for name, cls in MMDETS.items():
        MODELS.register_module(name=name, module=cls, force=True)
    assert all(MODELS.get(name) is cls for name, cls in MMDETS.items())


def test_replace_mmdet_focal_loss(restore_family):
    mmdet_focal_triton.replace_mmdet_focal_loss(losses=('QualityFocalLoss',))
    assert MODELS.get('QualityFocalLoss') is TritonQualityFocalLoss
    assert MODELS.get('FocalLoss') is MMDetFocalLoss and MODELS.get('VarifocalLoss') is MMDetVFL
    mmdet_focal_triton.replace_mmdet_focal_loss()
    assert all(MODELS.get(name) is cls for name, cls in OURS.items())
    built = MODELS.build(dict(type='FocalLoss', gamma=1.5, alpha=0.3, loss_weight=2.0))
    assert type(built) is TritonFocalLoss and (built.gamma, built.alpha, built.loss_weight) == (
        1.5, 0.3, 2.0)
    built = MODELS.build(dict(type='QualityFocalLoss', beta=1.0, loss_weight=2.0))
    assert type(built) is TritonQualityFocalLoss and (built.beta, built.loss_weight) == (1.0, 2.0)
    # a whole head built from an unmodified mmdet config now uses it
    head_cfg = Config.fromfile(resolve_mmdet_path(
        'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')).model.bbox_head
    assert head_cfg.loss_cls.type == 'FocalLoss'
    head_cfg.update(in_channels=8, feat_channels=8, stacked_convs=1)
    assert type(MODELS.build(head_cfg).loss_cls) is TritonFocalLoss
    built = MODELS.build(dict(type='GaussianFocalLoss', pos_weight=0.25, neg_weight=0.75))
    assert type(built) is TritonGaussianFocalLoss and (built.pos_weight, built.neg_weight) == (
        0.25, 0.75)
    with pytest.raises(ValueError, match='losses must name'):
        mmdet_focal_triton.replace_mmdet_focal_loss(losses=('DistributionFocalLoss',))


def test_override_module_replaces_the_family(restore_family):
    if 'mmdet_focal_triton.override' in sys.modules:
        importlib.reload(sys.modules['mmdet_focal_triton.override'])
    else:
        import_modules_from_strings(['mmdet_focal_triton.override'])  # as custom_imports does
    assert all(MODELS.get(name) is cls for name, cls in OURS.items())


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
def _model_with_everything():
    return dict(
        type='SomeDetector',
        rpn_head=dict(type='RPNHead', loss_cls=dict(type='mmdet.FocalLoss', loss_weight=3.0)),
        bbox_head=dict(
            type='DINOHead',
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=1.5, alpha=0.3,
                          loss_weight=2.0, reduction='sum'),
            loss_bbox=dict(type='L1Loss', loss_weight=5.0),
            loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
        tood_head=dict(type='TOODHead',
                       initial_loss_cls=dict(type='FocalLoss', gamma=2.0, alpha=0.25,
                                             activated=True),
                       loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, activated=True,
                                     beta=2.0, loss_weight=1.0)),
        roi_head=dict(bbox_head=[dict(loss_cls=dict(type='FocalLoss', activated=True)),
                                 dict(loss_cls=dict(type='CrossEntropyLoss')),
                                 (dict(loss_cls=dict(type='FocalLoss', gamma=0.0)),)]),
        aux=[dict(loss_cls=dict(type='mmdet.QualityFocalLoss', beta=1.5)),
             (dict(loss_cls=dict(type='VarifocalLoss', alpha=0.5, gamma=1.0,
                                 iou_weighted=False)),)],
        centernet_head=dict(loss_center_heatmap=dict(type='GaussianFocalLoss', loss_weight=1.0)),
        extra=dict(
            dfl=dict(type='DistributionFocalLoss'),
            mine=dict(type='mmyolo.FocalLoss'), theirs=dict(type='mmyolo.QualityFocalLoss'),
            already=dict(type='TritonFocalLoss'), already_vfl=dict(type='TritonVarifocalLoss')),
        train_cfg=dict(assigner=dict(type='HungarianAssigner', match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='BBoxL1Cost', weight=5.0, box_fmt='xywh')])))


@pytest.mark.parametrize('kind', ['dict', 'Config'])
def test_swap_nested(kind):
    raw = dict(model=_model_with_everything(), work_dir='w')
    cfg = Config(copy.deepcopy(raw)) if kind == 'Config' else copy.deepcopy(raw)
    assert swap_focal_family(cfg) == {'FocalLoss': 5, 'QualityFocalLoss': 2, 'VarifocalLoss': 1,
                                      'GaussianFocalLoss': 1}
    model, want = cfg['model'], raw['model']
    assert model['centernet_head']['loss_center_heatmap'] == dict(
        type='TritonGaussianFocalLoss', loss_weight=1.0)
    assert model['rpn_head']['loss_cls'] == dict(type='mmdet.TritonFocalLoss', loss_weight=3.0)
    assert model['bbox_head']['loss_cls'] == dict(want['bbox_head']['loss_cls'],
                                                  type='TritonFocalLoss')
    assert model['tood_head']['initial_loss_cls']['type'] == 'TritonFocalLoss'
    assert model['tood_head']['loss_cls'] == dict(want['tood_head']['loss_cls'],
                                                  type='TritonQualityFocalLoss')
    assert model['roi_head']['bbox_head'][0]['loss_cls'] == dict(type='TritonFocalLoss',
                                                                 activated=True)
    assert model['roi_head']['bbox_head'][1]['loss_cls']['type'] == 'CrossEntropyLoss'
    assert model['roi_head']['bbox_head'][2][0]['loss_cls'] == dict(type='TritonFocalLoss',
                                                                    gamma=0.0)
    assert model['aux'][0]['loss_cls'] == dict(type='mmdet.TritonQualityFocalLoss', beta=1.5)
    assert model['aux'][1][0]['loss_cls'] == dict(want['aux'][1][0]['loss_cls'],
                                                  type='TritonVarifocalLoss')
    # everything that is not of mmdet's focal family is exactly as it was
    for key in ('extra', 'train_cfg'):
        assert (model[key].to_dict() if kind == 'Config' else model[key]) == want[key]
    assert cfg['work_dir'] == 'w'
    assert cfg['custom_imports'] == dict(imports=['mmdet_focal_triton'],
                                         allow_failed_imports=False)
    # idempotent
    before = copy.deepcopy(cfg['custom_imports'])
    assert swap_focal_loss(cfg) == 0
    assert cfg['custom_imports'] == before


def test_swap_can_be_restricted():
    cfg = dict(model=_model_with_everything())
    assert swap_focal_loss(cfg, losses=('FocalLoss',)) == 5
    assert cfg['model']['tood_head']['loss_cls']['type'] == 'QualityFocalLoss'
    assert swap_focal_family(cfg, losses='VarifocalLoss')['VarifocalLoss'] == 1
    assert cfg['model']['tood_head']['loss_cls']['type'] == 'QualityFocalLoss'
    assert cfg['model']['centernet_head']['loss_center_heatmap']['type'] == 'GaussianFocalLoss'
    with pytest.raises(ValueError, match='losses must name'):
        swap_focal_loss(cfg, losses=('CrossEntropyLoss',))


@pytest.mark.parametrize('existing,expected', [
    (dict(imports='my_pkg'), dict(imports=['my_pkg', 'mmdet_focal_triton'],
                                  allow_failed_imports=False)),
    (dict(imports=['a', 'b'], allow_failed_imports=False),
     dict(imports=['a', 'b', 'mmdet_focal_triton'], allow_failed_imports=False)),
    (dict(imports=['a', 'mmdet_focal_triton']),
     dict(imports=['a', 'mmdet_focal_triton'], allow_failed_imports=False)),
    (dict(imports=['mmdet_focal_triton.override'], allow_failed_imports=False),
     dict(imports=['mmdet_focal_triton.override'], allow_failed_imports=False)),
    # an explicit user choice is kept
    (dict(imports=['a'], allow_failed_imports=True),
     dict(imports=['a', 'mmdet_focal_triton'], allow_failed_imports=True)),
])
@pytest.mark.parametrize('kind', ['dict', 'Config'])
def test_swap_merges_custom_imports(existing, expected, kind):
    raw = dict(model=dict(type='X', loss=dict(type='FocalLoss')), custom_imports=existing)
    cfg = Config(copy.deepcopy(raw)) if kind == 'Config' else copy.deepcopy(raw)
    assert swap_focal_loss(cfg) == 1
    ci = cfg['custom_imports']
    assert dict(ci) == expected


def test_swap_errors_and_nothing_to_swap():
    with pytest.raises(KeyError, match='model'):
        swap_focal_loss(dict(work_dir='x'))
    with pytest.raises(TypeError):
        swap_focal_loss(['model'])
    cfg = dict(model=dict(type='FasterRCNN', rpn_head=dict(
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True))))
    assert swap_focal_loss(cfg) == 0
    assert cfg['model']['rpn_head']['loss_cls']['type'] == 'CrossEntropyLoss'


def test_swap_class_and_lazy_types():
    from mmengine.config.lazy import LazyObject

    cfg = dict(model=dict(
        a=dict(type=MMDetFocalLoss, gamma=1.0),
        b=dict(type=LazyObject('mmdet.models.losses', 'FocalLoss'), alpha=0.5),
        c=dict(type=MMDetQFL, beta=1.0),
        d=dict(type=LazyObject('mmdet.models.losses', 'VarifocalLoss'), alpha=0.5),
        e=dict(type=LazyObject('mmdet.models.losses', 'QualityFocalLoss')),
        f=dict(type=LazyObject('othercodebase.losses', 'FocalLoss')),
        g=dict(type=LazyObject('othercodebase.losses', 'QualityFocalLoss')),
        h=dict(type=TritonQualityFocalLoss),
        i=dict(type=LazyObject('mmdet.models.losses', 'GaussianFocalLoss'), gamma=2.0)))
    assert swap_focal_family(cfg) == {'FocalLoss': 2, 'QualityFocalLoss': 2, 'VarifocalLoss': 1,
                                      'GaussianFocalLoss': 1}
    m = cfg['model']
    assert m['a']['type'] is TritonFocalLoss and m['c']['type'] is TritonQualityFocalLoss
    for key, cls in (('b', TritonFocalLoss), ('d', TritonVarifocalLoss),
                     ('e', TritonQualityFocalLoss), ('i', TritonGaussianFocalLoss)):
        assert isinstance(m[key]['type'], LazyObject) and m[key]['type'].build() is cls
    assert m['b']['alpha'] == 0.5
    assert str(m['f']['type']) == 'FocalLoss' and str(m['g']['type']) == 'QualityFocalLoss'
    assert m['h']['type'] is TritonQualityFocalLoss
    built = MODELS.build(m['a'])
    assert type(built) is TritonFocalLoss and built.gamma == 1.0


def test_swapped_config_dumps_and_rebuilds(tmp_path):
    """The config the Runner saves into work_dir, after the swap, loads and builds again."""
    cfg = Config.fromfile(resolve_mmdet_path('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'))
    assert swap_focal_loss(cfg) == 1
    out = tmp_path / 'dumped.py'
    cfg.dump(str(out))
    again = Config.fromfile(str(out))
    assert again.model.bbox_head.loss_cls.type == 'TritonFocalLoss'
    assert 'mmdet_focal_triton' in again.custom_imports.imports
    head_cfg = copy.deepcopy(again.model.bbox_head)
    head_cfg.update(in_channels=8, feat_channels=8, stacked_convs=1)
    assert type(MODELS.build(head_cfg).loss_cls) is TritonFocalLoss


# ------------------------------------------------------------------------------- shipped configs
def test_shipped_configs_exist():
    names = {osp.relpath(p, osp.join(REPO, 'configs')) for p in SHIPPED}
    assert names >= {'retinanet/retinanet_r50_fpn_triton-focal_1x_coco.py',
                     'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco_triton-focal.py',
                     'atss/atss_r50_fpn_triton-focal_1x_coco.py',
                     'rtmdet/rtmdet_tiny_triton-qfl_8xb32-300e_coco.py',
                     'gfl/gfl_r50_fpn_triton-qfl_1x_coco.py',
                     'vfnet/vfnet_r50_fpn_triton-vfl_1x_coco.py',
                     'centernet/centernet_r18_triton-gfl_8xb16-crop512-140e_coco.py',
                     'centernet/centernet-update_r50-caffe_fpn_ms-1x_coco_triton-gfl.py'}
    assert any(n.startswith(('dino/', 'deformable_detr/')) for n in names)
    readme = open(osp.join(REPO, 'configs', 'README.md')).read()
    for n in names:
        assert osp.basename(n) in readme, f'{n} is not listed in configs/README.md'


@pytest.mark.parametrize('config_file', SHIPPED, ids=lambda p: osp.relpath(p, REPO))
def test_shipped_config_is_base_with_swapped_losses_and_builds(config_file):
    cfg = Config.fromfile(config_file)
    base_path = base_of(config_file)
    base = Config.fromfile(resolve_mmdet_path(base_path))
    assert cfg.custom_imports == dict(imports=['mmdet_focal_triton'],
                                      allow_failed_imports=False)
    # the base uses the family; the shipped config has ours with the same arguments
    base_losses = loss_dicts(base.model.to_dict())
    assert base_losses, f'{base_path} uses none of the focal family'
    assert not loss_dicts(cfg.model.to_dict())
    # nothing else differs from the base: base + swap_focal_loss == shipped config
    expected = copy.deepcopy(base)
    assert swap_focal_loss(expected) == len(base_losses)
    got, want = strip_scope(cfg.to_dict()), strip_scope(expected.to_dict())
    assert got == want, sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    # its losses build as ours, with the base's arguments
    model = MODELS.build(offline_model_cfg(cfg.model))
    built = [m for m in model.modules() if type(m) in OURS.values()]
    assert len(built) == len(base_losses)
    for loss, base_loss in zip(built, base_losses, strict=True):
        assert type(loss) is OURS[base_name(base_loss['type'])]
        for key, value in base_loss.items():
            if key != 'type':
                assert getattr(loss, key) == value, key


# ------------------------------------------------------------------------------- tools/train.py
@pytest.fixture(scope='module')
def train_tool():
    spec = importlib.util.spec_from_file_location('mmdet_focal_triton_train_tool',
                                                  osp.join(REPO, 'tools', 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_parse_args_like_mmdet(train_tool, monkeypatch):
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    a = train_tool.parse_args(['c.py'])
    assert (a.config, a.work_dir, a.amp, a.auto_scale_lr, a.resume, a.cfg_options, a.launcher,
            a.local_rank, a.triton_focal) == ('c.py', None, False, False, None, None, 'none', 0,
                                              False)
    assert os.environ['LOCAL_RANK'] == '0'
    a = train_tool.parse_args(['c.py', '--resume', '--launcher', 'pytorch', '--local-rank', '3',
                               '--triton-focal', '--cfg-options', 'a.b=1', 'c=[1,2]'])
    assert a.resume == 'auto' and a.launcher == 'pytorch' and a.local_rank == 3
    assert a.triton_focal and a.cfg_options == {'a.b': 1, 'c': [1, 2]}
    assert train_tool.parse_args(['c.py', '--local_rank', '2']).local_rank == 2
    assert train_tool.parse_args(['c.py', '--resume', 'x.pth']).resume == 'x.pth'
    for bad in (['c.py', '--launcher', 'bogus'], []):
        with pytest.raises(SystemExit):
            train_tool.parse_args(bad)


def test_train_build_cfg(train_tool, tmp_path):
    base = resolve_mmdet_path('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
    # plain mmdet behaviour: nothing swapped without --triton-focal
    cfg = train_tool.build_cfg(train_tool.parse_args([base]))
    assert cfg.model.bbox_head.loss_cls.type == 'FocalLoss'
    assert cfg.work_dir == osp.join('./work_dirs', 'retinanet_r50_fpn_1x_coco')
    assert cfg.resume is False and cfg.launcher == 'none'
    # every option
    cfg = train_tool.build_cfg(train_tool.parse_args([
        base, '--triton-focal', '--amp', '--auto-scale-lr', '--resume', 'ckpt.pth',
        '--work-dir', str(tmp_path), '--launcher', 'pytorch',
        '--cfg-options', 'model.bbox_head.loss_cls.gamma=1.5', 'model.backbone.init_cfg=None']))
    loss = cfg.model.bbox_head.loss_cls
    assert loss.type == 'TritonFocalLoss' and loss.gamma == 1.5 and loss.alpha == 0.25
    assert 'mmdet_focal_triton' in cfg.custom_imports.imports
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == \
        'dynamic'
    assert cfg.auto_scale_lr.enable is True
    assert cfg.resume is True and cfg.load_from == 'ckpt.pth'
    assert cfg.work_dir == str(tmp_path) and cfg.launcher == 'pytorch'
    cfg = train_tool.build_cfg(train_tool.parse_args([base, '--resume']))
    assert cfg.resume is True and cfg.load_from is None


def test_train_build_runner_honours_runner_type(train_tool, tmp_path, monkeypatch):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    @RUNNERS.register_module(name='FocalTestRunner', force=True)
    class FocalTestRunner(Runner):
        built_from = None

        @classmethod
        def from_cfg(cls, cfg):
            cls.built_from = cfg
            return cls.__new__(cls)  # no need to set a whole Runner up for this check

    shipped = osp.join(REPO, 'configs', 'retinanet',
                       'retinanet_r50_fpn_triton-focal_1x_coco.py')
    cfg = train_tool.build_cfg(train_tool.parse_args(
        [shipped, '--work-dir', str(tmp_path), '--cfg-options', 'runner_type=FocalTestRunner']))
    runner = train_tool.build_runner(cfg)
    assert type(runner) is FocalTestRunner
    assert FocalTestRunner.built_from.work_dir == str(tmp_path)
    assert FocalTestRunner.built_from.model.bbox_head.loss_cls.type == 'TritonFocalLoss'
    # without runner_type: mmengine's Runner.from_cfg, as in mmdet
    cfg = train_tool.build_cfg(train_tool.parse_args([shipped, '--work-dir', str(tmp_path)]))
    assert 'runner_type' not in cfg
    monkeypatch.setattr(Runner, 'from_cfg', classmethod(lambda cls, c: ('default', c)))
    assert train_tool.build_runner(cfg) == ('default', cfg)


def test_train_accepts_packaged_mmdet_config(train_tool):
    """`mmdet::...` names a config inside the installed mmdet, as `_base_` does."""
    cfg = train_tool.build_cfg(train_tool.parse_args(
        ['mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', '--triton-focal']))
    assert cfg.model.bbox_head.loss_cls.type == 'TritonFocalLoss'
    assert cfg.work_dir == osp.join('./work_dirs', 'fcos_r50-caffe_fpn_gn-head_1x_coco')


def test_dist_train_sh_launches_train_py_with_torchrun():
    script = osp.join(REPO, 'tools', 'dist_train.sh')
    assert os.access(script, os.X_OK), 'tools/dist_train.sh must be executable'
    env = dict(os.environ, PYTHON='echo', NNODES='2', NODE_RANK='1', PORT='29999',
               MASTER_ADDR='10.0.0.7')
    out = subprocess.run([script, 'my_cfg.py', '4', '--triton-focal', '--amp', '--cfg-options',
                          'a=1'], env=env, capture_output=True, text=True, check=True)
    argv = out.stdout.split()
    assert argv[:2] == ['-m', 'torch.distributed.run']
    for flag in ('--nnodes=2', '--node_rank=1', '--nproc_per_node=4', '--master_port=29999',
                 '--master_addr=10.0.0.7'):
        assert flag in argv, flag
    train_py = next(a for a in argv if a.endswith('train.py'))
    assert osp.samefile(train_py, osp.join(REPO, 'tools', 'train.py'))
    assert argv[argv.index(train_py) + 1:] == [
        'my_cfg.py', '--launcher', 'pytorch', '--triton-focal', '--amp', '--cfg-options', 'a=1']
    # defaults, as mmdet's script
    env = dict(os.environ, PYTHON='echo')
    for k in ('NNODES', 'NODE_RANK', 'PORT', 'MASTER_ADDR'):
        env.pop(k, None)
    argv = subprocess.run([script, 'c.py', '8'], env=env, capture_output=True, text=True,
                          check=True).stdout.split()
    for flag in ('--nnodes=1', '--node_rank=0', '--nproc_per_node=8', '--master_port=29500',
                 '--master_addr=127.0.0.1'):
        assert flag in argv, flag
    bad = subprocess.run([script, 'only_config.py'], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and 'usage' in bad.stderr


def test_train_tool_swaps_the_family(train_tool):
    cfg = train_tool.build_cfg(train_tool.parse_args(['mmdet::tood/tood_r50_fpn_1x_coco.py',
                                                      '--triton-focal']))
    head = cfg.model.bbox_head
    assert head.initial_loss_cls.type == 'TritonFocalLoss'
    assert head.loss_cls.type == 'TritonQualityFocalLoss' and head.loss_cls.activated is True
    cfg = train_tool.build_cfg(train_tool.parse_args(['mmdet::vfnet/vfnet_r50_fpn_1x_coco.py']))
    assert cfg.model.bbox_head.loss_cls.type == 'VarifocalLoss'  # nothing without the flag
