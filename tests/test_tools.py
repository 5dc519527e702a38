"""The command-line tools keep working: benchmark (tiny CPU runs through the Triton
interpreter, wall and host mode, each loss family), the end-to-end benchmark (tiny CPU runs of
each model), the tuning sweep (its CLI), the host-cost probes, and the sm_90 compile check of
the kernels, which needs no GPU: it catches Triton compile errors that the interpreter, being
Python, does not (a non-constexpr global, say). The tools run in as few processes as their state
allows: each process pays ~7 s on the CI machine to import torch and mmdet."""
import csv
import json
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


TOOLS = ['tools/benchmark.py', 'tools/benchmark_e2e.py', 'tools/dev/sweep_tuning.py',
         'tools/dev/compile_kernels.py', 'tools/train.py', 'tools/parity.py',
         'tools/ddp_parity.py', 'tools/dev/gaussian_wall_probe.py']
# Tools run as `python TOOL ARGS` would run them (as __main__, their own directory first on
# sys.path), one after the other in one interpreter: torch and mmdet are imported once, not once
# a tool (~7 s each on the 2-core CI machine). [(exit code, stdout, stderr)] of [[tool, *args]].
_SCRIPTS_DRIVER = """
import contextlib, io, json, os, runpy, sys
results = []
for argv in json.loads(sys.argv[1]):
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(argv[0], run_name='__main__')
        except SystemExit as e:
            code = e.code or 0
    sys.path.pop(0)
    results.append((code, out.getvalue(), err.getvalue()))
print(json.dumps(results))
"""


FAMILY_LOSSES = ('qfl', 'vfl')
E2E = ['--device', 'cpu', '--img', '64', '64', '--batch', '1', '--precision', 'fp32',
       '--variants', 'mmdet', 'ours', 'zero', '--warmup', '1', '--steps', '1', '--rounds', '1']


@pytest.fixture(scope='module')
def tool_runs(tmp_path_factory):
    """In one process, with ours through the Triton interpreter:
    - every tool's --help;
    - tools/benchmark.py's tiny CPU runs: focal in wall mode, then in host mode appending to the
      same CSV; then --loss qfl / vfl in wall then host mode, one tiny shape, one CSV per loss;
    - tools/benchmark_e2e.py on RetinaNet and RTMDet-tiny ('e2e-r', 'e2e-t');
    - tools/dev/host_probe.py --loss qfl --quick, tools/dev/gaussian_wall_probe.py (which
      needs CUDA), and tools/dev/cpu_host_probe.py against a copy of HEAD (last: it stubs the
      process's kernel launches).
    Returns ({tool or run: (exit code, stdout, stderr)}, the output folder)."""
    tmp = tmp_path_factory.mktemp('tools')
    r = subprocess.run(['bash', 'tools/dev/make_baseline.sh', 'HEAD', str(tmp / 'base')],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    runs = {tool: [tool, '--help'] for tool in TOOLS}
    # two tiny shapes (the kernels' own tests cover the sizes; here the command line is tested)
    bench = ['tools/benchmark.py', '--device', 'cpu', '--quick']
    runs['focal'] = bench + ['--shapes', '40x5', '8x1203', '--out-dir', str(tmp / 'focal')]
    # host mode appends to the same CSV
    runs['focal-host'] = bench + ['--mode', 'host', '--impls', 'ours', 'floor', 'zero',
                                  '--shapes', '50x3', '--out-dir', str(tmp / 'focal')]
    for loss in FAMILY_LOSSES:
        runs[loss] = bench + ['--loss', loss, '--shapes', '40x5', '--out-dir', str(tmp / loss)]
        runs[f'{loss}-host'] = runs[loss] + ['--mode', 'host', '--impls', 'ours', 'mmdet-py',
                                             'floor']
    runs['e2e-r'] = ['tools/benchmark_e2e.py', *E2E, '--out-dir', str(tmp / 'r')]
    runs['e2e-t'] = ['tools/benchmark_e2e.py', '--model', 'rtmdet-tiny', *E2E, '--out-dir',
                     str(tmp / 't')]
    runs['host_probe'] = ['tools/dev/host_probe.py', '--loss', 'qfl', '--quick', '--dtypes',
                          'fp32']
    # refuses without CUDA; on a GPU machine, its smallest run
    runs['wall_probe'] = ['tools/dev/gaussian_wall_probe.py', '--batch', '1', '--no-profile']
    runs['cpu_host_probe'] = ['tools/dev/cpu_host_probe.py', '--baseline', str(tmp / 'base'),
                              '--pairs', '2', '--calls', '5', '--rows', '64']
    r = run_tool('-c', _SCRIPTS_DRIVER, json.dumps(list(runs.values())),
                 env={'TRITON_INTERPRET': '1', 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return dict(zip(runs, json.loads(r.stdout.splitlines()[-1]), strict=True)), tmp


@pytest.mark.parametrize('tool', TOOLS)
def test_help(tool, tool_runs):
    code, out, err = tool_runs[0][tool]
    assert code == 0, err
    assert 'usage' in out.lower()


def test_gaussian_wall_probe(tool_runs):
    code, out, err = tool_runs[0]['wall_probe']
    if not torch.cuda.is_available():
        assert code == 2 and 'needs a CUDA device' in err, (code, out, err)
        return
    assert code == 0, err[-2000:]
    assert 'this     avg_factor tensor wall fwd ' in out and 'avg_factor float' in out
    assert ' events ' in out and ' events ahead ' in out


def test_benchmark_tiny_cpu_run(tool_runs):
    runs, tmp = tool_runs
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
def test_benchmark_family_tiny_cpu_run(loss, tool_runs):
    """--loss qfl / vfl in wall then host mode (ours, mmdet's module, the floor pattern in host
    mode)."""
    runs, tmp = tool_runs
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


def test_benchmark_e2e_tiny_cpu_runs(tool_runs):
    """The training-step benchmark end to end on a tiny image (the tool's logic; its numbers
    mean something only on the GPU): RetinaNet (the default), and RTMDet-tiny (--model
    rtmdet-tiny: QualityFocalLoss variants in its step)."""
    runs, tmp_path = tool_runs
    results = [runs['e2e-r'], runs['e2e-t']]
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


def test_cpu_host_probe_against_a_baseline(tool_runs):
    """tools/dev/cpu_host_probe.py times this checkout against an older copy made by
    make_baseline.sh (both loaded in one process, ops renamed): a row per loss with both."""
    code, out, err = tool_runs[0]['cpu_host_probe']
    assert code == 0, out[-2000:] + err[-2000:]
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {'focal', 'qfl', 'vfl', 'gaussian'}
    assert all(float(v) > 0 for row in rows.values() for v in row[1:])


def test_host_probe_family_quick_has_every_column(tool_runs):
    """tools/dev/host_probe.py --loss qfl --quick (CPU, interpreter): a row per tiny shape with
    ours, mmdet, the floor pattern and the native x.sigmoid().sum() bound, all timed."""
    code, out, err = tool_runs[0]['host_probe']
    assert code == 0, out[-2000:] + err[-2000:]
    lines = [ln.split() for ln in out.splitlines()]
    header = next(ln for ln in lines if ln[:1] == ['shape'])
    assert header[2:6] == ['ours', 'mmdet', 'floor', 'sigmoid'], header
    rows = [ln for ln in lines if ln[:1] and ln[0].startswith('tiny-')]
    assert len(rows) == 2, out
    assert all(float(v) > 0 for row in rows for v in row[2:7]), rows
