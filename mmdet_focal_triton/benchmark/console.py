"""What a benchmark shows on the terminal: a progress bar while it runs, one summary table at
the end, and no warning spam from the pinned stack.

`quiet_warnings` ignores the pinned stack's known warnings (matched precisely, by category and
message or module) and records the others instead of printing them between progress updates;
`report_warnings` lists those once each at the end; `quiet_logs` keeps mmengine's INFO messages
off the terminal. ``verbose=True`` changes nothing: everything is printed as it comes.
"""
from __future__ import annotations

import contextlib
import warnings

#: (category, message regex matched at the start, module regex) of warnings known to be harmless
KNOWN_WARNINGS = [
    # mmcv / mmdet import: torch.jit.script used at import time; an mmcv re-export notice
    (DeprecationWarning, r'`torch\.jit\.(script|interface)` is deprecated', ''),
    (ImportWarning, r'``MultiScaleDeformableAttention`` has been moved', ''),
    (DeprecationWarning, '', r'(mmengine|mmcv|mmdet)(\.|$)'),
    # Python 3.12 compiling mmdet 3.3.0's sources (docstrings with invalid escape sequences)
    (SyntaxWarning, r'invalid escape sequence', ''),
    # mmengine 0.10.7's AMP wrapper uses the torch.cuda.amp spellings
    (FutureWarning, r'`torch\.cuda\.amp\.(GradScaler|autocast)\(args\.\.\.\)` is deprecated', ''),
    # inductor, compiling the python peer (TF32 is left off on purpose: fp32 means fp32)
    (UserWarning, r'TensorFloat32 tensor cores for float32 matrix multiplication', ''),
    # mmdet's point generator (RTMDet, VFNet) calls torch.meshgrid without `indexing`
    (UserWarning, r'torch\.meshgrid: in an upcoming release', ''),
    # the Triton interpreter (CPU runs) converts 1-element arrays with numpy's old spelling
    (DeprecationWarning, r'Conversion of an array with ndim > 0 to a scalar',
     r'triton\.runtime\.interpreter'),
]


@contextlib.contextmanager
def quiet_warnings(verbose: bool = False):
    """Context yielding the list of warnings recorded inside it (empty when verbose)."""
    if verbose:
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('default')
        for category, message, module in KNOWN_WARNINGS:
            warnings.filterwarnings('ignore', message=message, category=category, module=module)
        yield caught


@contextlib.contextmanager
def quiet_logs(verbose: bool = False):
    """mmengine's logger (per-parameter init_weights messages, ...) at WARNING inside the
    block, unless verbose."""
    if verbose:
        yield
        return
    import logging

    try:
        from mmengine.logging import MMLogger
    except ImportError:
        yield
        return
    logger = MMLogger.get_current_instance()
    old = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def report_warnings(caught, console) -> None:
    """Each recorded warning once (category, first line, where)."""
    seen = {}
    for w in caught:
        key = (w.category.__name__, str(w.message).splitlines()[0] if str(w.message) else '')
        seen.setdefault(key, f'{w.filename}:{w.lineno}')
    if seen:
        console.print(f'{len(seen)} warning(s) during the run (--verbose shows them as they come):',
                      markup=False, highlight=False)
        for (cat, msg), where in seen.items():
            console.print(f'  {cat}: {msg[:200]} ({where})', markup=False, highlight=False)


def make_console(file=None):
    """A rich Console; wide enough for the summary tables when the output is not a terminal."""
    from rich.console import Console

    c = Console(file=file)
    if not c.is_terminal:
        c = Console(file=file, width=240)
    return c


class RunProgress:
    """Progress of a run: a live rich bar (description, done / total, elapsed, ETA) on a
    terminal; elsewhere (a pipe, a CI or GPU-machine log) one short line per `note`.

    ``with RunProgress(console) as p: p.start(total); p.update(text); p.advance(); p.note(line)``
    """

    def __init__(self, console):
        from ..progress import progress_bar

        self.console = console
        self.live = console.is_terminal
        self._progress = progress_bar(console, transient=True, disable=not self.live)
        self._task = None
        self.total = self.done = 0

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc):
        self._progress.stop()

    def start(self, total: int, description: str = '') -> None:
        self.total, self.done = total, 0
        self._task = self._progress.add_task(description, total=total)

    def update(self, description: str) -> None:
        self._progress.update(self._task, description=description)

    def advance(self) -> None:
        self.done += 1
        self._progress.advance(self._task)

    def note(self, line: str) -> None:
        """A line for logs (not shown under a live bar)."""
        if not self.live:
            self.console.print(f'[{self.done}/{self.total}] {line}', markup=False,
                               highlight=False)
