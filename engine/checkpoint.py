"""Independent, per-instance checkpoints (DESIGN.md §6): the record, the on-disk store, completeness.

No barriers and no global coordination: every ``checkpoint_interval`` an instance, between two
batches, snapshots the keyed state of each step it runs (a RocksDB checkpoint, hard links) with
:meth:`CheckpointStore.take`, and writes a :class:`CheckpointRecord` to the GCS. The checkpoint is
**complete**, and usable for recovery, once the record is in the GCS and every determinant in its
causal past is committed (:func:`is_complete`). Then upstream senders may trim their output logs up
to the consumed seqs, the instance's own log before ``log_position`` may be pruned, and older
checkpoints are deleted with :meth:`CheckpointStore.discard_before`.

On-disk layout of a store (``/`` in an instance name becomes ``_``)::

    <root>/<job_id>/<step_i>/chk-<id>/<step>/     RocksDB checkpoint of one step's KeyedState
    <root>/<job_id>/<step_i>/live-<step>~<inc>/   the live database of one incarnation

>>> import tempfile
>>> store = CheckpointStore(tempfile.mkdtemp(), incarnation="doc")
>>> store.state_path("wc-1a2b3c", "count/1", "count").endswith("wc-1a2b3c/count_1/live-count~doc")
True
>>> record = CheckpointRecord("count/1", 2, log_position=40, requirements={"split/0": 17})
>>> CheckpointRecord.from_bytes(record.to_bytes()) == record
True
>>> is_complete(record, {"count/1": 40, "split/0": 16}), is_complete(record, {"count/1": 40, "split/0": 17})
(False, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from engine.codec import pack, unpack
from engine.errors import ProtocolError, SerializationError, StateError, short_repr
from engine.state import STORAGE_FIX, KeyedState

__all__ = ["RECORD_FORMAT", "CheckpointRecord", "CheckpointStore", "checkpoint_name", "is_complete"]

#: Version of the encoded :class:`CheckpointRecord`; bump it on any change of its fields.
RECORD_FORMAT: Final = 1

_CHK = re.compile(r"^chk-([0-9]+)(\.partial)?$")
_PARTIAL_SUFFIX: Final = ".partial"


@dataclass(frozen=True)
class CheckpointRecord:
    """What an instance needs, besides its keyed state, to restart from a checkpoint.

    Positions and seqs follow DESIGN.md: ``log_position`` counts the instance's own determinants
    logged before the checkpoint; ``consumed`` maps each input channel index to the last seq
    processed (upstream resends after it); ``next_seq`` maps each output channel (``"dst#index"``)
    to the seq of the next batch to send. ``requirements`` is the causal past the checkpoint
    depends on, as ``instance -> position`` (entries up to that position must be committed).
    ``state_dirs`` maps each step to its state checkpoint, relative to the job's directory in the
    store (:meth:`CheckpointStore.path_of`), so a store can be mounted elsewhere.

    The encoding is strict: a record with unknown or missing fields, or of another
    :data:`RECORD_FORMAT`, is refused with a :class:`StateError` rather than half understood.
    Nested lists come back as tuples (the codec rules); ``timers`` comes back as a list.
    """

    instance: str
    checkpoint_id: int
    log_position: int
    consumed: dict[int, int] = field(default_factory=dict)
    next_seq: dict[str, int] = field(default_factory=dict)
    source_offset: Any | None = None
    timers: list[Any] = field(default_factory=list)
    watermarks: dict[int, int] = field(default_factory=dict)
    operators: dict[str, Any] = field(default_factory=dict)
    state_dirs: dict[str, str] = field(default_factory=dict)
    requirements: dict[str, int] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    def to_bytes(self) -> bytes:
        """The msgpack encoding stored in the GCS.

        Raises:
            SerializationError: ``source_offset``, ``timers`` or ``operators`` hold a value msgpack
                cannot encode.
        """
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        try:
            return pack({"format": RECORD_FORMAT, **fields})
        except SerializationError as exc:
            raise SerializationError(
                f"checkpoint {self.checkpoint_id} of instance {self.instance}: {exc}"
            ) from None

    @classmethod
    def from_bytes(cls, data: bytes) -> CheckpointRecord:
        """Decode what :meth:`to_bytes` produced.

        Raises:
            StateError: ``data`` is not a record of this version; the message says what is wrong.
        """
        try:
            raw = unpack(data)
        except ProtocolError as exc:
            raise _record_error(data, f"not msgpack ({exc})") from None
        if not isinstance(raw, dict):
            raise _record_error(data, f"a {type(raw).__name__}, not a map of fields")
        version = raw.pop("format", None)
        if version != RECORD_FORMAT:
            raise _record_error(
                data,
                f"format {version!r}, this stashflow reads format {RECORD_FORMAT} only; "
                "was it written by another version?",
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(raw) - known))
        missing = sorted(known - set(raw))
        if unknown or missing:
            problems = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
            problems += [f"missing field(s) {', '.join(missing)}"] if missing else []
            raise _record_error(data, f"{'; '.join(problems)}; was it written by another stashflow version?")
        for name, check, expected in _FIELD_CHECKS:
            if not check(raw[name]):
                raise _record_error(data, f"field {name} must be {expected}, got {short_repr(raw[name], 60)}")
        raw["timers"] = list(raw["timers"])
        raw["created_at"] = float(raw["created_at"])
        return cls(**raw)


def _is_int(value: Any, minimum: int = 0) -> bool:
    return type(value) is int and value >= minimum


def _is_map(key: type, value: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda m: type(m) is dict and all(type(k) is key and value(v) for k, v in m.items())


def _is_str(value: Any) -> bool:
    return type(value) is str


_FIELD_CHECKS: Final[tuple[tuple[str, Callable[[Any], bool], str], ...]] = (
    ("instance", lambda v: type(v) is str and "/" in v, "an instance name 'step/i'"),
    ("checkpoint_id", lambda v: _is_int(v, 1), "an int >= 1"),
    ("log_position", _is_int, "an int >= 0"),
    ("consumed", _is_map(int, _is_int), "a map of channel index -> seq"),
    ("next_seq", _is_map(str, _is_int), "a map of 'dst#index' -> seq"),
    ("timers", lambda v: type(v) is tuple, "an array"),
    ("watermarks", _is_map(int, lambda v: type(v) is int), "a map of channel index -> watermark"),
    ("operators", _is_map(str, lambda v: True), "a map of step -> value"),
    ("state_dirs", _is_map(str, _is_str), "a map of step -> directory"),
    ("requirements", _is_map(str, _is_int), "a map of instance -> log position"),
    ("created_at", lambda v: type(v) in (int, float), "a number (seconds since the epoch)"),
)


def _record_error(data: bytes, problem: str) -> StateError:
    return StateError(f"checkpoint record of {len(data)} bytes is unreadable: {problem}")


def is_complete(record: CheckpointRecord, committed: Mapping[str, int]) -> bool:
    """Whether every determinant in ``record``'s causal past is committed.

    ``committed`` maps an instance to its commit position in the GCS (missing: nothing committed,
    position 0). The instance's own log up to ``record.log_position`` is part of that past even
    when ``requirements`` does not list it. The caller also checks that the record itself is in
    the GCS: together they make the checkpoint usable for recovery (DESIGN.md §6).

    >>> r = CheckpointRecord("count/0", 1, log_position=5, requirements={"src/0": 3})
    >>> is_complete(r, {"count/0": 5, "src/0": 3}), is_complete(r, {"src/0": 9})
    (True, False)
    """
    if committed.get(record.instance, 0) < record.log_position:
        return False
    return all(committed.get(instance, 0) >= position for instance, position in record.requirements.items())


class CheckpointStore:
    """The directory tree that holds the keyed-state checkpoints and live databases of instances.

    One store per process; ``incarnation`` (default: the pid and a random suffix) names the live
    databases this process creates, so the leftover directory of a killed process never collides
    with the one its replacement restores into (:meth:`discard_stale_live` removes the leftovers).

    Checkpoint ids are never reused, even across restarts: a dead incarnation may have left
    ``chk-<n>`` behind, and a record in the GCS may point to it. A restarted instance numbers its
    checkpoints from :meth:`next_checkpoint_id`.
    """

    def __init__(self, root: str | os.PathLike[str], *, incarnation: str | None = None):
        self.root = os.path.abspath(os.fspath(root))
        self.incarnation = incarnation or f"{os.getpid()}-{secrets.token_hex(3)}"
        _check_component("incarnation", self.incarnation)

    def __repr__(self) -> str:
        return f"CheckpointStore({self.root!r}, incarnation={self.incarnation!r})"

    # -- paths --------------------------------------------------------------------------------------

    def instance_dir(self, job_id: str, instance: str) -> str:
        """``<root>/<job_id>/<instance with / replaced by _>``."""
        _check_component("job id", job_id)
        _check_component("instance", instance.replace("/", "_"))
        return os.path.join(self.root, job_id, instance.replace("/", "_"))

    def state_path(self, job_id: str, instance: str, step: str) -> str:
        """The live database directory of ``step`` in ``instance``, private to this incarnation."""
        _check_component("step", step)
        return os.path.join(self.instance_dir(job_id, instance), f"live-{step}~{self.incarnation}")

    def path_of(self, job_id: str, state_dir: str) -> str:
        """The absolute path of a ``state_dirs`` entry of a record of job ``job_id``.

        Raises:
            StateError: ``state_dir`` is absolute or leaves the job's directory (a corrupt record).
        """
        _check_component("job id", job_id)
        normal = os.path.normpath(state_dir)
        if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep):
            raise StateError(
                f"checkpoint state directory {state_dir!r} of job {job_id} is not inside the job's "
                "directory of the store; the record is corrupt or from a foreign store"
            )
        return os.path.join(self.root, job_id, normal)

    def checkpoint_ids(self, job_id: str, instance: str) -> list[int]:
        """The ids of the whole checkpoints of ``instance`` on disk, ascending."""
        return sorted(n for n, partial in self._scan(job_id, instance) if not partial)

    def next_checkpoint_id(self, job_id: str, instance: str) -> int:
        """An id no checkpoint of ``instance`` ever used, partial ones included: 1 at first."""
        return max((n for n, _ in self._scan(job_id, instance)), default=0) + 1

    def _scan(self, job_id: str, instance: str) -> list[tuple[int, bool]]:
        """``(id, partial)`` of every checkpoint directory of ``instance``."""
        names = _list(self.instance_dir(job_id, instance))
        return [(int(m.group(1)), bool(m.group(2))) for m in map(_CHK.match, names) if m]

    # -- checkpoints --------------------------------------------------------------------------------

    def take(
        self, job_id: str, instance: str, checkpoint_id: int, states: Mapping[str, KeyedState]
    ) -> dict[str, str]:
        """Checkpoint every step's state of ``instance``; return the record's ``state_dirs``.

        The RocksDB checkpoints are made in ``chk-<id>.partial`` and renamed to ``chk-<id>`` once
        all are done, so a ``chk-<id>`` directory is always whole. Call it between two batches, or
        with every state frozen at one (:meth:`KeyedState.freeze`): then it may run on a thread
        while the instance goes on, and it leaves the states frozen.

        Raises:
            StateError: ``chk-<id>`` already exists (ids are never reused: see
                :meth:`next_checkpoint_id`), or the disk refused a checkpoint.
        """
        if type(checkpoint_id) is not int or checkpoint_id < 1:
            raise ValueError(f"checkpoint_id must be an int >= 1, got {checkpoint_id!r}")
        directory = self.instance_dir(job_id, instance)
        name = f"chk-{checkpoint_id}"
        final = os.path.join(directory, name)
        if os.path.lexists(final):
            raise StateError(
                f"checkpoint {checkpoint_id} of instance {instance} already exists at {final}; checkpoint "
                "ids are never reused: number a restarted instance's checkpoints from next_checkpoint_id()"
            )
        staging = final + _PARTIAL_SUFFIX
        shutil.rmtree(staging, ignore_errors=True)  # a dead incarnation's attempt; nothing refers to it
        for step in states:
            _check_component("step", step)
        try:
            for step, state in states.items():
                if state.frozen:
                    state.write_checkpoint(os.path.join(staging, step))
                else:
                    state.checkpoint(os.path.join(staging, step))
            os.makedirs(staging, exist_ok=True)  # an instance without keyed state still gets the directory
            os.rename(staging, final)
            _fsync_dir(directory)  # the record about to enter the GCS must not outlive the rename
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError):
                raise StateError(
                    f"checkpoint {checkpoint_id} of instance {instance} into {final} failed: {exc}; {STORAGE_FIX}"
                ) from exc
            raise
        return self.state_dirs(job_id, instance, checkpoint_id, states)

    def state_dirs(
        self, job_id: str, instance: str, checkpoint_id: int, steps: Iterable[str]
    ) -> dict[str, str]:
        """The ``state_dirs`` that :meth:`take` returns for these steps, known before it runs."""
        final = os.path.join(self.instance_dir(job_id, instance), f"chk-{checkpoint_id}")
        prefix = os.path.relpath(final, os.path.join(self.root, job_id))
        return {step: os.path.join(prefix, step) for step in steps}

    def discard_before(self, job_id: str, instance: str, checkpoint_id: int) -> list[int]:
        """Delete the checkpoints of ``instance`` older than ``checkpoint_id``; return their ids.

        Call it with the latest *complete* checkpoint, which is kept: recovery always has one to
        start from. Partial leftovers older than it are removed too.

        Raises:
            StateError: ``chk-<checkpoint_id>`` does not exist (deleting would leave no checkpoint
                to recover from), or a directory cannot be removed.
        """
        directory = self.instance_dir(job_id, instance)
        if not os.path.isdir(os.path.join(directory, f"chk-{checkpoint_id}")):
            raise StateError(
                f"refusing to discard checkpoints of instance {instance} before {checkpoint_id}: "
                f"{directory}/chk-{checkpoint_id} does not exist, so none would remain for recovery"
            )
        removed = []
        for n, partial in self._scan(job_id, instance):
            if n >= checkpoint_id:
                continue
            path = os.path.join(directory, f"chk-{n}{_PARTIAL_SUFFIX if partial else ''}")
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StateError(
                    f"cannot delete old checkpoint {path}: {exc}; check the permissions of the data directory"
                ) from exc
            if not partial:
                removed.append(n)
        return sorted(removed)

    # -- housekeeping -------------------------------------------------------------------------------

    def discard_stale_live(self, job_id: str, instance: str) -> list[str]:
        """Delete the live databases other incarnations of ``instance`` left; return their paths.

        Call it when an instance (re)starts: only one incarnation of an instance runs at a time.
        """
        directory = self.instance_dir(job_id, instance)
        names = _list(directory)
        stale = [
            os.path.join(directory, n)
            for n in sorted(names)
            if n.startswith("live-") and not n.endswith(f"~{self.incarnation}")
        ]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return stale

    def remove_job(self, job_id: str, instances: Iterable[str] | None = None) -> None:
        """Delete what the store holds for ``job_id`` (after the job ended): everything, or only the
        directories of ``instances`` and then the job's directory if that left it empty.

        Workers sharing a store (a shared volume, local mode) each remove their own instances: one must
        not pull the files from under another that is still closing its state.
        """
        _check_component("job id", job_id)
        job_dir = os.path.join(self.root, job_id)
        if instances is None:
            shutil.rmtree(job_dir, ignore_errors=True)
            return
        for name in instances:
            shutil.rmtree(self.instance_dir(job_id, name), ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: another worker's instances are still there
            os.rmdir(job_dir)


def _list(directory: str) -> list[str]:
    """The entries of ``directory``; none if it does not exist yet."""
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateError(f"cannot list {directory}: {exc}; {STORAGE_FIX}") from exc


def _check_component(what: str, name: str) -> None:
    if not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name) or "\0" in name:
        raise ValueError(f"{what} {name!r} cannot name a directory of the checkpoint store")


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_name(checkpoint_id: int | None) -> str:
    """What an instance restarted from, for people: ``checkpoint 3``, or its start when it had none."""
    return f"checkpoint {checkpoint_id}" if checkpoint_id is not None else "its start (no checkpoint yet)"
