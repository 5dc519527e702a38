#!/usr/bin/env python
"""Mutation runs: put one small, realistic bug into a scratch copy of this checkout and run the
tests on it; a test suite worth its time fails. Each mutation is a list of (file, old, new) text
replacements; every ``old`` must occur in its file (a stale mutation is an error, not a pass).

    python tools/dev/mutation_run.py                    # every mutation, then the clean copy
    python tools/dev/mutation_run.py eps-dropped --out /tmp/mut.jsonl

Prints one line per mutation (failed tests, the summary) and appends a JSON line with the
failing test ids to ``--out``. The copy lives in a temporary folder; this checkout is not
touched. CPU only (pytest's addopts: a worker per core). Tests that train detectors or build
every mmdet config are left out (``EXCLUDE``): they do not look at these code paths more closely
and take most of the time.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
P = 'mmdet_focal_triton/'
TORCH_PATHS = ('focal', 'quality_focal', 'varifocal')
MUTATIONS = {
    # alpha and 1 - alpha swapped for class-index targets
    'alpha-swapped': [(P + 'ops/torch_focal.py', 'aw = alpha if positive else 1.0 - alpha',
                       'aw = 1.0 - alpha if positive else alpha')],
    # QualityFocalLoss's weight ignored under reduction='sum'
    'qfl-weight-ignored-under-sum': [(P + 'ops/torch_quality_focal.py', '    if spec.weighted:',
                                      '    if spec.weighted and spec.reduction != 2:')],
    # the + eps of avg_factor dropped, in all three losses
    'eps-dropped': [(P + 'functional.py', 'scale = scale / (af_value + EPS)',
                     'scale = scale / af_value'),
                    (P + 'ops/torch_common.py', '(avg_factor + EPS).to(loss.dtype)',
                     'avg_factor.to(loss.dtype)')],
    # float64 inputs computed in float32
    'float64-in-float32': [(P + f'ops/torch_{m}.py', 'cdt = torch.float64 if pred2.dtype == '
                            'torch.float64 else torch.float32', 'cdt = torch.float32')
                           for m in TORCH_PATHS] + [
        (P + 'ops/torch_gaussian_focal.py', 'cdt = torch.float64 if pred.dtype == torch.float64 '
         'else torch.float32', 'cdt = torch.float32')],
    # fp16 / bf16 results 1e-3 off
    'half-precision-1e-3-off': [(P + 'ops/torch_common.py', '    den = None if avg_factor is None',
                                 '    if pred_dtype in (torch.float16, torch.bfloat16):\n'
                                 '        scale = scale * (1 + 1e-3)\n'
                                 '    den = None if avg_factor is None')],
    # reduction='none': the backward ignores the upstream gradient
    'none-backward-ignores-upstream': [
        (P + 'ops/torch_focal.py', '(dx * scale * upstream.to(dx.dtype))', '(dx * scale)'),
        (P + 'ops/torch_quality_focal.py', '(dx * scale * upstream.to(cdt)[:, None])',
         '(dx * scale)'),
        (P + 'ops/torch_varifocal.py', '(dx * scale * upstream.to(cdt))', '(dx * scale)'),
        (P + 'ops/torch_gaussian_focal.py', '(dp * scale * upstream.to(cdt))', '(dp * scale)')],
    # GaussianFocalLoss: with gamma = 0, mmdet's negative term at t == 1 left out (Triton and
    # PyTorch paths)
    'gaussian-gamma0-term-dropped': [
        (P + 'ops/torch_gaussian_focal.py', 'if gamma == 0 and not neg_only and neg_weight != 0:',
         'if False:'),
        (P + 'kernels/gaussian_focal.py', '    if GAMMA_MODE == 0:\n        if not NEG_ONLY:',
         '    if GAMMA_MODE == 0:\n        if False:')],
    # GaussianFocalLoss's pos_inds form: repeated positives overwrite instead of adding up
    'gaussian-positives-overwrite': [
        (P + 'ops/torch_gaussian_focal.py', 'accumulate=True', 'accumulate=False'),
        (P + 'ops/gaussian_focal.py', 'accumulate=True', 'accumulate=False')],
    # GaussianFocalLoss's pos_inds form: 'mean' divides the positives' sum by N * C
    'gaussian-positives-mean-over-all': [
        (P + 'functional.py', 'pos_factor * numel / npos if npos', 'pos_factor if npos')],
    'none': [],  # the clean copy: must pass
}
EXCLUDE = ['tests/test_tools.py', 'tests/test_benchmark.py', 'tests/test_wheel.py',
           'tests/test_packaging.py', 'tests/test_synthetic_dataset.py',
           'tests/parity/test_run.py', 'tests/parity/test_ddp_cpu.py', 'tests/parity/test_ddp.py',
           'tests/parity/test_family_parity.py', 'tests/parity/test_console.py',
           'tests/parity/test_compare.py', 'tests/parity/test_verdict.py',
           'tests/test_mmdet_configs.py', 'tests/test_registry_and_configs.py']


def apply(root: Path, changes) -> None:
    for path, old, new in changes:
        f = root / path
        text = f.read_text()
        if old not in text:
            raise SystemExit(f'stale mutation: {old!r} not in {path}')
        f.write_text(text.replace(old, new))


def run(name: str, out: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix='mutation-') as tmp:
        root = Path(tmp) / 'repo'
        shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(
            '.git', '__pycache__', '.venv', 'work_dirs', '.gpu-wheels', 'dist', 'build'))
        apply(root, MUTATIONS[name])
        cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '--tb=no', '-rfE',
               'tests'] + [f'--ignore={x}' for x in EXCLUDE]
        env = dict(os.environ, PYTHONPATH=str(root))
        t0 = time.time()
        r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    text = r.stdout + r.stderr
    failed = sorted(set(re.findall(r'^(?:FAILED|ERROR) (\S+)', text, re.M)))
    summary = [ln for ln in text.splitlines() if re.search(r'\d+ (passed|failed)', ln)]
    res = dict(mutation=name, failed=len(failed), summary=summary[-1] if summary else text[-400:],
               seconds=round(time.time() - t0), failing_tests=failed)
    files = sorted({f.split('::')[0] for f in failed})
    print(f"{name}: {res['failed']} failed ({', '.join(files) or '-'}); {res['summary']}",
          flush=True)
    if out:
        with out.open('a') as f:
            f.write(json.dumps(res) + '\n')
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('mutations', nargs='*', default=[],
                    help=f"which (default: all): {', '.join(MUTATIONS)}")
    ap.add_argument('--out', type=Path, default=None, help='append JSON lines here')
    args = ap.parse_args(argv)
    unknown = [m for m in args.mutations if m not in MUTATIONS]
    if unknown:
        ap.error(f'unknown mutation(s) {unknown}; known: {list(MUTATIONS)}')
    results = [run(n, args.out) for n in (args.mutations or list(MUTATIONS))]
    caught = all(r['failed'] > 0 for r in results if r['mutation'] != 'none')
    clean = all(r['failed'] == 0 for r in results if r['mutation'] == 'none')
    return 0 if caught and clean else 1


if __name__ == '__main__':
    sys.exit(main())
