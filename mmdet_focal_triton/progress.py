"""The progress bar of the package's tools (parity runs, benchmarks): rich's, with one set of
columns: description, bar, n / total, [extra text], elapsed, ETA."""


def progress_bar(console, text_field: bool = False, **kw):
    """A `rich.progress.Progress` on `console`; `text_field`: a column showing each task's
    `text` field after the count; `kw` go to Progress (transient, disable, redirects...)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    extra = (TextColumn('{task.fields[text]}'),) if text_field else ()
    return Progress(TextColumn('{task.description}'), BarColumn(bar_width=30),
                    MofNCompleteColumn(), *extra, TimeElapsedColumn(), TextColumn('ETA'),
                    TimeRemainingColumn(), console=console, **kw)
