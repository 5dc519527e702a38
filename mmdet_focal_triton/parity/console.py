"""What a parity run shows on the terminal, and where everything else goes.

``RunConsole`` is a context manager. Quiet (the default): everything the libraries print while it
is open — mmengine's environment block and config dumps, its logger, pycocotools' messages,
warnings, C-level output of torch / triton — goes to a log file in the work dir instead of the
terminal (Python's ``sys.stdout`` / ``sys.stderr`` and, where they are real files, file
descriptors 1 and 2 are redirected); the terminal shows only the run's own messages, one rich
progress bar per training and per evaluation, and the final table. ``verbose=True`` redirects
nothing: everything is printed as it comes, and the run's messages are also written to the log.

On a terminal the bars update in place; in a pipe or a CI log rich prints each bar once, when it
is finished.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from pathlib import Path


class _LogStream(io.TextIOBase):
    """The log file as a text stream. Once closed, writes go to whatever ``sys.stdout`` is then:
    loggers created inside the context (mmengine keeps them) keep a reference to it."""

    def __init__(self, path: Path):
        self._f = open(path, 'a', buffering=1, encoding='utf-8', errors='replace')

    def write(self, s: str) -> int:
        if self._f is not None:
            return self._f.write(s)
        if sys.stdout is not self:
            return sys.stdout.write(s)
        return len(s)

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def fileno(self) -> int:
        if self._f is None:
            raise io.UnsupportedOperation('closed')
        return self._f.fileno()

    def isatty(self) -> bool:
        return False

    def close_file(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _real_fd(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


class RunConsole:
    """The terminal side of a run (see the module docstring).

    Args:
        log_path: the full log (created or appended to).
        verbose: redirect nothing.
        prefix: printed before each message.
    """

    def __init__(self, log_path: str | os.PathLike, verbose: bool = False,
                 prefix: str = '[parity]') -> None:
        self.log_path = Path(log_path)
        self.verbose = verbose
        self.prefix = prefix
        self.console = None
        self._log = None
        self._saved_fds = {}
        self._saved_streams = None
        self._term = None

    # -- context -----------------------------------------------------------------------------
    def __enter__(self) -> RunConsole:
        from rich.console import Console

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = _LogStream(self.log_path)
        if self.verbose:
            self.console = Console(file=sys.stdout, soft_wrap=True)
            return self
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        term = sys.stdout
        if _real_fd(sys.stdout, 1) and _real_fd(sys.stderr, 2):
            # the terminal keeps a descriptor of its own; 1 and 2 then point at the log
            self._term = os.fdopen(os.dup(1), 'w', buffering=1, encoding='utf-8',
                                   errors='replace')
            term = self._term
            for fd in (1, 2):
                self._saved_fds[fd] = os.dup(fd)
                os.dup2(self._log.fileno(), fd)
        # a pipe or a CI log: lines of up to 120 characters rather than rich's default 80
        self.console = Console(file=term, soft_wrap=True,
                               width=None if term.isatty() else 120)
        self._saved_streams = (sys.stdout, sys.stderr)
        sys.stdout = sys.stderr = self._log
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def close(self) -> None:
        if self._saved_streams is not None:
            sys.stdout, sys.stderr = self._saved_streams
            self._saved_streams = None
        if self._log is not None:
            self._log.flush()
        for fd, saved in self._saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._saved_fds = {}
        if self._term is not None:
            self._term.flush()
            self._term.close()
            self._term = None
        if self._log is not None:
            self._log.close_file()

    # -- output ------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        """A message for the user (terminal) and the log."""
        self.file_log(msg)
        self.console.print(f'{self.prefix} {msg}' if self.prefix else msg, markup=False,
                           highlight=False)

    def file_log(self, msg: str) -> None:
        """A message for the log only."""
        if self._log is not None:
            stamp = time.strftime('%H:%M:%S')
            self._log.write(f'{stamp} {self.prefix} {msg}\n')
            self._log.flush()

    def print(self, renderable) -> None:
        """A rich renderable (a table) on the terminal; its text also goes to the log."""
        from rich.console import Console

        self.console.print(renderable)
        if self._log is not None and not self.verbose:
            buf = io.StringIO()
            Console(file=buf, width=120, color_system=None).print(renderable)
            self._log.write(buf.getvalue())

    def progress(self, description: str, total: int, fields: str = '') -> Bar:
        """A progress bar (iteration / total, elapsed, ETA, and a text field): ``Bar.update``."""
        return Bar(self, description, total, fields)


class Bar:
    """One rich progress bar: started on creation, ``update(n, text)``, ``close()``."""

    def __init__(self, console: RunConsole, description: str, total: int, text: str = ''):
        self._console = console
        self._progress = None
        self._task = None
        self.description = description
        if console.verbose:
            return
        from ..progress import progress_bar

        self._progress = progress_bar(console.console, text_field=True, redirect_stdout=False,
                                      redirect_stderr=False, transient=False)
        self._task = self._progress.add_task(description, total=total, text=text)
        self._progress.start()

    def update(self, completed: int | None = None, text: str | None = None) -> None:
        if self._progress is None:
            return
        kw = {} if text is None else {'text': text}
        if completed is None:
            self._progress.update(self._task, advance=1, **kw)
        else:
            self._progress.update(self._task, completed=completed, **kw)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
