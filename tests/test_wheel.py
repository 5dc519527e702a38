"""Installed as a package, everything works: the wheel built from this checkout, installed into a
fresh virtual environment, run from a folder outside the checkout.

The fresh environment reuses the installed stack (torch, mmcv with its ops, mmdet, ...) of the
one running the tests through a .pth file, and gets this package from the wheel only
(``pip install --no-deps``): the checkout is not on its path. There:

* the wheel holds the configs (``mmdet_focal_triton/.mim/configs``), the launcher of
  ``dist-train`` and the console script, and does not require torch;
* every entry point answers ``--help``: each command of ``mmdet-focal-triton``, and
  ``python -m mmdet_focal_triton``; the console script itself runs the parity run below;
* every shipped config loads from the package (its ``_base_`` chain) with ours in its model
  config, or mmdet's in a parity config; such a parity config is swapped by
  ``train --triton-focal``'s config step and builds with ours;
* a 2-iteration parity run on CPU: too short to learn, so it ends as a broken recipe (exit 3),
  with every deterministic check passed, on the package's own parity config;
* 2 iterations of ``train --triton-focal`` and a tiny benchmark run on CPU; the command line
  that ``dist-train`` hands torchrun (the trainings through it: tests/parity/test_ddp_cpu.py,
  with the checkout's launcher).

The parity run is a process of its own (the console script); everything else runs in one
process of the fresh venv (each process there pays ~7 s to import torch and mmdet on the CI
machine).
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what a build reads is copied; the rest of the checkout (its venv, outputs) is not
_SKIP_TOP = {'.venv', '.git', 'build', 'dist', 'work_dirs', 'data', '.cache', '.gpu-wheels',
             '.pytest_cache', '.ruff_cache', 'tests', 'notes'}
COMMANDS = ('parity', 'train', 'dist-train', 'ddp-parity', 'benchmark', 'benchmark-e2e',
            'configs')

pytest.importorskip('mmdet.models')
pytestmark = pytest.mark.slow


def _ignore(src, names):
    top = Path(src) == REPO
    return [n for n in names if (top and n in _SKIP_TOP) or n == '__pycache__'
            or n.endswith('.egg-info')]


def _run(cmd, cwd, env, timeout=600):
    return subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env, capture_output=True,
                          text=True, timeout=timeout)


def _out(proc):
    return f'exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n' \
           f'{proc.stderr[-4000:]}'


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    """The wheel, built (without build isolation: the stack's setuptools) from a copy of the
    checkout, so that no build/ is left in it."""
    tmp = tmp_path_factory.mktemp('wheel')
    src = tmp / 'src'
    shutil.copytree(REPO, src, symlinks=True, ignore=_ignore)
    proc = _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                 '--no-index', '-q', '-w', tmp / 'dist', src], tmp, dict(os.environ))
    assert proc.returncode == 0, _out(proc)
    wheels = list((tmp / 'dist').glob('mmdet_focal_triton-*.whl'))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope='module')
def venv(wheel, tmp_path_factory):
    """A fresh venv (no pip of its own) that sees the stack's site-packages through a .pth file
    and has the wheel installed by pip; returns (python, console script, environment, a folder
    outside the checkout)."""
    tmp = tmp_path_factory.mktemp('venv')
    env_dir = tmp / 'env'
    proc = _run([sys.executable, '-m', 'venv', '--without-pip', env_dir], tmp, dict(os.environ))
    assert proc.returncode == 0, _out(proc)
    python = env_dir / 'bin' / 'python'
    site = Path(_run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                     tmp, dict(os.environ)).stdout.strip())
    stack = {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}
    # plain paths: the stack's own .pth files (an editable install of a checkout) are not read
    (site / 'stack.pth').write_text(''.join(f'{p}\n' for p in sorted(stack)))
    proc = _run([sys.executable, '-m', 'pip', '--python', python, 'install', '--no-deps',
                 '--no-index', '-q', wheel], tmp, dict(os.environ))
    assert proc.returncode == 0, _out(proc)
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
    env.update(PATH=f'{env_dir / "bin"}{os.pathsep}{env.get("PATH", "")}', COLUMNS='120',
               OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    work = tmp / 'outside'
    work.mkdir()
    return python, env_dir / 'bin' / 'mmdet-focal-triton', env, work, site


def test_wheel_ships_configs_launcher_and_console_script(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n[len('mmdet_focal_triton/.mim/configs/'):] for n in names
               if n.startswith('mmdet_focal_triton/.mim/configs/')}
    in_checkout = {p.relative_to(REPO / 'configs').as_posix()
                   for p in (REPO / 'configs').rglob('*') if p.suffix in ('.py', '.md')}
    assert shipped == in_checkout and 'parity/retinanet_r18_fpn_synthetic_cpu.py' in shipped
    assert 'mmdet_focal_triton/cli/dist_train.sh' in names
    dist_info = next(n for n in names if n.endswith('.dist-info/METADATA')).rsplit('/', 1)[0]
    entry_points = zipfile.ZipFile(wheel).read(f'{dist_info}/entry_points.txt').decode()
    assert 'mmdet-focal-triton = mmdet_focal_triton.cli:main' in entry_points
    requires = [line for line in zipfile.ZipFile(wheel).read(f'{dist_info}/METADATA').decode()
                .splitlines() if line.startswith('Requires-Dist:')]
    # torch is checked at import, never installed or replaced by pip (docs/install.md)
    assert not [r for r in requires if r.split()[1].lower().startswith('torch')
                and 'extra ==' not in r], requires


@pytest.fixture(scope='module')
def parity_run(venv, cache):
    """The main job as an installed user starts it: the console script, 2 iterations."""
    python, console, env, work, site = venv
    out = work / 'parity'
    # CUDA_VISIBLE_DEVICES unset: --device cpu sets it (restarting itself on a CUDA torch)
    env = {k: v for k, v in env.items() if k != 'CUDA_VISIBLE_DEVICES'}
    env['MMDET_FOCAL_TRITON_CACHE'] = str(cache)
    proc = _run([console, 'parity', '--device', 'cpu', '--iters', '2', '--eval-interval', '2',
                 '--img-size', '96', '--num-train', '4', '--num-val', '2', '--batch-size', '2',
                 '--work-dir', out], work, env)
    return proc, out


@pytest.fixture(scope='module')
def installed(venv, parity_run):
    """One process of the fresh venv, outside the checkout (torch, mmdet and the package
    imported once): every command's --help, the shipped configs, the train command's config
    step, then 2 iterations of `train --triton-focal` on the parity run's dataset and a tiny
    benchmark, on CPU (ours through the Triton interpreter). Returns (process, its results)."""
    python, console, env, work, site = venv
    script = textwrap.dedent(f'''
        import contextlib, io, json, os, runpy, subprocess, sys
        import mmdet_focal_triton
        from mmdet_focal_triton import cli, shipped_configs
        from mmdet_focal_triton.cli import train
        from mmengine.config import Config
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules

        register_all_modules()
        from mmdet_focal_triton.config_utils import FOCAL_FAMILY
        argvs = json.loads(sys.argv[1])  # of the train and benchmark commands, run last
        FAMILY = {{*FOCAL_FAMILY, *FOCAL_FAMILY.values()}}  # mmdet's names and ours
        out = dict(package=mmdet_focal_triton.__file__, root=str(shipped_configs.config_root()),
                   help={{}}, built={{}})
        for name in {COMMANDS!r}:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
                if name == 'dist-train':  # a bash launcher: its own process
                    buf.write(subprocess.run(['bash', os.path.join(os.path.dirname(
                        cli.__file__), 'dist_train.sh'), '--help'], capture_output=True,
                        text=True).stdout)
                else:
                    cli.main([name, '--help'])
            out['help'][name] = buf.getvalue()
        # what the installed launcher runs (PYTHON=echo prints it instead)
        out['dist_train'] = subprocess.run(
            ['bash', os.path.join(os.path.dirname(cli.__file__), 'dist_train.sh'), 'c.py', '2',
             '--triton-focal'], capture_output=True, text=True,
            env=dict(os.environ, PYTHON='echo')).stdout.split()

        def loss_types(node):  # the family's types anywhere in a model config
            if isinstance(node, dict):
                found = {{node['type']}} & FAMILY if isinstance(node.get('type'), str) else set()
                return found.union(*(loss_types(v) for v in node.values()))
            if isinstance(node, (list, tuple)):
                return set().union(*(loss_types(v) for v in node))
            return set()

        # loaded from the package, with their _base_ chains (each one's model builds from the
        # checkout: test_registry_and_configs.py); the losses their models would build
        for name in shipped_configs.list_configs():
            cfg = Config.fromfile(str(shipped_configs.config_path(name)))
            out['built'][name] = sorted(loss_types(cfg.model.to_dict()))
        # the train command's config step: a shipped parity config (mmdet's FocalLoss) swapped
        args = train.parse_args(['mmdet_focal_triton::parity/retinanet_r18_fpn_synthetic_cpu.py',
                                 '--triton-focal'])
        cfg = train.build_cfg(args)
        out['swapped'] = cfg.model.bbox_head.loss_cls.type
        out['swapped_build'] = type(MODELS.build(cfg.model).bbox_head.loss_cls).__name__
        # a user's config on a shipped one: by path through mmengine's environment variables;
        # the pkg:: prefix of mmengine knows OpenMMLab's packages only (docs/install.md)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            cli.main(['configs', '--root'])
        os.environ['MMDET_FOCAL_TRITON_CONFIGS'] = buf.getvalue().strip()
        with open('user_cfg.py', 'w') as f:
            f.write("_base_ = '{{{{$MMDET_FOCAL_TRITON_CONFIGS:configs}}}}/retinanet/"
                    "retinanet_r50_fpn_triton-focal_1x_coco.py'\\n"
                    "model = dict(bbox_head=dict(loss_cls=dict(gamma=1.5)))\\n")
        loss = Config.fromfile('user_cfg.py').model.bbox_head.loss_cls
        out['user_base'] = [loss.type, loss.gamma, loss.alpha]
        with open('user_cfg_pkg.py', 'w') as f:
            f.write("_base_ = 'mmdet_focal_triton::retinanet/"
                    "retinanet_r50_fpn_triton-focal_1x_coco.py'\\n")
        try:
            Config.fromfile('user_cfg_pkg.py')
        except Exception as e:
            out['pkg_prefix_error'] = type(e).__name__ + ': ' + str(e)
        # python -m mmdet_focal_triton --help (its __main__, run as -m runs it)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            sys.argv = ['mmdet_focal_triton', '--help']
            runpy.run_module('mmdet_focal_triton', run_name='__main__', alter_sys=True)
        out['python_m_help'] = buf.getvalue()
        # train --triton-focal and a benchmark, their output on this process's stdout
        out['train'] = cli.main(['train', *argvs['train']])
        out['benchmark'] = cli.main(['benchmark', *argvs['benchmark']])
        print('RESULT ' + json.dumps(out))
    ''')
    data = json.loads((parity_run[1] / 'report.json').read_text())['settings']['data_root']
    data = data.rstrip('/') + '/'
    argvs = dict(
        train=['mmdet_focal_triton::parity/retinanet_r18_fpn_synthetic_cpu.py', '--triton-focal',
               '--cfg-options', f'train_dataloader.dataset.data_root={data}',
               'train_dataloader.batch_size=2', f'val_dataloader.dataset.data_root={data}',
               f'val_evaluator.ann_file={data}annotations/instances_val.json',
               'train_cfg.max_iters=2', 'default_hooks.logger.interval=1', '--work-dir',
               str(work / 'train')],
        # one tiny shape (the default --quick shapes take ~15 s through the interpreter here)
        benchmark=['--device', 'cpu', '--quick', '--impls', 'ours', '--shapes', '40x5',
                   '--out-dir', str(work / 'bench')])
    proc = _run([python, '-c', script, json.dumps(argvs)], work,
                dict(env, CUDA_VISIBLE_DEVICES='', TRITON_INTERPRET='1'))
    assert proc.returncode == 0, _out(proc)
    return proc, json.loads(proc.stdout.rsplit('RESULT ', 1)[1])


def test_every_entry_point_answers_help_and_configs_load(installed, venv):
    res, site = installed[1], venv[4]
    # the package and its configs come from the wheel, not from the checkout
    assert Path(res['package']).is_relative_to(site), res['package']
    assert Path(res['root']) == site / 'mmdet_focal_triton' / '.mim' / 'configs'
    for name in COMMANDS:
        assert 'usage' in res['help'][name].lower(), (name, res['help'][name])
    assert 'mmdet-focal-triton parity' in res['help']['parity']  # the usage line names it
    assert '--triton-focal' in res['help']['train']
    argv = res['dist_train']
    assert argv[:2] == ['-m', 'torch.distributed.run'] and '--nproc_per_node=2' in argv
    assert argv[argv.index('mmdet_focal_triton.cli.train') - 1:] == [
        '-m', 'mmdet_focal_triton.cli.train', 'c.py', '--launcher', 'pytorch', '--triton-focal']
    # every shipped config loads, with ours where a config swaps the loss
    built = res['built']
    assert len(built) == len(list((REPO / 'configs').rglob('*.py')))
    for name, losses in built.items():
        if name.startswith('parity/'):
            assert losses and not any(t.startswith('Triton') for t in losses), (name, losses)
        else:
            assert losses and all(t.startswith('Triton') for t in losses), (name, losses)
    assert res['swapped'] == 'TritonFocalLoss' and res['swapped_build'] == 'TritonFocalLoss'
    assert res['user_base'] == ['TritonFocalLoss', 1.5, 0.25]
    assert 'mmengine does not support to load mmdet_focal_triton config' in \
        res['pkg_prefix_error'], res.get('pkg_prefix_error')
    assert all(c in res['python_m_help'] for c in COMMANDS), res['python_m_help']


def test_parity_run_from_the_wheel(parity_run, venv):
    proc, out = parity_run
    site = venv[4]
    # 2 iterations teach nothing: a broken recipe (exit 3), every deterministic check passed
    assert proc.returncode == 3, _out(proc)
    assert 'BROKEN_RECIPE (exit 3)' in proc.stdout + proc.stderr
    report = json.loads((out / 'report.json').read_text())
    assert report['status'] == 'broken_recipe' and report['exit_code'] == 3
    assert Path(report['settings']['config']).is_relative_to(site), report['settings']['config']
    cc = report['call_check']
    assert cc['passed'] and cc['calls'] == 5 * 2 and cc['max']['loss_rel_err'] <= 1e-5
    cmp_ = report['comparison']
    assert cmp_['init_identical'] and cmp_['checks'] and all(cmp_['checks'].values()), cmp_
    assert report['runs']['ours']['loss_type'] == 'TritonFocalLoss'
    assert not report['accuracy']['recipe_ok']


def test_train_with_the_swap_and_benchmark_from_the_wheel(installed, venv):
    proc, res = installed
    work = venv[3]
    assert res['train'] == 0, _out(proc)
    assert '--triton-focal: 1 FocalLoss replaced by TritonFocalLoss' in \
        proc.stdout + proc.stderr, _out(proc)
    log = next((work / 'train').glob('*/*.log')).read_text()
    assert 'Iter(train) [2/2]' in log and 'loss_cls' in log
    assert res['benchmark'] == 0, _out(proc)
    rows = list(csv.DictReader(open(work / 'bench' / 'results.csv')))
    assert rows and {r['impl'] for r in rows} == {'ours'}, rows
    assert all(r['status'] == 'ok' and float(r['ms']) > 0 for r in rows
               if r['mode'] == 'fwd_bwd'), rows
