"""The pieces of the installed package, in this process: the torch check at import
(``requirements``), the shipped configs (``shipped_configs``), the command line's dispatcher and
its environment handling (``cli``, ``cli.environment``). The wheel itself, installed and run
outside the checkout: test_wheel.py."""
import os
import sys
from pathlib import Path

import pytest

from mmdet_focal_triton import requirements, shipped_configs
from mmdet_focal_triton.cli import COMMANDS, environment
from mmdet_focal_triton.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- torch check
@pytest.mark.parametrize('version, expected', [('2.6.0+cu124', (2, 6)), ('2.13.0', (2, 13)),
                                               ('2.7.0a0+git1234', (2, 7)), ('3.0', (3, 0)),
                                               ('2.10.0.dev20250101+cpu', (2, 10))])
def test_parse_version(version, expected):
    assert requirements.parse_version(version) == expected


def test_parse_version_bad_input():
    with pytest.raises(ValueError, match='version'):
        requirements.parse_version('nightly')
    with pytest.raises(TypeError, match='version must be a str'):
        requirements.parse_version((2, 6))


def test_check_torch_names_the_minimum(monkeypatch):
    import torch

    assert requirements.check_torch() == torch.__version__
    monkeypatch.setattr(torch, '__version__', '2.5.1+cu124')
    with pytest.raises(ImportError, match=r'needs PyTorch >= 2\.6, found torch 2\.5\.1\+cu124'):
        requirements.check_torch()
    monkeypatch.setattr(torch, '__version__', '2.6.0a0+ecf3bae40a')  # a container's build of 2.6
    assert requirements.check_torch() == '2.6.0a0+ecf3bae40a'
    monkeypatch.setitem(sys.modules, 'torch', None)  # not installed
    with pytest.raises(ImportError, match='needs PyTorch >= 2.6, and none is importable'):
        requirements.check_torch()


# ------------------------------------------------------------------------------- configs
def test_shipped_configs_are_the_checkouts():
    # in a checkout, mmdet_focal_triton/.mim/configs is a link to configs/
    assert shipped_configs.config_root() == (REPO / 'configs').resolve()
    names = shipped_configs.list_configs()
    assert names == sorted(p.relative_to(REPO / 'configs').as_posix()
                           for p in (REPO / 'configs').rglob('*.py'))
    assert 'parity/retinanet_r18_fpn_synthetic_cpu.py' in names
    path = shipped_configs.config_path('mmdet_focal_triton::' + names[0])
    assert path == shipped_configs.config_path(names[0]) and path.is_file()
    from mmdet_focal_triton.parity import config as pcfg

    assert pcfg.default_config('cpu').parent == shipped_configs.config_root() / 'parity'


def test_config_path_bad_input():
    with pytest.raises(FileNotFoundError, match=r"did you mean \['retinanet/"):
        shipped_configs.config_path('retinanet_r50_fpn_triton-focal_1x_coco.py')
    with pytest.raises(FileNotFoundError, match='configs` lists them'):
        shipped_configs.config_path('nothing/like_this.py')
    for bad in ('../setup.cfg', '/etc/passwd', '', 'mmdet_focal_triton::'):
        with pytest.raises(ValueError, match='name must be a path below'):
            shipped_configs.config_path(bad)
    with pytest.raises(TypeError, match='name must be a str'):
        shipped_configs.config_path(3)


def test_missing_config_folder_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(shipped_configs, 'CONFIG_ROOT', tmp_path / 'nothing')
    with pytest.raises(FileNotFoundError, match='has no shipped configs'):
        shipped_configs.list_configs()


def test_train_resolves_shipped_names():
    from mmdet_focal_triton.cli import train

    name = 'retinanet/retinanet_r50_fpn_triton-focal_1x_coco.py'
    assert train.resolve_config('mmdet_focal_triton::' + name) == str(
        shipped_configs.config_path(name))
    assert train.resolve_config('some/file.py') == 'some/file.py'  # a path stays a path


# ------------------------------------------------------------------------------- command line
def test_cli_dispatch(capsys):
    assert cli_main(['--help']) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert cli_main([]) == 2 and 'usage' in capsys.readouterr().err
    assert cli_main(['--version']) == 0 and '0.' in capsys.readouterr().out
    assert cli_main(['fly']) == 2 and "unknown command 'fly'" in capsys.readouterr().err
    assert cli_main(['configs', '--path', 'gfl/gfl_r50_fpn_triton-qfl_1x_coco.py']) == 0
    assert Path(capsys.readouterr().out.strip()).is_file()
    assert cli_main(['configs', '--path', 'gfl/nothing.py']) == 1
    assert 'no shipped config' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(['parity', '--help'])
    assert capsys.readouterr().out.startswith('usage: mmdet-focal-triton parity')


def test_parity_environment():
    from mmdet_focal_triton.cli import parity

    forced, defaults = parity.run_environment(parity.parse_args(['--device', 'cpu']))
    assert forced == {'CUDA_VISIBLE_DEVICES': ''}
    assert defaults['MPLBACKEND'] == 'Agg' and 'TRITON_INTERPRET' not in defaults
    forced, defaults = parity.run_environment(parity.parse_args(['--backend', 'triton']))
    assert forced == {} and defaults['TRITON_INTERPRET'] == '1'


class _Exec:
    def __init__(self):
        self.calls = []

    def __call__(self, path, argv):
        self.calls.append((path, list(argv), os.environ.get(environment.REEXEC_MARK)))


def test_set_environment(monkeypatch):
    monkeypatch.setenv('MMDET_TEST_A', 'user')
    monkeypatch.delenv('MMDET_TEST_B', raising=False)
    monkeypatch.delenv('MMDET_TEST_C', raising=False)
    monkeypatch.delenv(environment.REEXEC_MARK, raising=False)
    fake = _Exec()
    late = environment.set_environment({'MMDET_TEST_C': ''}, {'MMDET_TEST_A': 'default',
                                                              'MMDET_TEST_B': 'default'},
                                       program=True, execv=fake)
    # a default never overrides the user's value; nothing here is read early: no restart
    assert late == [] and not fake.calls
    assert os.environ['MMDET_TEST_A'] == 'user' and os.environ['MMDET_TEST_B'] == 'default'
    assert os.environ['MMDET_TEST_C'] == ''


def test_set_environment_restarts_when_too_late(monkeypatch):
    monkeypatch.delenv('MMDET_TEST_LATE', raising=False)
    monkeypatch.delenv(environment.REEXEC_MARK, raising=False)
    monkeypatch.setitem(environment.READ_EARLY, 'MMDET_TEST_LATE', lambda: True)
    fake = _Exec()
    environment.set_environment({'MMDET_TEST_LATE': ''}, program=True, execv=fake)
    # the same command line again, in a fresh interpreter, marked so that it never loops
    assert fake.calls == [(sys.executable, [sys.executable, *sys.orig_argv[1:]], '1')]
    # the restarted process: the variable is there from the start, nothing to do
    assert environment.set_environment({'MMDET_TEST_LATE': ''}, program=True, execv=fake) == []
    assert len(fake.calls) == 1 and environment.REEXEC_MARK not in os.environ
    # a caller's function call (not the program), or a second restart: a warning, no exec
    monkeypatch.setenv('MMDET_TEST_LATE', 'x')
    with pytest.warns(RuntimeWarning, match='MMDET_TEST_LATE set after'):
        assert environment.set_environment({'MMDET_TEST_LATE': ''}, program=False,
                                           execv=fake) == ['MMDET_TEST_LATE']
    monkeypatch.setenv('MMDET_TEST_LATE', 'x')
    monkeypatch.setenv(environment.REEXEC_MARK, '1')
    with pytest.warns(RuntimeWarning, match='takes effect in new processes only'):
        environment.set_environment({'MMDET_TEST_LATE': ''}, program=True, execv=fake)
    assert len(fake.calls) == 1


def test_cuda_visible_devices_is_late_only_for_a_cuda_torch(monkeypatch):
    import torch

    monkeypatch.setattr(torch.version, 'cuda', None)
    monkeypatch.setattr(torch.version, 'hip', None)
    assert not environment.READ_EARLY['CUDA_VISIBLE_DEVICES']()
    monkeypatch.setattr(torch.version, 'cuda', '13.0')
    assert environment.READ_EARLY['CUDA_VISIBLE_DEVICES']()


# ----------------------------------------------------------------------- tools/bootstrap.sh
def _bootstrap_functions() -> str:
    """bootstrap.sh's `log` and `run_logged`, as shell source."""
    lines = (REPO / 'tools' / 'bootstrap.sh').read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith('run_logged() {'))
    end = next(i for i in range(start, len(lines)) if lines[i] == '}')
    return '\n'.join([next(ln for ln in lines if ln.startswith('log() {')),
                      *lines[start:end + 1]])


def test_bootstrap_logs_pip_output_and_shows_it_on_failure(tmp_path):
    """Every pip call of the set-up writes to $VENV/bootstrap.log instead of the terminal (a
    machine's pip configuration may add warnings to each); a failing call prints the end of its
    output and the log's path, and stops the set-up."""
    import subprocess

    log = tmp_path / 'bootstrap.log'
    script = (f'set -euo pipefail\nLOG={log}\n{_bootstrap_functions()}\n'
              'run_logged sh -c "echo pip-noise; echo more-noise >&2"\n'
              'echo after-ok\n'
              'run_logged sh -c "echo the-error >&2; exit 3"\n'
              'echo not-reached\n')
    r = subprocess.run(['bash', '-c', script], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stdout.splitlines()[0] == 'after-ok' and 'not-reached' not in r.stdout
    assert 'pip-noise' not in r.stdout and 'failed: sh -c' in r.stdout and str(log) in r.stdout
    assert 'the-error' in r.stderr
    assert log.read_text().split() == ['pip-noise', 'more-noise', 'the-error']
    # and every pip call of the script goes through it
    text = (REPO / 'tools' / 'bootstrap.sh').read_text()
    calls = [ln.strip() for ln in text.splitlines()
             if ('"${PIP[@]}"' in ln or '-m pip ' in ln) and not ln.lstrip().startswith('#')
             and not ln.startswith('PIP=')]
    assert calls and all(c.startswith('run_logged ') or c.startswith('"$PY" -m pip wheel')
                         for c in calls), calls
