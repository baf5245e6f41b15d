"""What the command line prints besides results: the transcript and a progress bar."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from smtpsubmit.result import Progress

__all__ = ["ProgressBar", "TranscriptRecorder", "print_transcript_to"]

TRANSCRIPT_LOGGER = "smtpsubmit.transcript"
LARGE_MESSAGE = 1024 * 1024  # a progress bar above this size, when stderr is a terminal


class TranscriptRecorder(logging.Handler):
    """Collects the library's (already masked) transcript lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _attached(handler: logging.Handler) -> Iterator[None]:
    logger = logging.getLogger(TRANSCRIPT_LOGGER)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


@contextlib.contextmanager
def print_transcript_to(stream: TextIO | None) -> Iterator[None]:
    """While active, each transcript line goes to ``stream`` (None: nothing happens)."""
    if stream is None:
        yield
        return
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(message)s"))
    with _attached(handler):
        yield


@contextlib.contextmanager
def recording() -> Iterator[TranscriptRecorder]:
    recorder = TranscriptRecorder()
    with _attached(recorder):
        yield recorder


class ProgressBar:
    """The ``progress=`` callback: a rich bar on stderr for messages over 1 MB.

    Does nothing when stderr is not a terminal or rich is not installed.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, progress: Progress) -> None:
        if not self.enabled or progress.bytes_total < LARGE_MESSAGE:
            return
        if self._bar is None:
            try:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    TransferSpeedColumn,
                )
                from rich.progress import (
                    Progress as RichProgress,
                )
            except ImportError:
                self.enabled = False
                return
            self._bar = RichProgress(
                "sending",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("data", total=progress.bytes_total)
        self._bar.update(self._task, completed=progress.bytes_sent, total=progress.bytes_total)
        if progress.stage == "done":
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
