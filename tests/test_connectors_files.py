"""FileSource (lines, byte-range splits, offsets), FileSink (JSON Lines) and StdoutSink."""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import read_all

from connectors import FileSink, FileSource, StdoutSink
from engine.errors import ParameterError, SerializationError, SourceDataError


def expected_lines(content: bytes, encoding: str = "utf-8") -> list[str]:
    """Reference line splitting, written independently of the reader's block logic."""
    lines = content.split(b"\n")
    terminated = [True] * (len(lines) - 1) + [False]  # the piece after the last b"\n" has no terminator
    if lines[-1] == b"":
        lines.pop()  # not a line: the file ends with a terminator, or is empty
        terminated.pop()
    cut = [
        line[:-1] if done and line.endswith(b"\r") else line
        for line, done in zip(lines, terminated, strict=True)
    ]
    return [line.decode(encoding) for line in cut]


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


# -- FileSource: records --------------------------------------------------------------------------


async def test_lines_terminators_empty_lines_and_unterminated_last_line(tmp_path):
    write(tmp_path / "in.txt", b"first\nsecond\r\n\n\r\nlone\rcr\nend\r\r\nlast")
    reader = FileSource(tmp_path / "in.txt").open(index=0, parallelism=1)
    assert await read_all(reader) == ["first", "second", "", "", "lone\rcr", "end\r", "last"]
    assert await reader.read(10) is None


async def test_terminated_last_line_is_not_followed_by_an_empty_record(tmp_path):
    write(tmp_path / "in.txt", b"a\nb\n")
    assert await read_all(FileSource(tmp_path / "in.txt").open(0, 1)) == ["a", "b"]


async def test_glob_reads_files_in_sorted_order_and_skips_directories(tmp_path):
    write(tmp_path / "b.txt", b"b1\nb2\n")
    write(tmp_path / "a.txt", b"a1")
    write(tmp_path / "c.log", b"not matched\n")
    (tmp_path / "d.txt").mkdir()
    write(tmp_path / "empty.txt", b"")
    reader = FileSource(str(tmp_path / "*.txt")).open(0, 1)
    assert await read_all(reader) == ["a1", "b1", "b2"]


async def test_recursive_glob(tmp_path):
    (tmp_path / "x").mkdir()
    write(tmp_path / "x" / "1.txt", b"deep\n")
    write(tmp_path / "0.txt", b"top\n")
    assert await read_all(FileSource(f"{tmp_path}/**/*.txt").open(0, 1)) == ["top", "deep"]


async def test_unicode_and_latin1(tmp_path):
    write(tmp_path / "u.txt", "naïve\ncafé ☕\n".encode())
    write(tmp_path / "l.txt", "naïve\ncafé\n".encode("latin-1"))
    assert await read_all(FileSource(tmp_path / "u.txt").open(0, 1)) == ["naïve", "café ☕"]
    assert await read_all(FileSource(tmp_path / "l.txt", encoding="latin-1").open(0, 1)) == ["naïve", "café"]


async def test_max_records_and_lines_longer_than_a_chunk(tmp_path):
    long = "x" * 50
    write(tmp_path / "in.txt", f"a\n{long}\nb\n{long}".encode())
    reader = FileSource(tmp_path / "in.txt", chunk_bytes=7).open(0, 1)
    assert await reader.read(1) == ["a"]
    assert await reader.read(2) == [long, "b"]
    assert await reader.read(5) == [long]
    assert await reader.read(5) is None


# -- FileSource: splitting ------------------------------------------------------------------------


async def test_split_of_one_file_by_byte_range(tmp_path):
    # 4 lines of 5 bytes; T=20, p=3 -> ranges [0,6) [6,13) [13,20)
    write(tmp_path / "in.txt", b"aaaa\nbbbb\ncccc\ndddd\n")
    parts = [await read_all(FileSource(tmp_path / "in.txt").open(i, 3)) for i in range(3)]
    # line starts 0, 5 -> instance 0; 10 -> instance 1; 15 -> instance 2
    assert parts == [["aaaa", "bbbb"], ["cccc"], ["dddd"]]


async def test_more_instances_than_bytes_leaves_some_empty(tmp_path):
    write(tmp_path / "in.txt", b"a\n")
    parts = [await read_all(FileSource(tmp_path / "in.txt").open(i, 5)) for i in range(5)]
    # T=2, p=5: ranges [0,0) [0,0) [0,1) [1,1) [1,2); the line starts at byte 0
    assert parts == [[], [], ["a"], [], []]
    progress = [(0, 0), (0, 0), (0, 1), (0, 0), (0, 1)]
    assert [FileSource(tmp_path / "in.txt").open(i, 5).progress() for i in range(5)] == progress


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    contents=st.lists(
        st.lists(
            st.sampled_from([b"a", b"bc", b"\n", b"\r\n", b"\r", "é".encode(), "☕".encode()]), max_size=30
        ),
        min_size=1,
        max_size=4,
    ),
    parallelism=st.integers(1, 7),
    chunk_bytes=st.integers(1, 24),
    batch=st.integers(1, 5),
    data=st.data(),
)
def test_every_line_is_read_by_exactly_one_instance(contents, parallelism, chunk_bytes, batch, data):
    contents = [b"".join(parts) for parts in contents]
    with tempfile.TemporaryDirectory() as tmp:
        for n, content in enumerate(contents):
            write(Path(tmp) / f"f{n:02}.txt", content)
        source = FileSource(os.path.join(tmp, "f*.txt"), chunk_bytes=chunk_bytes)

        async def run():
            got = []
            for index in range(parallelism):
                reader = source.open(index, parallelism)
                mine = []
                while True:
                    if data.draw(st.booleans(), label="restart here"):
                        # a recovered instance: new reader, seeked to the offset, via msgpack
                        offset = msgpack.unpackb(msgpack.packb(reader.offset()))
                        reader = source.open(index, parallelism)
                        reader.seek(offset)
                    chunk = await reader.read(batch)
                    if chunk is None:
                        break
                    mine.extend(chunk)
                assert reader.progress()[0] == reader.progress()[1]
                got.extend(mine)
            return got

        got = asyncio.run(run())
    assert got == [line for content in contents for line in expected_lines(content)]


# -- FileSource: offsets, seek, replay ------------------------------------------------------------


async def test_seek_to_offset_reproduces_records_across_files(tmp_path):
    write(tmp_path / "1.txt", "".join(f"ä{i}\r\n" for i in range(20)).encode())
    write(tmp_path / "2.txt", "".join(f"line {i}\n" for i in range(20)).encode())
    source = FileSource(tmp_path / "*.txt", chunk_bytes=16)
    reader = source.open(0, 1)
    log = []  # (offset before, batch, offset after), as the engine logs SOURCE determinants
    while True:
        before = reader.offset()
        batch = await reader.read(6)
        if batch is None:
            break
        log.append((before, batch, reader.offset()))
    assert [line for _, batch, _ in log for line in batch] == [f"ä{i}" for i in range(20)] + [
        f"line {i}" for i in range(20)
    ]
    assert reader.offset() == (2, 0)
    for before, batch, after in log:
        again = source.open(0, 1)
        again.seek(msgpack.unpackb(msgpack.packb(before)))  # a list after the round trip
        assert await again.read_exact(len(batch)) == batch
        assert again.offset() == after
        assert await again.read(6) == next((b for o, b, _ in log if o == after), None)


async def test_read_exact_replays_a_logged_batch(tmp_path):
    write(tmp_path / "in.txt", b"".join(b"%d\n" % i for i in range(100)))
    source = FileSource(tmp_path / "in.txt", chunk_bytes=10)
    reader = source.open(1, 2)
    before = reader.offset()
    batch = await reader.read(13)
    replay = source.open(1, 2)
    replay.seek(before)
    assert await replay.read_exact(len(batch)) == batch
    assert replay.offset() == reader.offset()


async def test_progress_counts_owned_bytes(tmp_path):
    write(tmp_path / "in.txt", b"aaaa\nbbbb\ncccc\ndddd\n")
    reader = FileSource(tmp_path / "in.txt").open(0, 2)  # owns [0, 10)
    assert reader.progress() == (0, 10)
    await reader.read(1)
    assert reader.progress() == (5, 10)
    await read_all(reader)
    assert reader.progress() == (10, 10)


async def test_seek_to_an_offset_outside_the_input(tmp_path):
    write(tmp_path / "in.txt", b"abc\n")
    reader = FileSource(tmp_path / "in.txt").open(0, 1)
    for bad in [(0, 5), (1, 1), (2, 0), "x", (0,)]:
        with pytest.raises(
            SourceDataError, match=r"offset .* does not fit its 1 input file\(s\); the input files changed"
        ):
            reader.seek(bad)


# -- FileSource: errors ---------------------------------------------------------------------------


def test_nothing_matches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        FileSource("logs/*.txt").open(0, 1)
    assert str(info.value) == (
        f"FileSource: no file matches 'logs/*.txt' (relative paths resolve against {str(tmp_path)!r}); "
        "check the path, or quote the glob so the shell does not expand it"
    )
    with pytest.raises(FileNotFoundError, match=r"no file matches 'missing\.txt'"):
        FileSource("missing.txt").open(0, 1)


def test_a_directory_asks_for_a_glob(tmp_path):
    with pytest.raises(IsADirectoryError, match=re.escape(f"{str(tmp_path)!r} is a directory; pass a glob")):
        FileSource(tmp_path).open(0, 1)


def test_bad_parameters():
    with pytest.raises(ParameterError, match="unknown encoding 'utf9'; use a Python codec name"):
        FileSource("x", encoding="utf9")
    with pytest.raises(
        ParameterError, match=r"encoding 'utf-16' encodes a newline as .*convert the files to UTF-8"
    ):
        FileSource("x", encoding="utf-16")
    with pytest.raises(ParameterError, match="chunk_bytes must be a positive int, got 0"):
        FileSource("x", chunk_bytes=0)


async def test_undecodable_bytes_name_file_and_offset(tmp_path):
    path = write(tmp_path / "bad.txt", b"ok\n" * 10 + b"bad \xff byte\n")
    reader = FileSource(path).open(0, 1)
    with pytest.raises(SourceDataError) as info:
        await read_all(reader)
    assert str(info.value) == (
        f"FileSource: {str(path)!r} is not valid utf-8 at byte 34 (invalid start byte); pass "
        "FileSource(..., encoding=...) with the files' real encoding, or fix the file"
    )


async def test_file_that_vanishes(tmp_path):
    path = write(tmp_path / "in.txt", b"a\nb\nc\n")
    reader = FileSource(path, chunk_bytes=2).open(0, 1)
    assert await reader.read(1) == ["a"]
    path.unlink()
    with pytest.raises(FileNotFoundError) as info:
        await read_all(reader)
    assert str(info.value) == (
        f"FileSource {str(path)!r}: input file {str(path)!r} disappeared before byte 2 of 6 was read; "
        "input files must stay in place until the job ends"
    )


async def test_file_that_shrinks(tmp_path):
    path = write(tmp_path / "in.txt", b"a\nb\nc\n")
    reader = FileSource(path).open(0, 1)
    path.write_bytes(b"a\n")
    with pytest.raises(
        SourceDataError, match=r"'.*in.txt' ended at byte 2 but had 6 bytes when the source opened"
    ):
        await read_all(reader)


# -- FileSink -------------------------------------------------------------------------------------


def test_file_sink_writes_json_lines_per_instance(tmp_path):
    sink = FileSink(tmp_path / "out" / "nested")
    first, second = sink.open(0, 2), sink.open(1, 2)
    first.write_batch([("word", 2), {"k": [1, None, True]}, "naïve"])
    second.write_batch([1.5])
    first.write_batch([])
    first.write_batch(["more"])
    for writer in (first, second):
        writer.flush()
        writer.close()
    out = tmp_path / "out" / "nested"
    assert sorted(os.listdir(out)) == ["part-0.jsonl", "part-1.jsonl"]
    assert (out / "part-0.jsonl").read_text(encoding="utf-8") == (
        '["word",2]\n{"k":[1,null,true]}\n"naïve"\n"more"\n'
    )
    assert (out / "part-1.jsonl").read_bytes() == b"1.5\n"


def test_file_sink_writes_what_orjson_refuses_as_the_json_module_does(tmp_path):
    from collections import namedtuple

    Point = namedtuple("Point", "x y")
    writer = FileSink(tmp_path).open(0, 1)
    writer.write_batch([{1: "int key"}, 2**70, Point(1, 2), ("fast", float("nan"))])
    writer.close()
    lines = (tmp_path / "part-0.jsonl").read_text(encoding="utf-8").splitlines()
    # only the records orjson refuses go through json; NaN is null either way
    assert lines == ['{"1":"int key"}', str(2**70), "[1,2]", '["fast",null]']


def test_file_sink_truncates_its_part_at_open(tmp_path):
    (tmp_path / "part-0.jsonl").write_text("stale\n")
    (tmp_path / "part-1.jsonl").write_text("other instance\n")
    writer = FileSink(tmp_path).open(0, 2)
    writer.write_batch(["fresh"])
    writer.close()
    assert (tmp_path / "part-0.jsonl").read_text() == '"fresh"\n'
    assert (tmp_path / "part-1.jsonl").read_text() == "other instance\n"


def test_file_sink_flush_makes_output_visible(tmp_path):
    writer = FileSink(tmp_path).open(0, 1)
    writer.write_batch([{"a": 1}])
    writer.flush()
    assert [json.loads(line) for line in (tmp_path / "part-0.jsonl").read_text().splitlines()] == [{"a": 1}]
    writer.close()


def test_file_sink_escapes_lone_surrogates(tmp_path):
    writer = FileSink(tmp_path).open(0, 1)
    writer.write_batch(["ok", "bad \udc80"])
    writer.close()
    text = (tmp_path / "part-0.jsonl").read_text(encoding="utf-8")
    assert text == '"ok"\n"bad \\udc80"\n'
    assert [json.loads(line) for line in text.splitlines()] == ["ok", "bad \udc80"]


def test_file_sink_rejects_bytes_and_writes_nothing_of_the_batch(tmp_path):
    writer = FileSink(tmp_path).open(0, 1)
    with pytest.raises(SerializationError) as info:
        writer.write_batch(["fine", ("id", b"\x00raw")])
    writer.close()
    path = str(tmp_path / "part-0.jsonl")
    assert str(info.value) == (
        f"FileSink {path!r}: record ('id', b'\\x00raw') holds bytes b'\\x00raw', which JSON cannot "
        "represent; decode it to str first (e.g. value.decode('utf-8')) in a map step before the sink"
    )
    assert (tmp_path / "part-0.jsonl").read_bytes() == b""


def test_file_sink_prepared_batches_write_what_write_batch_writes(tmp_path):
    batches = [[("word", 2), {"k": [1, None]}], [], ["naïve\nline", 10**30, "\ud800"]]
    plain = FileSink(tmp_path / "plain").open(0, 1)
    prepared = FileSink(tmp_path / "prepared").open(0, 1)
    for records in batches:
        plain.write_batch(records)
        # held batches go through a checkpoint's msgpack as they are (CommitGate.snapshot)
        prepared.write_prepared(msgpack.unpackb(msgpack.packb(prepared.prepare(records)), use_list=False))
    position = plain.snapshot()
    assert prepared.snapshot() == position
    for writer in (plain, prepared):
        writer.flush()
        writer.close()
    text = (tmp_path / "plain" / "part-0.jsonl").read_bytes()
    assert text.count(b"\n") == 5 and position == {"bytes": len(text), "skip": 0}
    assert (tmp_path / "prepared" / "part-0.jsonl").read_bytes() == text


def test_file_sink_restored_skips_regenerated_records_across_prepared_batches(tmp_path):
    sink = FileSink(tmp_path)
    first = sink.open(0, 1)
    first.write_batch(["a", "b"])
    checkpoint = first.snapshot()
    first.write_batch(["c", "d", "e"])  # written after the checkpoint, then the instance died
    first.close()

    again = sink.open(0, 1)
    again.restore(checkpoint)
    # the restarted instance regenerates c..e in other batches: skip 3 lines, then append
    again.write_prepared(again.prepare(["c", "d"]))
    again.write_prepared(again.prepare(["e", "f"]))
    again.write_prepared(again.prepare(["g"]))
    again.flush()
    again.close()
    assert (tmp_path / "part-0.jsonl").read_text() == '"a"\n"b"\n"c"\n"d"\n"e"\n"f"\n"g"\n'


def test_file_sink_prepare_rejects_what_write_batch_rejects_before_anything_is_written(tmp_path):
    writer = FileSink(tmp_path).open(0, 1)
    with pytest.raises(SerializationError, match=r"record \('id', b'x'\) holds bytes b'x'"):
        writer.prepare(["fine", ("id", b"x")])
    writer.close()
    assert (tmp_path / "part-0.jsonl").read_bytes() == b""


def test_file_sink_rejects_other_non_json_values(tmp_path):
    writer = FileSink(tmp_path).open(0, 1)
    with pytest.raises(
        SerializationError,
        match=r"record \{1, 2\} holds a set \(\{1, 2\}\), which JSON cannot represent; convert it",
    ):
        writer.write_batch([{1, 2}])
    with pytest.raises(
        SerializationError, match=r"record \{\(1, 2\): 'v'\} cannot be written as JSON \(keys must be str"
    ):
        writer.write_batch([{(1, 2): "v"}])
    loop: list = []
    loop.append(loop)
    with pytest.raises(
        SerializationError, match=r"cannot be written as JSON \(Circular reference detected\)"
    ):
        writer.write_batch([loop])
    writer.close()


def test_file_sink_directory_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="exists and is not a directory; pass a directory path"):
        FileSink(tmp_path / "f").open(0, 1)


# -- StdoutSink -----------------------------------------------------------------------------------


def test_stdout_sink_prints_like_print(capsys):
    records = ["text", ("word", 2), {"k": None}, 3.5, "two\nlines"]
    writer = StdoutSink().open(0, 1)
    writer.write_batch(records)
    writer.write_batch([])
    writer.flush()
    writer.close()
    for record in records:
        print(record)
    out = capsys.readouterr().out
    half = len(out) // 2
    assert out[:half] == out[half:] == "text\n('word', 2)\n{'k': None}\n3.5\ntwo\nlines\n"


def test_stdout_sink_writes_a_batch_in_one_call(monkeypatch):
    calls = []

    class Recorder:
        def write(self, text):
            calls.append(text)

    monkeypatch.setattr("sys.stdout", Recorder())
    StdoutSink().open(0, 1).write_batch([1, 2, 3])
    assert calls == ["1\n2\n3\n"]
