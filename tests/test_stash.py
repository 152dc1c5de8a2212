"""The lineage stash: what reaches whom, commits, holdings for recovery, the frontier, and the wire."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import msgpack
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine.causal_log import CausalLog, Determinant, encode, now, recv
from engine.errors import ProtocolError
from engine.stash import Segment, Stash, decode_delta


@dataclass
class Node:
    """An instance reduced to what the stash sees: its log and its stash."""

    name: str
    depth: int = 1
    log: CausalLog = field(init=False)
    stash: Stash = field(init=False)

    def __post_init__(self) -> None:
        self.log = CausalLog(owner=self.name)
        self.stash = Stash(self.name, self.depth)
        self.stash.attach_own(self.log)

    def send(self, to: Node, channel: int = 0) -> None:
        """One batch from self to ``to``, processed at once: ingest first, then RECV."""
        delta = self.stash.delta_for(to.name)
        if delta is not None:
            to.stash.ingest(delta)
        to.log.recv(channel)


def chain(depth: int, n: int = 3) -> list[Node]:
    return [Node(name, depth) for name in ("a/0", "b/0", "c/0", "d/0")[:n]]


def held(node: Node, instance: str) -> tuple[int, int] | None:
    h = node.stash.holdings(instance)
    return None if h is None else (h[0], h[0] + len(h[1]))


# -- what reaches whom ---------------------------------------------------------------------------------


def test_depth_1_keeps_copies_at_direct_receivers_only() -> None:
    a, b, c = chain(depth=1)
    for _ in range(3):
        a.log.append(now(7))
        a.send(b)
        b.send(c)
    assert b.stash.holdings("a/0") == (0, [now(7)] * 3)
    assert held(c, "b/0") == (0, 3)  # b's own RECVs: c is b's direct receiver
    assert c.stash.holdings("a/0") is None
    assert c.stash.frontier() == {"a/0": 3, "b/0": 3, "c/0": 3}  # the dependency travels anyway


@pytest.mark.parametrize("depth", [2, -1])
def test_deeper_forwarding_reaches_further(depth: int) -> None:
    a, b, c, d = chain(depth, n=4)
    for i in range(4):
        a.log.append(now(i))
        a.send(b)
        b.send(c)
        c.send(d)
    assert c.stash.holdings("a/0") == (0, [now(0), now(1), now(2), now(3)])
    assert (held(d, "a/0") is None) == (depth == 2)  # a's entries are 3 hops away at d
    assert held(d, "b/0") == (0, 4)  # 2 hops
    assert d.stash.frontier()["a/0"] == 4


def test_each_entry_is_sent_once_per_receiver() -> None:
    a = Node("a/0")
    for _ in range(5):
        a.log.recv(0)
    first = a.stash.delta_for("b/0")
    assert first is not None
    assert decode_delta(first) == ({}, [Segment("a/0", 0, 0, [recv(0)] * 5)])
    assert a.stash.delta_for("b/0") is None
    other = a.stash.delta_for("c/0")  # another receiver gets everything, too
    assert other is not None and decode_delta(other)[1][0].start == 0
    a.log.recv(1)
    again = a.stash.delta_for("b/0")
    assert again is not None and decode_delta(again)[1] == [Segment("a/0", 5, 0, [recv(1)])]
    assert a.stash.statistics().deltas_sent == 3


def test_commit_trims_and_stops_forwarding() -> None:
    a, b, c = chain(depth=-1)
    for _ in range(6):
        a.log.recv(0)
    a.send(b)
    assert held(b, "a/0") == (0, 6)
    a.stash.commit({"a/0": 4})
    b.stash.commit({"a/0": 4})
    assert held(b, "a/0") == (4, 6)
    b.send(c)
    assert held(c, "a/0") == (4, 6)  # committed entries are not forwarded
    for _ in range(2):
        a.log.recv(0)
    delta = a.stash.delta_for("x/0")  # a new receiver: only the uncommitted tail
    assert delta is not None and decode_delta(delta)[1][0][:2] == ("a/0", 4)
    for node in (a, b, c):
        node.stash.commit({"a/0": 8})
    assert held(b, "a/0") is None and held(c, "a/0") is None
    assert a.stash.holdings("a/0") is None
    assert b.stash.statistics().entries == 0
    assert a.stash.delta_for("b/0") is None
    assert b.stash.committed("a/0") == 8


def test_entries_known_committed_are_ignored_on_ingest() -> None:
    a, b = Node("a/0"), Node("b/0")
    for _ in range(5):
        a.log.recv(0)
    delta = a.stash.delta_for("b/0")
    assert delta is not None
    b.stash.commit({"a/0": 3})
    b.stash.ingest(delta)
    assert held(b, "a/0") == (3, 5)
    b.stash.commit({"a/0": 5})
    b.stash.ingest(delta)
    assert held(b, "a/0") is None and b.stash.frontier() == {}


def test_reset_receiver_resends_everything_uncommitted() -> None:
    a, b = Node("a/0"), Node("b/0")
    for _ in range(4):
        a.log.recv(0)
        a.send(b)
    a.stash.commit({"a/0": 1})
    restarted = Node("b/0")
    a.send(restarted)  # a was not told yet: only what the old b was not sent
    assert held(restarted, "a/0") is None
    a.stash.reset_receiver("b/0")
    a.send(restarted)
    assert held(restarted, "a/0") == (1, 4)


def test_holdings_of_the_owner_and_of_strangers() -> None:
    a = Node("a/0")
    assert a.stash.holdings("a/0") is None and a.stash.holdings("z/9") is None
    for ch in (0, 1, 2):
        a.log.recv(ch)
    a.stash.commit({"a/0": 1})
    assert a.stash.holdings("a/0") == (1, [recv(1), recv(2)])
    assert Stash("relay/0").holdings("relay/0") is None  # no log attached


def test_recovery_keeps_the_longest_holdings() -> None:
    a, b, c = Node("a/0"), Node("b/0"), Node("c/0")
    for i in range(5):
        a.log.append(now(i))
        a.send(b)
        if i < 3:
            a.send(c)
    answers = [n.stash.holdings("a/0") for n in (b, c)]
    longest = max((h for h in answers if h is not None), key=lambda h: h[0] + len(h[1]))
    assert longest == (0, [now(i) for i in range(5)]) == a.stash.holdings("a/0")


# -- merging copies ------------------------------------------------------------------------------------


def delta(
    instance: str, start: int, dets: list[Determinant], hop: int = 0, frontier: dict[str, int] | None = None
) -> bytes:
    data: bytes = msgpack.packb([frontier or {}, instance, start, hop, encode(dets)])
    return data


def log_of(n: int) -> list[Determinant]:
    return [recv(i % 3) for i in range(n)]


def test_overlapping_and_adjacent_segments_merge() -> None:
    truth = log_of(12)
    s = Stash("b/0", depth=-1)
    s.ingest(delta("a/0", 2, truth[2:6]))
    s.ingest(delta("a/0", 4, truth[4:9]))  # overlaps the tail
    s.ingest(delta("a/0", 9, truth[9:10]))  # adjacent
    s.ingest(delta("a/0", 0, truth[0:3]))  # overlaps the head
    assert s.holdings("a/0") == (0, truth[:10])
    assert s.statistics().segments == {"a/0": ((0, 10),)}
    assert s.statistics().entries == 10


def test_a_hole_keeps_runs_apart_until_it_fills() -> None:
    truth = log_of(12)
    s = Stash("b/0", depth=-1)
    s.ingest(delta("a/0", 0, truth[0:3]))
    s.ingest(delta("a/0", 6, truth[6:9]))  # its sender knew 3..5 committed
    assert s.statistics().segments == {"a/0": ((0, 3), (6, 9))}
    assert s.holdings("a/0") == (6, truth[6:9])  # the run that reaches the newest entry
    s.ingest(delta("a/0", 4, truth[4:5]))
    assert s.statistics().segments == {"a/0": ((0, 3), (4, 5), (6, 9))}
    s.ingest(delta("a/0", 2, truth[2:7]))
    assert s.statistics().segments == {"a/0": ((0, 9),)} and s.holdings("a/0") == (0, truth[:9])
    s.commit({"a/0": 2})
    assert s.statistics().segments == {"a/0": ((2, 9),)}


def test_entries_filled_in_below_what_was_sent_are_forwarded() -> None:
    truth = log_of(10)
    b = Stash("b/0", depth=-1)
    b.ingest(delta("a/0", 5, truth[5:8]))
    first = b.delta_for("c/0")
    assert first is not None and decode_delta(first)[1] == [Segment("a/0", 5, 1, truth[5:8])]
    b.ingest(delta("a/0", 2, truth[2:6]))  # another path brings older uncommitted entries
    again = b.delta_for("c/0")
    assert again is not None
    c = Stash("c/0", depth=-1)
    c.ingest(first)
    c.ingest(again)
    assert c.holdings("a/0") == (2, truth[2:8])


def test_a_copy_already_held_changes_nothing() -> None:
    truth = log_of(6)
    b = Stash("b/0", depth=-1)
    b.ingest(delta("a/0", 0, truth))
    assert b.delta_for("c/0") is not None
    b.ingest(delta("a/0", 1, truth[1:4]))
    assert b.delta_for("c/0") is None
    assert b.statistics().entries == 6


def test_the_shortest_path_sets_the_hop() -> None:
    truth = log_of(6)
    b = Stash("b/0", depth=2)
    b.ingest(delta("a/0", 0, truth[:4], hop=3))  # came the long way: not forwarded
    first = b.delta_for("c/0")
    assert first is not None and decode_delta(first) == ({"a/0": 4}, [])
    b.ingest(delta("a/0", 2, truth[2:6], hop=0))  # straight from a: hop 1 < 2
    again = b.delta_for("c/0")
    assert again is not None and decode_delta(again)[1] == [Segment("a/0", 0, 1, truth)]


def test_conflicting_copies_raise() -> None:
    s = Stash("b/0")
    s.ingest(delta("a/0", 10, [recv(0), recv(0), now(5)]))
    message = (
        "stash of b/0: two copies of a/0's causal log disagree at position 12: held TIME(5), received "
        "TIME(6); determinants are immutable, so a replay of a/0 diverged (a user function is not "
        "deterministic, DESIGN.md §3)"
    )
    with pytest.raises(ProtocolError, match=re.escape(message)):
        s.ingest(delta("a/0", 11, [recv(0), now(6), recv(1)]))
    with pytest.raises(
        ProtocolError, match=re.escape("disagree at position 10: held RECV(0), received RECV(1)")
    ):
        s.ingest(delta("a/0", 8, [recv(1)] * 3))


def test_own_entries_coming_back_are_ignored() -> None:
    a = Node("a/0")
    a.log.recv(0)
    a.stash.ingest(delta("a/0", 0, [recv(5)], frontier={"a/0": 9}))
    assert a.stash.holdings("a/0") == (0, [recv(0)]) and a.stash.frontier() == {"a/0": 1}


# -- frontier ------------------------------------------------------------------------------------------


def test_frontier_merges_the_maximum_and_drops_what_is_committed() -> None:
    s = Stash("sink/0")
    s.ingest(delta("b/0", 0, [recv(0)], frontier={"a/0": 5, "x/1": 3}))
    s.ingest(delta("b/1", 0, [recv(0)] * 2, frontier={"a/0": 4, "x/1": 7}))
    assert s.frontier() == {"a/0": 5, "x/1": 7, "b/0": 1, "b/1": 2}
    committed = {"a/0": 5, "x/1": 6, "b/0": 1, "b/1": 2}
    assert not Stash.satisfied(s.frontier(), committed)
    committed["x/1"] = 7
    assert Stash.satisfied(s.frontier(), committed)
    s.commit(committed)
    assert s.frontier() == {}
    assert Stash.satisfied({}, {})


def test_a_receiver_learns_each_frontier_value_once() -> None:
    a, b, c = chain(depth=1)
    a.log.recv(0)
    a.send(b)
    b.send(c)
    assert c.stash.frontier() == {"a/0": 1, "b/0": 1, "c/0": 1}
    quiet = b.stash.delta_for("c/0")
    assert quiet is None  # nothing new and the frontier did not move: no bytes at all
    a.send(b)  # a logged nothing new; b logged one RECV
    moved = b.stash.delta_for("c/0")
    assert moved is not None and decode_delta(moved) == ({}, [Segment("b/0", 1, 0, [recv(0)])])
    a.log.recv(0)
    a.send(b)
    frontier_only = b.stash.delta_for("c/0")
    assert frontier_only is not None
    assert decode_delta(frontier_only) == ({"a/0": 2}, [Segment("b/0", 2, 0, [recv(0)])])


def test_steady_state_delta_is_small() -> None:
    """New own RECVs and a frontier of four logs (three upstreams and the sender): under 100 bytes."""
    ups = [Node(f"upstream/{i}") for i in range(3)]
    window = Node("window/3")
    for _ in range(50):
        for i, up in enumerate(ups):
            up.log.recv(0)
            up.send(window, channel=i)
    window.stash.delta_for("sink/0")
    for i, up in enumerate(ups):
        up.log.recv(0)
        up.send(window, channel=i)
    for ch in (0, 1, 2, 0, 1):
        window.log.recv(ch)
    data = window.stash.delta_for("sink/0")
    assert data is not None
    frontier, segments = decode_delta(data)
    assert len(frontier) == 3 and len(segments) == 1 and len(segments[0].determinants) == 8
    assert len(data) < 100


# -- the wire ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xc1", "malformed lineage delta of 1 bytes"),
        (msgpack.packb([]), "expected [frontier map, (instance, start, hop, dets)*], got ()"),
        (msgpack.packb([{}, "a/0", 0, 0]), "expected [frontier map"),
        (msgpack.packb([{"a/0": -1}]), "frontier entry 'a/0': -1 is not instance name: position >= 0"),
        (msgpack.packb([{b"a": 1}]), "frontier entry b'a': 1"),
        (msgpack.packb([{}, "a/0", "0", 0, b"\x90"]), "segment 0 is ('a/0', '0', 0, b'\\x90')"),
        (msgpack.packb([{}, "a/0", -2, 0, b"\x90"]), "segment 0 of a/0 has start -2 and hop 0"),
        (msgpack.packb([{}, "a/0", 3, 0, b"\x91\xc3"]), "segment of a/0 at 3: malformed determinant list"),
    ],
)
def test_malformed_deltas_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match="b/0 received a bad lineage delta: .*" + re.escape(message)):
        Stash("b/0").ingest(data)


def test_depth_must_be_positive_or_unbounded() -> None:
    with pytest.raises(ValueError, match="stash of a/0: forwarding depth must be >= 1"):
        Stash("a/0", depth=0)
    assert Stash("a/0", depth=-1).depth == -1


def test_statistics() -> None:
    a, b, c = chain(depth=-1)
    for _ in range(4):
        a.log.recv(0)
        a.send(b)
        b.send(c)
    b.stash.commit({"a/0": 3})
    stats = b.stash.statistics()
    assert (stats.owner, stats.depth, stats.entries, stats.entries_max) == ("b/0", -1, 1, 4)
    assert stats.segments == {"a/0": ((3, 4),)}
    assert stats.own_uncommitted == 4
    assert stats.deltas_sent == 4 and stats.deltas_ingested == 4 and 0 < stats.delta_bytes_mean < 40
    assert 0 < stats.encoded_bytes <= stats.encoded_bytes_max
    assert "entries=1" in repr(b.stash)


# -- the invariant, under random interleavings ---------------------------------------------------------


@dataclass
class Peer:
    """A receiver in the simulation: its node, its input queue and what its state depends on."""

    node: Node
    queue: list[tuple[bytes | None, dict[str, int]]] = field(default_factory=list)
    depends: dict[str, int] = field(default_factory=dict)  # instance -> log end its state depends on
    known: int = 0  # the commit of a/0's log it was told


class StashedChain(RuleBasedStateMachine):
    """a/0 -> b/0 -> c/0 and a/0 -> b/1 -> c/0, with batches in flight, late commits, checkpoints, restarts.

    With depth >= 2, copies of a/0's entries reach c/0 by two paths, from senders that may know
    different commits: overlapping, adjacent and separated segments meet there.

    After every step: every uncommitted entry of a/0 is held by a/0, and by each direct receiver that
    processed a batch sent after the entry was logged (and, with depth >= 2, by c/0 once a batch that
    depended on it reached it); c/0 holds b/0's entries it depends on; every frontier covers what the
    state depends on; and whatever is held equals the original log.
    """

    @initialize(depth=st.sampled_from([1, 2, -1]))
    def start(self, depth: int) -> None:
        self.depth = depth
        self.a = Node("a/0", depth)
        self.peers = {name: Peer(Node(name, depth)) for name in ("b/0", "b/1", "c/0")}
        self.truth: list[Determinant] = []
        self.committed = 0  # what the GCS acknowledged of a/0's log

    @rule(
        dets=st.lists(st.integers(0, 2).map(recv) | st.integers(0, 10**12).map(now), min_size=1, max_size=4)
    )
    def log(self, dets: list[Determinant]) -> None:
        for det in dets:
            self.a.log.append(det)
            self.truth.append(det)

    @rule(to=st.sampled_from(["b/0", "b/1"]))
    def send(self, to: str) -> None:
        self.peers[to].queue.append((self.a.stash.delta_for(to), {"a/0": self.a.log.end}))

    @rule(via=st.sampled_from(["b/0", "b/1"]))
    def forward(self, via: str) -> None:
        b = self.peers[via]
        depends = {**b.depends, via: b.node.log.end}
        self.peers["c/0"].queue.append((b.node.stash.delta_for("c/0"), depends))

    @rule(name=st.sampled_from(["b/0", "b/1", "c/0"]))
    def process(self, name: str) -> None:
        peer = self.peers[name]
        if peer.queue:
            data, depends = peer.queue.pop(0)
            if data is not None:
                peer.node.stash.ingest(data)  # before processing
            peer.node.log.recv(0)
            for instance, end in depends.items():
                peer.depends[instance] = max(peer.depends.get(instance, 0), end)

    @rule()
    def flow(self) -> None:
        """A batch all the way down the chain (behind whatever is queued): deep paths stay likely."""
        self.send("b/0")
        self.process("b/0")
        self.forward("b/0")
        self.process("c/0")

    @rule(percent=st.integers(0, 100), checkpoint=st.booleans())
    def commit(self, percent: int, checkpoint: bool) -> None:
        self.a.log.take_unflushed()  # the flush reached the GCS, which acknowledges a prefix of it
        self.committed += (self.a.log.end - self.committed) * percent // 100
        self.a.stash.commit({"a/0": self.committed})  # the owner hears from the GCS directly
        if checkpoint:
            self.a.log.prune(self.committed)

    @rule(name=st.sampled_from(["b/0", "b/1", "c/0"]))
    def tell(self, name: str) -> None:
        peer = self.peers[name]
        peer.known = self.committed
        peer.node.stash.commit({"a/0": self.committed})

    @rule(name=st.sampled_from(["b/1", "c/0"]))
    def restart(self, name: str) -> None:
        """The receiver restarts empty; what was in flight is resent later, with a fresh delta."""
        self.peers[name] = Peer(Node(name, self.depth))
        upstreams = [self.a] if name == "b/1" else [self.peers["b/0"].node, self.peers["b/1"].node]
        for upstream in upstreams:
            upstream.stash.reset_receiver(name)

    @invariant()
    def held_by_everyone_depending_on_it(self) -> None:
        committed, truth = self.committed, self.truth
        own = (committed, truth[committed:]) if committed < len(truth) else None
        assert self.a.stash.holdings("a/0") == own
        for name, peer in self.peers.items():
            needed = peer.depends.get("a/0", 0)
            holds = peer.node.stash.holdings("a/0")
            copies = name != "c/0" or self.depth != 1
            if copies and needed > committed:
                assert holds is not None, f"{name} depends on a/0 up to {needed} but holds nothing"
                start, dets = holds
                assert start <= max(committed, peer.known) and start + len(dets) >= needed, (name, holds)
            if holds is not None:
                assert copies and holds[1] == truth[holds[0] : holds[0] + len(holds[1])]
            # the output-commit rule: once the frontier is committed, so is everything depended on
            # (a sender leaves out of the frontier what it knows committed, however late others learn it)
            assert max(peer.node.stash.frontier().get("a/0", 0), committed) >= needed
        c, b0 = self.peers["c/0"], self.peers["b/0"]
        if c.depends.get("b/0", 0):  # c/0 is b/0's direct receiver; b/0's log is never committed here
            holds = c.node.stash.holdings("b/0")
            assert holds is not None and holds[0] == 0 and len(holds[1]) >= c.depends["b/0"]
            assert holds[1] == b0.node.log.slice(0, len(holds[1]))


TestStashedChain = StashedChain.TestCase
TestStashedChain.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
