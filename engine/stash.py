"""The lineage stash: what an instance holds of causal logs not yet committed (DESIGN.md §5.2-§5.3, §7.2).

Every outgoing batch piggybacks a **lineage delta** (:attr:`engine.codec.Batch.lineage`): the stash
entries its receiver has not been sent yet and that are not known committed, own ones first. The
receiver gives it to :meth:`~Stash.ingest` *before* it processes the batch. So whenever an instance's
state depends on a determinant, that instance holds a copy of it (or it is durable in the GCS), and the
determinants a failed instance needs to replay survive in the stashes of its live receivers: recovery
asks each of them for its :meth:`~Stash.holdings` and keeps the longest (§7.2). Nothing waits for
storage: the owner flushes its own log to the GCS asynchronously, and once the GCS acknowledges
"X committed up to p", :meth:`~Stash.commit` drops those entries everywhere and they are never sent
again, which keeps both the stash and the deltas small.

**Forwarding depth.** An entry's *hop* is how many batches it crossed: the owner's own entries have
hop 0 and are always forwarded, so each direct receiver holds every uncommitted entry its state
depends on. A received entry (hop h) is forwarded further only while ``h < depth``, the setting ``f``
of §5.2: depth 1 (the default) keeps copies at direct receivers only, enough to survive any single
failure; depth ``f`` keeps them ``f`` hops downstream, so that a state depending on an entry still has
a live holder after ``f`` simultaneous failures; depth -1 forwards without bound.

**Frontier.** Each delta also carries, for every log in the batch's causal past, the end position the
sender depends on, whether or not the entries themselves travel (depth bounds copies, not
dependencies). A sink releases output only once every log in its :meth:`~Stash.frontier` is committed
that far (:meth:`Stash.satisfied`, the output-commit rule of §5.5). Positions already committed are
left out, so a job whose commits keep up carries only the owner's few newest entries.

**Wire format** of a delta: one msgpack array ``[frontier, name, start, hop, dets, name, ...]``:
``frontier`` a map ``{instance: end}`` of the positions not implied by the segments that follow,
then one ``(instance, start position, hop at the sender, causal_log.encode(determinants))`` group per
segment. Five new own RECVs and a frontier of three more logs take ~60 bytes.

>>> from engine.causal_log import CausalLog
>>> log_a = CausalLog(owner="a/0")
>>> a, b = Stash("a/0"), Stash("b/0")
>>> a.attach_own(log_a)
>>> for _ in range(3):
...     _ = log_a.recv(0)
>>> b.ingest(a.delta_for("b/0"))      # before b processes the batch
>>> b.holdings("a/0")
(0, [(<Kind.RECV: 1>, 0), (<Kind.RECV: 1>, 0), (<Kind.RECV: 1>, 0)])
>>> a.delta_for("b/0") is None       # nothing new for b
True
>>> b.frontier(), Stash.satisfied(b.frontier(), {"a/0": 2})
({'a/0': 3}, False)
>>> b.commit({"a/0": 3}); b.holdings("a/0") is None, b.frontier()
(True, {})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from engine.causal_log import CausalLog, Determinant, decode, describe, encode
from engine.errors import ProtocolError, short_repr

__all__ = ["Segment", "Stash", "StashStatistics", "decode_delta"]

_pack = msgpack.Packer().pack  # one packer: packb builds one per call (see causal_log)


class Segment(NamedTuple):
    """Consecutive entries of one instance's log, as a delta carries them."""

    instance: str
    start: int  # position of determinants[0]
    hop: int  # at the sender: 0 for the sender's own entries
    determinants: list[Determinant]


def decode_delta(delta: bytes | memoryview) -> tuple[dict[str, int], list[Segment]]:
    """The frontier and the segments of a lineage delta, checked.

    Raises:
        ProtocolError: the delta is malformed; the message says which part.
    """
    frontier, segments = _decode(delta)
    return frontier, [Segment(*segment[:4]) for segment in segments]


def _decode(
    delta: bytes | memoryview,
) -> tuple[dict[str, int], list[tuple[str, int, int, list[Determinant], int]]]:
    """Frontier and ``(instance, start, hop, determinants, encoded size)`` segments of ``delta``."""
    try:
        tokens = msgpack.unpackb(delta, use_list=False)
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError (unhashable key)...
        raise ProtocolError(f"malformed lineage delta of {len(delta)} bytes: {exc}") from None
    if type(tokens) is not tuple or not tokens or (len(tokens) - 1) % 4 or type(tokens[0]) is not dict:
        raise ProtocolError(
            f"malformed lineage delta: expected [frontier map, (instance, start, hop, dets)*], "
            f"got {short_repr(tokens, 80)}"
        )
    frontier: dict[str, int] = tokens[0]
    for name, end in frontier.items():
        if type(name) is not str or type(end) is not int or end < 0:
            raise ProtocolError(
                f"malformed lineage delta: frontier entry {short_repr(name, 40)}: {short_repr(end, 40)} "
                f"is not instance name: position >= 0"
            )
    segments = []
    for i in range(1, len(tokens), 4):
        name, start, hop, data = tokens[i : i + 4]
        if type(name) is not str or type(start) is not int or type(hop) is not int or type(data) is not bytes:
            raise ProtocolError(
                f"malformed lineage delta: segment {i // 4} is {short_repr(tokens[i : i + 4], 80)}, "
                f"not (instance name, start >= 0, hop >= 0, encoded determinants)"
            )
        if start < 0 or hop < 0:
            raise ProtocolError(
                f"malformed lineage delta: segment {i // 4} of {name} has start {start} and hop {hop}, "
                f"both must be >= 0"
            )
        try:
            dets = decode(data)
        except ProtocolError as exc:
            raise ProtocolError(f"lineage delta segment of {name} at {start}: {exc}") from None
        segments.append((name, start, hop, dets, len(data)))
    return frontier, segments


class _Run:
    """Contiguous entries held of one other instance's log, with the smallest hop any copy came with.

    Keeping the smallest hop when copies meet over-forwards a little (only bandwidth); keeping a
    larger one could stop an entry short of the receivers the depth bound promises.
    """

    __slots__ = ("entries", "hop", "nbytes", "start")

    def __init__(self, start: int, entries: list[Determinant], hop: int, nbytes: int):
        self.start = start
        self.entries = entries
        self.hop = hop
        self.nbytes = nbytes  # encoded size, as received (prorated when part of a segment is kept)

    @property
    def end(self) -> int:
        return self.start + len(self.entries)


class _Receiver:
    """What one receiver was sent: delta_for sends each entry and each frontier value once."""

    __slots__ = ("own", "sent", "told", "version")

    def __init__(self) -> None:
        self.own = 0  # next own position to send
        self.sent: dict[str, int] = {}  # instance -> next position to send
        self.told: dict[str, int] = {}  # instance -> highest end it learned, via segments or frontier
        self.version = -1  # the stash's version at the last delta: equal -> nothing new but own entries


@dataclass(frozen=True, slots=True)
class StashStatistics:
    """A snapshot of a stash, as the coordinator serves it."""

    owner: str
    depth: int
    entries: int  # held entries of other instances' logs
    entries_max: int
    encoded_bytes: int  # their size as received on the wire
    encoded_bytes_max: int
    segments: dict[str, tuple[tuple[int, int], ...]]  # instance -> held [start, end) ranges
    own_uncommitted: int  # own entries not known committed (served from the owner's causal log)
    deltas_sent: int
    delta_bytes_mean: float
    deltas_ingested: int


class Stash:
    """The lineage stash of instance ``owner``, forwarding received entries while their hop < ``depth``.

    Held entries of each other instance are kept as sorted, disjoint runs. A delta never skips an
    uncommitted entry its receiver was not sent before, so runs separated by a hole occur only while
    commit knowledge or a receiver restart is in flight; :meth:`holdings` answers with the run that
    reaches the newest entry.
    """

    def __init__(self, owner: str, depth: int = 1):
        if type(depth) is not int or not (depth >= 1 or depth == -1):
            raise ValueError(
                f"stash of {owner}: forwarding depth must be >= 1 (failures to survive) or -1 (unbounded), "
                f"not {depth!r}"
            )
        self.owner = owner
        self.depth = depth
        self._log: CausalLog | None = None
        self._runs: dict[str, list[_Run]] = {}  # other instance -> sorted disjoint runs, never empty
        self._frontier: dict[str, int] = {}  # other instance -> end depended on; always > committed
        self._committed: dict[str, int] = {}  # instance -> known committed (exclusive) position
        self._receivers: dict[str, _Receiver] = {}
        self._version = 0  # bumped whenever runs or the frontier gain something a receiver may need
        self._entries = self._entries_max = 0
        self._bytes = self._bytes_max = 0
        self._deltas_sent = self._delta_bytes = self._deltas_ingested = 0

    def attach_own(self, log: CausalLog) -> None:
        """Serve the owner's uncommitted entries straight from its causal log (no copy is kept)."""
        self._log = log

    # -- receiving -----------------------------------------------------------------------------------

    def ingest(self, delta: bytes | memoryview) -> None:
        """Add the segments and frontier of ``delta``, carried by an input batch, to this stash.

        Must be called *before* the batch is processed: once the instance's state depends on the
        batch, it depends on the sender's determinants; if the sender failed in between and the
        entries were in no other stash, a replay could decide differently and this live instance
        would be an orphan, its state resting on a decision no survivor holds.

        Entries arrive with hop + 1; entries already known committed are ignored; the delta's frontier
        is merged (max per instance).

        Raises:
            ProtocolError: the delta is malformed, or a copy disagrees with one held at some position
                (determinants are immutable); the stash may hold part of the delta afterwards.
        """
        try:
            frontier, segments = _decode(delta)
        except ProtocolError as exc:
            raise ProtocolError(f"{self.owner} received a bad lineage delta: {exc}") from None
        self._deltas_ingested += 1
        owner, committed, front = self.owner, self._committed, self._frontier
        changed = False
        for name, start, hop, dets, nbytes in segments:
            end = start + len(dets)
            c = committed.get(name, 0)
            if end <= c or name == owner or not dets:  # own entries come back only round a cycle
                continue
            if start < c:
                nbytes = nbytes * (end - c) // len(dets)
                dets = dets[c - start :]
                start = c
            if front.get(name, 0) < end:
                front[name] = end
            changed = self._merge(name, start, hop + 1, dets, nbytes) or changed
        for name, end in frontier.items():
            if end > front.get(name, 0) and end > committed.get(name, 0) and name != owner:
                front[name] = end
                changed = True
        if changed:
            self._version += 1

    def _merge(self, name: str, start: int, hop: int, dets: list[Determinant], nbytes: int) -> bool:
        """Hold ``dets`` of ``name`` from ``start``; True if anything was new."""
        runs = self._runs.get(name)
        if runs is None:
            self._runs[name] = [_Run(start, dets, hop, nbytes)]
            self._grow(len(dets), nbytes)
            return True
        last = runs[-1]
        last_end = last.start + len(last.entries)
        if start == last_end:  # the steady state: the next entries of the newest run
            last.entries.extend(dets)
            last.nbytes += nbytes
            if hop < last.hop:
                if self._forwards(hop) and not self._forwards(last.hop):
                    self._rewind(name, last.start)
                last.hop = hop
            self._grow(len(dets), nbytes)
            return True
        if start > last_end:
            runs.append(_Run(start, dets, hop, nbytes))
            self._grow(len(dets), nbytes)
            return True
        return self._merge_overlap(name, runs, start, hop, dets, nbytes)

    def _merge_overlap(
        self, name: str, runs: list[_Run], start: int, hop: int, dets: list[Determinant], nbytes: int
    ) -> bool:
        end = start + len(dets)
        i = 0
        while runs[i].end < start:
            i += 1
        j = i
        while j < len(runs) and runs[j].start <= end:
            j += 1
        # the runs overlapping or adjacent to [start, end): sorted and disjoint, so only the first may
        # begin before start and only the last may end after end; dets fills any hole between them
        touching = runs[i:j]
        if not touching:  # in a hole, below the newest run
            runs.insert(i, _Run(start, dets, hop, nbytes))
            self._grow(len(dets), nbytes)
            self._rewind(name, start)
            return True
        for run in touching:
            lo, hi = max(start, run.start), min(end, run.end)
            if lo < hi and run.entries[lo - run.start : hi - run.start] != dets[lo - start : hi - start]:
                raise self._conflict(name, run, start, dets, lo, hi)
        first, last = touching[0], touching[-1]
        entries = first.entries[: max(0, start - first.start)] + dets
        if last.end > end:
            entries += last.entries[end - last.start :]
        held = sum(len(run.entries) for run in touching)
        added = len(entries) - held
        old_hop = min(run.hop for run in touching)
        if added == 0 and hop >= old_hop:
            return False  # a copy of entries already held
        grown = nbytes * added // len(dets)
        merged = _Run(
            min(start, first.start), entries, min(hop, old_hop), sum(r.nbytes for r in touching) + grown
        )
        old_end = runs[-1].end
        runs[i:j] = [merged]
        self._grow(added, grown)
        if added > max(0, end - old_end) or (self._forwards(merged.hop) and not self._forwards(old_hop)):
            self._rewind(name, merged.start)  # new entries below what receivers were already sent
        return True

    def _forwards(self, hop: int) -> bool:
        return self.depth < 0 or hop < self.depth

    def _rewind(self, name: str, position: int) -> None:
        """Entries of ``name`` from ``position`` became sendable below receivers' send pointers: resend.

        Rare (a hole filled, a shorter path found); receivers ignore the copies they already hold.
        """
        for r in self._receivers.values():
            if r.sent.get(name, 0) > position:
                r.sent[name] = position

    def _conflict(
        self, name: str, run: _Run, start: int, dets: list[Determinant], lo: int, hi: int
    ) -> ProtocolError:
        """The error for copies of ``name``'s log that differ somewhere in positions [lo, hi)."""
        p = next(p for p in range(lo, hi) if run.entries[p - run.start] != dets[p - start])
        return ProtocolError(
            f"stash of {self.owner}: two copies of {name}'s causal log disagree at position {p}: held "
            f"{describe(run.entries[p - run.start])}, received {describe(dets[p - start])}; determinants "
            f"are immutable, so a replay of {name} diverged "
            f"(a user function is not deterministic, DESIGN.md §3)"
        )

    def _grow(self, entries: int, nbytes: int) -> None:
        self._entries += entries
        self._bytes += nbytes
        if self._entries > self._entries_max:
            self._entries_max = self._entries
        if self._bytes > self._bytes_max:
            self._bytes_max = self._bytes

    # -- sending -------------------------------------------------------------------------------------

    def delta_for(self, receiver: str) -> bytes | None:
        """The lineage delta for the next batch to ``receiver``; ``None`` if it has nothing new.

        A delta holds what this receiver has not been sent: own entries not known committed, held
        entries whose hop is below the depth bound, and frontier positions it has not learned. The
        common cases stay cheap: with nothing new it costs a few lookups; with only new own entries
        (an instance that keeps up with its commits) it encodes one segment.
        """
        r = self._receivers.get(receiver)
        if r is None:
            r = self._receivers[receiver] = _Receiver()
        log = self._log
        own_end = 0 if log is None else log.end
        if r.version == self._version and r.own >= own_end:
            return None
        out: list[Any] = [None]
        if r.own < own_end:
            assert log is not None
            first = max(r.own, log.start, self._committed.get(self.owner, 0))
            if first < own_end:
                out += (self.owner, first, 0, encode(log.slice(first, own_end)))
            r.own = own_end
        learn: dict[str, int] = {}
        if r.version != self._version:
            r.version = self._version
            learn = self._forward(r, out)
        out[0] = learn
        if len(out) == 1 and not learn:
            return None
        data: bytes = _pack(out)
        self._deltas_sent += 1
        self._delta_bytes += len(data)
        return data

    def _forward(self, r: _Receiver, out: list[Any]) -> dict[str, int]:
        """Append the held segments ``r`` was not sent to ``out``; return the frontier it must learn."""
        depth, sent, told = self.depth, r.sent, r.told
        for name, runs in self._runs.items():
            nxt = sent.get(name, 0)
            for run in runs:
                end = run.start + len(run.entries)
                if end <= nxt or 0 <= depth <= run.hop:
                    continue
                first = max(nxt, run.start)
                out += (name, first, run.hop, encode(run.entries[first - run.start :]))
                nxt = end
            if nxt > sent.get(name, 0):
                sent[name] = nxt
                if nxt > told.get(name, 0):
                    told[name] = nxt
        learn: dict[str, int] = {}
        for name, end in self._frontier.items():
            if end > told.get(name, 0):
                learn[name] = told[name] = end
        return learn

    def reset_receiver(self, receiver: str) -> None:
        """``receiver`` restarted with an empty stash: send it everything uncommitted again."""
        self._receivers.pop(receiver, None)

    # -- commits -------------------------------------------------------------------------------------

    def commit(self, positions: Mapping[str, int]) -> None:
        """The GCS holds ``instance``'s log below each position: drop those entries, never send them again."""
        committed = self._committed
        for name, upto in positions.items():
            if upto <= committed.get(name, 0):
                continue
            committed[name] = upto
            if self._frontier.get(name, upto) <= upto:
                self._frontier.pop(name, None)
            runs = self._runs.get(name)
            if runs is None:
                continue
            while runs and runs[0].end <= upto:
                run = runs.pop(0)
                self._entries -= len(run.entries)
                self._bytes -= run.nbytes
            if runs and runs[0].start < upto:
                run = runs[0]
                k = upto - run.start
                freed = run.nbytes * k // len(run.entries)
                del run.entries[:k]
                run.start = upto
                run.nbytes -= freed
                self._entries -= k
                self._bytes -= freed
            if not runs:
                del self._runs[name]

    def committed(self, instance: str) -> int:
        """The position below which ``instance``'s log is known committed (0 if nothing is known)."""
        return self._committed.get(instance, 0)

    # -- recovery and output commit ------------------------------------------------------------------

    def holdings(self, instance: str) -> tuple[int, list[Determinant]] | None:
        """What this stash holds of ``instance``'s log: ``(start position, determinants)``, or ``None``.

        Recovery of ``instance`` asks every live instance and keeps the longest answer (DESIGN.md §7.2).
        Of runs separated by a hole, the one reaching the newest entry is returned: entries before a
        hole were skipped by a sender that knew them committed. For the owner: its uncommitted tail.
        """
        if instance == self.owner:
            log = self._log
            if log is None:
                return None
            first = max(log.start, self._committed.get(instance, 0))
            return (first, log.slice(first)) if first < log.end else None
        runs = self._runs.get(instance)
        if not runs:
            return None
        return runs[-1].start, list(runs[-1].entries)

    def frontier(self) -> dict[str, int]:
        """For every log in this instance's causal past not known committed: the end position depended on.

        The owner's own log is included (its end). A sink snapshots this after processing and
        releases the output once :meth:`satisfied` (§5.5).
        """
        out = dict(self._frontier)
        log = self._log
        if log is not None and log.end > self._committed.get(self.owner, 0):
            out[self.owner] = log.end
        return out

    @staticmethod
    def satisfied(frontier: Mapping[str, int], committed: Mapping[str, int]) -> bool:
        """True once every log in ``frontier`` is committed up to its position (the output-commit rule).

        >>> Stash.satisfied({"a/0": 10, "b/1": 4}, {"a/0": 10, "b/1": 7})
        True
        >>> Stash.satisfied({"a/0": 10}, {})
        False
        """
        return all(committed.get(name, 0) >= end for name, end in frontier.items())

    # -- observability -------------------------------------------------------------------------------

    def statistics(self) -> StashStatistics:
        log = self._log
        own = 0 if log is None else max(0, log.end - max(log.start, self._committed.get(self.owner, 0)))
        return StashStatistics(
            owner=self.owner,
            depth=self.depth,
            entries=self._entries,
            entries_max=self._entries_max,
            encoded_bytes=self._bytes,
            encoded_bytes_max=self._bytes_max,
            segments={name: tuple((r.start, r.end) for r in runs) for name, runs in self._runs.items()},
            own_uncommitted=own,
            deltas_sent=self._deltas_sent,
            delta_bytes_mean=self._delta_bytes / self._deltas_sent if self._deltas_sent else 0.0,
            deltas_ingested=self._deltas_ingested,
        )

    def __repr__(self) -> str:
        return f"<Stash {self.owner} depth={self.depth} entries={self._entries} instances={len(self._runs)}>"
