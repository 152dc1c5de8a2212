"""The output log: append, trim and resend, spilling to disk past the memory limit, and its errors."""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.codec import Batch, encode_batch
from engine.errors import ChannelClosed, ParameterError, ProtocolError
from engine.output_log import OutputLog, SpillError

CH = "map/0->sum/1#0"


def frame(seq: int, size: int = 100) -> bytes:
    """The encoded BATCH frame of ``seq``, with a payload that tells seqs apart."""
    return encode_batch(Batch(seq, [bytes([seq % 256]) * size]), compress_min_bytes=None)


SIZE = len(frame(1))  # every frame of the default payload size


def fill(out: OutputLog, first: int, last: int, size: int = 100) -> dict[int, bytes]:
    frames = {seq: frame(seq, size) for seq in range(first, last + 1)}
    for seq, data in frames.items():
        out.append(seq, data)
    return frames


def spill_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("outlog-*.spill")) if directory.exists() else []


# -- append, trim, resend ----------------------------------------------------------------------------


def test_append_trim_and_resend() -> None:
    out = OutputLog(CH)
    assert (out.first_seq, out.last_seq, len(out)) == (None, None, 0)
    assert list(out.frames_after(0)) == []
    frames = fill(out, 1, 5)
    assert (out.first_seq, out.last_seq, len(out)) == (1, 5, 5)
    assert list(out.frames_after(0)) == sorted(frames.items())
    assert list(out.frames_after(3)) == [(4, frames[4]), (5, frames[5])]
    assert list(out.frames_after(5)) == []
    assert list(out.frames_after(9)) == []  # the receiver holds more than was regenerated so far
    out.trim(2)
    out.trim(1)  # a late trim changes nothing
    assert (out.first_seq, len(out)) == (3, 3)
    assert list(out.frames_after(2)) == [(s, frames[s]) for s in (3, 4, 5)]
    size = len(frames[1])
    assert out.statistics().bytes_in_memory == 3 * size
    assert out.statistics().max_bytes == 5 * size
    assert out.statistics().trims == 1


def test_a_resend_below_the_trim_point_is_a_protocol_violation() -> None:
    out = OutputLog(CH)
    fill(out, 1, 6)
    out.trim(4)
    with pytest.raises(ProtocolError) as info:
        out.frames_after(2)
    assert str(info.value) == (
        f"output log of channel {CH}: cannot resend the frames after seq 2: frames up to seq 4 were trimmed "
        "once the receiver's checkpoint consuming them completed; the receiver must restart from a "
        "checkpoint that consumed seq 4 or later"
    )
    assert [s for s, _ in out.frames_after(4)] == [5, 6]


def test_a_rebuilt_log_starts_at_its_checkpoints_seq() -> None:
    out = OutputLog(CH)
    fill(out, 501, 503)
    assert (out.first_seq, len(out)) == (501, 3)
    assert [s for s, _ in out.frames_after(500)] == [501, 502, 503]
    with pytest.raises(
        ProtocolError, match=r"cannot resend the frames after seq 300: this log starts at seq 501"
    ):
        out.frames_after(300)


def test_appends_must_be_consecutive_frames_of_their_seq() -> None:
    out = OutputLog(CH)
    with pytest.raises(ProtocolError, match=r"seqs start at 1, got 0"):
        out.append(0, frame(0))
    out.append(1, frame(1))
    with pytest.raises(ProtocolError) as info:
        out.append(3, frame(3))
    assert str(info.value) == (
        f"output log of channel {CH}: appended seq 3 after seq 1; seqs must grow by exactly 1 (a batch was "
        "skipped or logged twice)"
    )
    with pytest.raises(ProtocolError) as info:
        out.append(2, frame(7))
    assert str(info.value) == (
        f"output log of channel {CH}: the frame appended as seq 2 is not a BATCH frame of that seq "
        f"({SIZE} bytes, seq 7); append the frame encode_batch() produced"
    )
    with pytest.raises(ProtocolError, match=r"\(3 bytes, seq None\)"):
        out.append(2, b"abc")
    assert (out.last_seq, len(out)) == (1, 1)


def test_a_trim_past_the_end_drops_what_a_replay_regenerates_below_it() -> None:
    out = OutputLog(CH)
    fill(out, 1, 3)
    out.trim(6)  # the receiver's checkpoint consumed seqs this replaying sender has not regenerated yet
    assert (out.first_seq, out.last_seq, len(out)) == (None, 3, 0)
    fill(out, 4, 8)
    assert (out.first_seq, out.last_seq, len(out)) == (7, 8, 2)
    assert [s for s, _ in out.frames_after(6)] == [7, 8]
    assert out.statistics().bytes_in_memory == 2 * len(frame(7))


# -- spilling ----------------------------------------------------------------------------------------


def test_spills_past_the_memory_limit_and_reads_back_identical_bytes(tmp_path: Path) -> None:
    out = OutputLog(CH, memory_limit_bytes=1000, spill_dir=tmp_path / "spill")
    frames = fill(out, 1, 40)  # 40 frames of SIZE bytes
    stats = out.statistics()
    assert stats.bytes_in_memory <= 1000
    assert stats.bytes_in_memory + stats.bytes_spilled == 40 * SIZE
    assert stats.max_bytes == 40 * SIZE
    assert len(spill_files(tmp_path / "spill")) == 1
    assert spill_files(tmp_path / "spill")[0].startswith("outlog-map_0-_sum_1_0-")
    assert list(out.frames_after(0)) == sorted(frames.items())
    assert list(out.frames_after(17)) == [(s, frames[s]) for s in range(18, 41)]
    # spilling brings memory down to 3/4 of the limit at once, not one frame per append
    assert stats.bytes_in_memory <= 750 + SIZE


def test_trim_deletes_spill_files_once_all_their_frames_are_trimmed(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    out = OutputLog(CH, memory_limit_bytes=500, spill_dir=spill, spill_file_bytes=1000)
    frames = fill(out, 1, 60)
    files = spill_files(spill)
    assert len(files) >= 3, "the log should have rotated to new spill files"
    out.trim(10)
    assert len(spill_files(spill)) in (len(files), len(files) - 1)
    assert list(out.frames_after(10)) == [(s, frames[s]) for s in range(11, 61)]
    out.trim(40)
    assert 0 < len(spill_files(spill)) < len(files)
    assert out.statistics().bytes_spilled + out.statistics().bytes_in_memory == 20 * SIZE
    out.trim(out.last_seq - 1)  # type: ignore[operator]
    assert spill_files(spill) == []
    assert out.statistics().bytes_spilled == 0
    assert list(out.frames_after(59)) == [(60, frames[60])]
    fill(out, 61, 70)  # spilling again starts a new file
    assert len(spill_files(spill)) == 1
    assert [s for s, _ in out.frames_after(59)] == list(range(60, 71))
    out.close()
    assert spill_files(spill) == []
    with pytest.raises(
        ChannelClosed, match=r"output log of channel .* is closed; append after close is a bug"
    ):
        out.append(71, frame(71))
    with pytest.raises(ChannelClosed, match=r"is closed; resending after close is a bug"):
        out.frames_after(60)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ParameterError, match=r"memory_limit_bytes \(0\) and spill_file_bytes \(1\) must be"):
        OutputLog(CH, memory_limit_bytes=0, spill_file_bytes=1)


def test_iterating_while_the_log_changes(tmp_path: Path) -> None:
    out = OutputLog(CH, memory_limit_bytes=600, spill_dir=tmp_path, spill_file_bytes=500)
    frames = fill(out, 1, 20)
    it = out.frames_after(0)
    assert next(it) == (1, frames[1])
    out.trim(8)  # the receiver completed a checkpoint meanwhile: those are skipped, their files gone
    frames |= fill(out, 21, 30)  # appended after the call: their sender delivers them, not the resend
    assert [s for s, _ in it] == list(range(9, 21))
    assert list(out.frames_after(20)) == [(s, frames[s]) for s in range(21, 31)]


def test_spill_to_an_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    out = OutputLog(CH, memory_limit_bytes=300, spill_dir=blocker / "spill")
    frames = fill(out, 1, 2)
    with pytest.raises(SpillError) as info:
        out.append(3, frame(3))
    assert str(info.value) == (
        f"output log of channel {CH}: cannot create a spill file in {blocker / 'spill'}: Not a directory; "
        "make the directory writable or free disk space there, or raise the output log memory limit, or "
        "point --data-dir elsewhere"
    )
    assert isinstance(info.value.__cause__, OSError)
    # the failed append left the log as it was
    assert (out.last_seq, len(out)) == (2, 2)
    assert list(out.frames_after(0)) == sorted(frames.items())


def test_a_full_disk_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = OutputLog(CH, memory_limit_bytes=300, spill_dir=tmp_path)
    frames = fill(out, 1, 2)

    def full(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(SpillError) as info:
        out.append(3, frame(3))
    message = str(info.value)
    assert message.startswith(
        f"output log of channel {CH}: cannot spill {2 * SIZE} bytes to {tmp_path}/outlog-"
    )
    assert message.endswith(
        ".spill: No space left on device; free disk space there, or raise the output log memory limit, "
        "or point --data-dir at a larger disk"
    )
    assert spill_files(tmp_path) == []  # the file it had just created is gone
    monkeypatch.undo()
    out.append(3, frames.setdefault(3, frame(3)))  # the disk has room again: the same append works
    assert list(out.frames_after(0)) == sorted(frames.items())
    assert out.statistics().bytes_spilled > 0


def test_without_a_spill_directory_memory_grows_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    out = OutputLog(CH, memory_limit_bytes=300)
    with caplog.at_level(logging.WARNING, logger="engine.output_log"):
        fill(out, 1, 10)
    assert out.statistics().bytes_in_memory == 10 * SIZE
    assert [r.getMessage() for r in caplog.records] == [
        f"output log of channel {CH} holds {3 * SIZE} bytes, over its 300-byte memory limit, and has no spill "
        "directory: memory grows until the receiver's checkpoints complete"
    ]


# -- random operations against a model ---------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 120)),  # payload size
        st.tuples(st.just("trim"), st.integers(-3, 3)),  # relative to the middle of the kept range
        st.tuples(st.just("read"), st.integers(-3, 3)),
    ),
    max_size=60,
)


@settings(max_examples=80, deadline=None)
@given(ops=operations, first=st.integers(1, 5), limit=st.integers(100, 600), file_bytes=st.integers(100, 800))
def test_random_operations_match_a_model(
    ops: list[tuple[str, int]], first: int, limit: int, file_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as spill:
        out = OutputLog(CH, memory_limit_bytes=limit, spill_dir=spill, spill_file_bytes=file_bytes)
        model: dict[int, bytes] = {}
        trimmed, last = 0, first - 1
        for op, arg in ops:
            middle = (max(trimmed, first - 1) + last) // 2
            if op == "append":
                last += 1
                data = frame(last, arg)
                out.append(last, data)
                if last > trimmed:
                    model[last] = data
            elif op == "trim":
                upto = max(0, middle + arg)
                out.trim(upto)
                trimmed = max(trimmed, upto)
                model = {s: f for s, f in model.items() if s > trimmed}
            else:
                after = middle + arg
                if last >= first and after < max(trimmed, first - 1) and after < last:
                    with pytest.raises(ProtocolError):
                        out.frames_after(after)
                else:
                    assert list(out.frames_after(after)) == [
                        (s, f) for s, f in sorted(model.items()) if s > after
                    ]
            stats = out.statistics()
            assert len(out) == stats.batches == len(model)
            assert out.first_seq == (min(model) if model else None)
            assert out.last_seq == (last if last >= first else None)
            assert stats.bytes_in_memory + stats.bytes_spilled == sum(map(len, model.values()))
            assert stats.bytes_in_memory <= max(limit, max(map(len, model.values()), default=0))
            if not stats.bytes_spilled:
                assert os.listdir(spill) == []  # no file outlives its last untrimmed frame
        out.close()
        assert os.listdir(spill) == []
