"""Checkpoint records, the on-disk checkpoint store and the completeness rule (DESIGN.md §6)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.checkpoint import RECORD_FORMAT, CheckpointRecord, CheckpointStore, is_complete
from engine.codec import pack, unpack
from engine.errors import SerializationError, StateError
from engine.state import KeyedState

JOB = "wordcount-1a2b3c"

# -- records -----------------------------------------------------------------------------------------

seqs = st.integers(0, 2**40)
scalars = st.one_of(st.none(), st.integers(-(2**40), 2**40), st.text(max_size=8), st.binary(max_size=8))
records = st.builds(
    CheckpointRecord,
    instance=st.from_regex(r"\A[a-z][a-z0-9_.-]{0,8}/[0-9]{1,3}\Z"),
    checkpoint_id=st.integers(1, 10**6),
    log_position=seqs,
    consumed=st.dictionaries(st.integers(0, 64), seqs),
    next_seq=st.dictionaries(st.from_regex(r"\A[a-z]{1,6}#[0-9]\Z"), seqs),
    source_offset=st.one_of(scalars, st.tuples(st.integers(0, 2**40), st.integers(0, 2**40))),
    timers=st.lists(st.tuples(st.integers(0, 2**40), scalars), max_size=4),
    watermarks=st.dictionaries(st.integers(0, 64), st.integers(-(2**62), 2**62)),
    operators=st.dictionaries(st.text(max_size=6), scalars | st.tuples(scalars, scalars)),
    state_dirs=st.dictionaries(st.text(min_size=1, max_size=6), st.text(min_size=1, max_size=20)),
    requirements=st.dictionaries(st.from_regex(r"\A[a-z]{1,6}/[0-9]\Z"), seqs),
    created_at=st.floats(0, 2e9),
)


@given(records)
def test_record_round_trip(record: CheckpointRecord) -> None:
    decoded = CheckpointRecord.from_bytes(record.to_bytes())
    assert decoded == record
    assert type(decoded.timers) is list and type(decoded.created_at) is float


def test_record_defaults_and_immutability() -> None:
    record = CheckpointRecord("count/0", 1, log_position=0)
    assert record.consumed == {} and record.timers == [] and record.source_offset is None
    assert record.created_at > 1.6e9
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.checkpoint_id = 2  # type: ignore[misc]


def fields_of(record: CheckpointRecord) -> dict[str, Any]:
    return dict(unpack(record.to_bytes()))


def encode(fields: dict[str, Any]) -> bytes:
    return msgpack.packb(fields)


SAMPLE = CheckpointRecord("count/1", 3, log_position=40, consumed={0: 7}, requirements={"split/0": 17})


def test_unknown_fields_are_refused_not_ignored() -> None:
    fields = fields_of(SAMPLE) | {"epoch": 4, "zone": "b"}
    with pytest.raises(
        StateError,
        match=r"^checkpoint record of \d+ bytes is unreadable: unknown field\(s\) epoch, zone; "
        r"was it written by another stashflow version\?$",
    ):
        CheckpointRecord.from_bytes(encode(fields))


def test_missing_fields_are_refused() -> None:
    fields = fields_of(SAMPLE)
    del fields["consumed"], fields["timers"]
    with pytest.raises(StateError, match=r"unreadable: missing field\(s\) consumed, timers; was it written"):
        CheckpointRecord.from_bytes(encode(fields))


def test_another_format_is_refused() -> None:
    fields = fields_of(SAMPLE) | {"format": RECORD_FORMAT + 1}
    with pytest.raises(
        StateError, match=rf"unreadable: format 2, this stashflow reads format {RECORD_FORMAT} only"
    ):
        CheckpointRecord.from_bytes(encode(fields))


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("checkpoint_id", 0, "an int >= 1"),
        ("log_position", -1, "an int >= 0"),
        ("log_position", True, "an int >= 0"),
        ("instance", "count", "an instance name 'step/i'"),
        ("consumed", {"0": 7}, "a map of channel index -> seq"),
        ("requirements", {"split/0": "17"}, "a map of instance -> log position"),
        ("state_dirs", {"count": 1}, "a map of step -> directory"),
        ("timers", {}, "an array"),
        ("created_at", "yesterday", "a number"),
    ],
)
def test_malformed_fields_are_named(name: str, value: Any, expected: str) -> None:
    fields = fields_of(SAMPLE) | {name: value}
    with pytest.raises(StateError, match=rf"unreadable: field {name} must be {expected}"):
        CheckpointRecord.from_bytes(encode(fields))


@pytest.mark.parametrize(
    ("data", "problem"), [(b"\xc1", "not msgpack"), (pack([1, 2]), "a tuple, not a map of fields")]
)
def test_garbage_is_refused(data: bytes, problem: str) -> None:
    with pytest.raises(StateError, match=f"checkpoint record of {len(data)} bytes is unreadable: {problem}"):
        CheckpointRecord.from_bytes(data)


def test_unencodable_operator_state_names_the_checkpoint() -> None:
    record = CheckpointRecord("sink/0", 5, log_position=1, operators={"sink": object()})
    with pytest.raises(SerializationError, match=r"^checkpoint 5 of instance sink/0: cannot encode"):
        record.to_bytes()


# -- completeness ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("committed", "complete"),
    [
        ({"count/1": 40, "split/0": 17, "split/1": 2}, True),
        ({"count/1": 99, "split/0": 99, "split/1": 99}, True),
        ({"count/1": 40, "split/0": 16, "split/1": 2}, False),  # one upstream entry short
        ({"count/1": 40, "split/0": 17}, False),  # split/1 has committed nothing yet
        ({"count/1": 39, "split/0": 17, "split/1": 2}, False),  # own log not committed up to 40
    ],
)
def test_is_complete(committed: dict[str, int], complete: bool) -> None:
    record = CheckpointRecord("count/1", 3, log_position=40, requirements={"split/0": 17, "split/1": 2})
    assert is_complete(record, committed) is complete


def test_a_checkpoint_with_an_empty_past_is_complete_at_once() -> None:
    assert is_complete(CheckpointRecord("src/0", 1, log_position=0), {})


# -- the store ---------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "data", incarnation="one")


def open_state(store: CheckpointStore, step: str, contents: dict[Any, Any]) -> KeyedState:
    state = KeyedState.open(store.state_path(JOB, "count/1", step))
    for k, v in contents.items():
        state.put(k, v)
    return state


def test_layout_and_restore_from_state_dirs(store: CheckpointStore, tmp_path: Path) -> None:
    instance_dir = tmp_path / "data" / JOB / "count_1"
    assert store.instance_dir(JOB, "count/1") == str(instance_dir)
    assert store.state_path(JOB, "count/1", "count") == str(instance_dir / "live-count~one")
    states = {"count": open_state(store, "count", {"a": 1}), "sum": open_state(store, "sum", {"b": 2})}

    state_dirs = store.take(JOB, "count/1", 1, states)

    assert state_dirs == {"count": "count_1/chk-1/count", "sum": "count_1/chk-1/sum"}
    assert sorted(os.listdir(instance_dir)) == ["chk-1", "live-count~one", "live-sum~one"]
    assert (instance_dir / "chk-1" / "count" / "CURRENT").is_file()
    assert store.checkpoint_ids(JOB, "count/1") == [1]
    states["count"].put("a", 100)  # after the checkpoint: not in it
    restarted = CheckpointStore(tmp_path / "data", incarnation="two")
    path = restarted.path_of(JOB, state_dirs["count"])
    assert path == str(instance_dir / "chk-1" / "count")
    restored = KeyedState.open(restarted.state_path(JOB, "count/1", "count"), restore_from=path)
    assert dict(restored.items()) == {"a": 1}
    assert restarted.discard_stale_live(JOB, "count/1") == [
        str(instance_dir / "live-count~one"),
        str(instance_dir / "live-sum~one"),
    ]
    assert sorted(os.listdir(instance_dir)) == ["chk-1", "live-count~two"]
    restored.destroy()


def test_an_instance_without_keyed_state_still_gets_its_checkpoint_directory(store: CheckpointStore) -> None:
    assert store.take(JOB, "src/0", 1, {}) == {}
    assert store.checkpoint_ids(JOB, "src/0") == [1]
    assert os.path.isdir(os.path.join(store.instance_dir(JOB, "src/0"), "chk-1"))


def test_checkpoint_ids_are_never_reused(store: CheckpointStore) -> None:
    state = open_state(store, "count", {"a": 1})
    assert store.next_checkpoint_id(JOB, "count/1") == 1
    store.take(JOB, "count/1", 1, {"count": state})
    with pytest.raises(
        StateError, match=r"checkpoint 1 of instance count/1 already exists at .*chk-1; .*next_checkpoint_id"
    ):
        store.take(JOB, "count/1", 1, {"count": state})
    # a dead incarnation's partial checkpoint has used its id too
    os.makedirs(os.path.join(store.instance_dir(JOB, "count/1"), "chk-4.partial"))
    assert store.checkpoint_ids(JOB, "count/1") == [1]
    assert store.next_checkpoint_id(JOB, "count/1") == 5
    state.destroy()


def test_a_failed_take_leaves_no_checkpoint_behind(store: CheckpointStore) -> None:
    good = open_state(store, "count", {"a": 1})
    broken = open_state(store, "sum", {"b": 2})
    broken.close()  # its checkpoint fails: the database is closed
    with pytest.raises(
        StateError, match=r"keyed state at .*live-sum~one: checkpoint into .*chk-1.partial/sum after close"
    ):
        store.take(JOB, "count/1", 1, {"count": good, "sum": broken})
    assert [n for n in os.listdir(store.instance_dir(JOB, "count/1")) if n.startswith("chk-")] == []
    assert store.take(JOB, "count/1", 1, {"count": good}) == {"count": "count_1/chk-1/count"}
    good.destroy()


def test_discard_before_keeps_the_latest_complete_checkpoint(store: CheckpointStore) -> None:
    state = open_state(store, "count", {})
    for cid in (1, 2, 3):
        state.put("n", cid)
        store.take(JOB, "count/1", cid, {"count": state})
    os.makedirs(os.path.join(store.instance_dir(JOB, "count/1"), "chk-0.partial"))
    assert store.discard_before(JOB, "count/1", 3) == [1, 2]
    assert store.checkpoint_ids(JOB, "count/1") == [3]
    assert not os.path.exists(os.path.join(store.instance_dir(JOB, "count/1"), "chk-0.partial"))
    assert store.discard_before(JOB, "count/1", 3) == []
    restored = KeyedState.open(
        os.path.join(store.instance_dir(JOB, "count/1"), "probe"),
        restore_from=store.path_of(JOB, "count_1/chk-3/count"),
    )
    assert restored.get("n") == 3
    restored.destroy()
    with pytest.raises(
        StateError, match=r"refusing to discard checkpoints of instance count/1 before 7: .*none would remain"
    ):
        store.discard_before(JOB, "count/1", 7)
    assert store.checkpoint_ids(JOB, "count/1") == [3]
    state.destroy()


def test_path_of_refuses_to_leave_the_job_directory(store: CheckpointStore) -> None:
    for bad in ("../other-job/count_1/chk-1/count", "/etc", "count_1/../../x"):
        with pytest.raises(StateError, match="is not inside the job's directory of the store"):
            store.path_of(JOB, bad)


@pytest.mark.parametrize(("job", "instance"), [("a/b", "count/1"), ("..", "count/1"), (JOB, ".."), (JOB, "")])
def test_names_that_cannot_be_directories(store: CheckpointStore, job: str, instance: str) -> None:
    with pytest.raises(ValueError, match="cannot name a directory of the checkpoint store"):
        store.instance_dir(job, instance)


def test_store_on_an_unwritable_path_raises_state_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    store = CheckpointStore(tmp_path / "file", incarnation="one")
    with pytest.raises(
        StateError, match=r"keyed state at .*file/.*live-count~one: opening the database failed: .*--data-dir"
    ):
        KeyedState.open(store.state_path(JOB, "count/1", "count"))
    with pytest.raises(StateError, match=r"checkpoint 1 of instance src/0 into .*chk-1 failed: .*--data-dir"):
        store.take(JOB, "src/0", 1, {})


def test_default_incarnations_differ_and_remove_job(tmp_path: Path) -> None:
    a, b = CheckpointStore(tmp_path), CheckpointStore(tmp_path)
    assert a.state_path(JOB, "count/1", "count") != b.state_path(JOB, "count/1", "count")
    a.take(JOB, "src/0", 1, {})
    a.remove_job(JOB)
    assert not (tmp_path / JOB).exists()


def test_workers_sharing_a_store_remove_their_own_instances(tmp_path: Path) -> None:
    a, b = CheckpointStore(tmp_path), CheckpointStore(tmp_path)
    a.take(JOB, "src/0", 1, {})
    b.take(JOB, "count/1", 1, {})
    a.remove_job(JOB, ["src/0"])
    assert not (tmp_path / JOB / "src_0").exists() and (tmp_path / JOB / "count_1").exists()
    b.remove_job(JOB, ["count/1"])
    assert not (tmp_path / JOB).exists()
