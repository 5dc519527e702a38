"""Compatibility fixes for running the pinned OpenMMLab stack on a modern torch.

mmengine 0.10.7 calls ``torch.load(filename, map_location=...)`` without ``weights_only``.
From torch 2.6 on, ``weights_only`` defaults to True and torch refuses mmengine's own checkpoints
(they pickle ``mmengine.logging.HistoryBuffer``, numpy scalars, the config...): ``--resume`` and
``load_from`` fail with an ``UnpicklingError``. mmengine's main branch passes
``weights_only=False`` for these trusted, locally produced checkpoints; `patch_mmengine_torch_load`
does the same for the released 0.10.7, without touching ``torch.load`` for anyone else.

It is applied on ``import mmdet_focal_triton``, so ``tools/train.py`` and any config with
``custom_imports=dict(imports=['mmdet_focal_triton'])`` get it without thinking about it.
Checkpoints from untrusted sources should not be loaded with mmengine at all.
"""
import functools
import types

import torch

_MARK = '_mmdet_focal_triton_weights_only_fix'


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split('+')[0].split('.')[:2]
    return int(major), int(minor)


class _TorchWithTrustedLoad(types.ModuleType):
    """Stands for the ``torch`` module inside mmengine's checkpoint modules: every attribute is
    torch's, except ``load``, which defaults to ``weights_only=False``."""

    def __init__(self) -> None:
        super().__init__('torch')
        setattr(self, _MARK, True)

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    @functools.wraps(torch.load)
    def load(*args, **kwargs):
        kwargs.setdefault('weights_only', False)
        return torch.load(*args, **kwargs)


def patch_mmengine_torch_load() -> bool:
    """Make mmengine's checkpoint loading work on torch >= 2.6. Returns True if patched (now or
    before), False when not needed (older torch) or mmengine is absent."""
    if _torch_version() < (2, 6):
        return False
    try:
        import mmengine.runner.checkpoint as ckpt
    except ImportError:
        return False
    # every `torch.load` of mmengine's checkpoint loaders (local files, torchvision://-style
    # model-zoo files, s3/petrel, pavi) goes through this module's `torch` name; URLs go through
    # torch.hub's own load_state_dict_from_url, which needs no fix for plain state dicts
    if not getattr(ckpt.torch, _MARK, False):
        ckpt.torch = _TorchWithTrustedLoad()
    return True
