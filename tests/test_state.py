"""KeyedState: the cache over RocksDB, flushes, eviction, checkpoints and restores, storage errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import rocksdict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.codec import pack, unpack
from engine.errors import SerializationError, StateError
from engine.state import KeyedState, normalize


@pytest.fixture
def state(tmp_path: Path):
    s = KeyedState.open(tmp_path / "live")
    yield s
    s.destroy()


def raw_contents(path: str | Path) -> dict[Any, Any]:
    """What RocksDB holds at ``path``, decoded, read with a plain Rdict (the state must be closed)."""
    db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
    try:
        return {unpack(k): unpack(v) for k, v in db.items()}
    finally:
        db.close()


def sorted_by_encoding(model: dict[Any, Any]) -> list[tuple[Any, Any]]:
    return sorted(model.items(), key=lambda kv: pack(kv[0]))


# -- per-record API ----------------------------------------------------------------------------------


def test_get_put_delete_contains(state: KeyedState) -> None:
    assert state.get("a") is None
    assert state.get("a", 0) == 0
    assert "a" not in state
    state.put("a", 1)
    state.put(("k", 2), "v")
    assert state.get("a") == 1 and state.get(("k", 2)) == "v"
    assert "a" in state and ("k", 2) in state
    state.delete("a")
    state.delete("never-there")
    assert state.get("a", "gone") == "gone" and "a" not in state
    assert len(state) == 1
    assert state.dirty == {"a", ("k", 2), "never-there"}


def test_put_stores_values_as_rocksdb_returns_them(state: KeyedState) -> None:
    # the same type from the cache as after an eviction or a restore: determinism (DESIGN.md §3)
    state.put("list", [1, [2, 3]])
    state.put("dict", {"k": [1]})
    state.put("tuple", (1, "a"))
    assert state.get("list") == (1, (2, 3))
    assert state.get("dict") == {"k": (1,)}
    assert normalize([1, 2]) == (1, 2)
    flat = (1, 2.5)
    assert normalize(flat) is flat  # no copy on the common path


def test_put_of_an_unencodable_value_fails_at_the_put(state: KeyedState) -> None:
    with pytest.raises(SerializationError, match=r"keyed state at .*live, key 'k': cannot encode .*object"):
        state.put("k", [object()])
    assert "k" not in state.cache


def test_unencodable_scalar_is_reported_by_flush_with_its_key(state: KeyedState) -> None:
    state.put("ok", 1)
    state.put("big", 2**70)  # scalars are not checked at put time (it would cost every record)
    with pytest.raises(SerializationError, match=r"key 'big': .*an int outside the 64-bit range"):
        state.flush()
    assert state.dirty == {"ok", "big"}  # nothing written, nothing forgotten
    state.put("big", 1)
    state.flush()
    assert not state.dirty


def test_flush_writes_one_write_batch_with_puts_and_deletes(tmp_path: Path) -> None:
    state = KeyedState.open(tmp_path / "live")
    for i in range(100):
        state.put(i, i * i)
    state.flush()
    state.delete(3)
    state.put(4, "four")
    calls: list[str] = []

    class Spy:
        def __init__(self, db: rocksdict.Rdict):
            self.db = db

        def write(self, batch: rocksdict.WriteBatch, opts: rocksdict.WriteOptions) -> None:
            calls.append(f"write {len(batch)}")
            self.db.write(batch, opts)

        def __getattr__(self, name: str) -> Any:
            calls.append(name)
            return getattr(self.db, name)

    real = state._db
    state._db = Spy(real)  # type: ignore[assignment]
    state.flush()
    state.flush()  # nothing dirty: no write at all
    assert calls == ["write 2"]
    assert not state.dirty
    state._db = real
    state.close()
    contents = raw_contents(tmp_path / "live")
    assert 3 not in contents and contents[4] == "four" and contents[99] == 99 * 99


def test_close_and_reopen_keeps_everything(tmp_path: Path) -> None:
    state = KeyedState.open(tmp_path / "live")
    state.put("a", (1, 2))
    state.close()
    again = KeyedState.open(tmp_path / "live")
    assert not again.cache  # nothing cached yet: the value comes from RocksDB...
    assert again.get("a") == (1, 2)
    assert "a" in again.cache  # ...and is cached
    assert again.get("b", 7) == 7 and "b" not in again
    again.destroy()
    assert not (tmp_path / "live").exists()


def test_use_after_close_is_a_clear_error(tmp_path: Path) -> None:
    state = KeyedState.open(tmp_path / "live")
    state.put("a", 1)
    state.close()
    state.close()  # idempotent
    with pytest.raises(StateError, match=r"^keyed state at .*live: checkpoint into .*chk after close\(\)"):
        state.checkpoint(tmp_path / "chk")
    assert not (tmp_path / "chk").exists()
    state.destroy()  # after close: still removes the directory
    assert not (tmp_path / "live").exists()


def test_open_rejects_a_cache_without_room(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cache_entries must be a positive number of entries, got 0"):
        KeyedState.open(tmp_path / "live", cache_entries=0)


# -- cache policy ------------------------------------------------------------------------------------


def test_eviction_flushes_and_keeps_every_value_reachable(tmp_path: Path) -> None:
    state = KeyedState.open(tmp_path / "live", cache_entries=8)
    model = {}
    for i in range(50):
        state.put(i, i * 10)
        model[i] = i * 10
        assert len(state.cache) <= 8
    assert state.evictions > 0
    assert 0 not in state.cache  # the oldest went first
    assert all(state.get(k) == v for k, v in model.items())
    assert len(state.cache) <= 8  # reading old keys back evicts again
    assert len(state) == 50
    assert list(state.items()) == sorted_by_encoding(model)
    state.destroy()


def test_delete_of_an_evicted_key_hides_it_before_the_flush(tmp_path: Path) -> None:
    state = KeyedState.open(tmp_path / "live", cache_entries=4)
    for i in range(20):
        state.put(i, i)
    assert 0 not in state.cache
    state.delete(0)  # RocksDB still holds 0 until the next flush
    assert state.get(0) is None and 0 not in state
    assert 0 not in dict(state.items())
    state.flush()
    assert state.get(0) is None
    state.destroy()


def test_fast_path_contract(tmp_path: Path) -> None:
    state = KeyedState.open(tmp_path / "live", cache_entries=16)
    keys = [f"w{i % 40}" for i in range(400)]
    cache, dirty, get = state.cache, state.dirty, state.get
    for start in range(0, len(keys), 50):  # batches of 50 records
        for k in keys[start : start + 50]:
            c = (cache[k] if k in cache else get(k, 0)) + 1
            cache[k] = c
            dirty.add(k)
        state.trim()
        assert len(state.cache) <= 16
    assert state.cache is cache and state.dirty is dirty  # bindings survive flushes and evictions
    assert dict(state.items()) == {f"w{i}": 10 for i in range(40)}
    state.destroy()


def test_items_order_does_not_depend_on_what_is_cached(tmp_path: Path) -> None:
    keys: list[Any] = ["b", "a", 300, -1, ("t", 1), 7, "aa", b"raw", 2.5, None]
    warm = KeyedState.open(tmp_path / "warm")  # every key in the cache: sorted in memory
    cold = KeyedState.open(tmp_path / "cold", cache_entries=2)  # spilled: RocksDB iteration
    for i, k in enumerate(keys):
        warm.put(k, i)
        cold.put(k, i)
    assert cold.evictions > 0
    assert list(warm.items()) == list(cold.items()) == sorted_by_encoding({k: i for i, k in enumerate(keys)})
    warm.destroy()
    cold.destroy()


# -- checkpoints and restores ------------------------------------------------------------------------

keys_st = st.one_of(st.integers(-3, 40), st.sampled_from(["a", "b", "c", ("t", 1), ("t", 2)]))
ints_st = st.integers(-(2**63), 2**63 - 1)
values_st = st.one_of(ints_st, st.text(max_size=5), st.lists(ints_st, max_size=3))
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("put"), keys_st, values_st),
        st.tuples(st.just("delete"), keys_st),
        st.tuples(st.just("get"), keys_st),
        st.tuples(st.just("flush")),
        st.tuples(st.just("checkpoint")),
    ),
    max_size=60,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops_st, cache_entries=st.sampled_from([3, 10, 1000]))
def test_restore_gives_the_state_at_checkpoint_time(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[Any, ...]], cache_entries: int
) -> None:
    root = tmp_path_factory.mktemp("prop")
    state = KeyedState.open(root / "live", cache_entries=cache_entries)
    model: dict[Any, Any] = {}
    snapshots: list[tuple[Path, dict[Any, Any]]] = []
    for op in [*ops, ("checkpoint",)]:
        if op[0] == "put":
            state.put(op[1], op[2])
            model[op[1]] = normalize(op[2])
        elif op[0] == "delete":
            state.delete(op[1])
            model.pop(op[1], None)
        elif op[0] == "get":
            assert state.get(op[1], "absent") == model.get(op[1], "absent")
        elif op[0] == "flush":
            state.flush()
        else:
            path = root / f"chk-{len(snapshots) + 1}"
            state.checkpoint(path)
            snapshots.append((path, dict(model)))
    assert list(state.items()) == sorted_by_encoding(model)
    for i, (path, expected) in enumerate(snapshots):
        restored = KeyedState.open(root / f"restored-{i}", restore_from=path, cache_entries=cache_entries)
        assert list(restored.items()) == sorted_by_encoding(expected)
        assert all(restored.get(k) == v for k, v in expected.items())
        restored.put("later", 1)  # writing to the restore must not reach the checkpoint
        restored.checkpoint(root / f"re-{i}")
        restored.destroy()
        assert raw_contents_of_checkpoint(path) == expected
    state.destroy()


def raw_contents_of_checkpoint(path: Path) -> dict[Any, Any]:
    # open a throwaway restore: opening the checkpoint itself would write into it
    probe = KeyedState.open(path.parent / f"probe-{path.name}", restore_from=path)
    try:
        return dict(probe.items())
    finally:
        probe.destroy()


def test_restore_links_sst_files_and_leaves_the_checkpoint_intact(tmp_path: Path) -> None:
    state = KeyedState.open(tmp_path / "live")
    for i in range(5000):
        state.put(i, "x" * 20)
    state.checkpoint(tmp_path / "chk")
    state.destroy()
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in (tmp_path / "chk").iterdir()}
    ssts = [name for name in before if name.endswith(".sst")]
    assert ssts and not any(name in before for name in ("LOCK", "LOG"))

    restored = KeyedState.open(tmp_path / "restored", restore_from=tmp_path / "chk")
    for name in ssts:  # hard links: same inode, no copy
        assert (tmp_path / "restored" / name).stat().st_ino == (tmp_path / "chk" / name).stat().st_ino
    for i in range(5000):  # overwrite everything, then compact: the old SST leaves the live dir
        restored.put(i, -i)
    restored.flush()
    restored._db.flush(True)
    restored._db.compact_range(None, None)
    restored.close()
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in (tmp_path / "chk").iterdir()}
    assert after == before
    assert raw_contents_of_checkpoint(tmp_path / "chk") == {i: "x" * 20 for i in range(5000)}


def test_restore_replaces_a_leftover_database(tmp_path: Path) -> None:
    state = KeyedState.open(tmp_path / "live")
    state.put("k", "checkpointed")
    state.checkpoint(tmp_path / "chk")
    state.put("k", "after")
    state.put("other", 1)
    state.close()  # the live dir now holds newer writes than the checkpoint
    restored = KeyedState.open(tmp_path / "live", restore_from=tmp_path / "chk")
    assert dict(restored.items()) == {"k": "checkpointed"}
    assert not (tmp_path / "live.restoring").exists()
    restored.destroy()


def test_checkpoint_into_an_existing_directory_is_refused(state: KeyedState, tmp_path: Path) -> None:
    (tmp_path / "chk").mkdir()
    with pytest.raises(
        StateError, match=r"checkpoint directory .*chk already exists; checkpoints are immutable"
    ):
        state.checkpoint(tmp_path / "chk")


def test_restore_from_something_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        StateError, match=r"cannot restore keyed state at .*live: .*empty is not a RocksDB checkpoint"
    ):
        KeyedState.open(tmp_path / "live", restore_from=tmp_path / "empty")
    assert not (tmp_path / "live").exists()


# -- checkpoints in two phases: freeze, write (on a thread), thaw -----------------------------------


def test_a_frozen_state_checkpoints_the_boundary_while_writes_go_on(tmp_path: Path) -> None:
    state = KeyedState.open(tmp_path / "live")
    state.put("a", 1)
    state.put("c", 3)
    state.freeze()  # the batch boundary
    state.put("a", 2)
    state.put("b", [4])
    state.delete("c")
    state.flush()  # held back while frozen
    assert state.frozen and state.dirty == {"a", "b", "c"}
    state.write_checkpoint(tmp_path / "chk")
    state.thaw()
    assert not state.frozen
    assert dict(state.items()) == {"a": 2, "b": (4,)}
    state.close()
    assert raw_contents(tmp_path / "live") == {"a": 2, "b": (4,)}  # what was held back reached RocksDB
    restored = KeyedState.open(tmp_path / "again", restore_from=tmp_path / "chk")
    assert dict(restored.items()) == {"a": 1, "c": 3}
    restored.destroy()


def test_write_checkpoint_on_a_thread_while_the_loop_writes(tmp_path: Path) -> None:
    state = KeyedState.open(tmp_path / "live", cache_entries=500)
    for i in range(2000):  # past the cache: the state is in RocksDB, not all cached
        state.put(i, i)
    state.freeze()
    writer = threading.Thread(target=state.write_checkpoint, args=(tmp_path / "chk",))
    writer.start()
    i = 0
    while writer.is_alive() or i < 3000:  # reads and writes of the next batches, meanwhile
        state.put(i % 2500, -i)
        assert state.get((i * 7) % 2000) is not None
        i += 1
    writer.join()
    state.thaw()
    restored = KeyedState.open(tmp_path / "again", restore_from=tmp_path / "chk")
    assert dict(restored.items()) == {i: i for i in range(2000)}
    restored.destroy()
    state.destroy()


def test_items_and_len_of_a_frozen_state_lay_the_held_writes_over_rocksdb(tmp_path: Path) -> None:
    state = KeyedState.open(tmp_path / "live", cache_entries=8)
    model = {f"k{i:02d}": i for i in range(40)}
    for k, v in model.items():
        state.put(k, v)
    assert not state.complete  # evicted: items() must read RocksDB
    state.freeze()
    for k in ("k00", "k13", "k39"):
        state.delete(k)
        del model[k]
    for k, v in (("k05", -5), ("a", 0), ("k13b", 7), ("zz", 9), ("k20", (1, 2))):
        state.put(k, v)
        model[k] = v
    state.delete("never-there")
    assert list(state.items()) == sorted_by_encoding(model)
    assert len(state) == len(model)
    assert len(state.cache) > 8  # nothing is evicted while frozen...
    state.thaw()
    assert len(state.cache) <= 8  # ...until the thaw
    assert list(state.items()) == sorted_by_encoding(model)
    state.destroy()


def test_len_of_a_state_past_its_cache_counts_the_unflushed_writes(tmp_path: Path) -> None:
    state = KeyedState.open(tmp_path / "live", cache_entries=8)
    for i in range(40):
        state.put(i, i)
    assert not state.complete
    state.put("new", 1)  # dirty: not in RocksDB yet
    state.delete(0)
    assert len(state) == 40
    state.destroy()


def test_write_checkpoint_needs_a_frozen_state(state: KeyedState, tmp_path: Path) -> None:
    with pytest.raises(StateError, match=r"write_checkpoint\(\) needs freeze\(\) first"):
        state.write_checkpoint(tmp_path / "chk")


def test_close_after_a_freeze_writes_what_was_held_back(tmp_path: Path) -> None:
    state = KeyedState.open(tmp_path / "live")
    state.put("a", 1)
    state.freeze()
    state.put("a", 2)
    state.close()
    assert raw_contents(tmp_path / "live") == {"a": 2}


# -- storage errors ----------------------------------------------------------------------------------


def test_unwritable_directory_raises_state_error(tmp_path: Path) -> None:
    # tests run as root, which ignores permission bits: a regular file in the way fails for anyone
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StateError) as caught:
        KeyedState.open(blocker / "live")
    message = str(caught.value)
    assert message.startswith(f"keyed state at {blocker / 'live'}: opening the database failed: ")
    assert "Not a directory" in message or "File exists" in message
    assert message.endswith("free disk space, or point --data-dir at a writable disk with room")
    assert "\n" not in message


def test_checkpoint_under_a_file_raises_state_error(state: KeyedState, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    state.put("a", 1)
    with pytest.raises(StateError, match=r"checkpoint into .*file/chk failed: .*--data-dir"):
        state.checkpoint(tmp_path / "file" / "chk")
    assert state.get("a") == 1


def test_full_disk_during_checkpoint_raises_state_error(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes every write past 64 KB fail with EFBIG, like a disk that filled up; it
    # runs in a child process so that the limit cannot touch the test runner.
    script = textwrap.dedent(
        f"""
        import os, resource, signal
        from engine.errors import StateError
        from engine.state import KeyedState
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        state = KeyedState.open({str(tmp_path / "live")!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        for i in range(20000):
            state.put(i, "x" * 100)
        try:
            state.checkpoint({str(tmp_path / "chk")!r})
        except StateError as exc:
            print(exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert message.startswith(
        f"keyed state at {tmp_path / 'live'}: checkpoint into {tmp_path / 'chk'} failed:"
    )
    assert "File too large" in message and message.endswith("--data-dir at a writable disk with room")
    assert not os.path.exists(tmp_path / "chk")  # no partial checkpoint left behind
