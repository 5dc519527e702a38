"""Accuracy of our loss and of mmdet's ``FocalLoss`` against the float64 evaluation of the formula.

    python -m mmdet_focal_triton.parity.accuracy [--device cpu|cuda] [--cases 300] [--out DIR]

``run_accuracy_study`` draws random cases (class-index / dense one-hot / soft targets, every weight
form, every reduction with and without ``avg_factor``, gamma in {0, 0.5, 1, 2, 3.7}, alpha in
[0.05, 0.95], logits 10 * randn in fp32), evaluates on each our ``TritonFocalLoss``, mmdet's
``FocalLoss`` module as users run it (on CUDA it calls mmcv's op for class-index targets) and
the float64 reference (``reference.float64_focal_loss``), loss and gradient (upstream gradient
1), and counts the cases within ``rtol`` (1e-5, SPEC §3) of the reference. ``probes`` measures the
two mechanisms behind mmdet's misses directly (docs/accuracy.md):

- fp32 ``sigmoid(x)`` rounds to 1 above x ~ 16.6; mmdet's python formula then has
  ``pt = 1 - sigmoid(x) = 0`` for a positive element, where ``pt ** gamma`` has an infinite
  derivative for 0 < gamma < 1: inf * 0 = NaN in the gradient;
- mmcv's CUDA kernel computes a negative element's loss with ``log(max(1 - p, FLT_MIN))``: where
  ``1 - p`` rounds to 0 it is capped at log(FLT_MIN) = -87.34, so the loss of a negative with
  logit x in (16.6, 87.3) is 87.34 * (1 - alpha) instead of ~ x * (1 - alpha).

Only the public API of our loss is used.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .reference import FocalLossParams, float64_focal_loss, loss_and_grad, rel_err

GAMMAS = (0.0, 0.5, 1.0, 2.0, 3.7)
CLASSES = (1, 4, 20, 80)
TARGETS = ('index', 'onehot', 'soft')
WEIGHTS = (None, 'row', 'row1', 'flat', 'elem')
REDUCTIONS = ('mean', 'sum', 'none')
AVG_FACTORS = (None, 'float', 'tensor0d', 'tensor1')
RTOL = 1e-5
FLT_MIN_LOG = math.log(torch.finfo(torch.float32).tiny)  # -87.3365


def draw_case(i: int, seed: int = 0) -> dict:
    """Case ``i``: its parameters and CPU inputs, reproducible from (seed, i)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + i)

    def pick(seq):
        return seq[int(torch.randint(len(seq), (1,), generator=g))]

    C, N = pick(CLASSES), int(torch.randint(1, 257, (1,), generator=g))
    kind, wkind, red = pick(TARGETS), pick(WEIGHTS), pick(REDUCTIONS)
    akind = pick(AVG_FACTORS) if red != 'sum' else None  # mmdet: 'sum' with avg_factor raises
    params = FocalLossParams(gamma=pick(GAMMAS),
                             alpha=round(float(torch.rand(1, generator=g)) * 0.9 + 0.05, 3),
                             reduction=red, loss_weight=pick((1.0, 0.5, 2.0)))
    pred = torch.randn(N, C, generator=g) * 10
    labels = torch.randint(0, C, (N,), generator=g)
    labels[torch.rand(N, generator=g) < 0.7] = C  # background, as in a RetinaNet level
    if kind == 'index':
        target = labels
    elif kind == 'onehot':
        target = F.one_hot(labels, C + 1)[:, :C].float()
    else:
        target = torch.rand(N, C, generator=g)
        target[torch.rand(N, C, generator=g) < 0.5] = 0
    weight = {None: None, 'row': torch.rand(N, generator=g),
              'row1': torch.rand(N, 1, generator=g), 'flat': torch.rand(N * C, generator=g),
              'elem': torch.rand(N, C, generator=g)}[wkind]
    avg = {None: None, 'float': float(N) / 3 + 0.5, 'tensor0d': torch.tensor(N / 4 + 1.0),
           'tensor1': torch.tensor([N / 5 + 1.0])}[akind]
    dense = target if kind != 'index' else F.one_hot(labels, C + 1)[:, :C].float()
    pos = pred[dense > 0]
    return dict(index=i, params=params, pred=pred, target=target, weight=weight, avg_factor=avg,
                desc=dict(N=N, C=C, target=kind, weight=wkind, reduction=red, avg_factor=akind,
                          gamma=params.gamma, alpha=params.alpha,
                          loss_weight=params.loss_weight,
                          max_positive_logit=float(pos.max()) if pos.numel() else None,
                          max_negative_logit=float(pred[dense < 1].max())
                          if bool((dense < 1).any()) else None,
                          min_logit=float(pred.min())))


def _module_loss(module_cls, params: FocalLossParams):
    module = module_cls(use_sigmoid=True, gamma=params.gamma, alpha=params.alpha,
                        reduction=params.reduction, loss_weight=params.loss_weight)

    def fn(pred, target, weight=None, avg_factor=None, reduction_override=None, *, params):
        return module(pred, target, weight, avg_factor=avg_factor,
                      reduction_override=reduction_override)
    return fn


def evaluate_case(case: dict, device: str = 'cpu', impls: dict | None = None) -> dict:
    """Loss and gradient rel errors of each implementation against the float64 reference."""
    impls = impls if impls is not None else implementations()
    to = (lambda v: v.to(device) if isinstance(v, torch.Tensor) else v)  # noqa: E731
    args = [to(case[k]) for k in ('pred', 'target', 'weight', 'avg_factor')]
    p = case['params']
    ref, ref_grad = loss_and_grad(float64_focal_loss, *args, params=p)
    out = {}
    for name, cls in impls.items():
        try:
            loss, grad = loss_and_grad(_module_loss(cls, p), *args, params=p)
            le, ge = rel_err(loss, ref), rel_err(grad, ref_grad)
            out[name] = dict(loss_rel_err=le, grad_rel_err=ge,
                             grad_finite=bool(torch.isfinite(grad).all()),
                             match=le <= RTOL and ge <= RTOL)
        except Exception as e:  # noqa: BLE001 - reported as a miss with its reason
            out[name] = dict(error=f'{type(e).__name__}: {e}', match=False)
    return out


def implementations() -> dict:
    from mmdet.models.losses import FocalLoss

    from mmdet_focal_triton import TritonFocalLoss

    return {'ours': TritonFocalLoss, 'mmdet': FocalLoss}


def classify_miss(desc: dict, res: dict, device: str) -> str:
    """Why mmdet's result missed the reference, from the case and the numbers."""
    if 'error' in res:
        return 'error: ' + res['error'][:80]
    if not res['grad_finite']:
        return 'NaN gradient: 0 < gamma < 1 and a positive logit above ~16.6'
    neg = desc['max_negative_logit']
    if device == 'cuda' and desc['target'] == 'index' and neg is not None and neg > 16.6:
        return "loss: mmcv's log(max(1 - p, FLT_MIN)) cap, a negative logit above ~16.6"
    if desc['min_logit'] < -8:  # the loss, and through it the gradient when gamma > 0
        return 'fp32 BCE-with-logits rounds log(1 + exp(x)) for x < -8'
    return 'other'


def probes(device: str = 'cpu') -> dict:
    """The mechanisms, measured on one element (alpha 0.25, 'sum'): the fp32 sigmoid threshold;
    a positive at x = 20 with gamma 0.5 (mmdet's NaN gradient); a negative at x = 20 (mmcv's
    cap on CUDA); a negative at x = -12 with gamma 0 (fp32 BCE-with-logits rounding)."""
    from mmdet.models.losses import FocalLoss

    from mmdet_focal_triton import TritonFocalLoss

    xs = torch.arange(15.0, 18.0, 0.001, dtype=torch.float32, device=device)
    one = xs[torch.sigmoid(xs) == 1.0]
    out = {'device': device,
           'fp32_sigmoid_is_1_from_x': float(one.min()) if one.numel() else None}
    # (name, logit of column 0, its label: 0 = positive for column 0, 1 = negative, gamma)
    for name, x0, label, gamma in (('positive_x20_gamma_0.5', 20.0, 0, 0.5),
                                   ('negative_x20', 20.0, 1, 2.0),
                                   ('negative_x-12_gamma_0', -12.0, 1, 0.0)):
        x = torch.tensor([[x0]], device=device)
        target = torch.tensor([label], device=device)
        p = FocalLossParams(gamma=gamma, alpha=0.25, reduction='sum')
        ref, ref_grad = loss_and_grad(float64_focal_loss, x, target, params=p)
        row = {'x': x0, 'element is': 'positive' if label == 0 else 'negative',
               'gamma': gamma, 'float64': dict(loss=float(ref), grad=float(ref_grad[0, 0]))}
        for impl, cls in (('mmdet', FocalLoss), ('ours', TritonFocalLoss)):
            loss, grad = loss_and_grad(_module_loss(cls, p), x, target, params=p)
            row[impl] = dict(loss=float(loss), grad=float(grad[0, 0]),
                             loss_rel_err=rel_err(loss, ref), grad_rel_err=rel_err(grad, ref_grad))
        out[name] = row
    out['log_FLT_MIN'] = FLT_MIN_LOG
    return out


def run_accuracy_study(cases: int = 300, device: str = 'cpu', seed: int = 0,
                       backend: str | None = None) -> dict:
    """The study (module docstring); returns counts, misses by cause, probes, device.
    ``backend``: run ours with ``mmdet_focal_triton.backend(backend)`` ('torch', or 'triton':
    on CPU through Triton's interpreter, TRITON_INTERPRET=1); None: its default."""
    import mmdet_focal_triton

    with (mmdet_focal_triton.backend(backend) if backend else contextlib.nullcontext()):
        res = _study(cases, device, seed)
    res['backend'] = backend or mmdet_focal_triton.get_backend()
    return res


def _study(cases: int, device: str, seed: int) -> dict:
    from .report import device_name, versions

    t0 = time.perf_counter()
    impls = implementations()
    counts = {name: 0 for name in impls}
    misses = {name: {} for name in impls}
    worst = {name: 0.0 for name in impls}
    examples = []
    for i in range(cases):
        case = draw_case(i, seed)
        res = evaluate_case(case, device, impls)
        for name, r in res.items():
            counts[name] += r['match']
            if 'error' not in r:
                e = max(r['loss_rel_err'], r['grad_rel_err'])
                worst[name] = max(worst[name], e) if math.isfinite(e) else math.inf
            if not r['match']:
                why = classify_miss(case['desc'], r, device)
                misses[name][why] = misses[name].get(why, 0) + 1
                if len(examples) < 12:
                    examples.append(dict(case=case['desc'], impl=name, cause=why,
                                         **{k: v for k, v in r.items() if k != 'match'}))
    return dict(cases=cases, seed=seed, rtol=RTOL, device=device,
                device_name=device_name(device), matches=counts, misses=misses,
                worst_rel_err=worst, examples=examples, probes=probes(device),
                versions=versions(), wall_s=time.perf_counter() - t0)


def summary_text(res: dict) -> str:
    lines = [f"Accuracy vs float64 of mmdet's formula: {res['cases']} random cases on "
             f"{res['device']} ({res['device_name']}), ours with backend {res['backend']!r}, "
             f"rtol {res['rtol']:g} (loss and gradient)",
             '', '| implementation | cases within rtol | misses by cause | worst rel err |',
             '|---|---|---|---|']
    for name, n in res['matches'].items():
        why = '; '.join(f'{k}: {v}' for k, v in res['misses'][name].items()) or '-'
        lines.append(f"| {name} | {n}/{res['cases']} | {why} | {res['worst_rel_err'][name]:.2e} |")
    pr = res['probes']
    lines += ['', f"fp32 sigmoid(x) == 1 from x = {pr['fp32_sigmoid_is_1_from_x']:.3f} "
                  f"on {pr['device']}; log(FLT_MIN) = {pr['log_FLT_MIN']:.4f}"]
    for key in ('positive_x20_gamma_0.5', 'negative_x20', 'negative_x-12_gamma_0'):
        r = pr[key]
        lines.append(f"x = {r['x']:g}, {r['element is']}, gamma {r['gamma']:g}: float64 loss "
                     f"{r['float64']['loss']:.6g} grad {r['float64']['grad']:.6g}; mmdet loss "
                     f"{r['mmdet']['loss']:.6g} grad {r['mmdet']['grad']:.6g}; ours loss "
                     f"{r['ours']['loss']:.6g} grad {r['ours']['grad']:.6g}")
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    p.add_argument('--cases', type=int, default=300)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--backend', choices=('auto', 'torch', 'triton'), default=None,
                   help="ours: 'triton' on CPU runs the kernels in Triton's interpreter (set "
                        'TRITON_INTERPRET=1; slow); default: the package default')
    p.add_argument('--out', default=None, help='folder for accuracy.json and accuracy.md')
    args = p.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('--device cuda: no CUDA device', file=sys.stderr)
        return 2
    import mmdet_focal_triton  # noqa: F401  (registers TritonFocalLoss)

    res = run_accuracy_study(args.cases, args.device, args.seed, args.backend)
    text = summary_text(res)
    print(text, end='')
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        from .report import jsonable

        (out / 'accuracy.json').write_text(json.dumps(jsonable(res), indent=1))
        (out / 'accuracy.md').write_text(text)
    return 0 if res['matches']['ours'] == res['cases'] else 1


if __name__ == '__main__':
    sys.exit(main())
