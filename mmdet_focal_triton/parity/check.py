"""Check every call of our focal-family losses during training against mmdet's, in float64.

``FocalLossCheckHook`` (mmengine ``HOOKS``, also registered as ``LossCheckHook``) attaches to
every ``TritonFocalLoss``, ``TritonQualityFocalLoss`` and ``TritonVarifocalLoss`` module of the
model and records, at each call, the inputs the head passed (pred, target — class indices, a
dense target or a ``(labels, scores)`` pair —, weight, avg_factor, reduction_override), the loss
it returned and, in the backward pass, the gradient it delivered to ``pred`` together with the
upstream gradient. After each iteration it evaluates on those very inputs, with that upstream
gradient (``reference.REFERENCES``, by the module's loss type):

- the float64 evaluation of mmdet's formula, the reference: ``reference.float64_focal_loss``
  for ``FocalLoss``; for ``QualityFocalLoss`` / ``VarifocalLoss`` (pure PyTorch in mmdet 3.3.0)
  mmdet's own module on float64 copies of the inputs (exact for beta / gamma >= 1, where mmdet's
  formula has no NaN gradients);
- mmdet's own python code (``reference.mmdet_focal_loss``, mmdet's QFL / VFL module) in the
  inputs' precision (float32 for fp16 / bf16 inputs), reported: how close mmdet itself comes to
  the reference;

and checks ``||ours - ref|| / ||ref|| <= rtol`` for the loss and for the gradient (SPEC §3: 1e-5
for fp32 inputs, 1e-2 for fp16 / bf16). So the whole training distribution is checked, not a
test grid: every level, empty levels, images without positives, late-training logits, AMP.

The parameters the loss should have (FocalLoss: gamma, alpha, reduction, loss_weight, activated;
QualityFocalLoss: beta, ...; VarifocalLoss: alpha, gamma, iou_weighted, ...) come from
``reference`` (``{module name: loss config}``, e.g. the config before the swap) where given,
else from the module itself when training starts. Use it in any config::

    custom_imports = dict(imports=['mmdet_focal_triton', 'mmdet_focal_triton.parity'])
    custom_hooks = [dict(type='FocalLossCheckHook')]

The summary (with the loss types checked) is logged, written to
``<log_dir>/focal_loss_check.json`` and kept in ``hook.summary``. Cost: two more evaluations of
the loss per call, one in float64 (a parity run's price).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from .reference import loss_and_grad, our_loss_modules, reference_for, rel_err
from .report import jsonable

FP32_RTOL = 1e-5  # SPEC §3, fp32 (and fp64) inputs
LOW_PRECISION_RTOL = 1e-2  # SPEC §3, fp16 / bf16 inputs
_LOW = (torch.float16, torch.bfloat16)
_ARGS = ('pred', 'target', 'weight', 'avg_factor', 'reduction_override')


def default_rtol(dtype: torch.dtype) -> float:
    return LOW_PRECISION_RTOL if dtype in _LOW else FP32_RTOL


def _bind(args: tuple, kwargs: dict) -> dict:
    call = dict(zip(_ARGS, args))
    call.update({k: v for k, v in kwargs.items() if k in _ARGS})
    for k in _ARGS[2:]:
        call.setdefault(k, None)
    return call


def _detach(v):
    """Tensors detached, also inside a ``(labels, scores)`` target; anything else as it is."""
    if isinstance(v, torch.Tensor):
        return v.detach()
    if isinstance(v, (tuple, list)):
        return type(v)(_detach(x) for x in v)
    return v


def target_form(pred: torch.Tensor, target) -> tuple[str, int]:
    """('index' | 'dense' | 'labels+scores', number of positives) of a loss call's target.

    Positives: class indices below C (index), entries above 0 (dense), labels in [0, C) of a
    ``(labels, scores)`` pair (QualityFocalLoss's, background = C).
    """
    num_classes = pred.shape[-1] if pred.dim() else 0
    if isinstance(target, (tuple, list)):
        labels = target[0]
        return 'labels+scores', int(((labels >= 0) & (labels < num_classes)).sum())
    if pred.dim() == target.dim():
        return 'dense', int((target > 0).sum()) if pred.numel() else 0
    return 'index', int((target < num_classes).sum()) if pred.numel() else 0


def check_call(call: dict, params, rtol: float | None = None) -> dict:
    """Compare one recorded call of our loss with mmdet's formula on the same inputs.

    ``call``: pred, target, weight, avg_factor, reduction_override (the forward's arguments),
    ``out`` (our loss), and, when a backward pass reached them, ``grad_output`` (the upstream
    gradient of the loss) and ``grad`` (our gradient w.r.t. pred). ``params``: the loss's
    parameters (``FocalLossParams``, ``QualityFocalLossParams`` or ``VarifocalLossParams``: they
    pick the loss, ``reference.REFERENCES``). Returns the numbers, with ``passed``: loss and
    gradient within ``rtol`` of the float64 reference.
    """
    ref_fns = reference_for(params)
    pred, target = call['pred'], call['target']
    inputs = (pred, target, call['weight'], call['avg_factor'], call['reduction_override'])
    rtol = default_rtol(pred.dtype) if rtol is None else rtol
    go = call.get('grad_output')
    # differentiated with respect to a float64 copy of pred: a leaf in pred's dtype would round
    # the reference gradient to fp16 / bf16, like ours, and hide our rounding
    ref, ref_grad = loss_and_grad(ref_fns.float64, pred.double(), *inputs[1:], params=params,
                                  grad_output=go)
    mm_pred = pred.float() if pred.dtype in _LOW else pred
    try:  # reported only: mmdet's own code may refuse what the formula (and ours) accepts
        mm, mm_grad = loss_and_grad(ref_fns.mmdet, mm_pred, *inputs[1:], params=params,
                                    grad_output=go)
        mm_error = None
    except Exception as e:  # noqa: BLE001
        mm = mm_grad = None
        mm_error = f'{type(e).__name__}: {e}'
    form, n_pos = target_form(pred, target)
    af = call['avg_factor']
    res = dict(loss_type=ref_fns.loss_type, shape=list(pred.shape),
               dtype=str(pred.dtype).replace('torch.', ''), target=form, positives=n_pos,
               weight=None if call['weight'] is None else list(call['weight'].shape),
               avg_factor=float(af.double().sum()) if isinstance(af, torch.Tensor) else af,
               reduction=call['reduction_override'] or params.reduction,
               max_abs_logit=float(pred.detach().abs().max()) if pred.numel() else 0.0,
               rtol=rtol, loss_rel_err=rel_err(call['out'], ref),
               mmdet_loss_rel_err=None if mm is None else rel_err(mm, ref), grad_rel_err=None,
               mmdet_grad_rel_err=None, mmdet_error=mm_error)
    failures = []
    if not res['loss_rel_err'] <= rtol:
        failures.append(f"loss rel err {res['loss_rel_err']:.3g} > {rtol:g}")
    if go is not None:
        res['mmdet_grad_rel_err'] = None if mm_grad is None else rel_err(mm_grad, ref_grad)
        grad = call.get('grad')
        big = torch.finfo(pred.dtype).max if pred.dtype in _LOW else math.inf
        if grad is None:
            failures.append('no gradient reached pred although the loss was back-propagated')
        elif pred.numel() and float(ref_grad.abs().max()) > big:
            # upstream gradient x AMP loss scale beyond fp16's range: mmengine's GradScaler
            # skips this step anyway (inf in both), so there is nothing to compare
            res['grad_note'] = 'reference gradient overflows the input dtype: not compared'
        else:
            res['grad_rel_err'] = rel_err(grad, ref_grad)
            if not res['grad_rel_err'] <= rtol:
                failures.append(f"gradient rel err {res['grad_rel_err']:.3g} > {rtol:g}")
    res['passed'] = not failures
    res['failures'] = failures
    return res


class CheckSummary:
    """Aggregates ``check_call`` results: maxima, failures, coverage, per-iteration maxima."""

    def __init__(self):
        self.calls = 0
        self.grads = 0
        self.failed = 0
        self.first_failure = None
        self.worst = None
        self.max = dict(loss_rel_err=0.0, grad_rel_err=0.0, mmdet_loss_rel_err=0.0,
                        mmdet_grad_rel_err=0.0)
        self.mmdet_nonfinite = 0
        self.per_iter = {}  # iteration -> max rel errs: [loss, grad, mmdet's loss, grad]
        self.coverage = dict(empty_calls=0, calls_without_positives=0, max_abs_logit=0.0,
                             dtypes=[], modules=[], target_forms=[], loss_types=[])

    def add(self, res: dict, iteration: int | None, module: str) -> None:
        self.calls += 1
        res = dict(res, iteration=iteration, module=module)
        for k in self.max:
            v = res.get(k)
            if v is not None:
                self.max[k] = max(self.max[k], v) if math.isfinite(v) else math.inf
        self.mmdet_nonfinite += any(res.get(k) == math.inf
                                    for k in ('mmdet_loss_rel_err', 'mmdet_grad_rel_err'))
        self.grads += res['grad_rel_err'] is not None
        score = max(res['loss_rel_err'], res['grad_rel_err'] or 0.0)
        if self.worst is None or not score <= self.worst['score']:
            self.worst = dict(res, score=score)
        if not res['passed']:
            self.failed += 1
            if self.first_failure is None:
                self.first_failure = res
        if iteration is not None:
            m = self.per_iter.setdefault(iteration, [0.0, 0.0, 0.0, 0.0])
            for i, k in enumerate(('loss_rel_err', 'grad_rel_err', 'mmdet_loss_rel_err',
                                   'mmdet_grad_rel_err')):
                m[i] = max(m[i], res[k] or 0.0)
        cov = self.coverage
        cov['empty_calls'] += res['shape'][0] == 0
        cov['calls_without_positives'] += res['positives'] == 0
        cov['max_abs_logit'] = max(cov['max_abs_logit'], res['max_abs_logit'])
        ours = reference_for(res.get('loss_type', 'FocalLoss')).ours
        for key, v in (('dtypes', res['dtype']), ('modules', module),
                       ('target_forms', res['target']), ('loss_types', ours)):
            if v not in cov[key]:
                cov[key].append(v)

    @property
    def passed(self) -> bool:
        return self.calls > 0 and self.failed == 0

    @property
    def loss_types(self) -> str:
        """Our loss classes checked so far, e.g. 'TritonQualityFocalLoss' ('' before a call)."""
        return ', '.join(self.coverage['loss_types'])

    def as_dict(self) -> dict:
        iters = sorted(self.per_iter)
        return dict(passed=self.passed, calls=self.calls, gradients_checked=self.grads,
                    failed_calls=self.failed, max=dict(self.max),
                    mmdet_nonfinite_calls=self.mmdet_nonfinite, coverage=self.coverage,
                    first_failure=self.first_failure, worst=self.worst,
                    per_iteration=dict(
                        iteration=iters, loss_rel_err=[self.per_iter[i][0] for i in iters],
                        grad_rel_err=[self.per_iter[i][1] for i in iters],
                        mmdet_loss_rel_err=[self.per_iter[i][2] for i in iters],
                        mmdet_grad_rel_err=[self.per_iter[i][3] for i in iters]))


@HOOKS.register_module()
class FocalLossCheckHook(Hook):
    """Checks each call of each loss of ours (``TritonFocalLoss``, ``TritonQualityFocalLoss``,
    ``TritonVarifocalLoss``) against the float64 evaluation of mmdet's (module docstring).

    Args:
        reference: ``{module name: loss config dict}``: the parameters each loss module should
            have (module names as ``model.named_modules()`` gives them, e.g.
            ``'bbox_head.loss_cls'``; a ``type``, if given, must be the module's loss, mmdet's
            name or ours). Modules not in it are checked against their own parameters as they
            are when training starts.
        rtol: tolerance on the relative error of loss and gradient; None: 1e-5 for fp32 / fp64
            inputs, 1e-2 for fp16 / bf16.
        out_file: name of the JSON summary written into the runner's log_dir (None: none).
    """

    priority = 'HIGHEST'  # attach before other hooks change the loss modules in before_train

    def __init__(self, reference: dict | None = None, rtol: float | None = None,
                 out_file: str | None = 'focal_loss_check.json') -> None:
        self.reference = dict(reference or {})
        self.rtol = rtol
        self.out_file = out_file
        self.summary = CheckSummary()
        self.params = {}
        self._handles = []
        self._pending = []
        self._iteration = None
        self._logged_failure = False
        self.elapsed_s = 0.0  # time spent checking (a parity run leaves it out of its timings)

    # -- attaching ---------------------------------------------------------------------------
    def attach(self, model) -> list:
        """Hook every loss module of ours in ``model``; returns their names."""
        model = model.module if is_model_wrapper(model) else model
        names = []
        for name, m, ref in our_loss_modules(model):
            cfg = self.reference.get(name)
            if cfg is not None and cfg.get('type') is not None \
                    and reference_for(cfg['type']) is not ref:
                raise ValueError(f"{name} is a {type(m).__name__}, but its reference config is "
                                 f"a {cfg['type']}")
            self.params[name] = (ref.params.from_config(cfg) if cfg is not None
                                 else ref.params.from_module(m))
            self._handles.append(m.register_forward_pre_hook(self._pre_hook(name),
                                                             with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._post_hook(), with_kwargs=True))
            names.append(name)
        return names

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre_hook(self, name: str):
        def hook(module, args, kwargs):
            call = _bind(args, kwargs)
            pred = call['pred']
            rec = {k: _detach(v) for k, v in call.items()}
            rec.update(module=name, iteration=self._iteration, grad=None, grad_output=None)
            self._pending.append(rec)
            if not (torch.is_grad_enabled() and isinstance(pred, torch.Tensor)
                    and pred.requires_grad):
                return None
            # a view that only the loss consumes: its gradient is exactly the loss's
            view = pred.view_as(pred)
            view.register_hook(lambda g: rec.__setitem__('grad', g.detach().clone()))
            n = len(args)
            if n:
                return (view,) + tuple(args[1:]), kwargs
            return args, dict(kwargs, pred=view)
        return hook

    def _post_hook(self):
        def hook(module, args, kwargs, output):
            rec = self._pending[-1]
            rec['out'] = output.detach().clone()
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(
                    lambda g: rec.__setitem__('grad_output', g.detach().clone()))
        return hook

    # -- checking ----------------------------------------------------------------------------
    def flush(self, logger=None) -> None:
        """Check the calls recorded since the last flush (after their backward pass)."""
        t0 = time.perf_counter()
        try:
            self._flush(logger)
        finally:
            self.elapsed_s += time.perf_counter() - t0

    def _flush(self, logger=None) -> None:
        pending, self._pending = self._pending, []
        for rec in pending:
            if 'out' not in rec:  # the forward raised
                continue
            res = check_call(rec, self.params[rec['module']], self.rtol)
            self.summary.add(res, rec['iteration'], rec['module'])
            if not res['passed'] and not self._logged_failure and logger is not None:
                self._logged_failure = True
                ref = reference_for(res['loss_type'])
                logger.warning(f"FocalLossCheckHook: {rec['module']} ({ref.ours}) at iteration "
                               f"{rec['iteration']}: {'; '.join(res['failures'])} (ours vs "
                               f"float64 evaluation of mmdet's {ref.loss_type} on the same "
                               'inputs)')

    def before_train(self, runner) -> None:
        names = self.attach(runner.model)
        if not names:
            runner.logger.warning('FocalLossCheckHook: the model has no loss of ours '
                                  '(TritonFocalLoss, TritonQualityFocalLoss, '
                                  'TritonVarifocalLoss)')

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._iteration = runner.iter + 1

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.flush(runner.logger)

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.flush(runner.logger)

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.flush(runner.logger)

    def after_train(self, runner) -> None:
        self.flush(runner.logger)
        s = self.summary
        runner.logger.info(
            f"FocalLossCheckHook: {'PASS' if s.passed else 'FAIL'}: "
            f"{s.loss_types or 'no loss of ours'}, {s.calls} calls "
            f"({s.grads} with gradient), {s.failed} failed; max rel err loss "
            f"{s.max['loss_rel_err']:.3g}, gradient {s.max['grad_rel_err']:.3g} (mmdet's own "
            f"code: {s.max['mmdet_loss_rel_err']:.3g}, {s.max['mmdet_grad_rel_err']:.3g})")
        if self.out_file and getattr(runner, 'log_dir', None):
            path = Path(runner.log_dir) / self.out_file
            path.write_text(json.dumps(jsonable(s.as_dict()), indent=1))

    def after_run(self, runner) -> None:
        self.detach()


LossCheckHook = FocalLossCheckHook  # the name that says what it checks: the whole family
HOOKS.register_module(name='LossCheckHook', module=FocalLossCheckHook)
