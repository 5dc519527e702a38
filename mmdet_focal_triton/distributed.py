"""Two helpers for data-parallel training with mmengine, used by ``tools/ddp_parity.py``:

- ``AverageLogVarsHook`` (mmengine ``HOOKS``): averages the logged losses over the ranks. mmengine
  logs rank 0's ``log_vars`` only, i.e. the losses of rank 0's share of the batch; with this hook
  in ``custom_hooks`` the logged ``loss``, ``loss_cls``, ... are the means over all ranks (what a
  single process computing the mean of the per-rank losses would log). Only the logged values
  change: the gradients are DDP's as always.
- ``CPUSyncBatchNorm`` (mmengine ``MODELS``, ``norm_cfg=dict(type='CPUSyncBN')``): synchronized
  batch norm over any ``torch.distributed`` backend, gloo on CPU included, where PyTorch's
  ``nn.SyncBatchNorm`` refuses CPU tensors. Batch statistics over all ranks, so training BN layers
  with batch 1 on each of 2 ranks normalises as batch 2 on one process does.

Both are no-ops outside a distributed run (or in a world of one process).

    custom_imports = dict(imports=['mmdet_focal_triton'])
    custom_hooks = [dict(type='AverageLogVarsHook')]
    model = dict(backbone=dict(norm_cfg=dict(type='CPUSyncBN', requires_grad=True)))
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.registry import HOOKS, MODELS
from torch.nn.modules.batchnorm import _BatchNorm


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


@HOOKS.register_module()
class AverageLogVarsHook(Hook):
    """After each training iteration, replace every scalar tensor of the model's ``log_vars``
    (``outputs`` of ``after_train_iter``: ``loss`` and its parts) by its mean over the ranks.

    Priority ``HIGHEST`` (0): it runs before mmengine's ``RuntimeInfoHook`` (``VERY_HIGH``, 10),
    which copies ``outputs`` into the message hub that ``LoggerHook`` logs from. At that point the
    values are still the tensors that ``BaseModel.parse_losses`` made (mmengine 0.10), on the
    model's device: they are all-reduced in one call (float64, on the device of the process
    group's backend: CUDA for NCCL, CPU for gloo) and written back into ``outputs`` as tensors of
    their own dtype and device. Non-tensor and non-scalar values are left as they are. Every rank
    must log the same keys (mmdet's losses do); the first iteration checks it, with a clear error
    instead of a hang or a mismatched reduction.
    """

    priority = 'HIGHEST'

    def __init__(self) -> None:
        self._checked = False

    @staticmethod
    def _keys(outputs) -> list:
        return sorted(k for k, v in outputs.items()
                      if isinstance(v, torch.Tensor) and v.numel() == 1)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        world = _world_size()
        if world == 1 or not isinstance(outputs, dict):
            return
        keys = self._keys(outputs)
        if not self._checked:
            every = [None] * world
            dist.all_gather_object(every, keys)
            if any(k != keys for k in every):
                raise RuntimeError('AverageLogVarsHook: the ranks log different keys: '
                                   + '; '.join(f'rank {r}: {k}' for r, k in enumerate(every)))
            self._checked = True
        if not keys:
            return
        device = torch.device('cpu')
        if 'nccl' in str(dist.get_backend()):
            device = torch.device('cuda', torch.cuda.current_device())
        vals = torch.stack([outputs[k].detach().reshape(()).to(device=device,
                                                              dtype=torch.float64)
                            for k in keys])
        dist.all_reduce(vals, op=dist.ReduceOp.SUM)
        vals /= world
        for k, v in zip(keys, vals):
            outputs[k] = v.to(device=outputs[k].device, dtype=outputs[k].dtype)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of the (total) loss with respect to each
    rank's contribution is the sum of the ranks' incoming gradients."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


@MODELS.register_module('CPUSyncBN')
class CPUSyncBatchNorm(_BatchNorm):
    """Batch norm whose training-mode statistics are taken over the whole world's batch.

    The same arguments and semantics as ``torch.nn.SyncBatchNorm`` (inputs ``(N, C, ...)``,
    running statistics updated with the global mean and unbiased global variance, eval mode and
    world size 1 are plain batch norm), written with ``all_reduce`` and autograd so that it runs
    over gloo on CPU too. Two-pass statistics (mean, then the mean squared deviation), each one
    all-reduce of a ``C``-vector; the backward pass all-reduces the gradients of those sums.
    Meant for checks and small runs (``torch.nn.SyncBatchNorm`` is the fast one on CUDA).
    """

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f'expected at least 2D input (got {input.dim()}D input)')

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self.training or _world_size() == 1:
            return super().forward(input)
        c = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        shape = [1, c] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() // max(c, 1)], dtype=torch.float64,
                             device=input.device)
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
        n = float(count.item())
        if n <= 1:
            raise ValueError(f'CPUSyncBatchNorm: {n:g} value(s) per channel over all ranks; '
                             'more than 1 are needed in training mode')
        mean = _AllReduceSum.apply(input.sum(dims)) / n
        xc = input - mean.reshape(shape)
        var = _AllReduceSum.apply((xc * xc).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        out = xc * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out
