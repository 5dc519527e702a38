"""parity.ddp / parity.ddp_config without training: the derived configs, the run selection, the
command line's argument checks."""
import json
from pathlib import Path

import pytest

pytest.importorskip('mmdet')

from mmdet_focal_triton.parity import DDPParityOptions, ddp, ddp_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {'cpu': REPO / 'configs/parity/retinanet_r18_fpn_synthetic_cpu.py',
           'cuda': REPO / 'configs/parity/retinanet_r18_fpn_synthetic_gpu.py'}


# (ids not 'cuda': tests/conftest.py skips items with a 'cuda' keyword on CPU; none is needed)
@pytest.mark.parametrize('device', ['cpu', 'cuda'], ids=['cpu_config', 'gpu_config'])
def test_derived_configs(device, tmp_path):
    opts = DDPParityOptions(device=device, iters=5, config=str(CONFIGS[device]))
    for world, batch in ((1, 2), (2, 1)):
        cfg, changes = ddp_config.build_config(opts, device, tmp_path, world)
        dl = cfg.train_dataloader
        assert dl.batch_size == batch and dl.num_workers == 0
        assert dl.sampler == dict(type='DefaultSampler', shuffle=False)
        assert dl.dataset.data_root == str(tmp_path) + '/'
        types_ = [t['type'] for t in dl.dataset.pipeline]
        assert not any('Flip' in t for t in types_) and 'Resize' in types_
        resize = next(t for t in dl.dataset.pipeline if t['type'] == 'Resize')
        assert tuple(resize['scale']) == ((256, 256) if device == 'cuda' else (192, 192))
        assert cfg.custom_hooks[-1] == dict(type='AverageLogVarsHook')
        assert 'mmdet_focal_triton' in cfg.custom_imports['imports']
        assert cfg.model.backbone.norm_cfg['type'] == ('SyncBN' if device == 'cuda'
                                                       else 'CPUSyncBN')
        assert cfg.default_hooks['logger']['interval'] == 1
        assert cfg.log_processor['window_size'] == 1
        assert cfg.train_cfg['max_iters'] == 5 and cfg.val_dataloader is None
        assert cfg.randomness['diff_rank_seed'] is False
        assert cfg.optim_wrapper.clip_grad  # grad_norm is logged
        assert any('flip' in c for c in changes)
    # norm 'local' keeps BN, img_size sets the Resize scale, cfg_options come last
    opts = DDPParityOptions(norm='local', img_size=96, iters=5, config=str(CONFIGS['cpu']),
                            cfg_options={'optim_wrapper.optimizer.lr': 0.5})
    cfg, changes = ddp_config.build_config(opts, device, tmp_path, 2)
    assert cfg.model.backbone.norm_cfg['type'] == 'BN'
    resize = next(t for t in cfg.train_dataloader.dataset.pipeline if t['type'] == 'Resize')
    assert tuple(resize['scale']) == (96, 96)
    assert cfg.optim_wrapper.optimizer.lr == 0.5 and 'cfg_options' in changes[-1]


def test_swapped_annotations(tmp_path):
    (tmp_path / 'annotations').mkdir()
    coco = dict(images=[dict(id=i, file_name=f'{i}.jpg') for i in range(5)], annotations=[],
                categories=[])
    (tmp_path / 'annotations' / 'instances_train.json').write_text(json.dumps(coco))
    out = ddp_config.write_swapped_ann(tmp_path, tmp_path / 'swapped.json')
    assert [im['id'] for im in json.loads(out.read_text())['images']] == [1, 0, 3, 2, 4]


def test_run_selection():
    assert ddp.resolve_runs(None, 'both', False) == list(ddp.ALL_RUNS)
    assert ddp.resolve_runs(None, 'ours', False) == ['ours:1', 'ours:2']
    assert ddp.resolve_runs(['mmdet:2', 'mmdet:2'], 'both', True) == ['mmdet:2', 'ours:1',
                                                                        'control:1']
    with pytest.raises(ValueError, match='LOSS:PROCESSES'):
        ddp.parse_run('ours:3')


def test_cli_rejects_bad_arguments(capsys):
    from mmdet_focal_triton.cli.ddp_parity import parse_args

    for bad in (['--runs', 'ours:3'], ['--num-train', '7'], ['--iters', '0'],
                ['--model', 'yolo']):
        with pytest.raises(SystemExit) as e:
            parse_args(bad)
        assert e.value.code == 2 and 'error' in capsys.readouterr().err, bad
    assert parse_args(['--model', 'rtmdet-tiny']).model == 'rtmdet-tiny'

