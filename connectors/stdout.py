"""Records printed to standard output: the sink of demos and quick experiments."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from engine.connector import Sink, SinkWriter

__all__ = ["StdoutSink"]


class StdoutSink(Sink):
    """Prints each record as ``print(record)`` would: ``str(record)`` and a newline.

    A batch goes out in one ``sys.stdout.write`` call, so the lines of one batch are never interleaved
    with output from other tasks of the same process. ``sys.stdout`` is looked up at every write, so
    redirections (``contextlib.redirect_stdout``, pytest's ``capsys``) take effect. In multi-process
    runs each instance prints to the standard output of the worker process that hosts it.

    >>> writer = StdoutSink().open(index=0, parallelism=1)
    >>> writer.write_batch(["hello", ("word", 2), 3.5])
    hello
    ('word', 2)
    3.5
    """

    def open(self, index: int, parallelism: int) -> SinkWriter:
        """Return a writer; every instance shares the process's standard output."""
        return _StdoutWriter()


class _StdoutWriter(SinkWriter):
    def write_batch(self, records: Sequence[Any]) -> None:
        if records:
            sys.stdout.write("\n".join(map(str, records)) + "\n")

    def flush(self) -> None:
        sys.stdout.flush()
