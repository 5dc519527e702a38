"""Where a benchmark ran: device name and library versions (columns of every CSV row)."""
from __future__ import annotations

import platform

import torch


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'."""
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return device


def device_name(device: str) -> str:
    if device == 'cuda':
        return torch.cuda.get_device_name()
    return platform.processor() or 'cpu'


def versions() -> dict[str, str]:
    out = {'torch': torch.__version__}
    for mod in ('triton', 'mmcv', 'mmdet'):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = ''
    return out


def synchronize(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()
