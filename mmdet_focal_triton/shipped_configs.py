"""The configs shipped with the package: where they are, and how to name one.

The checkout keeps them in ``configs/`` at its top (where mmdet users expect them); the package
holds the same files as ``mmdet_focal_triton/.mim/configs/``, mmdet's own layout for packaged
configs (mmdet's wheel ships its configs as ``mmdet/.mim/configs``). In a checkout that path is
a symbolic link to ``configs/``; a wheel or an sdist holds copies (package data). So one path
serves an installed package and a checkout alike.

A shipped config is named by its path below that folder, e.g.
``'retinanet/retinanet_r50_fpn_triton-focal_1x_coco.py'`` or
``'parity/rtmdet_tiny_synthetic_cpu.py'``, optionally with the prefix ``'mmdet_focal_triton::'``
(the form ``mmdet::`` configs have).
mmengine resolves ``pkg::`` prefixes itself only for OpenMMLab's own packages (a fixed table in
``mmengine.config.utils``), so ``_base_ = 'mmdet_focal_triton::...'`` does not work in a config
file; the command line (``mmdet-focal-triton train``) and ``config_path`` accept it, and
``mmdet-focal-triton configs --path NAME`` prints the file's path for a ``_base_`` or for
mmdet's own tools.
"""
from __future__ import annotations

from pathlib import Path

PREFIX = 'mmdet_focal_triton::'
# resolved: in a checkout, the link's target (the checkout's configs/), so paths read as before
CONFIG_ROOT = (Path(__file__).parent / '.mim' / 'configs').resolve()


def config_root() -> Path:
    """The folder of the shipped configs; FileNotFoundError if this installation lacks it."""
    if not CONFIG_ROOT.is_dir():
        raise FileNotFoundError(
            f'{CONFIG_ROOT} not found: this installation of mmdet_focal_triton has no shipped '
            'configs (a wheel built from a checkout without configs/, or a checkout whose '
            'symbolic link mmdet_focal_triton/.mim/configs -> ../../configs was not created)')
    return CONFIG_ROOT


def list_configs(pattern: str = '**/*.py') -> list[str]:
    """Names of the shipped configs (paths below ``config_root()``, '/'-separated), sorted."""
    root = config_root()
    return sorted(p.relative_to(root).as_posix() for p in root.glob(pattern) if p.is_file())


def is_shipped_name(name) -> bool:
    """Whether ``name`` uses the ``mmdet_focal_triton::`` prefix."""
    return isinstance(name, str) and name.startswith(PREFIX)


def config_path(name: str) -> Path:
    """Path of the shipped config ``name`` ('retinanet/....py', 'parity/....py', with or
    without the ``mmdet_focal_triton::`` prefix)."""
    if not isinstance(name, (str, Path)):
        raise TypeError(f'name must be a str, got {type(name).__name__}')
    rel = str(name)
    if rel.startswith(PREFIX):
        rel = rel[len(PREFIX):]
    if not rel or Path(rel).is_absolute() or '..' in Path(rel).parts:
        raise ValueError(f'name must be a path below the shipped configs folder, e.g. '
                         f"'retinanet/retinanet_r50_fpn_triton-focal_1x_coco.py', got {name!r}")
    path = config_root() / rel
    if not path.is_file():
        stem = Path(rel).name
        close = [n for n in list_configs() if Path(n).name == stem or stem in n]
        hint = f'; did you mean {close}?' if close else \
            '; `mmdet-focal-triton configs` lists them'
        raise FileNotFoundError(f'no shipped config {rel!r} (looked at {path}){hint}')
    return path
