"""The global control store: commit contiguity, reads, checkpoints, pruning, reopening, group commit.

Every behavioural test runs against both backends through the ``open_gcs`` fixture; ``open_gcs()``
called again opens the same storage anew (a coordinator restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.gcs import GCS, GCSError, LogConflictError, Op
from engine.gcs_backends import MemoryGCS, RocksGCS

JOB = "wc-1a2b3c"
X = "count/0"

Opener = Callable[..., GCS]


@pytest.fixture(params=["memory", "rocks"])
async def open_gcs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[GCS] = []
    data: dict[bytes, bytes] = {}

    def open_(**kwargs: Any) -> GCS:
        gcs: GCS = (
            MemoryGCS(data=data, **kwargs)
            if request.param == "memory"
            else RocksGCS(tmp_path / "gcs", **kwargs)
        )
        opened.append(gcs)
        return gcs

    yield open_
    for gcs in opened:
        await gcs.aclose()


def reassemble(segments: list[tuple[int, bytes, int]], start: int) -> bytes:
    """The determinants from ``start`` on, one byte each, skipping positions already read."""
    out = bytearray()
    position = start
    for s, entries, count in segments:
        assert len(entries) == count
        assert s <= position, f"segment at {s} leaves a hole at {position}"
        out += entries[position - s :]
        position = max(position, s + count)
    return bytes(out)


LOG = bytes(range(200))  # position p holds determinant byte p: segments are slices of it


async def put(gcs: GCS, start: int, end: int, instance: str = X) -> int:
    return await gcs.append_log(JOB, instance, start, LOG[start:end], end - start)


# -- commit and read ---------------------------------------------------------------------------------


async def test_in_order_segments_commit_as_they_arrive(open_gcs: Opener) -> None:
    gcs = open_gcs()
    assert gcs.committed(JOB, X) == 0
    assert await put(gcs, 0, 3) == 3
    assert await put(gcs, 3, 5) == 5
    assert gcs.committed(JOB, X) == 5
    assert await gcs.read_log(JOB, X, 0) == [(0, LOG[0:3], 3), (3, LOG[3:5], 2)]


async def test_commit_advances_only_over_a_contiguous_prefix(open_gcs: Opener) -> None:
    gcs = open_gcs()
    assert await put(gcs, 5, 8) == 0
    assert await put(gcs, 3, 5) == 0
    assert gcs.committed(JOB, X) == 0
    assert await gcs.read_log(JOB, X, 0) == []  # pending segments are not readable
    assert await put(gcs, 0, 3) == 8  # the hole is filled: both pending segments join the run
    assert await put(gcs, 0, 3, instance="count/1") == 3
    assert gcs.committed_all(JOB) == {X: 8, "count/1": 3}
    assert reassemble(await gcs.read_log(JOB, X, 0), 0) == LOG[:8]


async def test_overlapping_segments_with_other_boundaries_chain(open_gcs: Opener) -> None:
    gcs = open_gcs()
    await put(gcs, 0, 10)
    await put(gcs, 20, 30)
    assert await put(gcs, 5, 22) == 30  # a recovered instance re-flushing with other boundaries
    assert await put(gcs, 2, 8) == 30  # entirely committed: acknowledged, not stored
    segments = await gcs.read_log(JOB, X, 0)
    assert [(s, n) for s, _, n in segments] == [(0, 10), (5, 17), (20, 10)]
    assert reassemble(segments, 0) == LOG[:30]
    # reading from the middle: the first segment begins before `start`, the caller skips
    segments = await gcs.read_log(JOB, X, 12)
    assert [(s, n) for s, _, n in segments] == [(5, 17), (20, 10)]
    assert reassemble(segments, 12) == LOG[12:30]
    assert await gcs.read_log(JOB, X, 30) == []
    assert await gcs.read_log(JOB, "never/0", 0) == []


async def test_a_retry_is_idempotent_but_different_bytes_conflict(open_gcs: Opener) -> None:
    gcs = open_gcs()
    await put(gcs, 0, 4)
    assert await put(gcs, 0, 4) == 4
    await put(gcs, 6, 8)
    with pytest.raises(LogConflictError) as info:
        await gcs.append_log(JOB, X, 6, b"XY", 2)
    assert str(info.value) == (
        f"instance {X} of job {JOB} re-sent log positions [6, 8) with different bytes (2 vs 2 stored); one "
        "position holds one determinant: is a dead incarnation still flushing, or is the determinant "
        "encoding not deterministic?"
    )
    with pytest.raises(LogConflictError):
        await gcs.append_log(JOB, X, 0, b"ABCD", 4)  # committed segments are checked as well
    # both conflicts left the store as it was
    assert await put(gcs, 4, 6) == 8
    assert reassemble(await gcs.read_log(JOB, X, 0), 0) == LOG[:8]


async def test_conflict_within_one_group(open_gcs: Opener) -> None:
    gcs = open_gcs()
    results = await asyncio.gather(
        put(gcs, 0, 2), gcs.append_log(JOB, X, 0, b"zz", 2), put(gcs, 0, 2), return_exceptions=True
    )
    assert results[0] == 2 and results[2] == 2
    assert isinstance(results[1], LogConflictError)


async def test_bad_arguments_are_refused(open_gcs: Opener) -> None:
    gcs = open_gcs()
    with pytest.raises(GCSError, match=r"bad span start=0 count=0; need start >= 0, count >= 1"):
        await gcs.append_log(JOB, X, 0, b"", 0)
    with pytest.raises(GCSError, match=r"bad span start=-1"):
        await gcs.append_log(JOB, X, -1, b"a", 1)
    with pytest.raises(GCSError, match=r"invalid job id 'a/b' for the GCS"):
        await gcs.append_log("a/b", X, 0, b"a", 1)
    with pytest.raises(GCSError, match=r"invalid instance name 'count/0/' of job"):
        await gcs.append_log(JOB, "count/0/", 0, b"a", 1)
    with pytest.raises(GCSError, match=r"checkpoint id -1 is not in 0\.\."):
        await gcs.put_checkpoint(JOB, X, -1, b"r")
    with pytest.raises(GCSError, match=r"before position 5: only 0 is committed"):
        await gcs.prune_log("ghost-1", X, 5)
    assert gcs.jobs() == []  # refused requests leave nothing behind


async def test_discard_uncommitted_drops_a_dead_incarnations_pending_segments(open_gcs: Opener) -> None:
    gcs = open_gcs()
    await put(gcs, 0, 5)
    await put(gcs, 8, 12)  # the dead incarnation's flush of [5, 8) never arrived
    assert await gcs.discard_uncommitted(JOB, X) == 5
    # the new incarnation decides positions 5.. afresh: its [5, 10) must not join the stale [8, 12)
    assert await gcs.append_log(JOB, X, 5, b"NEWNE", 5) == 10
    assert reassemble(await gcs.read_log(JOB, X, 0), 0) == LOG[:5] + b"NEWNE"
    await gcs.aclose()
    gcs = open_gcs()
    assert gcs.committed(JOB, X) == 10


# -- many segments in one request ---------------------------------------------------------------------


async def test_append_logs_stores_many_segments_in_one_group(open_gcs: Opener) -> None:
    gcs = open_gcs()
    writes = count_writes(gcs)
    segments = [(f"count/{i}", s, LOG[s : s + 4], 4) for s in (8, 0, 4) for i in range(5)]
    assert await gcs.append_logs(JOB, segments) == [12] * 15  # all acknowledged together
    assert writes == [15]  # one request, one group, one storage write
    assert gcs.committed_all(JOB) == {f"count/{i}": 12 for i in range(5)}
    assert await gcs.append_logs(JOB, []) == []
    assert writes == [15]


async def test_append_logs_fails_a_refused_segment_alone(open_gcs: Opener) -> None:
    gcs = open_gcs()
    await put(gcs, 0, 4)
    writes = count_writes(gcs)
    results = await gcs.append_logs(
        JOB,
        [
            (X, 4, LOG[4:6], 2),
            (X, 0, b"ABCD", 4),  # conflicts with the stored [0, 4)
            (X, -1, b"a", 1),
            ("count/0/", 0, b"a", 1),
            (X, 6, LOG[6:9], 3),
            ("count/1", 0, LOG[0:2], 2),
            (X, 4, b"zz", 2),  # conflicts with [4, 6) of this very call
        ],
    )
    assert results[0] == results[4] == 9 and results[5] == 2
    assert isinstance(results[1], LogConflictError) and isinstance(results[6], LogConflictError)
    assert str(results[1]).startswith(
        f"instance {X} of job {JOB} re-sent log positions [0, 4) with different"
    )
    assert isinstance(results[2], GCSError) and str(results[2]) == (
        f"append_log for instance {X} of job {JOB}: bad span start=-1 count=1; need start >= 0, count >= 1 "
        "and start + count <= 99999999999999999999"
    )
    assert isinstance(results[3], GCSError) and "invalid instance name 'count/0/'" in str(results[3])
    assert writes == [3]
    assert reassemble(await gcs.read_log(JOB, X, 0), 0) == LOG[:9]
    # every segment refused on sight: nothing is queued, the results are there at once
    future = gcs.append_logs(JOB, [(X, 0, b"", 0), ("count/0/", 0, b"a", 1)])
    assert future.done() and all(isinstance(r, GCSError) for r in future.result())
    # conflicts are found by the writer: queued, and nothing to write
    results = await gcs.append_logs(JOB, [(X, 0, b"ABCD", 4)])
    assert isinstance(results[0], LogConflictError)
    assert writes == [3]


async def test_append_logs_on_a_closed_or_broken_store_raises() -> None:
    gcs = MemoryGCS()
    await gcs.aclose()
    with pytest.raises(GCSError, match=r"^memory GCS is closed; open it again to use it$"):
        gcs.append_logs(JOB, [(X, 0, b"a", 1)])

    class FullDisk(MemoryGCS):
        async def _write(self, ops: list[Op]) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    gcs = FullDisk()
    with pytest.raises(GCSError, match=r"^write to memory GCS failed: OSError: \[Errno 28\]"):
        await gcs.append_logs(JOB, [(X, 0, b"a", 1), ("count/1", 0, b"b", 1)])
    assert gcs.data == {}
    await gcs.aclose()


Segment = tuple[str, int, bytes, int]


def _segments(draw: st.DrawFn, n: int) -> list[Segment]:
    out: list[Segment] = []
    for _ in range(n):
        instance = draw(st.sampled_from([X, "count/1"]))
        start = draw(st.integers(-1, 24))
        count = draw(st.integers(0, 8))
        # mostly the true determinants; sometimes other bytes (a conflict when the span is stored)
        data = LOG[max(start, 0) : max(start, 0) + count] if draw(st.integers(0, 5)) else b"#" * count
        out.append((instance, start, data, count))
        if draw(st.integers(0, 4)) == 0:
            out.append(out[-1])  # a duplicate: a retry
    return out


@st.composite
def _histories(draw: st.DrawFn) -> tuple[list[Segment], list[Segment]]:
    return _segments(draw, draw(st.integers(0, 8))), _segments(draw, draw(st.integers(1, 16)))


@settings(max_examples=150, deadline=None)
@given(history=_histories())
def test_append_logs_is_append_log_for_each_segment_in_order(
    history: tuple[list[Segment], list[Segment]],
) -> None:
    """One call == one append_log per segment, in order: same refusals, same storage, same commits.

    Both stores first get the same earlier segments one by one (so a segment may repeat, conflict with
    or overlap a stored or committed one); then one store gets the rest one append_log at a time, the
    other in one append_logs call. Segments overlap, repeat, come out of order, leave holes, conflict
    and have bad spans.
    """
    earlier, segments = history

    async def scenario() -> None:
        one_by_one, batched = MemoryGCS(), MemoryGCS()
        for gcs in (one_by_one, batched):
            for seg in earlier:
                with contextlib.suppress(GCSError):
                    await gcs.append_log(JOB, *seg[:1], seg[1], seg[2], seg[3])
        expected: list[int | Exception] = []
        for instance, start, data, count in segments:
            try:
                expected.append(await one_by_one.append_log(JOB, instance, start, data, count))
            except GCSError as exc:
                expected.append(exc)
        writes = count_writes(batched)
        results = await batched.append_logs(JOB, segments)
        assert len(writes) <= 1
        assert len(results) == len(segments)
        for seg, want, got in zip(segments, expected, results, strict=True):
            if isinstance(want, Exception):
                assert type(got) is type(want) and str(got) == str(want), seg
            else:
                assert not isinstance(got, Exception), (seg, got)
                # acknowledged with the whole call: the position after all of it, not after this one
                assert want <= got == batched.committed(JOB, seg[0]), seg
        assert batched.data == one_by_one.data  # byte for byte the same storage
        assert batched.committed_all(JOB) == one_by_one.committed_all(JOB)
        for instance in (X, "count/1"):
            assert await batched.read_log(JOB, instance, 0) == await one_by_one.read_log(JOB, instance, 0)
        await one_by_one.aclose()
        await batched.aclose()
        reopened = MemoryGCS(data=batched.data)
        assert reopened.committed_all(JOB) == one_by_one.committed_all(JOB)

    asyncio.run(scenario())


# -- checkpoints -------------------------------------------------------------------------------------


async def test_checkpoints_latest_and_complete(open_gcs: Opener) -> None:
    gcs = open_gcs()
    assert await gcs.latest_checkpoint(JOB, X) is None
    await gcs.put_checkpoint(JOB, X, 1, b"rec1")
    await gcs.put_checkpoint(JOB, X, 2, b"rec2")
    assert await gcs.checkpoints(JOB, X) == [(1, False), (2, False)]
    assert await gcs.latest_checkpoint(JOB, X) is None
    assert await gcs.latest_checkpoint(JOB, X, complete_only=False) == b"rec2"
    await gcs.mark_checkpoint_complete(JOB, X, 1)
    assert await gcs.latest_checkpoint(JOB, X) == b"rec1"
    assert await gcs.checkpoints(JOB, X) == [(1, True), (2, False)]
    await gcs.put_checkpoint(JOB, X, 2, b"rec2-retaken")  # an incomplete checkpoint may be replaced
    await gcs.mark_checkpoint_complete(JOB, X, 2)
    await gcs.mark_checkpoint_complete(JOB, X, 1)  # late and superseded: nothing happens
    assert await gcs.checkpoints(JOB, X) == [(2, True)]
    assert await gcs.latest_checkpoint(JOB, X) == b"rec2-retaken"
    with pytest.raises(GCSError) as info:
        await gcs.put_checkpoint(JOB, X, 2, b"again")
    assert str(info.value) == (
        f"put_checkpoint 2 for instance {X} of job {JOB}: checkpoint 2 is already complete and ids must "
        "increase; a stale request?"
    )
    with pytest.raises(GCSError) as info:
        await gcs.mark_checkpoint_complete(JOB, X, 7)
    assert str(info.value) == (
        f"cannot mark checkpoint 7 of instance {X} of job {JOB} complete: it was never stored "
        "(stored: [2]); await put_checkpoint first"
    )
    await gcs.put_checkpoint(JOB, X, 3, b"rec3")
    await gcs.aclose()
    gcs = open_gcs()
    assert await gcs.checkpoints(JOB, X) == [(2, True), (3, False)]
    assert await gcs.latest_checkpoint(JOB, X) == b"rec2-retaken"


async def test_superseded_checkpoint_records_are_deleted_one_completion_late() -> None:
    gcs = MemoryGCS()
    for checkpoint_id in (1, 2, 3):
        await gcs.put_checkpoint(JOB, X, checkpoint_id, b"r%d" % checkpoint_id)
        await gcs.mark_checkpoint_complete(JOB, X, checkpoint_id)
    # record 2 stays until the next completion, for readers that had not seen 3's acknowledgment
    assert sorted(k for k in gcs.data if k.startswith(b"chk/")) == [
        f"chk/{JOB}/{X}/{2:020d}".encode(),
        f"chk/{JOB}/{X}/{3:020d}".encode(),
    ]
    await gcs.aclose()


# -- pruning -----------------------------------------------------------------------------------------


async def test_prune_drops_segments_before_a_complete_checkpoint(open_gcs: Opener) -> None:
    gcs = open_gcs()
    for start in range(0, 12, 3):
        await put(gcs, start, start + 3)
    await gcs.prune_log(JOB, X, 7)  # [6, 9) straddles the position: kept
    assert [s for s, _, _ in await gcs.read_log(JOB, X, 7)] == [6, 9]
    with pytest.raises(GCSError) as info:
        await gcs.read_log(JOB, X, 5)
    assert str(info.value) == (
        f"read_log for instance {X} of job {JOB} from position 5: the log before position 7 was pruned "
        "after a complete checkpoint; recover from the latest complete checkpoint instead"
    )
    with pytest.raises(GCSError) as info:
        await gcs.prune_log(JOB, X, 13)
    assert str(info.value) == (
        f"prune_log for instance {X} of job {JOB} before position 13: only 12 is committed; prune at the "
        "position of a complete checkpoint"
    )
    assert await put(gcs, 0, 3) == 12  # a late retry of a pruned segment changes nothing
    await put(gcs, 14, 16)
    await gcs.aclose()
    gcs = open_gcs()
    assert gcs.committed(JOB, X) == 12
    assert reassemble(await gcs.read_log(JOB, X, 7), 7) == LOG[7:12]
    assert await put(gcs, 12, 14) == 16  # the pending segment survived the restart
    await gcs.prune_log(JOB, X, 16)
    assert await gcs.read_log(JOB, X, 16) == []


# -- metadata, jobs, reopening -----------------------------------------------------------------------


async def test_meta_and_drop_job(open_gcs: Opener) -> None:
    gcs = open_gcs()
    other = "other-000001"
    assert await gcs.get_meta(JOB, "plan") is None
    await gcs.put_meta(JOB, "plan", b"v1")
    await gcs.put_meta(JOB, "plan", b"v2")
    await gcs.put_meta(other, "plan", b"o")
    await put(gcs, 0, 4)
    await gcs.put_checkpoint(JOB, X, 1, b"r")
    assert await gcs.get_meta(JOB, "plan") == b"v2"
    assert gcs.jobs() == sorted([JOB, other])
    await gcs.drop_job(JOB)
    assert gcs.committed_all(JOB) == {}
    assert await gcs.get_meta(JOB, "plan") is None
    assert await gcs.checkpoints(JOB, X) == []
    assert gcs.jobs() == [other]
    await gcs.aclose()
    gcs = open_gcs()
    assert gcs.jobs() == [other]
    assert await gcs.get_meta(other, "plan") == b"o"
    assert gcs.committed(JOB, X) == 0
    assert await put(gcs, 0, 2) == 2  # a dropped job id can start afresh


async def test_reopen_recovers_everything(open_gcs: Opener) -> None:
    gcs = open_gcs()
    await put(gcs, 0, 10)
    await put(gcs, 5, 20)
    await put(gcs, 25, 30)
    await put(gcs, 0, 7, instance="count/1")
    await gcs.put_checkpoint(JOB, X, 4, b"four")
    await gcs.mark_checkpoint_complete(JOB, X, 4)
    await gcs.put_meta(JOB, "plan", b"p")
    before = await gcs.read_log(JOB, X, 3)
    await gcs.aclose()
    with pytest.raises(GCSError, match=r"is closed; open it again to use it"):
        await put(gcs, 30, 31)
    gcs = open_gcs()
    assert gcs.committed_all(JOB) == {X: 20, "count/1": 7}
    assert await gcs.read_log(JOB, X, 3) == before
    assert await gcs.latest_checkpoint(JOB, X) == b"four"
    assert await gcs.get_meta(JOB, "plan") == b"p"
    assert await put(gcs, 20, 25) == 30


# -- group commit and the delay knob -----------------------------------------------------------------


def count_writes(gcs: GCS) -> list[int]:
    """Wrap the backend's write primitive; the list receives the size of every write."""
    sizes: list[int] = []
    write = gcs._write

    async def counting(ops: list[Op]) -> None:
        sizes.append(len(ops))
        await write(ops)

    gcs._write = counting  # type: ignore[method-assign]
    return sizes


async def test_concurrent_appends_are_written_as_one_group(open_gcs: Opener) -> None:
    gcs = open_gcs()
    writes = count_writes(gcs)
    results = await asyncio.gather(*(put(gcs, 0, 3, instance=f"count/{i}") for i in range(40)))
    assert results == [3] * 40
    assert writes == [40]


async def test_delay_applies_to_every_ack_without_serializing_writers(open_gcs: Opener) -> None:
    gcs = open_gcs(delay_ms=20)
    await put(gcs, 0, 1, instance="warm/0")  # first use starts the writer task

    async def timed(coro: Any) -> float:
        t0 = time.perf_counter()
        await coro
        return time.perf_counter() - t0

    # one writer: every write, log or not, is acknowledged after the delay
    for coro in (put(gcs, 0, 2), gcs.put_meta(JOB, "k", b"v"), gcs.put_checkpoint(JOB, X, 1, b"r")):
        assert await timed(coro) >= 0.019
    # committed() moves at the acknowledgment, not at the write
    task = asyncio.ensure_future(put(gcs, 2, 4))
    await asyncio.sleep(0.005)
    assert gcs.committed(JOB, X) == 2
    assert await task == 4

    # 32 writers arriving 0.5 ms apart, so in many groups: each waits ~20 ms, not 32 x 20 ms
    async def late_writer(i: int) -> float:
        await asyncio.sleep(0.0005 * i)
        return await timed(put(gcs, 0, 5, instance=f"count/{i}"))

    writes = count_writes(gcs)
    t0 = time.perf_counter()
    latencies = await asyncio.gather(*(late_writer(i) for i in range(1, 33)))
    elapsed = time.perf_counter() - t0
    assert len(writes) >= 4, f"the writers should have arrived in several groups, not {writes}"
    assert min(latencies) >= 0.019
    assert max(latencies) < 0.036, f"a writer waited {max(latencies) * 1000:.1f} ms: acks are serialized"
    assert elapsed < 0.016 + 0.045, f"32 appends took {elapsed * 1000:.1f} ms with a 20 ms delay"


async def test_a_pipelined_flush_chains_across_unacknowledged_groups(open_gcs: Opener) -> None:
    gcs = open_gcs(delay_ms=10)
    first = asyncio.ensure_future(put(gcs, 0, 5))
    await asyncio.sleep(0.002)  # the first group is written but not acknowledged
    second = asyncio.ensure_future(put(gcs, 5, 9))
    assert await first == 5
    assert await second == 9


async def test_aclose_acknowledges_everything_queued(open_gcs: Opener) -> None:
    gcs = open_gcs(delay_ms=10)
    tasks = [asyncio.ensure_future(put(gcs, i, i + 1)) for i in range(5)]
    await asyncio.sleep(0)
    await asyncio.gather(gcs.aclose(), gcs.aclose())
    assert [t.result() for t in tasks] == [5] * 5  # one group: each sees the commit of all five


async def test_a_failed_write_breaks_the_store_with_a_clear_error() -> None:
    class FullDisk(MemoryGCS):
        async def _write(self, ops: list[Op]) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    gcs = FullDisk()
    message = (
        "write to memory GCS failed: OSError: [Errno 28] No space left on device; free disk space or fix "
        "the storage, then restart the coordinator (it recovers from the GCS on disk)"
    )
    with pytest.raises(GCSError) as info:
        await put(gcs, 0, 1)
    assert str(info.value) == message
    with pytest.raises(GCSError) as info:
        await gcs.put_meta(JOB, "k", b"v")
    assert str(info.value) == message
    await gcs.aclose()


async def test_a_cancelled_caller_does_not_disturb_the_others(open_gcs: Opener) -> None:
    gcs = open_gcs(delay_ms=5)
    cancelled = asyncio.ensure_future(put(gcs, 0, 3))
    other = asyncio.ensure_future(put(gcs, 3, 6))
    await asyncio.sleep(0.001)
    cancelled.cancel()
    assert await other == 6  # the cancelled append was written before its caller gave up
    assert gcs.committed(JOB, X) == 6


# -- RocksDB specifics -------------------------------------------------------------------------------


async def test_rocks_refuses_a_directory_in_use(tmp_path: Path) -> None:
    async with RocksGCS(tmp_path / "gcs"):
        with pytest.raises(GCSError, match=r"cannot open the GCS at .*gcs: .*is another coordinator using"):
            RocksGCS(tmp_path / "gcs")


async def test_rocks_sync_mode_is_durable_and_reopens(tmp_path: Path) -> None:
    async with RocksGCS(tmp_path / "gcs", sync=True) as gcs:
        results = await asyncio.gather(*(put(gcs, s, s + 2) for s in range(0, 20, 2)))
        assert max(results) == 20
    async with RocksGCS(tmp_path / "gcs") as gcs:
        assert reassemble(await gcs.read_log(JOB, X, 0), 0) == LOG[:20]


async def test_rocks_rejects_a_foreign_database(tmp_path: Path) -> None:
    from rocksdict import Options, Rdict

    options = Options(raw_mode=True)
    options.create_if_missing(True)
    db = Rdict(str(tmp_path / "db"), options)
    db[b"something-else"] = b"x"
    db.close()
    with pytest.raises(GCSError, match=r"unexpected key b'something-else' in GCS at .*is this a stashflow"):
        RocksGCS(tmp_path / "db")


# -- random segmentations ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.lists(st.integers(1, 59), max_size=6), min_size=1, max_size=3),
    drop=st.sets(st.integers(0, 20), max_size=3),
    seed=st.integers(0, 2**32),
)
def test_random_segmentations_commit_the_longest_contiguous_prefix(
    cuts: list[list[int]], drop: set[int], seed: int
) -> None:
    """Several segmentations of one 60-determinant log (retries, re-flushes), shuffled, some lost."""
    segments: list[tuple[int, int]] = []
    for boundaries in cuts:
        points = [0, *sorted(set(boundaries)), 60]
        segments += list(itertools.pairwise(points))
    rng = random.Random(seed)
    rng.shuffle(segments)
    kept = [seg for i, seg in enumerate(segments) if i not in drop]

    async def scenario() -> None:
        gcs = MemoryGCS()
        await asyncio.gather(*(put(gcs, s, e) for s, e in kept))
        expected = 0
        for s, e in sorted(kept):
            if s <= expected:
                expected = max(expected, e)
        assert gcs.committed(JOB, X) == expected
        for start in (0, expected // 2, expected):
            assert reassemble(await gcs.read_log(JOB, X, start), start) == LOG[start:expected]
        await gcs.aclose()
        reopened = MemoryGCS(data=gcs.data)
        assert reopened.committed(JOB, X) == expected

    asyncio.run(scenario())
