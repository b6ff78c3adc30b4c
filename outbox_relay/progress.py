"""Progress bars for commands a person waits on (sync, import-json, replay, the backfills).

A bar with rate and ETA on a terminal; nothing at all when stderr is a pipe or a file, so scripts
and logs stay clean. Library code never draws: it takes an optional `progress` object and calls
`advance()`; the CLI decides whether that object draws (rich) or does nothing (`NoProgress`).
"""

import sys


class NoProgress:
    """The do-nothing progress: what library functions get when nobody is watching."""

    def task(self, label, total=None):
        return self

    def advance(self, n=1):
        pass

    def update(self, total=None, label=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


NO_PROGRESS = NoProgress()


class _Task:
    def __init__(self, progress, task_id):
        self._progress = progress
        self._id = task_id

    def task(self, label, total=None):
        return self._progress.task(label, total)

    def advance(self, n=1):
        self._progress.advance(self._id, n)

    def update(self, total=None, label=None):
        fields = {"total": total} if total is not None else {}
        if label is not None:
            fields["description"] = label
        self._progress.update(self._id, **fields)


class BarProgress:
    """rich's Progress on stderr: one line per task (label, bar, count, rate, ETA)."""

    def __init__(self, stream):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        class _Rate(TransferSpeedColumn):
            # rich's speed column speaks bytes; ours counts messages.
            def render(self, task):
                speed = task.finished_speed or task.speed
                return TextColumn("").render(task) if speed is None else f"{speed:,.0f}/s"

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            _Rate(), TimeRemainingColumn(), console=Console(file=stream), transient=False)

    def task(self, label, total=None):
        return _Task(self, self._progress.add_task(label, total=total))

    def advance(self, task_id, n=1):
        self._progress.advance(task_id, n)

    def update(self, task_id, **fields):
        self._progress.update(task_id, **fields)

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc):
        self._progress.stop()
        return False


def progress_for(stream=None):
    """A drawing progress on a terminal, `NoProgress()` otherwise. Use as a context manager."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return NoProgress()
    return BarProgress(stream)
