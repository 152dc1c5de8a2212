"""Text files in (one record per line), JSON Lines out.

:class:`FileSource` splits its input among the instances of the source step the way Hadoop's
``TextInputFormat`` does, so that parallel readers never coordinate: the matched files, sorted by
name, form one concatenated byte space of ``T`` bytes; instance ``i`` of ``p`` owns the bytes
``[i*T//p, (i+1)*T//p)``, and a line belongs to the instance whose range holds its *first* byte. An
instance therefore skips the partial line at the start of its range (unless the range starts a file or
follows a newline) and reads past the end of its range to finish its last line. Every line is read by
exactly one instance, whatever ``p`` is, and a single large file is read in parallel.

The input is read in large binary chunks (``chunk_bytes``) in a worker thread, so a slow disk never
blocks the instance's event loop; each chunk is cut at its last newline, decoded once and split with
``str.split``. No step costs a syscall or a Python-level loop per line, except the computation of the
offset, which is a C-level sum over the lines a read returns.

Offsets are ``(file_index, byte_position)`` pairs: "the first line that starts at or after this byte
of that file". A position returned by :meth:`~engine.connector.SourceReader.offset` is always the start
of a line, so a reader seeked there (during recovery) resumes without rescanning.

Input files must not change while the job runs: the split is computed from the files' sizes when each
instance opens its reader, so a recovered instance must see the same files with the same sizes.
Bytes appended after that are not read; a file that shrinks or disappears is an error.
"""

from __future__ import annotations

import asyncio
import codecs
import glob
import itertools
import json
import os
from collections.abc import Sequence
from typing import Any, BinaryIO

import orjson

from engine.connector import Sink, SinkWriter, Source, SourceReader
from engine.errors import ParameterError, SerializationError, SourceDataError, short_repr

__all__ = ["FileSink", "FileSource"]


class FileSource(Source):
    """Lines of text files: one record (a ``str`` without its line terminator) per line.

    ``path_or_glob`` is a path or a glob pattern (``**`` matches directories recursively); the
    matched files are read in sorted order. Lines end with ``\\n`` or ``\\r\\n`` (a lone ``\\r`` is
    data); an empty line is the record ``""``; a last line without a terminator still counts. Work
    is split across instances by file and by byte range (module docstring), and
    :meth:`~engine.connector.SourceReader.progress` reports ``(bytes done, bytes owned)``.

    The encoding must be ASCII-compatible (UTF-8, Latin-1, CP1252...), because lines are cut on the
    byte ``\\n`` before decoding.

    Raises at :meth:`open`: :class:`FileNotFoundError` when nothing matches. While reading:
    :class:`FileNotFoundError` when a file disappeared, :class:`~engine.errors.SourceDataError` when
    bytes are not valid in ``encoding`` or a file shrank; both name the file and the byte offset.

    >>> import asyncio, pathlib, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> _ = (pathlib.Path(tmp.name) / "a.txt").write_bytes(b"one\\ntwo\\r\\n\\nlast")
    >>> reader = FileSource(pathlib.Path(tmp.name) / "*.txt").open(index=0, parallelism=1)
    >>> asyncio.run(reader.read(10))
    ['one', 'two', '', 'last']
    >>> reader.offset(), reader.progress()
    ((0, 14), (14, 14))
    >>> asyncio.run(reader.read(10)) is None
    True
    >>> tmp.cleanup()
    """

    bounded = True

    def __init__(
        self, path_or_glob: str | os.PathLike[str], *, encoding: str = "utf-8", chunk_bytes: int = 1 << 20
    ):
        self.pattern = os.fspath(path_or_glob)
        self.encoding = _check_encoding(encoding)
        if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise ParameterError(
                f"FileSource {self.pattern!r}: chunk_bytes must be a positive int, got {chunk_bytes!r}; "
                "the default 1 MiB suits most inputs"
            )
        self.chunk_bytes = chunk_bytes

    def open(self, index: int, parallelism: int) -> SourceReader:
        """Resolve the pattern, size the files and return the reader of instance ``index``."""
        files = self._match()
        sizes = []
        for path in files:
            try:
                sizes.append(os.stat(path).st_size)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"FileSource {self.pattern!r}: input file {path!r} disappeared while the source was "
                    "opening; input files must stay in place until the job ends"
                ) from None
        return _FileReader(self, files, sizes, index, parallelism)

    def _match(self) -> list[str]:
        if any(c in self.pattern for c in "*?["):
            files = sorted(p for p in glob.glob(self.pattern, recursive=True) if os.path.isfile(p))
        elif os.path.isdir(self.pattern):
            example = os.path.join(self.pattern, "*.txt")
            raise IsADirectoryError(
                f"FileSource: {self.pattern!r} is a directory; pass a glob of its files, e.g. {example!r}"
            )
        else:
            files = [self.pattern] if os.path.isfile(self.pattern) else []
        if not files:
            raise FileNotFoundError(
                f"FileSource: no file matches {self.pattern!r} (relative paths resolve against "
                f"{os.getcwd()!r}); check the path, or quote the glob so the shell does not expand it"
            )
        return files


def _check_encoding(encoding: str) -> str:
    try:
        name = codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise ParameterError(
            f"FileSource: unknown encoding {encoding!r}; use a Python codec name such as 'utf-8' or 'latin-1'"
        ) from None
    try:
        newline = "\n".encode(name)
    except UnicodeError:
        newline = b""
    if newline != b"\n":
        raise ParameterError(
            f"FileSource: encoding {encoding!r} encodes a newline as {newline!r}, not b'\\n', so lines cannot "
            "be cut before decoding; convert the files to UTF-8 (e.g. iconv -t UTF-8) or use an "
            "ASCII-compatible encoding"
        )
    return name


class _FileReader(SourceReader):
    """One instance's byte range of the concatenated input files.

    State is ``(self._file, self._pos)``: the next owned line is the first one that starts at or after
    byte ``_pos`` of file ``_file``; ``_file == len(files)`` means the end. ``_synced`` says whether
    ``_pos`` is known to be a line start (true except right after open or seek into a range start).
    Decoded lines of the current block wait in ``_lines`` from index ``_next``.
    """

    def __init__(self, source: FileSource, files: list[str], sizes: list[int], index: int, parallelism: int):
        self._pattern = source.pattern
        self._encoding = source.encoding
        self._chunk = source.chunk_bytes
        self._paths = files
        self._sizes = sizes
        self._starts = list(itertools.accumulate(sizes, initial=0))  # global offset of each file
        total = self._starts[-1]
        self._begin = index * total // parallelism
        self._end = (index + 1) * total // parallelism
        self._lines: list[str] = []
        self._raw: list[bytes] | None = None  # byte lines, kept only when str lengths != byte lengths
        self._next = 0
        self._block_end = 0
        # the first file whose bytes reach past the range start (empty files end where they start)
        self._file = next((j for j, s in enumerate(sizes) if self._starts[j] + s > self._begin), len(files))
        self._pos = self._begin - self._starts[self._file] if self._file < len(files) else 0
        self._synced = self._pos == 0

    async def read(self, max_records: int) -> Sequence[str] | None:
        if self._next >= len(self._lines) and not await self._fill():
            return None
        start = self._next
        out = self._lines[start : start + max_records]
        self._next = start + len(out)
        if self._next == len(self._lines):
            # the block is used up: its end is exact even when its last line has no terminator
            self._pos = self._block_end
            self._lines, self._raw, self._next = [], None, 0
        elif self._raw is None:  # every char is one byte and no '\r' was stripped
            self._pos += sum(map(len, out)) + len(out)
        else:
            self._pos += sum(map(len, self._raw[start : self._next])) + len(out)
        return out

    def offset(self) -> tuple[int, int]:
        return (self._file, self._pos)

    def seek(self, offset: Any) -> None:
        try:
            file, pos = offset
            valid = isinstance(file, int) and isinstance(pos, int)
        except (TypeError, ValueError):
            valid = False
        n = len(self._paths)
        if not valid or not ((0 <= file < n and 0 <= pos <= self._sizes[file]) or (file, pos) == (n, 0)):
            raise SourceDataError(
                f"FileSource {self._pattern!r}: offset {short_repr(offset)} does not fit its {n} input "
                "file(s); the input files changed since the offset was recorded, or it belongs to another source"
            )
        self._file, self._pos = file, pos
        self._synced = pos == 0
        self._lines, self._raw, self._next = [], None, 0

    def progress(self) -> tuple[int, int]:
        owned = self._end - self._begin
        done = self._starts[self._file] + self._pos - self._begin
        return (min(max(done, 0), owned), owned)

    async def _fill(self) -> bool:
        """Load the next block of owned lines into ``_lines``; False at the end of the range."""
        n = len(self._paths)
        while self._file < n:
            size = self._sizes[self._file]
            stop = min(size, self._end - self._starts[self._file])  # owned lines start before `stop`
            if not self._synced:
                self._synced = True
                if 0 < self._pos < stop:  # the range starts mid-file: its first partial line is not ours
                    self._pos = await asyncio.to_thread(self._skip_partial_line, self._file, self._pos)
            if self._pos >= stop:
                self._file, self._pos = self._file + 1, 0
                if self._file < n and self._starts[self._file] >= self._end:
                    self._file = n  # the next file starts past our range
                continue
            block = await asyncio.to_thread(self._read_block, self._file, self._pos, stop)
            self._decode(block)
            return True
        return False

    def _decode(self, block: bytes) -> None:
        try:
            text = block.decode(self._encoding)
        except UnicodeDecodeError as exc:
            raise SourceDataError(
                f"FileSource: {self._paths[self._file]!r} is not valid {self._encoding} at byte "
                f"{self._pos + exc.start} ({exc.reason}); pass FileSource(..., encoding=...) with the "
                "files' real encoding, or fix the file"
            ) from exc
        # In an ASCII-compatible encoding every char takes >= 1 byte, so equal totals mean every line's
        # str length is its byte length, and offsets can be summed from the decoded lines.
        same_lengths = len(text) == len(block)
        if "\r" in text:
            text = text.replace("\r\n", "\n")  # "\r\n" never overlaps itself: exactly one '\r' per pair
            same_lengths = False
        lines = text.split("\n")
        raw = None if same_lengths else block.split(b"\n")
        if block.endswith(b"\n"):  # a terminated last line leaves an empty tail that is not a line
            lines.pop()
            if raw is not None:
                raw.pop()
        self._lines, self._raw, self._next = lines, raw, 0
        self._block_end = self._pos + len(block)

    # -- blocking I/O, run in a worker thread ---------------------------------------------------------

    def _open(self, file: int, pos: int) -> BinaryIO:
        path = self._paths[file]
        try:
            return open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"FileSource {self._pattern!r}: input file {path!r} disappeared before byte {pos} of "
                f"{self._sizes[file]} was read; input files must stay in place until the job ends"
            ) from None

    def _read_at(self, f: BinaryIO, file: int, pos: int, want: int) -> bytes:
        f.seek(pos)
        data = f.read(want)
        if len(data) < want:
            raise SourceDataError(
                f"FileSource {self._pattern!r}: input file {self._paths[file]!r} ended at byte {pos + len(data)} "
                f"but had {self._sizes[file]} bytes when the source opened; input files must not change "
                "until the job ends"
            )
        return data

    def _skip_partial_line(self, file: int, pos: int) -> int:
        """Position of the first line start at or after ``pos`` (``pos`` itself if byte pos-1 is a newline)."""
        size = self._sizes[file]
        at = pos - 1
        with self._open(file, at) as f:
            while at < size:
                data = self._read_at(f, file, at, min(self._chunk, size - at))
                newline = data.find(b"\n")
                if newline >= 0:
                    return at + newline + 1
                at += len(data)
        return size

    def _read_block(self, file: int, pos: int, stop: int) -> bytes:
        """Bytes from line start ``pos`` up to the end of a line: whole lines only, the last one being the
        line that holds byte ``stop - 1`` if the block gets that far (lines starting at ``stop`` or later
        belong to the next instance). Reads more than one chunk only for a line longer than a chunk."""
        size = self._sizes[file]
        parts: list[bytes] = []
        at = pos
        with self._open(file, pos) as f:
            while True:
                data = self._read_at(f, file, at, min(self._chunk, size - at))
                at_eof = at + len(data) >= size
                if stop - at <= len(data):  # the range ends in this chunk: finish the line holding stop-1
                    newline = data.find(b"\n", max(stop - at - 1, 0))
                else:
                    newline = len(data) - 1 if at_eof else data.rfind(b"\n")
                if newline >= 0 or at_eof:
                    parts.append(data[: newline + 1] if newline >= 0 else data)
                    return b"".join(parts)
                parts.append(data)  # a line longer than the chunk: keep reading
                at += len(data)


class FileSink(Sink):
    """JSON Lines files: instance ``i`` writes ``<directory>/part-<i>.jsonl``, one record per line.

    The directory is created if missing, and each instance truncates its part file when it opens.
    Tuples and lists become JSON arrays, dicts objects; ``str``, numbers, ``bool`` and ``None`` map as
    :mod:`json` maps them, without spaces; non-ASCII text is written as UTF-8; NaN and infinities,
    which JSON lacks, become ``null``. Records are encoded with orjson (~0.1 us per small record; the
    standard library's encoder takes ~1.5 us, enough to make a single sink every job's bottleneck);
    the rare record orjson refuses (an int beyond 64 bits, a non-``str`` dict key, a ``namedtuple``, a
    lone surrogate) goes through :mod:`json`, whose mapping it keeps. A batch is encoded completely before
    its lines are written with one ``write`` call, so a record that JSON cannot represent (``bytes``,
    sets, arbitrary objects) raises :class:`~engine.errors.SerializationError` naming the record, and
    nothing of that batch reaches the file. :meth:`~engine.connector.SinkWriter.flush` also calls
    ``os.fsync``, so flushed output survives a machine crash.

    >>> import json, pathlib, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> writer = FileSink(pathlib.Path(tmp.name) / "out").open(index=0, parallelism=1)
    >>> writer.write_batch([("word", 2), {"n": 1.5}, "é"])
    >>> writer.flush(); writer.close()
    >>> print((pathlib.Path(tmp.name) / "out" / "part-0.jsonl").read_text(encoding="utf-8"), end="")
    ["word",2]
    {"n":1.5}
    "é"
    >>> tmp.cleanup()
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = os.fspath(directory)

    def open(self, index: int, parallelism: int) -> SinkWriter:
        """Create the directory if needed and truncate this instance's part file."""
        try:
            os.makedirs(self.directory, exist_ok=True)
        except FileExistsError:
            raise NotADirectoryError(
                f"FileSink: {self.directory!r} exists and is not a directory; pass a directory path "
                "(part files are written inside it)"
            ) from None
        return _FileWriter(os.path.join(self.directory, f"part-{index}.jsonl"))


class _NotJSON(TypeError):
    """Raised by the encoder's ``default`` hook, carrying the value JSON cannot represent."""

    def __init__(self, value: object):
        super().__init__(type(value).__name__)
        self.value = value


def _reject(value: object) -> object:
    raise _NotJSON(value)


# The standard library's encoders, for what orjson refuses; compact like orjson's output. One encoder
# object, not json.dumps(..., default=...): dumps builds a new encoder per call whenever it gets a
# non-default argument, which would double the per-record cost.
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_reject).encode
# Fallback for text with lone surrogates, which UTF-8 cannot encode: JSON's \\udXXX escapes can.
_ENCODE_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=_reject).encode


class _FileWriter(SinkWriter):
    """Writes one part file; exactly-once across restarts through :meth:`snapshot` / :meth:`restore`.

    The file is created at once but truncated only on first use (a write, a flush or the close), for
    :meth:`restore` may come first and reopen it where a checkpoint left it. Lines found after the checkpoint's position were written before the
    failure; the restarted instance regenerates the same records in the same order (DESIGN.md §7.6),
    so the writer skips that many records and appends after them: nothing is written twice and
    nothing the world saw is taken back.
    """

    def __init__(self, path: str):
        self._path = path
        self._file: Any = open(path, "ab")  # noqa: SIM115 - lives across calls; closed in close()
        self._fresh = True  # not yet truncated nor restored
        self._written = 0  # bytes in the file that this writer accounts for
        self._skip = 0  # regenerated records already in the file (after a restore)

    def _open(self) -> Any:
        if self._fresh:
            self._fresh = False
            self._file.truncate(0)
        return self._file

    def snapshot(self) -> Any:
        if not self._fresh:  # a fresh writer is at byte 0, whatever a previous run left in its file
            self._file.flush()
        return {"bytes": self._written, "skip": self._skip}

    def restore(self, state: Any) -> None:
        position = int(state["bytes"])
        self._fresh = False
        self._file.close()
        try:
            f = open(self._path, "r+b")  # noqa: SIM115 - lives across calls; closed in close()
        except FileNotFoundError:
            f = open(self._path, "w+b")  # noqa: SIM115
        size = f.seek(0, os.SEEK_END)
        if size < position:
            f.close()
            raise SourceDataError(
                f"FileSink {self._path!r} holds {size} bytes but its checkpoint recorded {position}: the "
                "file was truncated or replaced while the job ran; restart the job with a fresh output directory"
            )
        f.seek(position)
        tail = f.read()
        complete = tail.rfind(b"\n") + 1  # a line cut short by the failure is dropped and rewritten
        f.truncate(position + complete)
        f.seek(position + complete)
        self._file = f
        self._written = position + complete
        self._skip = int(state.get("skip", 0)) + tail[:complete].count(b"\n")

    def write_batch(self, records: Sequence[Any]) -> None:
        if self._skip:
            skipped = min(self._skip, len(records))
            self._skip -= skipped
            records = records[skipped:]
        if records:
            self._write_lines(self._encode(records) + b"\n")

    def prepare(self, records: Sequence[Any]) -> tuple[bytes, int]:
        """The batch's lines, each ended by a newline, and how many there are (one per record)."""
        return (self._encode(records) + b"\n" if records else b""), len(records)

    def write_prepared(self, prepared: Any) -> None:
        data, count = prepared
        if self._skip:  # regenerated records already in the file: skip their lines
            skipped = min(self._skip, count)
            self._skip -= skipped
            end = -1
            for _ in range(skipped):
                end = data.index(b"\n", end + 1)  # JSON escapes newlines: one per line
            data = data[end + 1 :]
        if data:
            self._write_lines(data)

    def _encode(self, records: Sequence[Any]) -> bytes:
        try:
            return b"\n".join(map(orjson.dumps, records))
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            return self._encode_slowly(records)

    def _write_lines(self, data: bytes) -> None:
        self._open().write(data)
        self._written += len(data)

    def _encode_slowly(self, records: Sequence[Any]) -> bytes:
        """A batch orjson refused: record by record, the refused ones by :mod:`json`."""
        lines = []
        for record in records:
            try:
                lines.append(orjson.dumps(record))
                continue
            except TypeError:
                pass
            try:
                text = _ENCODE(record)
            except (TypeError, ValueError):
                raise self._explain([record]) from None
            try:
                lines.append(text.encode("utf-8"))
            except UnicodeEncodeError:
                lines.append(_ENCODE_ASCII(record).encode("ascii"))
        return b"\n".join(lines)

    def flush(self) -> None:
        f = self._open()
        f.flush()
        os.fsync(f.fileno())

    def close(self) -> None:
        self._open().close()

    def _explain(self, records: Sequence[Any]) -> SerializationError:
        """Find the first record of a failed batch that JSON cannot encode, and say how to fix it."""
        where = f"FileSink {self._path!r}"
        for record in records:
            try:
                _ENCODE(record)
            except _NotJSON as exc:
                bad = exc.value
                if isinstance(bad, (bytes, bytearray, memoryview)):
                    return SerializationError(
                        f"{where}: record {short_repr(record)} holds {type(bad).__name__} "
                        f"{short_repr(bad, 40)}, which JSON cannot represent; decode it to str first "
                        "(e.g. value.decode('utf-8')) in a map step before the sink"
                    )
                return SerializationError(
                    f"{where}: record {short_repr(record)} holds a {type(bad).__name__} "
                    f"({short_repr(bad, 40)}), which JSON cannot represent; convert it to str, a number, "
                    "bool, None, a list or a dict in a map step before the sink"
                )
            except (TypeError, ValueError) as exc:
                return SerializationError(
                    f"{where}: record {short_repr(record)} cannot be written as JSON ({exc}); convert it "
                    "to plain str/number/list/dict values (dict keys must be str) in a map step before the sink"
                )
        return SerializationError(f"{where}: a batch failed to encode as JSON but no single record did")
