"""Keyed state of one step instance: RocksDB on disk, a write-back dict cache in front of it.

Operators touch their state once or twice per record, so the cost that matters is the cache hit:
RocksDB through rocksdict does ~0.4M gets or puts per second on the reference machine, a dict ~3M.
:class:`KeyedState` therefore keeps hot state in :attr:`KeyedState.cache` (a plain dict) and writes
only what changed, in one RocksDB ``WriteBatch`` per :meth:`~KeyedState.flush`: at a checkpoint, when
the cache outgrows its budget, at :meth:`~KeyedState.close`.

Durability comes from checkpoints, not from the live database (DESIGN.md §6, §7): a failed instance
restarts from its latest *complete* checkpoint and replays its log, so whatever the live directory
held when the process died is thrown away. That is why the write-ahead log is disabled (a write is a
memtable insert and nothing else) and why a checkpoint first flushes the memtable: the checkpoint is
then SST files only, hard links of immutable files, taken in milliseconds.

Keys and values are msgpack-encoded with :func:`engine.codec.pack`, so equal keys encode equally in
every process, and RocksDB orders keys by their encoding. Values follow the channel rules: **lists
come back as tuples**. :meth:`~KeyedState.put` applies that rule at once rather than at the next
flush, because an instance must be a deterministic state machine (§3): a value must have the same
type whether the operator gets it from the cache or from RocksDB (after an eviction or a restore),
or a recovered instance could take another branch than the run it replays.

Keys that are equal in Python but encode differently (``1``, ``1.0`` and ``True``) share one cache
slot but are different RocksDB keys: do not mix them in one state.

>>> import tempfile, os
>>> root = tempfile.mkdtemp()
>>> state = KeyedState.open(os.path.join(root, "live"))
>>> state.put("a", 1); state.put("b", [2, 3])
>>> state.get("b"), state.get("zz", 0), "a" in state
((2, 3), 0, True)
>>> state.checkpoint(os.path.join(root, "chk-1"))
>>> state.put("a", 99); state.delete("b")
>>> restored = KeyedState.open(os.path.join(root, "again"), restore_from=os.path.join(root, "chk-1"))
>>> sorted(restored.items())
[('a', 1), ('b', (2, 3))]
>>> restored.destroy(); state.destroy()
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from itertools import islice
from operator import itemgetter
from typing import Any, Final, cast

import msgpack
import rocksdict

from engine.codec import pack, unpack
from engine.errors import SerializationError, StateError, short_repr

__all__ = ["DEFAULT_CACHE_ENTRIES", "STORAGE_FIX", "KeyedState", "MemoryState", "normalize"]

#: Default budget of the cache, in entries. A count state of 1M short string keys is ~150 MB of
#: Python objects; beyond the budget, the oldest quarter of the cache is flushed and dropped.
DEFAULT_CACHE_ENTRIES: Final = 1_000_000

#: The fix appended to every storage error: almost always a full disk or a bad data directory.
STORAGE_FIX: Final = "free disk space, or point --data-dir at a writable disk with room"

#: Values of these exact types encode and decode to themselves (subclasses such as IntEnum do not).
_SCALARS: Final = frozenset({int, float, str, bytes, bool, type(None)})

#: Files of a RocksDB checkpoint that are never modified once written: restoring hard-links them.
_IMMUTABLE_SUFFIXES: Final = (".sst", ".blob")

_MISSING: Final = object()


def normalize(value: Any) -> Any:
    """``value`` as RocksDB would give it back: lists become tuples, subclasses their base type.

    Scalars and flat tuples of scalars are returned as they are (no copy: ~70-300 ns); anything else
    is encoded and decoded (~0.6 us), which also raises :class:`SerializationError` at the ``put``
    that stored it rather than at the next flush.

    >>> normalize(3), normalize((1, "a")), normalize({"k": [1, [2]]})
    (3, (1, 'a'), {'k': (1, (2,))})
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is tuple:
        for item in value:
            if type(item) not in _SCALARS:
                return unpack(pack(value))
        return value
    return unpack(pack(value))


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _storage_error(path: str, action: str, exc: BaseException) -> StateError:
    if isinstance(exc, rocksdict.DbClosedError):  # a bug in the caller, not a storage problem
        return StateError(
            f"keyed state at {path}: {action} after close() or destroy(); reopen it with open()"
        )
    return StateError(f"keyed state at {path}: {action} failed: {_one_line(exc)}; {STORAGE_FIX}")


def _options() -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    # Bloom filters answer most misses on absent keys (a key first seen after an eviction or a
    # restore) without reading an SST block: ~1 us instead of ~2 us.
    table = rocksdict.BlockBasedOptions()
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    opts.set_compression_type(rocksdict.DBCompressionType.lz4())
    return opts


def _write_options() -> rocksdict.WriteOptions:
    # No WAL: the live database is scratch space between checkpoints (see the module docstring).
    write = rocksdict.WriteOptions()
    # A property in the compiled module (0.3.x), although the bundled stub declares a method.
    write.disable_wal = True  # type: ignore[method-assign, assignment]
    return write


def _link_or_copy(src: str, dst: str) -> str:
    """Hard-link immutable RocksDB files, copy the others (MANIFEST, CURRENT, OPTIONS, logs).

    The restored database will write to its own MANIFEST and logs, so those must be private copies;
    SST files are never modified in place, and a compaction that deletes one only removes the live
    directory's link, so the checkpoint stays intact for a later recovery.
    """
    if src.endswith(_IMMUTABLE_SUFFIXES):
        try:
            os.link(src, dst)
            return dst
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise  # other file systems or limits: fall back to a copy; anything else is real
    return str(shutil.copy2(src, dst))


class KeyedState:
    """The keyed state of one step instance: a RocksDB database under a write-back dict cache.

    Create it with :meth:`open`. The methods :meth:`get`, :meth:`put`, :meth:`delete` and ``in``
    are the per-record API. Operators with a hot loop may use the **fast path** instead, binding
    :attr:`cache` and :attr:`dirty` to locals::

        cache, dirty, get = state.cache, state.dirty, state.get
        for k in keys:
            c = (cache[k] if k in cache else get(k, 0)) + 1   # a miss goes through get()
            cache[k] = c
            dirty.add(k)                                     # whoever writes cache[k] adds k
        state.trim()                                         # once per batch

    The contract of the fast path:

    - a key absent from :attr:`cache` is not known to be absent: read it with :meth:`get`, which
      consults RocksDB and fills the cache;
    - whoever writes ``cache[k]`` adds ``k`` to :attr:`dirty`, and writes a value equal to
      :func:`normalize` of it (scalars and flat tuples of scalars already are);
    - deletes go through :meth:`delete`; the dict and the set are mutated in place, never replaced,
      so local bindings stay valid across flushes and evictions;
    - :meth:`trim` is called after each batch, so the cache returns to its budget even if the loop
      inserted keys without a miss.

    Cost per record of a running count over 10k hot keys (2-core reference machine): a plain
    dict ``get`` + store ~70 ns, the fast path ~110 ns, :meth:`get` + :meth:`put` ~235 ns (a put
    of a flat tuple ~370 ns). A miss that reads RocksDB costs ~2 us (~1 us for an absent key,
    thanks to the Bloom filters); :meth:`flush` ~1.2 us per dirty entry.

    **Cache policy.** The cache holds up to ``cache_entries`` entries. When a miss or a put takes it
    beyond that, every dirty entry is flushed (one ``WriteBatch``) and the oldest quarter of the
    cache by insertion order is dropped: FIFO rather than LRU, because moving a key to the end on
    every hit would cost a dict pop and insert per record. While nothing has ever left the cache and
    the database held nothing when opened, the cache is known to hold *every* key, and a miss
    answers "absent" without touching RocksDB.

    All calls are synchronous and short; they run on the instance's event loop, and
    :meth:`checkpoint` (or :meth:`freeze`) runs between two batches, so it sees the state of a batch
    boundary. A ``KeyedState`` is not thread-safe, with one exception: between :meth:`freeze` and
    :meth:`thaw`, :meth:`write_checkpoint` may run on another thread while the loop goes on.
    """

    __slots__ = (
        "_closed",
        "_complete",
        "_db",
        "_encode",
        "_frozen",
        "_limit",
        "_write",
        "cache",
        "dirty",
        "evictions",
        "path",
    )

    #: Hot entries, key -> value. The authoritative value of every key it holds.
    cache: dict[Any, Any]
    #: Keys written or deleted since the last flush. A dirty key absent from ``cache`` is a delete.
    dirty: set[Any]
    #: Directory of the live RocksDB database.
    path: str
    #: How many times the cache went over its budget (a metric: state larger than the cache).
    evictions: int

    def __init__(self, db: rocksdict.Rdict, path: str, cache_entries: int, complete: bool):
        """Use :meth:`open`; this wraps an already open database."""
        self._db = db
        # A reused Packer encodes like engine.codec.pack (same options) at half the cost of
        # msgpack.packb, which builds a Packer per call: it matters in flush(), ~2 encodes per entry.
        # On failure codec.pack is called again for its diagnosis (see _encode_error).
        self._encode: Callable[[Any], bytes] = msgpack.Packer().pack
        self._write = _write_options()
        self._limit = cache_entries
        self._complete = complete
        self._closed = False
        self._frozen = False
        self.cache = {}
        self.dirty = set()
        self.path = path
        self.evictions = 0

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        restore_from: str | os.PathLike[str] | None = None,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> KeyedState:
        """Open the database at ``path``, creating it if needed.

        With ``restore_from`` (a directory made by :meth:`checkpoint`), ``path`` is first replaced
        by a copy of that checkpoint: SST files are hard-linked (milliseconds, no extra disk), the
        small mutable files copied. The checkpoint itself is left intact, so it can serve a later
        recovery too. The copy is made next to ``path`` and renamed into place, so a crash during a
        restore never leaves a half-restored database under ``path``.

        Raises:
            StateError: the checkpoint is missing or not a RocksDB checkpoint, or the directory
                cannot be created or written (full disk, read-only file system, a file in the way).
            ValueError: ``cache_entries`` is not positive.
        """
        path = os.fspath(path)
        if cache_entries < 1:
            raise ValueError(f"cache_entries must be a positive number of entries, got {cache_entries}")
        if restore_from is not None:
            _restore(os.fspath(restore_from), path)
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            db = rocksdict.Rdict(path, _options())
        except Exception as exc:  # rocksdict raises plain Exception for every RocksDB status
            raise _storage_error(path, "opening the database", exc) from exc
        empty = next(iter(db.keys()), _MISSING) is _MISSING
        return cls(db, path, cache_entries, complete=empty)

    @property
    def complete(self) -> bool:
        """True while :attr:`cache` holds every key (nothing evicted; the database was empty at open).

        Then a key absent from the cache is absent, and an operator may update :attr:`cache` in bulk
        (adding every written key to :attr:`dirty`) without reading misses through :meth:`get`.
        """
        return self._complete

    # -- per-record API -----------------------------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key``, or ``default``. A miss reads RocksDB and caches what it finds."""
        cache = self.cache
        if key in cache:
            return cache[key]
        return self._miss(key, default)

    def put(self, key: Any, value: Any) -> None:
        """Set ``key`` to :func:`normalize` of ``value`` (lists are stored, and read back, as tuples)."""
        if type(value) not in _SCALARS:
            value = self._normalized(key, value)
        cache = self.cache
        cache[key] = value
        self.dirty.add(key)
        if len(cache) > self._limit:
            self._evict()

    def delete(self, key: Any) -> None:
        """Remove ``key`` (no error if absent); RocksDB sees the delete at the next flush."""
        self.cache.pop(key, None)
        self.dirty.add(key)

    def __contains__(self, key: Any) -> bool:
        return key in self.cache or self._miss(key, _MISSING) is not _MISSING

    # the mapping protocol, for code written against a MutableMapping (operators.windows, ...)

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: Any) -> None:
        self.delete(key)

    def __iter__(self) -> Iterator[Any]:
        return (k for k, _ in self.items())

    def _miss(self, key: Any, default: Any) -> Any:
        # A dirty key absent from the cache is a pending delete: RocksDB still has the old value.
        if self._complete or key in self.dirty:
            return default
        try:
            raw = self._db.get(self._encode(key))
        except (TypeError, ValueError, OverflowError):
            return default  # a key that cannot be encoded was never stored
        except Exception as exc:
            raise _storage_error(self.path, f"reading key {short_repr(key, 60)}", exc) from exc
        if raw is None:
            return default
        value = unpack(raw)
        cache = self.cache
        if len(cache) >= self._limit:
            self._evict()
        cache[key] = value
        return value

    def _normalized(self, key: Any, value: Any) -> Any:
        try:
            return normalize(value)
        except SerializationError as exc:
            raise SerializationError(
                f"keyed state at {self.path}, key {short_repr(key, 60)}: {exc}"
            ) from None

    # -- bulk ---------------------------------------------------------------------------------------

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Every ``(key, value)``, cache over database, in the byte order of the encoded keys.

        The order does not depend on what happens to be cached, so the final emission of
        ``count_final``/``reduce_final`` is the same in a run and in its replay after a restore
        (the same output batches, the same seqs: DESIGN.md §4). While the cache holds every key it
        is sorted in memory; otherwise dirty entries are flushed and RocksDB is iterated, which
        yields the same order. Do not write to the state while iterating.
        """
        if self._complete:
            cache, encode = self.cache, self._encode
            try:
                encoded = sorted(((encode(k), k) for k in cache), key=itemgetter(0))
            except (TypeError, ValueError, OverflowError):
                raise self._encode_error() from None
            return ((k, cache[k]) for _, k in encoded)
        if self._frozen:
            return self._overlay_scan()
        self.flush()
        return self._scan()

    def _scan(self) -> Iterator[tuple[Any, Any]]:
        try:
            for raw_key, raw_value in self._db.items():  # raw mode: both are bytes
                yield unpack(raw_key), unpack(raw_value)  # type: ignore[arg-type]
        except Exception as exc:  # a RocksDB read error, or a value that no longer decodes
            raise _storage_error(self.path, "iterating the database", exc) from exc

    def _overlay_scan(self) -> Iterator[tuple[Any, Any]]:
        """:meth:`items` while frozen: RocksDB may not be written, so the dirty entries (newer than
        what it holds) are laid over its scan, in the same byte order of the encoded keys."""
        cache, encode = self.cache, self._encode
        try:
            overlay = sorted(((encode(k), k) for k in self.dirty), key=itemgetter(0))
        except (TypeError, ValueError, OverflowError):
            raise self._encode_error() from None
        i, n = 0, len(overlay)
        try:
            for key, value in cast("Iterator[tuple[bytes, bytes]]", self._db.items()):  # raw mode: bytes
                while i < n and overlay[i][0] < key:
                    k = overlay[i][1]
                    i += 1
                    if k in cache:  # a dirty key absent from the cache is a delete
                        yield k, cache[k]
                if i < n and overlay[i][0] == key:
                    k = overlay[i][1]
                    i += 1
                    if k in cache:
                        yield k, cache[k]
                    continue
                yield unpack(key), unpack(value)
        except Exception as exc:  # as in _scan: a RocksDB read error, or a value that no longer decodes
            raise _storage_error(self.path, "iterating the database", exc) from exc
        for _, k in overlay[i:]:
            if k in cache:
                yield k, cache[k]

    def __len__(self) -> int:
        """The number of keys: O(1) while the cache holds them all, else a flush and a full scan."""
        if self._complete:
            return len(self.cache)
        if self._frozen:
            return sum(1 for _ in self._overlay_scan())
        self.flush()
        try:
            return sum(1 for _ in self._db.keys())  # noqa: SIM118 (an Rdict, not a dict: keys() is its iterator)
        except Exception as exc:
            raise _storage_error(self.path, "counting keys", exc) from exc

    def flush(self) -> None:
        """Write every dirty entry (puts and deletes) to RocksDB in one ``WriteBatch``.

        Raises:
            SerializationError: a key or value cannot be encoded (named in the message); nothing
                is written and the entries stay dirty.
            StateError: RocksDB refused the write (full disk...).
        """
        dirty = self.dirty
        if not dirty or self._frozen:  # frozen: they reach RocksDB once the checkpoint is written
            return
        cache, encode = self.cache, self._encode
        try:
            entries = [(encode(k), encode(cache[k]) if k in cache else None) for k in dirty]
        except (TypeError, ValueError, OverflowError):
            raise self._encode_error() from None
        # In key order, RocksDB's memtable inserts are local (the skiplist search starts near the
        # previous key): sorting costs ~100 ns per entry and saves more in db.write.
        entries.sort(key=itemgetter(0))
        batch = rocksdict.WriteBatch(raw_mode=True)
        put, delete = batch.put, batch.delete
        for key, value in entries:
            if value is None:
                delete(key)
            else:
                put(key, value)
        try:
            self._db.write(batch, self._write)
        except Exception as exc:
            raise _storage_error(self.path, f"writing {len(dirty)} entries", exc) from exc
        dirty.clear()

    def _encode_error(self) -> SerializationError:
        """The diagnosis of the dirty entry or key that msgpack refused; only called after a failure."""
        cache = self.cache
        for key in (*self.dirty, *cache):
            try:
                pack(key)
                if key in cache:
                    pack(cache[key])
            except SerializationError as exc:
                return SerializationError(f"keyed state at {self.path}, key {short_repr(key, 60)}: {exc}")
        return SerializationError(f"keyed state at {self.path}: an entry cannot be encoded")

    def trim(self) -> None:
        """Bring the cache back to its budget: what the fast path calls once per batch."""
        if len(self.cache) > self._limit:
            self._evict()

    def _evict(self) -> None:
        if self._frozen:
            return  # nothing may be flushed, so nothing may be dropped: the cache stays over budget until thaw()
        # Flush first: after it every cached entry is clean, so dropping one loses nothing.
        self.flush()
        cache = self.cache
        drop = len(cache) - (self._limit - self._limit // 4)
        for key in list(islice(cache, max(drop, 0))):
            del cache[key]
        self._complete = False
        self.evictions += 1

    # -- checkpoints and lifecycle ------------------------------------------------------------------

    def checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Snapshot the state into the new directory ``path``: :meth:`freeze`, :meth:`write_checkpoint`, :meth:`thaw`.

        Raises:
            StateError: ``path`` already exists (checkpoints are immutable: never reuse one), or
                the disk refused the flush or the checkpoint.
        """
        self.freeze()
        try:
            self.write_checkpoint(path)
        finally:
            self.thaw()

    # A checkpoint in two phases (DESIGN.md §6), so that the slow part runs off the instance's loop:
    # freeze() between two batches writes what changed and stops RocksDB from seeing later writes;
    # write_checkpoint() may then run on a thread while the instance processes the next batches
    # (they stay in the cache); thaw() lets them through again.

    def freeze(self) -> None:
        """Write every dirty entry to RocksDB, then hold later writes in the cache until :meth:`thaw`.

        Call it between two batches: RocksDB then holds the state of that batch boundary, and keeps
        holding it while :meth:`write_checkpoint` runs. Meanwhile reads and writes work as usual,
        except that the cache may grow past its budget (nothing can be evicted).

        Raises:
            SerializationError, StateError: as :meth:`flush`; the state is then not frozen.
        """
        self.flush()
        self._frozen = True

    def write_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Make a RocksDB checkpoint of the frozen state in the new directory ``path``.

        It flushes the memtable, so the checkpoint is SST files only: hard links of immutable
        files plus a few small ones. That flush (an SST write and fsync) is what costs, ~10-80 ms
        on the reference machine: it is why this may run on another thread than the operators'
        (RocksDB releases the GIL), which only read the state meanwhile.

        Raises:
            StateError: not frozen; ``path`` already exists (checkpoints are immutable: take each
                into a new directory); the disk refused the flush or the checkpoint (nothing is
                left at ``path`` then).
        """
        path = os.fspath(path)
        if not self._frozen:
            raise StateError(f"keyed state at {self.path}: write_checkpoint() needs freeze() first")
        if os.path.lexists(path):
            raise StateError(
                f"keyed state at {self.path}: checkpoint directory {path} already exists; checkpoints are "
                "immutable, so take each one into a new directory (a new checkpoint id)"
            )
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._db.flush(True)
            rocksdict.Checkpoint(self._db).create_checkpoint(path)
        except Exception as exc:
            shutil.rmtree(path, ignore_errors=True)  # never leave a partial checkpoint behind
            raise _storage_error(self.path, f"checkpoint into {path}", exc) from exc

    def thaw(self) -> None:
        """End :meth:`freeze`: writes reach RocksDB again (at the next flush) and the budget applies."""
        self._frozen = False
        self.trim()

    @property
    def frozen(self) -> bool:
        """True between :meth:`freeze` and :meth:`thaw`."""
        return self._frozen

    def close(self) -> None:
        """Flush everything to disk and close the database; the directory stays for a reopen.

        Closing twice is harmless.
        """
        if self._closed:
            return
        self._closed = True
        self._frozen = False  # the caller waited for write_checkpoint(): what it held back goes in now
        try:
            self.flush()
            self._db.flush(True)
        except Exception as exc:
            if isinstance(exc, StateError | SerializationError):
                raise
            raise _storage_error(self.path, "flushing before close", exc) from exc
        finally:
            self._db.close()

    def destroy(self) -> None:
        """Close the database (if still open) without flushing, and delete its directory."""
        try:
            if not self._closed:
                self._closed = True
                self._db.close()
            shutil.rmtree(self.path, ignore_errors=False)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _storage_error(self.path, "removing the directory", exc) from exc
        self.cache.clear()
        self.dirty.clear()

    def __repr__(self) -> str:
        return (
            f"<KeyedState {self.path} cached={len(self.cache)} dirty={len(self.dirty)} "
            f"complete={self._complete}>"
        )


class MemoryState:
    """Keyed state in a plain dict, for runs without fault tolerance: :class:`KeyedState`'s API.

    Operators are written once, against the fast path of :class:`KeyedState` (``cache``, ``dirty``,
    ``get``, ``put``, ``trim``); with ``--ft none`` they get this class instead, which keeps
    nothing on disk and cannot be checkpointed. :meth:`put` normalizes values like
    :class:`KeyedState` does, so a job sees the same types whatever its fault tolerance. The
    ``dirty`` set only exists to honour the fast-path contract: :meth:`trim` empties it.
    :meth:`items` yields in insertion order; only :class:`KeyedState`, whose instances are
    replayed, needs an order independent of its history.

    >>> state = MemoryState()
    >>> state.put("a", [1, 2]); state.get("a"), state.get("b", 0)
    ((1, 2), 0)
    """

    __slots__ = ("cache", "dirty")

    def __init__(self) -> None:
        self.cache: dict[Any, Any] = {}
        self.dirty: set[Any] = set()

    #: the dict holds every key: see :attr:`KeyedState.complete`
    complete = True

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        return self.cache.get(key, default)

    def put(self, key: Any, value: Any) -> None:
        """Set ``key`` to :func:`normalize` of ``value``."""
        self.cache[key] = value if type(value) in _SCALARS else normalize(value)

    def delete(self, key: Any) -> None:
        """Remove ``key`` (no error if absent)."""
        self.cache.pop(key, None)

    def __contains__(self, key: Any) -> bool:
        return key in self.cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, key: Any) -> Any:
        return self.cache[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: Any) -> None:
        self.delete(key)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.cache)

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Every ``(key, value)``, in insertion order."""
        return iter(self.cache.items())

    def flush(self) -> None:
        """Nothing to write; forgets the dirty keys."""
        self.dirty.clear()

    def trim(self) -> None:
        """Nothing to evict; forgets the dirty keys so the set stays as small as a batch."""
        self.dirty.clear()

    def close(self) -> None:
        """Nothing to release (kept for the lifecycle operators share with :class:`KeyedState`)."""
        self.dirty.clear()

    def destroy(self) -> None:
        """Drop every entry."""
        self.cache.clear()
        self.dirty.clear()

    def __repr__(self) -> str:
        return f"<MemoryState cached={len(self.cache)}>"


def _restore(checkpoint: str, path: str) -> None:
    """Replace ``path`` by a private copy of ``checkpoint`` (see :meth:`KeyedState.open`)."""
    if not os.path.isfile(os.path.join(checkpoint, "CURRENT")):
        raise StateError(
            f"cannot restore keyed state at {path}: {checkpoint} is not a RocksDB checkpoint (no CURRENT "
            "file); restore from the state_dirs of a complete checkpoint record"
        )
    staging = f"{path}.restoring"
    try:
        for stale in (staging, path):
            if os.path.lexists(stale):
                shutil.rmtree(stale)
        shutil.copytree(checkpoint, staging, copy_function=_link_or_copy)
        os.replace(staging, path)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _storage_error(path, f"restoring from checkpoint {checkpoint}", exc) from exc
