"""parity.console: quiet runs send everything but their own messages to the log file; verbose runs
print everything. Run in a subprocess, so that file descriptors 1 and 2 are real."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip('rich')
PACKAGE = Path(__file__).resolve().parents[2] / 'mmdet_focal_triton'

SCRIPT = textwrap.dedent('''
    import logging, os, sys, types, warnings
    # the package and its parity subpackage without their __init__ (torch, mmdet: ~6 s on the CI
    # machine, not what is tested here): console and progress import the standard library and
    # rich only
    for name, path in (('mmdet_focal_triton', sys.argv[3]),
                       ('mmdet_focal_triton.parity', os.path.join(sys.argv[3], 'parity'))):
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__path__ = [path]
    from mmdet_focal_triton.parity.console import RunConsole

    with RunConsole(sys.argv[1], verbose=sys.argv[2] == '1') as con:
        con.log('message for the user')
        print('python print')
        os.write(1, b'fd 1 write\\n')
        os.write(2, b'fd 2 write\\n')
        warnings.warn('a library warning')
        logger = logging.getLogger('lib')
        logger.addHandler(logging.StreamHandler(sys.stdout))  # as MMLogger does, inside
        logger.warning('logger line')
        bar = con.progress('train', 3)
        for i in range(3):
            bar.update(i + 1, f'loss {i}')
        bar.close()
    logger.warning('after the context')  # a handler kept by a library: no crash, goes on
    print('after')
''')


def _run(tmp_path, verbose):
    log = tmp_path / 'run.log'
    proc = subprocess.run([sys.executable, '-c', SCRIPT, str(log), '1' if verbose else '0',
                           str(PACKAGE)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc, log.read_text()


def test_quiet_sends_library_output_to_the_log(tmp_path):
    proc, log = _run(tmp_path, verbose=False)
    out = proc.stdout + proc.stderr
    assert '[parity] message for the user' in proc.stdout
    assert 'train' in proc.stdout and '3/3' in proc.stdout and 'loss 2' in proc.stdout
    for line in ('python print', 'fd 1 write', 'fd 2 write', 'a library warning',
                 'logger line'):
        assert line not in out, line
        assert line in log, line
    assert 'message for the user' in log
    assert 'after the context' in proc.stdout and 'after' in proc.stdout  # restored
    assert len(proc.stdout.splitlines()) == 4


def test_verbose_prints_everything(tmp_path):
    proc, log = _run(tmp_path, verbose=True)
    for line in ('python print', 'fd 1 write', 'logger line', '[parity] message for the user'):
        assert line in proc.stdout, line
    assert 'fd 2 write' in proc.stderr and 'a library warning' in proc.stderr
    assert 'message for the user' in log and 'python print' not in log
    assert '3/3' not in proc.stdout  # no bars: they would interleave with the libraries' output
