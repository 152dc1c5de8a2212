"""Base classes for sources and sinks: how the outside world enters and leaves a job.

A connector object (a :class:`Source` or a :class:`Sink`) is a *description* built by the job code. The
job file is executed in every process that hosts an instance, so the object is rebuilt there rather than
shipped; it must therefore be cheap to construct and must not open anything in ``__init__``. Each
instance of the step calls :meth:`Source.open` / :meth:`Sink.open` with its index and the step's
parallelism and gets its own reader or writer.

Determinism contract (DESIGN.md §3, §4 ``SOURCE``): a :class:`SourceReader` positioned with
:meth:`SourceReader.seek` at an offset it returned from :meth:`SourceReader.offset` must return the
same records again. How many records one :meth:`SourceReader.read` returns may depend on time (a rate
limit, data not yet arrived): the engine records the offsets around every batch it cuts, so a replay
re-reads the identical batch with :meth:`SourceReader.read_exact`.

Writing a custom source::

    class Countdown(Source):
        def __init__(self, n: int):
            self.n = n

        def open(self, index: int, parallelism: int) -> SourceReader:
            return CountdownReader(self.n, index, parallelism)

    class CountdownReader(SourceReader):
        def __init__(self, n, index, parallelism):
            self.values = list(range(n))[index::parallelism]
            self.pos = 0

        async def read(self, max_records):
            if self.pos >= len(self.values):
                return None                      # end of stream
            out = self.values[self.pos:self.pos + max_records]
            self.pos += len(out)
            return out

        def offset(self):
            return self.pos

        def seek(self, offset):
            self.pos = offset
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

__all__ = ["Sink", "SinkWriter", "Source", "SourceReader"]


class SourceReader(abc.ABC):
    """Reads one instance's share of a source. Owned by one instance; never shared across tasks."""

    @abc.abstractmethod
    async def read(self, max_records: int) -> Sequence[Any] | None:
        """Return the next at most ``max_records`` records, or ``None`` at the end of the stream.

        May wait (a rate limit, an unbounded source with no data yet); may return an empty list when
        nothing is available now but the stream goes on. Never raises for end of stream.
        """

    @abc.abstractmethod
    def offset(self) -> Any:
        """The position right after the last record returned: a msgpack-encodable value."""

    @abc.abstractmethod
    def seek(self, offset: Any) -> None:
        """Continue reading from ``offset``, a value returned by :meth:`offset` of an equal reader."""

    async def read_exact(self, count: int) -> Sequence[Any]:
        """Return exactly ``count`` records from the current offset (used to replay a logged batch).

        The default loops over :meth:`read`; readers whose :meth:`read` waits on time (rate limits)
        override it to return the records without waiting.
        """
        out: list[Any] = []
        while len(out) < count:
            chunk = await self.read(count - len(out))
            if chunk is None:
                raise EOFError(
                    f"{type(self).__name__}: stream ended after {len(out)} of {count} records to replay"
                )
            out.extend(chunk)
        return out

    def ingest_ns(self) -> int | None:
        """When the records the last :meth:`read` or :meth:`read_exact` returned entered the system.

        In ``time.time_ns()`` nanoseconds: the time the newest of them was appended to the log this
        reader consumes (a broker's append time, a generator's schedule), which is earlier than the
        read when the job is behind. The engine stamps the batch with it, so the latency it reports
        includes the time records waited to be read. ``None`` (the default): the time of the read.
        """
        return None

    def progress(self) -> tuple[int, int] | None:
        """``(done, total)`` in any unit for a progress bar, or ``None`` when unknown (unbounded)."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most readers hold nothing
        """Release what the reader holds (files, sockets)."""


class Source(abc.ABC):
    """Describes an external input; :meth:`open` gives each instance its reader."""

    #: A bounded source ends (its readers return ``None``); the job finishes when all of them have.
    bounded: bool = True

    @abc.abstractmethod
    def open(self, index: int, parallelism: int) -> SourceReader:
        """Open the reader of instance ``index`` of ``parallelism``."""


class SinkWriter(abc.ABC):
    """Writes one instance's share of a sink's output."""

    @abc.abstractmethod
    def write_batch(self, records: Sequence[Any]) -> None:
        """Write records, in order. Called once per batch, never concurrently."""

    def prepare(self, records: Sequence[Any]) -> Any:
        """Encode a batch that must wait before it is written; :meth:`write_prepared` writes it later.

        Under the lineage stash a sink holds each batch until its causal past is committed (the
        output-commit rule, DESIGN.md §5.5): tens of milliseconds, tens of batches at full speed.
        Held as decoded records, that is tens of thousands of live Python objects, which the garbage
        collector traverses again and again and which go cold in the cache before they are written.
        A writer that encodes its records anyway (JSON lines, a wire format) does it here, while
        the batch is fresh, and the gate holds one ``bytes`` object instead. The result must be a
        pure function of ``records`` and msgpack-able: held batches are saved in checkpoints and
        written after a restore. The default holds the records themselves. Errors an encoding
        raises are raised here, before anything of the batch is written.
        """
        return records

    def write_prepared(self, prepared: Any) -> None:
        """Write a batch :meth:`prepare` encoded, exactly as :meth:`write_batch` would write its records."""
        self.write_batch(prepared)

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make what was written so far durable/visible (called at end of stream and before close)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the writer holds. Called once, after the last :meth:`flush`."""

    def snapshot(self) -> Any:
        """A msgpack-able position for a checkpoint: how much this writer has written so far.

        A writer that supports exactly-once output under failures returns what :meth:`restore`
        needs; the default ``None`` means the writer cannot resume (it will write replayed records
        again).
        """
        return None

    def restore(self, state: Any) -> None:  # noqa: B027 - optional hook
        """Resume a restarted instance's output from a :meth:`snapshot` of a checkpoint.

        The records the instance regenerates after the checkpoint are the same records, in the
        same order, as before the failure (DESIGN.md §3, §7); an exactly-once writer skips those it
        already wrote and continues after them (DESIGN.md §7.6).
        """


class Sink(abc.ABC):
    """Describes an external output; :meth:`open` gives each instance its writer."""

    @abc.abstractmethod
    def open(self, index: int, parallelism: int) -> SinkWriter:
        """Open the writer of instance ``index`` of ``parallelism``."""
