"""Input checks of the fused losses, reported without a host synchronisation.

Class labels outside [0, C] (and probabilities outside [0, 1]: activated=True, and
GaussianFocalLoss) are found inside the loss kernel, at no extra pass over the data. The kernel
reports them by writing a *sticky flag* in pinned host memory, which every GPU can address
directly (unified addressing: a pinned allocation is mapped into each device's address space).
It writes only when it found something, so a clean call moves no byte and launches nothing for
the check.

The host reads the flag of a device with a plain memory read (no CUDA call, no event): at the
start of every fused-loss call on that device (earlier calls' results), in the backward, and in
`check_pending_inputs()`. When it is set, it is cleared and a ValueError is raised: in a training
loop at the latest one iteration after the bad call (the loop synchronises when it logs).

Modes (`set_input_checks`, or MMDET_FOCAL_TRITON_CHECK=async|sync|off):
- 'async' (True, the default): as above.
- 'sync': the call waits for its kernel and raises itself (one synchronisation per call).
- 'off' (False): no check; labels outside [0, C] then count as background (nothing is read out
  of bounds).
The PyTorch (CPU) path checks in the call itself in both 'async' and 'sync' modes.
"""
import os
import threading

import torch
from torch import Tensor

CHECK_MODES = ('async', 'sync', 'off')
LABEL_BIT, PROB_BIT = 1, 2  # the kernels' flag bits; the flag also holds C << 2
_SLOT = 4  # int32 per slot: 16 bytes, so that every slot is 16-byte aligned


def _parse_mode(mode) -> str:
    if mode is True or mode in ('1', 'on', 'true'):
        return 'async'
    if mode is False or mode in ('0', 'off', 'false'):
        return 'off'
    if mode in CHECK_MODES:
        return mode
    raise ValueError(f"input check mode must be True/'async', 'sync' or False/'off', got {mode!r}")


_MODE = _parse_mode(os.environ.get('MMDET_FOCAL_TRITON_CHECK', 'async').lower())


def set_input_checks(mode=True) -> None:
    """How bad labels / probabilities are reported: True or 'async' (default: no host
    synchronisation, raised at the next call, the backward, or `check_pending_inputs()`),
    'sync' (raised by the call itself, one synchronisation per call), False or 'off'."""
    global _MODE
    _MODE = _parse_mode(mode)


def get_input_checks() -> str:
    """The input check mode: 'async', 'sync' or 'off'."""
    return _MODE


def input_checks_enabled() -> bool:
    return _MODE != 'off'


def raise_bad(bits: int, C: int, deferred: bool = False) -> None:
    """Raise the ValueError of flag bits (LABEL_BIT, PROB_BIT) for a loss with C classes."""
    where = (' (found by the asynchronous input check of a loss call on this device, and raised '
             'at the first point after it where the result was known without waiting for the '
             "GPU; set_input_checks('sync') raises in the call itself)") if deferred else ''
    if bits & LABEL_BIT and C == 0:  # GaussianFocalLoss's pos_inds form (no class count)
        raise ValueError('pos_inds / pos_labels name elements outside pred (N, C): pos_inds '
                         f'must be in [0, N) and pos_labels in [0, C){where}')
    if bits & LABEL_BIT:
        raise ValueError(f'target holds class indices outside [0, {C}] (num_classes = {C}; '
                         f'label {C} means background){where}')
    if bits & PROB_BIT:
        raise ValueError('pred must hold probabilities in [0, 1] (activated=True, and '
                         f'GaussianFocalLoss){where}')


class _Flags:
    """One sticky flag slot per device (slot 0: CPU tensors under the Triton interpreter), in one
    pinned host tensor, with a numpy view for reads that cost no CUDA call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.host = None  # int32 tensor, pinned when CUDA is present
        self.view = None  # numpy view of `host`
        self.args = []  # per slot, the one-element tensor handed to the kernels
        self.used = set()  # CUDA device indices that have launched a checked kernel

    def _allocate(self) -> None:
        n = torch.cuda.device_count() + 1 if torch.cuda.is_available() else 1
        host = torch.zeros(n * _SLOT, dtype=torch.int32, pin_memory=torch.cuda.is_available())
        self.args = [host[i * _SLOT:i * _SLOT + 1] for i in range(n)]
        self.view = host.numpy()
        self.host = host

    def arg(self, device_index: int) -> Tensor:
        """The flag a kernel on CUDA device `device_index` (-1: CPU, interpreter) writes."""
        if self.host is None:
            with self.lock:
                if self.host is None:
                    self._allocate()
        if device_index >= 0:
            self.used.add(device_index)
        return self.args[device_index + 1]

    def poll(self, device_index: int, deferred: bool = True) -> None:
        """Raise (once) the error a kernel on that device reported; costs a memory read."""
        view = self.view
        if view is not None:
            value = int(view[(device_index + 1) * _SLOT])
            if value:
                view[(device_index + 1) * _SLOT] = 0
                raise_bad(value & 3, value >> 2, deferred=deferred)

    def poll_all(self, wait: bool) -> None:
        if self.view is None:
            return
        if wait:
            for idx in sorted(self.used):
                torch.cuda.synchronize(idx)
        for slot in range(len(self.args)):
            self.poll(slot - 1)


FLAGS = _Flags()
poll = FLAGS.poll
flag_arg = FLAGS.arg


def check_pending_inputs(wait: bool = True) -> None:
    """Raise now the ValueError of any earlier call whose kernel found bad input (after waiting
    for the GPUs if `wait`; otherwise only what they have reported so far)."""
    FLAGS.poll_all(wait)


def wait_and_poll(device_index: int) -> None:
    """'sync' mode: wait for this device's current stream, then raise what its kernel found."""
    if device_index >= 0 and not torch.cuda.is_current_stream_capturing():
        torch.cuda.current_stream(device_index).synchronize()
    poll(device_index, deferred=False)
