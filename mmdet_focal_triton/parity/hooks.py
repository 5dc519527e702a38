"""mmengine hooks of a parity run: recording a training, and showing its progress."""
from __future__ import annotations

import hashlib
import time

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import set_random_seed

RECORDED = ('loss', 'loss_cls', 'loss_bbox')


def unwrap(model):
    return model.module if is_model_wrapper(model) else model


def snapshot(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def state_digest(state: dict) -> str:
    """sha256 over the names and raw bytes of every tensor of a state_dict."""
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(str(t.dtype).encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ParityRecordHook(Hook):
    """Loads (or captures) the initial weights, reseeds the RNGs, and records into ``record``
    (a dict): the losses of every iteration, the weights after the first one, the time of each
    iteration, the learning curve (one point per evaluation) and the last metrics.

    Time is training time as a user meets it, data loading included, with two things left out:
    the evaluations (``val_s``) and ``overhead``, a callable giving the seconds spent so far in
    work that is not training (the per-call check of a parity run; None: nothing). So
    ``iter_s`` (per iteration) and the curve's ``train_s`` (cumulative) compare trainings with
    and without the check.
    """

    priority = 'VERY_HIGH'

    def __init__(self, record: dict, seed: int, init_state: dict | None = None,
                 overhead=None) -> None:
        self.record = record
        self.seed = seed
        self.init_state = init_state
        self.overhead = overhead or (lambda: 0.0)
        self._last = self._ov = self._tv = None
        self._train_s = 0.0

    def before_train(self, runner) -> None:
        model = unwrap(runner.model)
        if self.init_state is None:  # first run: its freshly initialised weights are the init
            self.record['init_state'] = snapshot(model)
        else:
            model.load_state_dict(self.init_state, strict=True)
        self.record['init_digest'] = state_digest(model.state_dict())
        # the same RNG state for what follows (augmentation draws, anything random in the step)
        set_random_seed(self.seed, deterministic=False)
        self.record['losses'] = {k: [] for k in RECORDED}
        self.record.update(iter_s=[], curve=[], train_s=0.0, val_s=0.0)
        self._train_s = 0.0
        self._restart_clock()

    def _restart_clock(self) -> None:
        self._last, self._ov = time.perf_counter(), self.overhead()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        for k in RECORDED:
            v = (outputs or {}).get(k)
            if v is None:
                continue
            # .item() waits for the GPU: the iteration's time below is its real time
            v = float(v.detach().double().item()) if isinstance(v, torch.Tensor) else float(v)
            self.record['losses'][k].append(v)
        now, ov = time.perf_counter(), self.overhead()
        dt = max(now - self._last - (ov - self._ov), 0.0)
        self._last, self._ov = now, ov
        self.record['iter_s'].append(dt)
        self._train_s += dt
        self.record['train_s'] = self._train_s
        if runner.iter == 0:  # weights after the first update (not timed)
            self.record['state_after_1'] = snapshot(unwrap(runner.model))
            self._restart_clock()

    def before_val(self, runner) -> None:
        self._tv = time.perf_counter()

    def after_val_epoch(self, runner, metrics=None) -> None:
        m = {k: (float(v) if isinstance(v, (int, float, np.floating)) else str(v))
             for k, v in (metrics or {}).items()}
        self.record['raw_metrics'] = m
        if self._tv is not None:
            self.record['val_s'] += time.perf_counter() - self._tv
            self._tv = None
        point = dict(iter=runner.iter, train_s=self._train_s)
        for k in ('bbox_mAP', 'bbox_mAP_50'):
            v = m.get(f'coco/{k}')
            # CocoMetric returns nothing when no box scored above score_thr: mAP 0
            point[k] = v if isinstance(v, float) else 0.0
        self.record['curve'].append(point)
        self._restart_clock()


class ProgressHook(Hook):
    """One progress bar per training on a ``RunConsole``: iteration, losses, the last
    evaluation's bbox_mAP, ETA; during an evaluation its progress in the same bar (a run
    evaluates every few iterations: one line per run in a log, not one per evaluation)."""

    priority = 'LOWEST'

    def __init__(self, console, label: str) -> None:
        self.console = console
        self.label = label
        self._bar = None
        self._losses = ''
        self._map = ''
        self._n_val = 0

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _text(self, extra: str = '') -> str:
        return '  '.join(t for t in (self._losses, self._map, extra) if t)

    def before_train(self, runner) -> None:
        self._bar = self.console.progress(f'{self.label:<9} train', runner.max_iters)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self._bar is None:
            return
        parts = []
        for k in ('loss_cls', 'loss_bbox'):
            v = (outputs or {}).get(k)
            if isinstance(v, torch.Tensor):
                parts.append(f'{k} {float(v.detach()):.3f}')
        self._losses = ' '.join(parts)
        self._bar.update(runner.iter + 1, self._text())

    def before_val(self, runner) -> None:
        self._n_val = (len(runner.val_loop.dataloader)
                       if hasattr(runner.val_loop, 'dataloader') else 0)

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self._bar is not None:
            self._bar.update(runner.iter,
                             self._text(f'eval {batch_idx + 1}/{self._n_val}'))

    def after_val_epoch(self, runner, metrics=None) -> None:
        v = (metrics or {}).get('coco/bbox_mAP')
        self._map = f"mAP {v if isinstance(v, float) else 0.0:.3f}@{runner.iter}"
        if self._bar is not None:
            self._bar.update(runner.iter, self._text())

    def after_train(self, runner) -> None:
        self._close()

    def after_run(self, runner) -> None:
        self._close()
