"""ListSource and CollectSink, and the public façade of ``connectors``."""

from __future__ import annotations

import multiprocessing

import pytest
from support import read_all

import connectors
from connectors import CollectSink, ListSource
from engine.connector import Sink, Source
from engine.errors import ParameterError


def test_public_api_is_pinned():
    assert connectors.__all__ == sorted(connectors.__all__)
    assert connectors.__all__ == [
        "CollectSink",
        "FileSink",
        "FileSource",
        "GeneratorSource",
        "ListSource",
        "NexmarkSource",
        "StdoutSink",
    ]
    for name in connectors.__all__:
        cls = getattr(connectors, name)
        assert issubclass(cls, (Source, Sink)), name
        assert cls.__doc__ and ">>>" in cls.__doc__, f"{name} needs a docstring with a runnable example"


# -- ListSource -----------------------------------------------------------------------------------


@pytest.mark.parametrize("parallelism", [1, 2, 3, 10])
async def test_list_source_splits_round_robin(parallelism):
    records = [f"r{i}" for i in range(7)]
    source = ListSource(records)
    parts = [await read_all(source.open(k, parallelism), batch=2) for k in range(parallelism)]
    assert parts == [records[k::parallelism] for k in range(parallelism)]
    assert source.bounded is True


async def test_list_source_copies_its_input():
    records = [1, 2, 3]
    source = ListSource(records)
    records.append(4)
    assert await read_all(source.open(0, 1)) == [1, 2, 3]
    assert await read_all(ListSource(iter("ab")).open(0, 1)) == ["a", "b"]


async def test_list_source_offset_seek_read_exact_and_progress():
    source = ListSource(range(20))
    reader = source.open(1, 2)
    assert await reader.read(3) == [1, 3, 5]
    offset = reader.offset()
    assert (offset, reader.progress()) == (3, (3, 10))
    more = await reader.read(4)
    again = source.open(1, 2)
    again.seek(offset)
    assert await again.read(4) == more == [7, 9, 11, 13]
    replay = source.open(1, 2)
    replay.seek(offset)
    assert await replay.read_exact(4) == more
    assert await read_all(reader) == [15, 17, 19]
    assert reader.progress() == (10, 10)
    with pytest.raises(EOFError, match="_ListReader: stream ended after 3 of 5 records to replay"):
        await replay.read_exact(5)


# -- CollectSink ----------------------------------------------------------------------------------


def test_collect_sink_orders_records_by_instance():
    sink = CollectSink()
    writers = [sink.open(i, 3) for i in (2, 0, 1)]
    writers[0].write_batch(["c1"])
    writers[1].write_batch(["a1", "a2"])
    writers[2].write_batch([])
    writers[0].write_batch(["c2"])
    for writer in writers:
        writer.flush()
        writer.close()
    assert sink.records == ["a1", "a2", "c1", "c2"]
    assert sink.partitions == {0: ["a1", "a2"], 1: [], 2: ["c1", "c2"]}
    assert list(sink.partitions) == [0, 1, 2]


def test_collect_sink_reopening_an_index_resets_its_partition():
    sink = CollectSink()
    first, other = sink.open(0, 2), sink.open(1, 2)
    first.write_batch(["lost"])
    other.write_batch(["kept"])
    again = sink.open(0, 2)
    again.write_batch(["replayed"])
    assert sink.partitions == {0: ["replayed"], 1: ["kept"]}


def test_collect_sink_views_are_copies():
    sink = CollectSink()
    sink.open(0, 1).write_batch([1])
    sink.records.append(2)
    sink.partitions[0].append(3)
    assert sink.records == [1]


def _open_in_child(sink, conn):
    try:
        sink.open(0, 1)
        conn.send("opened")
    except ParameterError as exc:
        conn.send(str(exc))
    finally:
        conn.close()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_collect_sink_refuses_another_process():
    sink = CollectSink()
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_open_in_child, args=(sink, child))
    process.start()
    try:
        child.close()
        assert parent.poll(10), "the child process did not answer within 10 s"
        message = parent.recv()
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()  # our own child, by pid
            process.join()
    assert message == (
        "CollectSink collects in memory and works only when the job runs in-process "
        "(engine.testing.run); use FileSink for multi-process runs"
    )
    sink.open(0, 1)  # the process that built it still may
