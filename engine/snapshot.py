"""Snapshot and restore of one task instance: what the modes that checkpoint share (DESIGN.md §6, §8).

:class:`~engine.lineage.LineageFT` (independent checkpoints) and
:class:`~engine.global_checkpoint.CheckpointFT` (global ones, aligned by barriers) take a checkpoint of
an instance the same way and restore it the same way: the keyed state of each step (a RocksDB
checkpoint; each incarnation opens a live directory of its own), the operators' own snapshots, the
routers' round-robin positions, the source offset, and the sink output the checkpoint holds back, in
a file next to it rather than in the record (it can be many batches). They differ in when they take
it and in what else the record holds.

A snapshot has two phases, like Flink's: the synchronous one, between two batches, captures what
the checkpoint holds (the record's fields, the operators' snapshots, the held output) and freezes the
keyed state at that boundary (:meth:`~engine.state.KeyedState.freeze`); the asynchronous one writes
it (RocksDB's memtable flush and checkpoint, the files, fsync: 10-80 ms that would otherwise stall
the instance) on a thread while the instance processes the next batches, and only then is the record
sent. One snapshot is in flight at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from engine.checkpoint import CheckpointRecord, CheckpointStore
from engine.codec import pack, unpack
from engine.connector import SinkWriter
from engine.errors import StateError
from engine.fault_tolerance import FaultTolerance
from engine.state import STORAGE_FIX, KeyedState

if TYPE_CHECKING:
    from engine.instance import TaskInstance

__all__ = ["SnapshottingFT", "StoreServices"]

_HELD_FILE = "held-output.msgpack"


class StoreServices(Protocol):
    """What a snapshotting mode needs of its worker's services."""

    job_id: str
    store: CheckpointStore


class SnapshottingFT(FaultTolerance):
    """The base of the modes that checkpoint: ``record`` is the checkpoint this incarnation restarts from."""

    def __init__(
        self,
        instance: TaskInstance,
        services: StoreServices,
        record: CheckpointRecord | None,
        incarnation: int,
    ):
        super().__init__(instance)
        self._store, self._job_id = services.store, services.job_id
        self.record = record
        self.incarnation = incarnation
        self.states: dict[str, KeyedState] = {}
        self.checkpoint_ms: float | None = None  # the last snapshot's synchronous phase: the loop's stall
        self.checkpoint_async_ms: float | None = None  # and its asynchronous phase, on a thread
        self._writing: asyncio.Future[None] | None = None  # the thread of the snapshot in flight
        self._snapshot_task: asyncio.Task[None] | None = None  # ... and what sends its record once written
        self._snapshot_error: BaseException | None = None

    # -- what operators get ------------------------------------------------------------------------

    def state_opener(self) -> Callable[[str], KeyedState]:
        return self.open_state

    def open_state(self, step: str) -> KeyedState:
        store, record = self._store, self.record
        restore_from = None
        if record is not None and step in record.state_dirs:
            restore_from = store.path_of(self._job_id, record.state_dirs[step])
        # each incarnation opens its own live directory: a predecessor's (in the same process, under
        # engine.testing) holds state past the checkpoint
        path = f"{store.state_path(self._job_id, self.instance.name, step)}.{self.incarnation}"
        state = KeyedState.open(path, restore_from=restore_from)
        self.states[step] = state
        return state

    def sink_writers(self) -> list[SinkWriter]:
        return [op.writer for op in self.instance.ops if hasattr(op, "writer")]

    # -- taking a checkpoint -----------------------------------------------------------------------

    def state_dirs(self, checkpoint_id: int) -> dict[str, str]:
        """The record's ``state_dirs`` for checkpoint ``checkpoint_id``, before it is taken."""
        return self._store.state_dirs(self._job_id, self.instance.name, checkpoint_id, self.states)

    def snapshot_operators(self) -> dict[str, Any]:
        """The record's ``operators``: each operator's snapshot, and the routers' under ``__routers__``."""
        inst = self.instance
        operators: dict[str, Any] = {
            ctx.step.name: snap
            for ctx, op in zip(inst.contexts, inst.ops, strict=True)
            if (snap := op.snapshot()) is not None
        }
        operators["__routers__"] = [r.snapshot() for r in inst.routers]
        operators["__time__"] = inst.time_snapshot()
        return operators

    def snapshot_in_background(
        self,
        checkpoint_id: int,
        held: Any,
        files: Mapping[str, Any],
        done: Callable[[], Awaitable[None]],
    ) -> None:
        """Take checkpoint ``checkpoint_id``: freeze the state now, write it on a thread, then ``done``.

        Call it between two batches, with the checkpoint's contents captured there: ``held``, the
        sink output the checkpoint holds back, and ``files`` (name -> object), written packed into
        the checkpoint's directory (empty ones are skipped); none may change afterwards (the record,
        with :meth:`state_dirs`, is best encoded at once). ``done()`` runs on the loop once all is on
        disk: it sends the record. A failure of either phase is raised by the next
        :meth:`check_snapshot`. Wait for :attr:`snapshotting` to be false before the next one.

        Raises:
            SerializationError, StateError: the synchronous phase failed (a dirty entry that does not
                encode, a full disk); nothing is frozen then.
        """
        if self.snapshotting:
            raise StateError(
                f"{self.instance.name}: checkpoint {checkpoint_id} began while the last is in flight"
            )
        began = time.perf_counter()
        frozen: list[KeyedState] = []
        try:
            for state in self.states.values():
                state.freeze()
                frozen.append(state)
        except BaseException:
            for state in frozen:
                state.thaw()
            raise
        store, job_id, name, states = self._store, self._job_id, self.instance.name, dict(self.states)
        contents = {_HELD_FILE: held, **files}

        def write() -> None:
            store.take(job_id, name, checkpoint_id, states)
            for file, content in contents.items():
                if not content:
                    continue
                path = self.checkpoint_file(checkpoint_id, file)
                try:
                    with open(path, "wb") as f:
                        f.write(pack(content))
                except OSError as exc:
                    raise StateError(
                        f"checkpoint {checkpoint_id} of instance {name}: writing {path} failed: {exc}; {STORAGE_FIX}"
                    ) from exc

        def thaw(_: object) -> None:  # on the loop, once the thread is done (whatever came of it)
            for state in frozen:
                state.thaw()
            self.checkpoint_async_ms = (time.perf_counter() - began) * 1000

        writing = self._writing = asyncio.get_running_loop().run_in_executor(None, write)
        writing.add_done_callback(thaw)

        async def finish() -> None:
            try:
                # shielded: cancelling this task (the instance closing) must not pretend the thread stopped
                await asyncio.shield(writing)
                await done()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # raised again on the loop, by check_snapshot()
                self._snapshot_error = exc

        self._snapshot_task = asyncio.create_task(finish(), name=f"checkpoint {checkpoint_id} of {name}")
        self.checkpoint_ms = (time.perf_counter() - began) * 1000

    @property
    def snapshotting(self) -> bool:
        """A snapshot is in flight: written on its thread, or its record not yet sent."""
        return self._snapshot_task is not None and not self._snapshot_task.done()

    def check_snapshot(self) -> None:
        """Raise what made the last snapshot fail (a full disk: the instance fails with it)."""
        if self._snapshot_error is not None:
            error, self._snapshot_error = self._snapshot_error, None
            raise error

    async def wait_snapshot(self) -> None:
        """Wait until the snapshot in flight, if any, is written and its record sent; raise its failure."""
        if self._snapshot_task is not None:
            await asyncio.wait([self._snapshot_task])
        self.check_snapshot()

    async def settle_snapshot(self) -> None:
        """At close: stop sending the record of a snapshot in flight, but wait for its thread, which
        must not outlive the state it writes (closing a RocksDB database under a checkpoint crashes)."""
        if self._snapshot_task is not None and not self._snapshot_task.done():
            self._snapshot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._snapshot_task
        if self._writing is not None and not self._writing.done():
            await asyncio.wait([self._writing])

    async def aclose(self) -> None:
        await self.settle_snapshot()
        await super().aclose()

    def checkpoint_file(self, checkpoint_id: int, name: str) -> str:
        """A file of checkpoint ``checkpoint_id`` besides its keyed state (in the directory of its ``state_dirs``)."""
        base = self._store.instance_dir(self._job_id, self.instance.name)
        return os.path.join(base, f"chk-{checkpoint_id}", name)

    # -- restoring ---------------------------------------------------------------------------------

    def restore_operators(self, restart: bool) -> None:
        """Restore the routers, the source offset and every operator from ``record``.

        ``restart`` without a record: the operators go back to their initial state (a restart before
        any checkpoint completed resumes from the very start).
        """
        inst, record = self.instance, self.record
        if record is not None:
            for router, position in zip(inst.routers, record.operators.get("__routers__", ()), strict=False):
                router.restore(position)
            if inst.reader is not None and record.source_offset is not None:
                inst.reader.seek(record.source_offset)
            if "__time__" in record.operators:
                inst.restore_time(record.operators["__time__"])
        for ctx, op in zip(inst.contexts, inst.ops, strict=True):
            if record is not None and ctx.step.name in record.operators:
                op.restore(record.operators[ctx.step.name])
            elif restart:
                op.restore(op.snapshot())

    def restored_held(self) -> Any:
        """The sink output the restored checkpoint held back (``save_held``), if any."""
        if self.record is None:
            return ()
        path = self.checkpoint_file(self.record.checkpoint_id, _HELD_FILE)
        if not os.path.exists(path):
            return ()
        with open(path, "rb") as f:
            return unpack(f.read())
