"""The output log: what a sender sent on one channel, kept until the receiver no longer needs it (DESIGN.md §5.4).

A recovered receiver restarts from its latest complete checkpoint and needs every batch after the seqs
consumed in it (§7.3). Its senders keep those batches, as the encoded frames they sent, and resend
them with :meth:`OutputLog.frames_after`; when a checkpoint of the receiver completes, the seqs it
consumed are never needed again and :meth:`OutputLog.trim` drops them.

How long a frame stays depends on the receiver's checkpoint interval, not on the sender, so the log is
bounded in memory: past ``memory_limit_bytes`` the oldest frames (the next to be trimmed) spill to
append-only files in ``spill_dir``, down to 3/4 of the limit in one write, so a sender at the limit
pays one write every few batches rather than one per batch. A spill file is deleted as soon as every
frame in it is trimmed; a new file is started once the current one holds ``spill_file_bytes``, so
space comes back while the log keeps spilling. The index of spilled frames (one offset per frame, 8
bytes) stays in memory.

Spill files are not durable storage and are never fsynced: when the sender dies its output log dies
with it, and the recovered sender rebuilds it by replay (§7.4). A sender that dies leaves its files
behind (``outlog-*.spill``); whoever owns the data directory deletes them when the instance restarts.

>>> from engine.codec import Batch, encode_batch
>>> out = OutputLog("map/0->sum/1#0")
>>> for seq in (1, 2, 3):
...     out.append(seq, encode_batch(Batch(seq, [seq])))
>>> out.trim(1)  # the receiver's checkpoint that consumed seq 1 is complete
>>> [seq for seq, _frame in out.frames_after(1)]  # the receiver recovered holding seq 1
[2, 3]
>>> out.statistics()
OutputLogStatistics(batches=2, bytes_in_memory=32, bytes_spilled=0, max_bytes=48, trims=1)
"""

from __future__ import annotations

import array
import collections
import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from engine.codec import batch_seq
from engine.errors import ChannelClosed, ParameterError, ProtocolError, StateError

__all__ = ["OutputLog", "OutputLogStatistics", "SpillError"]

log = logging.getLogger(__name__)

_LOW_WATER = 0.75  # a spill brings memory down to this fraction of the limit
_MIN_FRAME = 14  # length prefix, kind, flags and seq of a BATCH frame


class SpillError(StateError):
    """The output log cannot write its spill file (full disk, unwritable data directory) or read it back."""


@dataclass(frozen=True, slots=True)
class OutputLogStatistics:
    """A snapshot of an :class:`OutputLog`.

    ``batches``: frames retained; ``bytes_in_memory`` and ``bytes_spilled``: their bytes in memory and
    in spill files (trimmed bytes still inside a spill file not counted); ``max_bytes``: the peak of
    their sum; ``trims``: :meth:`OutputLog.trim` calls that dropped or passed anything.
    """

    batches: int
    bytes_in_memory: int
    bytes_spilled: int
    max_bytes: int
    trims: int


class _SpillFile:
    """One append-only spill file: the frames of seqs ``first_seq ..``, back to back."""

    __slots__ = ("fd", "first_seq", "offsets", "path", "size")

    def __init__(self, path: str, fd: int, first_seq: int):
        self.path = path
        self.fd = fd
        self.first_seq = first_seq
        self.offsets = array.array("q")  # where each frame starts; it ends where the next starts
        self.size = 0

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.offsets) - 1

    def bytes_from(self, seq: int) -> int:
        """The bytes of the frames of ``seq`` and after in this file."""
        i = seq - self.first_seq
        return self.size if i <= 0 else (0 if i >= len(self.offsets) else self.size - self.offsets[i])

    def close(self) -> None:
        os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):  # the data directory was cleaned under us
            os.unlink(self.path)


class OutputLog:
    """The frames sent on one channel, by seq, until :meth:`trim` says the receiver is past them.

    Seqs are appended consecutively (the first append may start anywhere: a recovered sender rebuilds
    its log from the seqs of its checkpoint). With ``spill_dir=None`` the log never spills and memory
    is not bounded (a warning is logged once past the limit). Not thread-safe: one instance owns it.
    """

    def __init__(
        self,
        channel: str,
        *,
        memory_limit_bytes: int = 64 * 1024 * 1024,
        spill_dir: str | os.PathLike[str] | None = None,
        spill_file_bytes: int = 64 * 1024 * 1024,
    ):
        if memory_limit_bytes < 1 or spill_file_bytes < 1:
            raise ParameterError(
                f"output log of channel {channel}: memory_limit_bytes ({memory_limit_bytes}) and "
                f"spill_file_bytes ({spill_file_bytes}) must be positive"
            )
        self.channel = channel
        self._limit = memory_limit_bytes
        self._spill_dir = None if spill_dir is None else os.fspath(spill_dir)
        self._file_bytes = spill_file_bytes
        self._mem: list[bytes] = []  # frames of seqs _mem_first.., from index _head on
        self._head = 0
        self._mem_first = 1
        self._mem_bytes = 0
        self._files: collections.deque[_SpillFile] = collections.deque()
        self._spilled_bytes = 0  # live bytes (seq > _trimmed) in spill files
        self._first: int | None = None  # the first seq ever appended
        self._last: int | None = None
        self._trimmed = 0  # every seq <= _trimmed is gone for good
        self._trims = 0
        self._max_bytes = 0
        self._warned = False
        self._closed = False

    # -- the log -----------------------------------------------------------------------------------

    def append(self, seq: int, frame: bytes) -> None:
        """Keep ``frame``, the encoded ``BATCH`` frame of ``seq``, which must follow :attr:`last_seq`.

        A seq at or below the trim point (a replaying sender regenerating what the receiver's complete
        checkpoint already consumed) is counted but not kept. The log is unchanged if this raises.

        Raises:
            ProtocolError: ``seq`` does not follow the last one, or ``frame`` is not the frame of ``seq``.
            SpillError: the frames that had to spill could not be written.
            ChannelClosed: the log was closed.
        """
        if self._closed:
            raise ChannelClosed(
                f"output log of channel {self.channel} is closed; append after close is a bug"
            )
        last = self._last
        if last is None:
            if seq < 1:
                raise ProtocolError(f"output log of channel {self.channel}: seqs start at 1, got {seq}")
        elif seq != last + 1:
            raise ProtocolError(
                f"output log of channel {self.channel}: appended seq {seq} after seq {last}; seqs must grow "
                "by exactly 1 (a batch was skipped or logged twice)"
            )
        if len(frame) < _MIN_FRAME or batch_seq(memoryview(frame)[5:]) != seq:
            found = batch_seq(memoryview(frame)[5:]) if len(frame) >= _MIN_FRAME else None
            raise ProtocolError(
                f"output log of channel {self.channel}: the frame appended as seq {seq} is not a BATCH frame "
                f"of that seq ({len(frame)} bytes, seq {found}); append the frame encode_batch() produced"
            )
        if seq <= self._trimmed:
            self._first = seq if self._first is None else self._first
            self._last = seq
            return
        if self._mem_first + len(self._mem) - self._head != seq:  # memory empty: it starts here
            self._mem_first = seq
        self._mem.append(frame)
        self._mem_bytes += len(frame)
        if self._mem_bytes > self._limit:
            try:
                self._spill()
            except BaseException:
                self._mem.pop()
                self._mem_bytes -= len(frame)
                raise
        if self._first is None:
            self._first = seq
        self._last = seq
        self._max_bytes = max(self._max_bytes, self._mem_bytes + self._spilled_bytes)

    def trim(self, upto_seq: int) -> None:
        """Drop every frame with seq ``<= upto_seq``: a complete checkpoint of the receiver consumed them.

        Idempotent, and ``upto_seq`` may pass :attr:`last_seq` (frames up to it are then not kept when
        appended). Spill files whose frames are all trimmed are deleted.
        """
        if upto_seq <= self._trimmed:
            return
        self._trimmed = upto_seq
        self._trims += 1
        files = self._files
        while files and files[0].last_seq <= upto_seq:
            files.popleft().close()
        # at most a few files: recounting is simpler than tracking what earlier trims left in the head one
        self._spilled_bytes = sum(f.bytes_from(upto_seq + 1) for f in files)
        drop = min(max(0, upto_seq - self._mem_first + 1), len(self._mem) - self._head)
        if drop:
            end = self._head + drop
            self._mem_bytes -= sum(map(len, self._mem[self._head : end]))
            del self._mem[:end]  # one memmove per trim (per receiver checkpoint): no need to be lazy
            self._head = 0
            self._mem_first += drop

    def frames_after(self, seq: int) -> Iterator[tuple[int, bytes]]:
        """Every frame with a seq above ``seq`` and at most :attr:`last_seq` (now), in order, for a resend.

        Spilled frames are read back from disk one at a time as the iterator advances; frames appended
        meanwhile are not included (their sender delivers them), frames trimmed meanwhile are skipped
        (the receiver's complete checkpoint covers them).

        Raises:
            ProtocolError: (immediately) frames after ``seq`` were trimmed or never kept here: a receiver
                asking for them holds less than its latest complete checkpoint, a protocol violation.
            SpillError: (while iterating) a spill file cannot be read.
        """
        if self._closed:
            raise ChannelClosed(
                f"output log of channel {self.channel} is closed; resending after close is a bug"
            )
        if self._last is None or seq >= self._last:
            return iter(())
        assert self._first is not None
        floor = max(self._trimmed, self._first - 1)
        if seq < floor:
            why = (
                f"frames up to seq {self._trimmed} were trimmed once the receiver's checkpoint consuming "
                "them completed"
                if self._trimmed >= self._first - 1
                else f"this log starts at seq {self._first}"
            )
            raise ProtocolError(
                f"output log of channel {self.channel}: cannot resend the frames after seq {seq}: {why}; the "
                f"receiver must restart from a checkpoint that consumed seq {floor} or later"
            )
        return self._frames(seq + 1, self._last)

    @property
    def first_seq(self) -> int | None:
        """The seq of the oldest frame kept, or ``None`` when the log holds none."""
        if self._last is None or self._last <= self._trimmed:
            return None
        assert self._first is not None
        return max(self._first, self._trimmed + 1)

    @property
    def last_seq(self) -> int | None:
        """The last seq appended (kept or not), or ``None`` before the first append."""
        return self._last

    def __len__(self) -> int:
        first, last = self.first_seq, self._last
        return 0 if first is None or last is None else last - first + 1

    def statistics(self) -> OutputLogStatistics:
        return OutputLogStatistics(
            len(self), self._mem_bytes, self._spilled_bytes, self._max_bytes, self._trims
        )

    def close(self) -> None:
        """Drop every frame and delete the spill files. Idempotent."""
        self._closed = True
        while self._files:
            self._files.popleft().close()
        self._mem, self._head, self._mem_bytes, self._spilled_bytes = [], 0, 0, 0

    def __enter__(self) -> OutputLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------

    def _frames(self, seq: int, end: int) -> Iterator[tuple[int, bytes]]:
        while seq <= end:
            if seq <= self._trimmed:
                seq = self._trimmed + 1
                continue
            if self._closed:
                return
            if seq >= self._mem_first:
                yield seq, self._mem[self._head + seq - self._mem_first]
            else:
                yield seq, self._read(seq)
            seq += 1

    def _read(self, seq: int) -> bytes:
        spill = next(f for f in self._files if f.first_seq <= seq <= f.last_seq)
        i = seq - spill.first_seq
        start = spill.offsets[i]
        end = spill.offsets[i + 1] if i + 1 < len(spill.offsets) else spill.size
        try:
            data = os.pread(spill.fd, end - start, start)
        except OSError as exc:
            raise SpillError(
                f"output log of channel {self.channel}: cannot read seq {seq} back from {spill.path}: "
                f"{exc.strerror or exc}; was the data directory deleted or its disk unmounted?"
            ) from exc
        if len(data) != end - start:
            raise SpillError(
                f"output log of channel {self.channel}: spill file {spill.path} is truncated ({len(data)} of "
                f"{end - start} bytes of seq {seq}); something else wrote to the data directory"
            )
        return data

    def _spill(self) -> None:
        """Move the oldest frames in memory to disk, down to the low-water mark, in one write."""
        if self._spill_dir is None:
            if not self._warned:
                self._warned = True
                log.warning(
                    "output log of channel %s holds %d bytes, over its %d-byte memory limit, and has no "
                    "spill directory: memory grows until the receiver's checkpoints complete",
                    self.channel,
                    self._mem_bytes,
                    self._limit,
                )
            return
        target = int(self._limit * _LOW_WATER)
        mem, chunk_end, remaining = self._mem, self._head, self._mem_bytes
        while chunk_end < len(mem) and remaining > target:
            remaining -= len(mem[chunk_end])
            chunk_end += 1
        chunk = mem[self._head : chunk_end]
        spill = self._files[-1] if self._files else None
        fresh = spill is None or spill.size >= self._file_bytes
        if fresh:
            spill = self._open_file(self._mem_first)
        assert spill is not None
        data = b"".join(chunk)
        try:
            view, offset = memoryview(data), spill.size
            while view:
                written = os.pwrite(spill.fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            if fresh:
                spill.close()
            raise SpillError(
                f"output log of channel {self.channel}: cannot spill {len(data)} bytes to {spill.path}: "
                f"{exc.strerror or exc}; free disk space there, or raise the output log memory limit, or "
                "point --data-dir at a larger disk"
            ) from exc
        if fresh:
            self._files.append(spill)
        position = spill.size
        for frame in chunk:
            spill.offsets.append(position)
            position += len(frame)
        spill.size = position
        self._spilled_bytes += len(data)
        self._mem_bytes = remaining
        for i in range(self._head, chunk_end):
            mem[i] = b""
        self._mem_first += chunk_end - self._head
        self._head = chunk_end
        self._compact()

    def _open_file(self, first_seq: int) -> _SpillFile:
        assert self._spill_dir is not None
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.channel)[:80]
        try:
            os.makedirs(self._spill_dir, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix=f"outlog-{name}-", suffix=".spill", dir=self._spill_dir)
        except OSError as exc:
            raise SpillError(
                f"output log of channel {self.channel}: cannot create a spill file in {self._spill_dir}: "
                f"{exc.strerror or exc}; make the directory writable or free disk space there, or raise the "
                "output log memory limit, or point --data-dir elsewhere"
            ) from exc
        return _SpillFile(path, fd, first_seq)

    def _compact(self) -> None:
        # dropping the dead head of the list costs a copy of the live part: do it when it halves the list
        if self._head > 64 and self._head * 2 >= len(self._mem):
            del self._mem[: self._head]
            self._head = 0
