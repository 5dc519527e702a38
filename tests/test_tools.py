"""The command-line tools keep working: benchmark (tiny CPU runs through the Triton
interpreter, wall and host mode, each loss family), the end-to-end benchmark (tiny CPU runs of
each model), the tuning sweep (its CLI), and the sm_90 compile check of the kernels, which needs
no GPU: it catches Triton compile errors that the interpreter, being Python, does not (a
non-constexpr global, say)."""
import csv
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


TOOLS = ['tools/benchmark.py', 'tools/benchmark_e2e.py', 'tools/dev/sweep_tuning.py',
         'tools/dev/compile_kernels.py', 'tools/train.py', 'tools/parity.py',
         'tools/ddp_parity.py']
# each tool run as `python TOOL --help` would run it (as __main__, its own directory first on
# sys.path), one after the other in one interpreter: torch and mmdet are imported once, not 7
# times (~3.5 s each on the 2-core CI machine)
_HELP_DRIVER = """
import contextlib, io, json, os, runpy, sys
results = {}
for tool in sys.argv[1:]:
    sys.argv = [tool, '--help']
    sys.path.insert(0, os.path.dirname(os.path.abspath(tool)))
    out, err = io.StringIO(), io.StringIO()
    code = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(tool, run_name='__main__')
        except SystemExit as e:
            code = e.code
    sys.path.pop(0)
    results[tool] = (code, out.getvalue(), err.getvalue())
print(json.dumps(results))
"""


@pytest.fixture(scope='module')
def tools_help():
    r = run_tool('-c', _HELP_DRIVER, *TOOLS)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


@pytest.mark.parametrize('tool', TOOLS)
def test_help(tool, tools_help):
    code, out, err = tools_help[tool]
    assert code == 0, err
    assert 'usage' in out.lower()


# A tool's main(argv) called several times in one interpreter (each call's stdout and stderr, and
# its return value): what `python TOOL ARGS` does, with torch, mmdet and Triton imported once.
_MAINS_DRIVER = """
import contextlib, io, json, os, runpy, sys
tool, argvs = sys.argv[1], json.loads(sys.argv[2])
sys.argv = [tool]
sys.path.insert(0, os.path.dirname(os.path.abspath(tool)))
main = runpy.run_path(tool, run_name='tool_under_test')['main']
results = []
for argv in argvs:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append((code, out.getvalue(), err.getvalue()))
print(json.dumps(results))
"""


def run_mains(tool, *argvs, env=None, timeout=600):
    """[(return value, stdout, stderr)] of `tool`'s main(argv) for each argv, in one process."""
    r = run_tool('-c', _MAINS_DRIVER, tool, json.dumps(argvs), env=env, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(r.stdout.splitlines()[-1])


FAMILY_LOSSES = ('qfl', 'vfl')


@pytest.fixture(scope='module')
def benchmark_runs(tmp_path_factory):
    """tools/benchmark.py's tiny CPU runs (ours through the Triton interpreter), in one process:
    focal in wall mode, then in host mode appending to the same CSV; then --loss qfl / vfl in
    wall then host mode, one tiny shape, one CSV per loss. ({run: (code, stdout, stderr)}, dir)"""
    tmp = tmp_path_factory.mktemp('benchmark')
    # two tiny shapes (the kernels' own tests cover the sizes; here the command line is tested)
    argvs = {'focal': ['--device', 'cpu', '--quick', '--shapes', '40x5', '8x1203', '--out-dir',
                       str(tmp / 'focal')],
             # host mode appends to the same CSV
             'focal-host': ['--device', 'cpu', '--quick', '--mode', 'host', '--impls', 'ours',
                            'floor', 'zero', '--shapes', '50x3', '--out-dir', str(tmp / 'focal')]}
    for loss in FAMILY_LOSSES:
        common = ['--loss', loss, '--device', 'cpu', '--quick', '--shapes', '40x5', '--out-dir',
                  str(tmp / loss)]
        argvs[loss] = common
        argvs[f'{loss}-host'] = common + ['--mode', 'host', '--impls', 'ours', 'mmdet-py',
                                          'floor']
    results = run_mains('tools/benchmark.py', *argvs.values(), env={'TRITON_INTERPRET': '1'})
    return dict(zip(argvs, results, strict=True)), tmp


def test_benchmark_tiny_cpu_run(benchmark_runs):
    runs, tmp = benchmark_runs
    (code, out, err), (code2, out2, err2) = runs['focal'], runs['focal-host']
    tmp_path = tmp / 'focal'
    assert code == 0, out[-2000:] + err[-2000:]
    rows = list(csv.DictReader(open(tmp_path / 'results.csv')))
    first = [row for row in rows if row['mode'] == 'fwd_bwd']
    impls = {row['impl'] for row in first}
    assert impls == {'ours', 'mmdet-py'}
    ok = [row for row in first if row['status'] == 'ok']
    assert len(ok) == 4  # 2 shapes x 2 implementations
    assert all(float(row['ms']) > 0 for row in ok)
    assert (tmp_path / 'focal_loss_benchmark.png').stat().st_size > 1000
    assert 'loss + backward' in out and 'Warning' not in out + err
    assert code2 == 0, out2[-2000:] + err2[-2000:]
    assert len(rows) > len(first) and len({row['run_id'] for row in rows}) == 2
    host = [row for row in rows if row['mode'] == 'host']
    assert [row['impl'] for row in host] == ['ours', 'floor', 'zero']
    assert all(row['status'] == 'ok' and float(row['host_us']) > 0 for row in host)
    assert float(host[1]['host_x_floor']) == 1.0 and float(host[0]['host_x_floor']) > 0
    assert 'ours / floor' in out2
    assert (tmp_path / 'focal_loss_host.png').stat().st_size > 1000


@pytest.mark.parametrize('loss', FAMILY_LOSSES)
def test_benchmark_family_tiny_cpu_run(loss, benchmark_runs):
    """--loss qfl / vfl in wall then host mode (ours, mmdet's module, the floor pattern in host
    mode)."""
    runs, tmp = benchmark_runs
    (code, out, err), (code2, out2, err2) = runs[loss], runs[f'{loss}-host']
    assert code == 0, out[-2000:] + err[-2000:]
    assert f'{loss} loss, wall mode' in out and 'Warning' not in out + err
    assert code2 == 0, out2[-2000:] + err2[-2000:]
    assert 'ours / floor' in out2
    d = tmp / loss
    rows = list(csv.DictReader(open(d / 'results.csv')))
    assert {row['loss'] for row in rows} == {loss} and len({row['run_id'] for row in rows}) == 2
    assert all(row['status'] == 'ok' for row in rows), [row['error'] for row in rows]
    wall = [row['impl'] for row in rows if row['mode'] == 'fwd_bwd']
    host = [row['impl'] for row in rows if row['mode'] == 'host']
    assert wall == ['ours', 'mmdet-py'] and host == ['ours', 'mmdet-py', 'floor']
    assert (d / f'{loss}_loss_benchmark.png').exists()
    assert (d / f'{loss}_loss_host.png').exists()


def test_benchmark_e2e_tiny_cpu_runs(tmp_path):
    """The training-step benchmark end to end on a tiny image (the tool's logic; its numbers
    mean something only on the GPU): RetinaNet (the default), and RTMDet-tiny (--model
    rtmdet-tiny: QualityFocalLoss variants in its step)."""
    common = ['--device', 'cpu', '--img', '64', '64', '--batch', '1', '--precision', 'fp32',
              '--variants', 'mmdet', 'ours', 'zero', '--warmup', '1', '--steps', '1',
              '--rounds', '1']
    results = run_mains('tools/benchmark_e2e.py', common + ['--out-dir', str(tmp_path / 'r')],
                        ['--model', 'rtmdet-tiny', *common, '--out-dir', str(tmp_path / 't')],
                        env={'OMP_NUM_THREADS': '1'})
    for (code, out, err), d, model, title in zip(
            results, ('r', 't'), ('retinanet', 'rtmdet-tiny'),
            ('RetinaNet R50-FPN 64x64', 'RTMDet-tiny 64x64 training step')):
        assert code == 0, out[-2000:] + err[-2000:]
        rows = list(csv.DictReader(open(tmp_path / d / 'e2e.csv')))
        assert [row['variant'] for row in rows] == ['mmdet', 'ours', 'zero']
        assert {row['model'] for row in rows} == {model}
        assert all(row['status'] == 'ok' and float(row['step_ms']) > 0 for row in rows), rows
        assert title in out and 'warning(s)' not in out
    assert 'step - zero' in results[0][1] and 'mmengine - INFO' not in results[0][1]


# tools/dev/compile_kernels.py three times (--smoke, then --sass with FAST_MATH on and off) in one
# interpreter, without TRITON_INTERPRET (the interpreter compiles nothing): Triton and torch are
# imported once. {argv as a string: (exit code, stdout)}
_COMPILE_RUNS = (['--smoke'], ['--sass', '--fast-math', '1'], ['--sass', '--fast-math', '0'])
_COMPILE_DRIVER = """
import contextlib, io, json, sys
sys.path.insert(0, 'tools/dev')
import compile_kernels
results = {}
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = compile_kernels.main(argv)
    results[' '.join(argv)] = (code, out.getvalue())
print(json.dumps(results))
"""


@pytest.fixture(scope='module')
def compiled_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    r = subprocess.run([sys.executable, '-c', _COMPILE_DRIVER, json.dumps(_COMPILE_RUNS)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


def test_kernels_compile_for_sm90_without_gpu(compiled_for_sm90):
    code, out = compiled_for_sm90['--smoke']
    assert code == 0, out[-3000:]
    assert '0 failures' in out
    assert out.count(': ok') >= 4 + 1  # kernel variants + scale


def test_sass_instruction_count_of_fast_math(compiled_for_sm90):
    """The instruction count of notes/perf.md, recomputed from the SASS (no GPU needed): the
    MUFU lg2 / rcp of FAST_MATH keep the training kernel's inner loop well under the ~65
    instructions per element of the accurate expansions, in every measured configuration."""
    counts = {}
    for fast in ('1', '0'):
        code, out = compiled_for_sm90[f'--sass --fast-math {fast}']
        assert code == 0, out[-3000:]
        counts[fast] = [float(m) for m in re.findall(r'([\d.]+) instructions per element', out)]
        assert len(counts[fast]) == 4, out
    assert all(f < 45 for f in counts['1']), counts
    assert all(fast < 0.7 * slow for fast, slow in zip(counts['1'], counts['0'])), counts


def test_cpu_host_probe_against_a_baseline(tmp_path):
    """tools/dev/cpu_host_probe.py times this checkout against an older copy made by
    make_baseline.sh (both loaded in one process, ops renamed): a row per loss with both."""
    r = subprocess.run(['bash', 'tools/dev/make_baseline.sh', 'HEAD', str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = run_tool('tools/dev/cpu_host_probe.py', '--baseline', str(tmp_path), '--pairs', '2',
                 '--calls', '5', '--rows', '64', timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert set(rows) == {'focal', 'qfl', 'vfl', 'gaussian'}
    assert all(float(v) > 0 for row in rows.values() for v in row[1:])


def test_host_probe_family_quick_has_every_column():
    """tools/dev/host_probe.py --loss qfl --quick (CPU, interpreter): a row per tiny shape with
    ours, mmdet, the floor pattern and the native x.sigmoid().sum() bound, all timed."""
    r = run_tool('tools/dev/host_probe.py', '--loss', 'qfl', '--quick', '--dtypes', 'fp32',
                 env={'TRITON_INTERPRET': '1'}, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [ln.split() for ln in r.stdout.splitlines()]
    header = next(ln for ln in lines if ln[:1] == ['shape'])
    assert header[2:6] == ['ours', 'mmdet', 'floor', 'sigmoid'], header
    rows = [ln for ln in lines if ln[:1] and ln[0].startswith('tiny-')]
    assert len(rows) == 2, r.stdout
    assert all(float(v) > 0 for row in rows for v in row[2:7]), rows
