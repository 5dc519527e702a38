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
    """Loads (or captures) the initial weights, reseeds the RNGs, and records the losses of
    every iteration, the weights after the first one, the timings and the metrics into
    ``record`` (a dict)."""

    priority = 'VERY_HIGH'

    def __init__(self, record: dict, seed: int, init_state: dict | None = None) -> None:
        self.record = record
        self.seed = seed
        self.init_state = init_state
        self._t0 = None
        self._tv = None

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
        self._t0 = time.perf_counter()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        for k in RECORDED:
            v = (outputs or {}).get(k)
            if v is None:
                continue
            v = float(v.detach().double().item()) if isinstance(v, torch.Tensor) else float(v)
            self.record['losses'][k].append(v)
        if runner.iter == 0:  # weights after the first update
            self.record['state_after_1'] = snapshot(unwrap(runner.model))

    def before_val(self, runner) -> None:
        self._tv = time.perf_counter()
        if self._t0 is not None and 'train_s' not in self.record:
            self.record['train_s'] = self._tv - self._t0  # the iterations only

    def after_val_epoch(self, runner, metrics=None) -> None:
        if self._tv is not None:
            self.record['val_s'] = time.perf_counter() - self._tv
        self.record['raw_metrics'] = {k: (float(v) if isinstance(v, (int, float, np.floating))
                                          else str(v)) for k, v in (metrics or {}).items()}


class ProgressHook(Hook):
    """One progress bar for the training (iteration, losses, ETA) and one for the evaluation,
    on a ``RunConsole``; the evaluation's mAPs in one line after it."""

    priority = 'LOWEST'

    def __init__(self, console, label: str) -> None:
        self.console = console
        self.label = label
        self._bar = None

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def before_train(self, runner) -> None:
        self._bar = self.console.progress(f'{self.label:<8} train', runner.max_iters)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self._bar is None:
            return
        parts = []
        for k in ('loss_cls', 'loss_bbox'):
            v = (outputs or {}).get(k)
            if isinstance(v, torch.Tensor):
                parts.append(f'{k} {float(v.detach()):.4f}')
        self._bar.update(runner.iter + 1, '  '.join(parts))

    def before_val(self, runner) -> None:
        self._close()
        n = len(runner.val_loop.dataloader) if hasattr(runner.val_loop, 'dataloader') else 0
        self._bar = self.console.progress(f'{self.label:<8} eval ', n)

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self._bar is not None:
            self._bar.update(batch_idx + 1)

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._close()
        m = metrics or {}
        keys = ('coco/bbox_mAP', 'coco/bbox_mAP_50')
        vals = ', '.join(f"{k.split('/')[1]} {m[k]:.4f}" for k in keys if k in m)
        self.console.log(f'{self.label}: evaluation (mmdet CocoMetric): '
                         f'{vals or "no detections above the score threshold (mAP 0)"}')

    def after_train(self, runner) -> None:
        self._close()

    def after_run(self, runner) -> None:
        self._close()
