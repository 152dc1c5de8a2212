"""The global control store: durable determinants, checkpoint records and job metadata (DESIGN.md §2, §5.3, §6).

The GCS lives inside the coordinator, its only client (workers reach it through coordinator messages),
and runs on the coordinator's event loop, so its in-memory index needs no locks. This module holds the
semantics (index, group commit, key layout, errors); the storage backends live in
:mod:`engine.gcs_backends`: :class:`~engine.gcs_backends.RocksGCS` (embedded RocksDB, the default) and
:class:`~engine.gcs_backends.MemoryGCS` (tests).

Causal-log segments
-------------------
An instance flushes its determinants as **segments**: ``count`` opaque encoded determinants for the
positions ``[start, start + count)``. Each segment is stored whole under its span and never rewritten.
The **committed** position of an instance is the end of the contiguous run of stored segments from the
start of its log: every position below it is durable. Segments may arrive out of order (several
flushes in flight), twice (a retry), or with other boundaries than an earlier copy (a recovered
instance re-flushing the tail it rebuilt from stashes, §7.2). The rules:

* a segment with ``start <= committed < end`` extends the run to ``end``, and every stored segment the
  longer run now touches joins it too;
* a segment with ``start > committed`` is stored and waits (pending) until the run reaches it;
* a segment entirely below ``committed`` is acknowledged without being written;
* a segment with the exact span of a stored one must carry the same bytes (a retry), else
  :class:`LogConflictError`: a position holds one determinant, so different bytes mean two live
  incarnations of an instance or a non-deterministic encoding. Overlaps with other spans cannot be
  compared: ``entries`` must be a deterministic encoding of the determinants of their span.

Pending segments of a dead incarnation may hold decisions no survivor knows (when every holder of the
positions before them died too, the new incarnation decides those afresh, §7): the coordinator calls
:meth:`GCS.discard_uncommitted` when it restarts an instance, and drops messages of dead incarnations.
:meth:`GCS.read_log` returns committed segments in order; as spans may overlap, a segment may begin
before the end of the previous one: the reader skips the positions it already has.

Group commit and acknowledgment
-------------------------------
Every write (append, checkpoint, prune, metadata...) is queued; one writer task takes everything that
queued up while the previous write was in progress and writes it as **one** atomic batch (one RocksDB
``WriteBatch``, one WAL record). No timer waits for a group to fill: at low load a write goes out at
once, at high load groups grow by themselves. A write is **acknowledged** ``delay_ms`` after its group
is stored; the delay (the benchmarks' ``--gcs-delay-ms``) models a remote store. Acks are pipelined:
the writer goes on with the next group during the delay, so N concurrent writers each wait about
``delay_ms``, not ``N * delay_ms``. :meth:`GCS.committed` only moves at the acknowledgment, so the
commit positions published to stashes (§5.3) bear the whole storage latency. A read may see a write
before its acknowledgment, never the reverse. :meth:`GCS.append_logs` queues many segments as one
request (the coordinator's batch of ``log`` messages): one apply, one place in a group, one
acknowledgment, with a result (or an error) per segment.

Key layout (raw bytes; job ids and step names cannot contain ``/``)::

    log/<job>/<instance>/<start:020d>-<end:020d>   the determinants of positions [start, end)
    base/<job>/<instance>                          ascii position: the log below it was pruned
    chk/<job>/<instance>/<id:020d>                 a checkpoint record
    done/<job>/<instance>                          ascii id of the latest complete checkpoint
    meta/<job>/<key>                               job metadata

Opening a store rebuilds the index (spans, commit positions, checkpoint ids) from the keys alone,
without reading determinants: the coordinator restarts from the GCS on disk (§7).

Errors: :class:`GCSError` for refused requests (the message says how to fix the call) and storage
failures. After a failed write the index is ahead of storage, so the store refuses every later request:
reopening it rebuilds the index from what is on disk.
"""

from __future__ import annotations

import abc
import asyncio
import bisect
import collections
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from engine.errors import StashflowError
from engine.gcs_index import MAX_POSITION, InstanceIndex

__all__ = ["GCS", "GCSError", "LogConflictError"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Kinds of the storage operations a backend's ``_write`` applies, in order, as one atomic batch.
OP_PUT, OP_DELETE, OP_DELETE_RANGE = 0, 1, 2
#: ``(kind, key, value)``; for ``OP_DELETE_RANGE``: ``(kind, first key, first key past the range)``.
Op = tuple[int, bytes, bytes]

_JOB = re.compile(r"[A-Za-z0-9_.-]+")
_INSTANCE = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")


class GCSError(StashflowError):
    """The GCS refused a request, is closed, or its storage failed."""


class LogConflictError(GCSError):
    """A causal-log segment was stored again with the same span but different bytes."""


def _log_key(job: str, instance: str, start: int, end: int) -> bytes:
    return f"log/{job}/{instance}/{start:020d}-{end:020d}".encode()


def _chk_key(job: str, instance: str, checkpoint_id: int) -> bytes:
    return f"chk/{job}/{instance}/{checkpoint_id:020d}".encode()


def _who(job: str, instance: str) -> str:
    return f"instance {instance} of job {job}"


@dataclass(eq=False, slots=True)
class _Request:
    # runs in the writer task, in queue order: validates, adds ops to the group, updates the index,
    # and returns the function that makes the result once the group is acknowledged
    apply: Callable[[_Group], Awaitable[Callable[[], Any]]]
    future: asyncio.Future[Any]
    finish: Callable[[], Any] | None = None


@dataclass(eq=False, slots=True)
class _Group:
    ops: list[Op] = field(default_factory=list)
    log_puts: dict[bytes, bytes] = field(default_factory=dict)  # for conflict checks within the group
    touched: dict[InstanceIndex, int] = field(default_factory=dict)  # reach of each log after the group
    requests: list[_Request] = field(default_factory=list)

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append((OP_PUT, key, value))


def _nothing() -> None:
    """The result of the writes that return nothing."""


class GCS(abc.ABC):
    """The global control store: the API the coordinator uses, over storage primitives.

    Backends (:mod:`engine.gcs_backends`) implement :meth:`_write` (apply a list of :data:`Op`
    atomically), :meth:`_get` and :meth:`_close`, and call :meth:`_restore` with the stored keys when
    they open; the index and group
    commit live here, so every backend has the same semantics. Use a store from one event loop. Every
    method raises :class:`GCSError` once the store is closed or broken, besides the errors it lists.
    """

    def __init__(self, *, where: str, delay_ms: float = 0.0, max_group: int = 1024):
        if delay_ms < 0 or max_group < 1:
            raise GCSError(f"{where}: need delay_ms >= 0 and max_group >= 1, got {delay_ms!r}, {max_group!r}")
        self._where = where
        self._delay = delay_ms / 1000.0
        self._max_group = max_group
        self._logs: dict[str, dict[str, InstanceIndex]] = {}
        self._jobs: set[str] = set()
        self._names: set[tuple[str, str]] = set()  # (job, instance) pairs already validated
        self._queue: collections.deque[_Request] = collections.deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._unacked = 0
        self._idle: asyncio.Future[None] | None = None
        self._closing = self._closed = False
        self._broken: str | None = None

    # -- causal logs -------------------------------------------------------------------------------

    async def append_log(self, job: str, instance: str, start: int, entries: bytes, count: int) -> int:
        """Store the ``count`` determinants ``entries`` of positions ``[start, start + count)``.

        Returns the instance's committed position once the segment is stored and acknowledged; the
        module docstring says how out-of-order and overlapping segments commit.

        Raises:
            LogConflictError: a segment with this exact span is stored with different bytes.
            GCSError: a bad span.
        """
        segment = self._log_segment(job, instance, start, entries, count)

        async def apply(group: _Group) -> Callable[[], int]:
            state = await self._add_segment(group, job, *segment)
            return lambda: state.committed

        result: int = await self._submit(apply)
        return result

    def append_logs(
        self, job: str, segments: Sequence[tuple[str, int, bytes, int]]
    ) -> asyncio.Future[list[int | Exception]]:
        """Store many segments ``(instance, start, entries, count)`` of ``job`` as one request.

        The same as :meth:`append_log` for each segment, in order, but queued at once and applied in
        one go, so that they are written in one group and acknowledged together (the coordinator
        stores every ``log`` message that arrived in one turn of its event loop with one call,
        DESIGN.md §5.3). A refused segment fails alone and the others are stored: the result has one
        item per segment, in order, either the committed position of its instance once the group is
        acknowledged (segments of one instance all report the same one), or the exception
        :meth:`append_log` would have raised for it (:class:`LogConflictError`; :class:`GCSError`
        for a bad span or name).

        The request is queued before this returns: await the future it returns for the results, or
        add a callback to it (a caller need not wait for one call's acknowledgment to queue the next).

        Raises:
            GCSError: the store is closed or broken (now, or from the future if it breaks before the
                acknowledgment); then nothing of the call was stored.
        """
        self._check_usable()
        checked: list[tuple[str, int, int, bytes] | Exception] = []
        for instance, start, entries, count in segments:
            try:
                checked.append(self._log_segment(job, instance, start, entries, count))
            except Exception as exc:  # the segment fails alone, before anything is queued
                checked.append(exc)
        if all(isinstance(item, Exception) for item in checked):
            done: asyncio.Future[list[int | Exception]] = asyncio.get_running_loop().create_future()
            done.set_result([item for item in checked if isinstance(item, Exception)])
            return done

        async def apply(group: _Group) -> Callable[[], list[int | Exception]]:
            added: list[InstanceIndex | Exception] = []
            for item in checked:
                if isinstance(item, Exception):
                    added.append(item)
                    continue
                try:
                    added.append(await self._add_segment(group, job, *item))
                except Exception as exc:  # refused before it touched the index or the group
                    added.append(exc)
            return lambda: [x if isinstance(x, Exception) else x.committed for x in added]

        return self._enqueue(apply)

    async def read_log(self, job: str, instance: str, start: int) -> list[tuple[int, bytes, int]]:
        """The committed segments ``(start, entries, count)`` covering positions ``>= start``, in order.

        A segment may begin before ``start`` or before the end of the previous one: skip the positions
        already read. Empty when ``start >= committed``.

        Raises:
            GCSError: ``start`` lies in the pruned part of the log.
        """
        self._check_usable()
        state = self._logs.get(job, {}).get(instance)
        if state is None:
            return []
        if start < state.base:
            raise GCSError(
                f"read_log for {_who(job, instance)} from position {start}: the log before position "
                f"{state.base} was pruned after a complete checkpoint; recover from the latest complete "
                "checkpoint instead"
            )
        chain = state.chain(start)
        if chain is None:
            raise GCSError(
                f"GCS index of {_who(job, instance)} has a hole below committed {state.committed}: a bug "
                "in engine.gcs; reopen the store to rebuild the index"
            )
        result: list[tuple[int, bytes, int]] = []
        for s, e in chain:
            data = await self._get(_log_key(job, instance, s, e))
            if data is None:
                raise GCSError(
                    f"log segment [{s}, {e}) of {_who(job, instance)} vanished while being read (pruned "
                    "meanwhile?); read again from the latest complete checkpoint"
                )
            result.append((s, data, e - s))
        return result

    def committed(self, job: str, instance: str) -> int:
        """The acknowledged committed position of ``instance`` (0 if it never flushed)."""
        state = self._logs.get(job, {}).get(instance)
        return 0 if state is None else state.committed

    def committed_all(self, job: str) -> dict[str, int]:
        """The committed position of every instance of ``job`` the store knows of."""
        return {name: state.committed for name, state in self._logs.get(job, {}).items()}

    async def prune_log(self, job: str, instance: str, before: int) -> None:
        """Drop the segments that end at or before ``before``, the position of a complete checkpoint.

        Raises:
            GCSError: ``before`` is past the committed position (a checkpoint is complete only once its
                causal past is committed).
        """
        self._check_name(job, instance)

        async def apply(group: _Group) -> Callable[[], None]:
            state = self._state(job, instance)
            if before > state.committed:
                raise GCSError(
                    f"prune_log for {_who(job, instance)} before position {before}: only {state.committed} "
                    "is committed; prune at the position of a complete checkpoint"
                )
            if before > state.base:
                for s, e in state.remove(lambda s, e: e <= before):
                    group.ops.append((OP_DELETE, _log_key(job, instance, s, e), b""))
                state.base = before
                group.put(f"base/{job}/{instance}".encode(), str(before).encode())
            return _nothing

        await self._submit(apply)

    async def discard_uncommitted(self, job: str, instance: str) -> int:
        """Drop the pending segments of ``instance`` (stored beyond its committed run); return committed.

        Call it when the instance restarts, before its new incarnation flushes: pending segments of a
        dead incarnation may hold decisions its successor takes differently (module docstring).
        """
        self._check_name(job, instance)

        async def apply(group: _Group) -> Callable[[], int]:
            state = self._state(job, instance)
            for s, e in state.remove(lambda s, e: s > state.reach):
                group.ops.append((OP_DELETE, _log_key(job, instance, s, e), b""))
            group.touched[state] = state.reach
            return lambda: state.committed

        result: int = await self._submit(apply)
        return result

    # -- checkpoints -------------------------------------------------------------------------------

    async def put_checkpoint(self, job: str, instance: str, checkpoint_id: int, record: bytes) -> None:
        """Store the record of checkpoint ``checkpoint_id`` of ``instance``, not yet complete.

        Storing an incomplete id again replaces its record (a restarted instance retaking a checkpoint
        its dead predecessor had begun).

        Raises:
            GCSError: the id is not newer than the latest complete checkpoint.
        """
        self._check_name(job, instance)
        if not 0 <= checkpoint_id <= MAX_POSITION:
            raise GCSError(
                f"put_checkpoint for {_who(job, instance)}: checkpoint id {checkpoint_id!r} is not in 0..{MAX_POSITION}"
            )
        data = bytes(record)

        async def apply(group: _Group) -> Callable[[], None]:
            state = self._state(job, instance)
            if state.complete is not None and checkpoint_id <= state.complete:
                raise GCSError(
                    f"put_checkpoint {checkpoint_id} for {_who(job, instance)}: checkpoint {state.complete} "
                    "is already complete and ids must increase; a stale request?"
                )
            self._jobs.add(job)
            group.put(_chk_key(job, instance, checkpoint_id), data)

            def finish() -> None:  # the index shows acknowledged checkpoints only
                newer = state.complete is None or state.complete < checkpoint_id
                if newer and checkpoint_id not in state.checkpoints:
                    bisect.insort(state.checkpoints, checkpoint_id)

            return finish

        await self._submit(apply)

    async def mark_checkpoint_complete(self, job: str, instance: str, checkpoint_id: int) -> None:
        """Mark a stored checkpoint complete: recovery may start from it (DESIGN.md §6).

        Older checkpoints become useless and are deleted, their records one completion late, so that a
        reader that has not seen this acknowledgment yet still finds the previous one. Marking an id at
        or below the latest complete one does nothing (a late message).

        Raises:
            GCSError: the checkpoint was never stored (await :meth:`put_checkpoint` first).
        """
        self._check_name(job, instance)

        async def apply(group: _Group) -> Callable[[], None]:
            state = self._state(job, instance)
            previous = state.complete
            if previous is not None and checkpoint_id <= previous:
                return _nothing
            if checkpoint_id not in state.checkpoints:
                raise GCSError(
                    f"cannot mark checkpoint {checkpoint_id} of {_who(job, instance)} complete: it was never "
                    f"stored (stored: {state.checkpoints}); await put_checkpoint first"
                )
            group.put(f"done/{job}/{instance}".encode(), str(checkpoint_id).encode())
            if previous is not None:
                first, end = _chk_key(job, instance, 0), _chk_key(job, instance, previous)
                group.ops.append((OP_DELETE_RANGE, first, end))

            def finish() -> None:
                if state.complete is None or state.complete < checkpoint_id:
                    state.complete = checkpoint_id
                    state.checkpoints = [c for c in state.checkpoints if c >= checkpoint_id]

            return finish

        await self._submit(apply)

    async def latest_checkpoint(self, job: str, instance: str, complete_only: bool = True) -> bytes | None:
        """The record of the latest complete checkpoint (or of the newest stored one), else ``None``."""
        self._check_usable()
        state = self._logs.get(job, {}).get(instance)
        if state is None:
            return None
        checkpoint_id = state.complete if complete_only else max(state.checkpoints, default=None)
        if checkpoint_id is None:
            return None
        record = await self._get(_chk_key(job, instance, checkpoint_id))
        if record is None:
            raise GCSError(
                f"the record of checkpoint {checkpoint_id} of {_who(job, instance)} is missing from "
                f"{self._where}: was the store modified outside stashflow?"
            )
        return record

    async def checkpoints(self, job: str, instance: str) -> list[tuple[int, bool]]:
        """``(id, complete)`` of the latest complete checkpoint and of every newer stored one, by id."""
        self._check_usable()
        state = self._logs.get(job, {}).get(instance)
        return [] if state is None else [(c, c == state.complete) for c in state.checkpoints]

    # -- job metadata ------------------------------------------------------------------------------

    async def put_meta(self, job: str, key: str, value: bytes) -> None:
        """Store job metadata under ``key``, replacing any previous value."""
        self._check_name(job, None)
        if not key:
            raise GCSError(f"put_meta for job {job}: the key must be a non-empty string")
        data = bytes(value)

        async def apply(group: _Group) -> Callable[[], None]:
            self._jobs.add(job)
            group.put(f"meta/{job}/{key}".encode(), data)
            return _nothing

        await self._submit(apply)

    async def get_meta(self, job: str, key: str) -> bytes | None:
        """The metadata stored under ``key`` for ``job``, or ``None``."""
        self._check_usable()
        return await self._get(f"meta/{job}/{key}".encode())

    def jobs(self) -> list[str]:
        """Every job with something stored, sorted: what a restarted coordinator resumes (§7)."""
        return sorted(self._jobs)

    async def drop_job(self, job: str) -> None:
        """Delete everything stored for ``job``: logs, checkpoints and metadata."""
        self._check_name(job, None)

        async def apply(group: _Group) -> Callable[[], None]:
            self._logs.pop(job, None)
            self._jobs.discard(job)
            for kind in ("log", "base", "chk", "done", "meta"):
                group.ops.append((OP_DELETE_RANGE, f"{kind}/{job}/".encode(), f"{kind}/{job}0".encode()))
            group.log_puts = {
                k: v for k, v in group.log_puts.items() if not k.startswith(f"log/{job}/".encode())
            }
            return _nothing

        await self._submit(apply)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Write and acknowledge everything queued, then close the storage. Idempotent."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        try:
            if self._writer is not None:
                await self._writer
            if self._unacked:
                if self._idle is None:
                    self._idle = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._idle)
        finally:
            if not self._closed:
                self._closed = True
                await self._close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- storage primitives ------------------------------------------------------------------------

    @abc.abstractmethod
    async def _write(self, ops: list[Op]) -> None:
        """Apply ``ops`` in order, atomically and durably (as the backend defines durable)."""

    @abc.abstractmethod
    async def _get(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or ``None``."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Release the storage. Called once, after the last write."""

    def _restore(self, keys: Iterable[bytes], get: Callable[[bytes], bytes | None]) -> None:
        """Rebuild the index from the stored ``keys``; ``get`` reads the few values it needs."""
        for key in keys:
            try:
                kind, job, rest = key.decode().split("/", 2)
                if kind == "log":
                    instance, _, span = rest.rpartition("/")
                    start, end = span.split("-")
                    self._state(job, instance).segments.append((int(start), int(end)))
                elif kind == "chk":
                    instance, _, checkpoint_id = rest.rpartition("/")
                    self._state(job, instance).checkpoints.append(int(checkpoint_id))
                elif kind == "base":
                    self._state(job, rest).base = int(get(key) or b"")
                elif kind == "done":
                    self._state(job, rest).complete = int(get(key) or b"")
                elif kind != "meta":
                    raise ValueError(kind)
            except ValueError:
                raise GCSError(f"unexpected key {key!r} in {self._where}: is this a stashflow GCS?") from None
            self._jobs.add(job)
        for state in (s for instances in self._logs.values() for s in instances.values()):
            state.segments.sort()
            state.reach = state.base
            for s, e in state.segments:
                if s > state.reach:
                    break
                state.reach = max(state.reach, e)
            state.committed = state.reach
            # records below the latest complete checkpoint are deleted one completion late
            state.checkpoints = sorted(c for c in state.checkpoints if c >= (state.complete or 0))

    # -- internals ---------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise GCSError(self._broken)
        if self._closing:
            raise GCSError(f"{self._where} is closed; open it again to use it")

    def _check_name(self, job: str, instance: str | None) -> None:
        self._check_usable()
        if (job, instance or "") in self._names:
            return
        if not isinstance(job, str) or not _JOB.fullmatch(job):
            raise GCSError(f"invalid job id {job!r} for the GCS: use letters, digits, '_', '.', '-'")
        if instance is not None and not (isinstance(instance, str) and _INSTANCE.fullmatch(instance)):
            raise GCSError(
                f"invalid instance name {instance!r} of job {job} for the GCS: use 'step/index' with "
                "letters, digits, '_', '.', '-' in the step name"
            )
        self._names.add((job, instance or ""))

    def _log_segment(
        self, job: str, instance: str, start: int, entries: bytes, count: int
    ) -> tuple[str, int, int, bytes]:
        """Check a causal-log segment before it is queued: ``(instance, start, end, data)``."""
        self._check_name(job, instance)
        if start < 0 or count < 1 or start + count > MAX_POSITION:
            raise GCSError(
                f"append_log for {_who(job, instance)}: bad span start={start!r} count={count!r}; need "
                f"start >= 0, count >= 1 and start + count <= {MAX_POSITION}"
            )
        return instance, start, start + count, bytes(entries)

    async def _add_segment(
        self, group: _Group, job: str, instance: str, start: int, end: int, data: bytes
    ) -> InstanceIndex:
        """Add a checked segment to ``group`` and to the index (in the writer task); return its log.

        Raises :class:`LogConflictError` before touching either.
        """
        state = self._state(job, instance)
        key = _log_key(job, instance, start, end)
        i = bisect.bisect_left(state.segments, (start, end))
        if i < len(state.segments) and state.segments[i] == (start, end):
            stored = group.log_puts.get(key) or await self._get(key)
            if stored is not None and stored != data:
                raise LogConflictError(
                    f"{_who(job, instance)} re-sent log positions [{start}, {end}) with different bytes "
                    f"({len(data)} vs {len(stored)} stored); one position holds one determinant: is a "
                    "dead incarnation still flushing, or is the determinant encoding not deterministic?"
                )
        elif end > state.reach:
            self._jobs.add(job)
            state.segments.insert(i, (start, end))
            state.extend(start, end)
            group.put(key, data)
            group.log_puts[key] = data
        group.touched[state] = state.reach
        return state

    def _state(self, job: str, instance: str) -> InstanceIndex:
        instances = self._logs.setdefault(job, {})
        state = instances.get(instance)
        if state is None:
            state = instances[instance] = InstanceIndex()
        return state

    async def _submit(self, apply: Callable[[_Group], Awaitable[Callable[[], T]]]) -> T:
        return await self._enqueue(apply)

    def _enqueue(self, apply: Callable[[_Group], Awaitable[Callable[[], T]]]) -> asyncio.Future[T]:
        """Queue a request for the writer; the future gets its result at the acknowledgment."""
        self._check_usable()
        loop = asyncio.get_running_loop()
        if self._writer is None:
            self._writer = loop.create_task(self._run(), name=f"gcs-writer {self._where}")
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append(_Request(apply, future))
        self._wake.set()
        return future

    async def _run(self) -> None:
        """The writer: one group at a time, in queue order; acknowledgments are scheduled, not awaited."""
        loop = asyncio.get_running_loop()
        group = _Group()
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                group = _Group()
                for _ in range(min(len(self._queue), self._max_group)):
                    request = self._queue.popleft()
                    if request.future.done():
                        continue  # its caller was cancelled before it was applied: it never happened
                    try:
                        request.finish = await request.apply(group)
                    except Exception as exc:  # a refused request fails alone: it left the index as it was
                        request.future.set_exception(exc)
                    else:
                        group.requests.append(request)
                # the reach after this group, not at the ack: later groups may not be written by then
                group.touched = {state: state.reach for state in group.touched}
                if group.ops:
                    await self._write(group.ops)
                self._unacked += 1
                if self._delay > 0:
                    loop.call_later(self._delay, self._ack, group)
                else:
                    self._ack(group)
        except BaseException as exc:
            self._fail(group, exc)
            if not isinstance(exc, Exception):
                raise

    def _ack(self, group: _Group) -> None:
        for state, reach in group.touched.items():
            state.committed = max(state.committed, reach)
        for request in group.requests:
            assert request.finish is not None
            result = request.finish()  # even for a cancelled caller: it updates the index
            if not request.future.done():
                request.future.set_result(result)
        self._unacked -= 1
        if self._unacked == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _fail(self, group: _Group, exc: BaseException) -> None:
        """The writer died: fail everything in flight and refuse every later request."""
        if isinstance(exc, asyncio.CancelledError):
            self._broken = f"{self._where}: its writer task was cancelled; reopen the store"
        else:
            self._broken = (
                f"write to {self._where} failed: {type(exc).__name__}: {exc}; free disk space or fix the "
                "storage, then restart the coordinator (it recovers from the GCS on disk)"
            )
            log.error("%s", self._broken)
        error = GCSError(self._broken)
        pending = [*group.requests, *self._queue]
        self._queue.clear()
        for request in pending:
            if not request.future.done():
                request.future.set_exception(error)
                request.future.exception()  # a caller that gave up must not cause "never retrieved"
