"""Snapshot and restore of one task instance: what the modes that checkpoint share (DESIGN.md §6, §8).

:class:`~engine.lineage.LineageFT` (independent checkpoints) and
:class:`~engine.global_checkpoint.CheckpointFT` (global ones, aligned by barriers) take a checkpoint of
an instance the same way and restore it the same way: the keyed state of each step (a RocksDB
checkpoint; each incarnation opens a live directory of its own), the operators' own snapshots, the
routers' round-robin positions, the source offset, and the sink output the checkpoint holds back, in
a file next to it rather than in the record (it can be many batches). They differ in when they take
it and in what else the record holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from engine.checkpoint import CheckpointRecord, CheckpointStore
from engine.codec import pack, unpack
from engine.connector import SinkWriter
from engine.fault_tolerance import FaultTolerance
from engine.state import KeyedState

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

    def take_state(self, checkpoint_id: int) -> dict[str, str]:
        """Checkpoint every step's keyed state; the record's ``state_dirs``."""
        return self._store.take(self._job_id, self.instance.name, checkpoint_id, self.states)

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

    def save_held(self, checkpoint_id: int, held: Any) -> None:
        """Write the sink output checkpoint ``checkpoint_id`` holds back (nothing if there is none)."""
        if held:
            with open(self.checkpoint_file(checkpoint_id, _HELD_FILE), "wb") as f:
                f.write(pack(held))

    def checkpoint_file(self, checkpoint_id: int, name: str) -> str:
        """A file of checkpoint ``checkpoint_id`` besides its keyed state (the directory ``take_state`` made)."""
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
