"""Nexmark auction events (persons, auctions, bids) as a pure function of the event number.

The event model is the one of Apache Beam's Nexmark generator (also used by the Flink Nexmark suite):
out of every 50 events, chosen by ``n % 50``, event 0 is a new person, events 1-3 are new auctions
and events 4-49 are bids. Ids follow from the event number: person ``1000 + n // 50``, auction
``1000 + 3 * (n // 50) + (n % 50 - 1)``. A bid is for the "hot" auction (the first of the last batch
of 100 auctions) with probability ``1 - 1 / hot_auction_ratio``, else for one of the last
``num_in_flight_auctions`` auctions; likewise its bidder is a hot bidder (second person of the last
batch of 100, or the only one) or one of the last ``num_active_people`` persons, and an auction's seller is a hot seller
(first person of the batch) or an active person. Prices are log-uniform in [1, 10^6] dollars, in cents;
an auction's reserve is its initial bid plus another such price; categories are 10..14; states and
cities come from Beam's lists (the city is drawn independently of the state, as in Beam); channels
and URLs follow the Flink generator. An auction lasts ``1 + U[0, 2 * horizon)`` ms, where the
horizon is the time the next ``num_in_flight_auctions`` auctions take to appear (Beam's rule: 166 ms
at 10,000 events per second).

Two deliberate differences from Beam: a bid or an auction only refers to persons and auctions whose
event number is smaller than its own (Beam lets ids run 10 ahead, so a join may see its other side
later in number order; here disorder comes only from ``max_out_of_order_ms``), and the ``extra``
padding is ``U[0, extra_size]`` characters instead of filling events to Beam's 100-500 bytes.

Determinism (DESIGN.md §3): ``event(n, config)`` depends on nothing but ``n`` and ``config``. Each
event draws its random choices from the BLAKE2b digest of ``(seed, n)``, so a recovering instance
regenerates event ``n`` alone, in any order, in any process.

Event time: ``date_time(n) = BASE_TIME_MS + n * 1000 // events_per_second + jitter(n)`` with
``0 <= jitter(n) <= max_out_of_order_ms`` drawn from the digest. The first term never decreases, so
for all ``m < n``: ``date_time(m) - date_time(n) <= max_out_of_order_ms``; an event is never older than
the newest event numbered before it by more than ``max_out_of_order_ms``, in the whole stream and in
any instance's share of it. With the default 0 the stream is in event-time order. Since every event
after ``n`` has a time of at least ``BASE_TIME_MS + n * 1000 // events_per_second``, a source may emit
that as its watermark after event ``n``.

Speed: about 3 µs of CPU per event in CPython 3.11 with the default config (``events(1_000_000)``
took 3.1 s on the 2-core development machine while other jobs kept it busy); bids, 92% of the
events, are the fast path. ``NexmarkSource`` adds the cost of ``GeneratorSource`` batching.

>>> import asyncio
>>> [e["type"] for e in events(6)]
['person', 'auction', 'auction', 'auction', 'bid', 'bid']
>>> event(0)["id"], event(3)["id"], event(50)["id"], event(51)["id"]
(1000, 1002, 1001, 1003)
>>> event(50)["date_time"] - event(0)["date_time"]  # 10,000 events per second
5
>>> reader = NexmarkSource(count=100).open(index=1, parallelism=2)
>>> batch = asyncio.run(reader.read(3))
>>> [e["type"] for e in batch], reader.offset(), reader.progress()
(['auction', 'auction', 'bid'], 3, (3, 50))
>>> batch == [event(1), event(3), event(5)]
True
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import string
import struct
from typing import Any

from connectors.generator import GeneratorSource
from engine.connector import Source, SourceReader
from engine.errors import ParameterError

__all__ = ["BASE_TIME_MS", "NexmarkConfig", "NexmarkSource", "event", "events", "timestamp"]

#: Event time of event 0 with no jitter: 2026-01-01T00:00:00Z in milliseconds.
BASE_TIME_MS = 1_767_225_600_000

FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
#: Per 50 events: 1 person, 3 auctions, 46 bids (Beam's PERSON/AUCTION/BID_PROPORTION).
PROPORTION_DENOMINATOR = 50
_HOT_BATCH = 100  # Beam's HOT_AUCTION_RATIO / HOT_BIDDER_RATIO / HOT_SELLER_RATIO constants

US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
US_CITIES = (
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
)
FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter")
LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris")
HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
_NUM_CHANNELS = 10_000

_KEY = struct.Struct("<QQ")
_WORDS = struct.Struct("<5Q")
_LOW = (1 << 32) - 1
_PRICE_SCALE = 6.0 / (1 << 32)
_MAX_EXTRA = 4096
_OFFSETS = 8192  # strings are slices of fixed pseudo-random text starting at one of these offsets


def _pool(tag: bytes, size: int, alphabet: str) -> str:
    """``size`` characters of ``alphabet`` from BLAKE2b: the same text on every platform and version."""
    raw = b"".join(hashlib.blake2b(tag + i.to_bytes(8, "little")).digest() for i in range(0, size, 64))
    return "".join(alphabet[b % len(alphabet)] for b in raw[:size])


_LETTERS = _pool(b"letters", _OFFSETS + _MAX_EXTRA, string.ascii_lowercase)
# About one space in 14 characters, like Beam's nextString (one in 13); slices are stripped.
_TEXT = _pool(b"text", _OFFSETS + 100, string.ascii_lowercase[:13] + " " + string.ascii_lowercase[13:] + " ")


def _url(k: int) -> str:
    words = (_LETTERS[(k * 3 + i) * 5 : (k * 3 + i) * 5 + 5] for i in range(3))
    return "https://www.nexmark.com/" + "/".join(words) + "/item.htm?query=1"


_HOT_URLS = tuple(_url(i) for i in range(len(HOT_CHANNELS)))
# Flink's generator gives nine channels in ten a channel_id parameter in the URL.
_CHANNELS = tuple(
    (f"channel-{k}", _url(k % 500 + 4) + (f"&channel_id={k}" if k % 10 else "")) for k in range(_NUM_CHANNELS)
)


@dataclasses.dataclass(frozen=True, slots=True)
class NexmarkConfig:
    """What the generated stream looks like; the defaults are Beam's (except ``extra_size``).

    ``extra_size`` is the largest length of the ``extra`` padding string (lengths are uniform in
    ``[0, extra_size]``). Every field is an int; a bad value raises
    :class:`~engine.errors.ParameterError` naming the field, the value and the allowed range.

    >>> NexmarkConfig(seed=7).events_per_second
    10000
    >>> NexmarkConfig(hot_auction_ratio=0)
    Traceback (most recent call last):
    ...
    engine.errors.ParameterError: NexmarkConfig: hot_auction_ratio must be an int in [1, 1000], got 0
    """

    seed: int = 0
    events_per_second: int = 10_000
    max_out_of_order_ms: int = 0
    extra_size: int = 16
    hot_auction_ratio: int = 2
    hot_bidders_ratio: int = 4
    hot_sellers_ratio: int = 4
    num_active_people: int = 1000
    num_in_flight_auctions: int = 100

    def __post_init__(self) -> None:
        # The bounds keep the draws of one event within the bits of its digest (see event()).
        for name, low, high in (
            ("seed", 0, 2**64 - 1),
            ("events_per_second", 1, 10**9),
            ("max_out_of_order_ms", 0, 86_400_000),
            ("extra_size", 0, _MAX_EXTRA),
            ("hot_auction_ratio", 1, 1000),
            ("hot_bidders_ratio", 1, 1000),
            ("hot_sellers_ratio", 1, 1000),
            ("num_active_people", 1, 10**7),
            ("num_in_flight_auctions", 1, 10**6),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ParameterError(
                    f"NexmarkConfig: {name} must be an int in [{low}, {high}], got {value!r}"
                )


_DEFAULT = NexmarkConfig()


def event(n: int, config: NexmarkConfig = _DEFAULT) -> dict[str, Any]:
    """Event number ``n`` (an int >= 0) of the stream described by ``config``: a person, auction or bid.

    All random choices come from one 40-byte BLAKE2b digest of ``(seed, n)``, so they need no
    generator state: its first 64-bit word is the jitter, a bid (92% of the events, so the fast path)
    takes two 32-bit draws from each of the next four words, and a person or an auction reads the last
    32 bytes as one 256-bit number whose mixed-radix digits (``divmod`` by the size of each choice)
    are its choices. The parameter bounds of :class:`NexmarkConfig` keep every event within its bits.
    """
    digest = hashlib.blake2b(_KEY.pack(config.seed, n), digest_size=40).digest()
    words = _WORDS.unpack(digest)
    date_time = BASE_TIME_MS + n * 1000 // config.events_per_second
    if config.max_out_of_order_ms:
        date_time += words[0] % (config.max_out_of_order_ms + 1)
    epoch, offset = divmod(n, PROPORTION_DENOMINATOR)
    if offset >= 4:
        return _bid(epoch, words, date_time, config)
    h = int.from_bytes(digest[8:], "little")
    if offset:
        return _auction(epoch * 3 + offset - 1, epoch, h, date_time, config)
    return _person(epoch, h, date_time, config)


def events(count: int, config: NexmarkConfig = _DEFAULT) -> list[dict[str, Any]]:
    """The first ``count`` events, in number order (for references and tests)."""
    return [event(n, config) for n in range(count)]


def timestamp(e: dict[str, Any]) -> int:
    """The event time of an event, in milliseconds since the epoch."""
    return int(e["date_time"])


def _price(h: int) -> tuple[int, int]:
    """Beam's nextPrice: ``10 ** U[0, 6)`` dollars, in cents (100 .. 100,000,000)."""
    h, u = divmod(h, 1 << 32)
    return h, int(10.0 ** (u * _PRICE_SCALE) * 100.0 + 0.5)


def _active_person(last: int, h: int, config: NexmarkConfig) -> tuple[int, int]:
    """One of the last ``num_active_people`` persons (base-0 id), like Beam's nextBase0PersonId."""
    people = last + 1
    active = min(people, config.num_active_people)
    h, pick = divmod(h, active)
    return h, people - active + pick


def _text(h: int, pool: str, shortest: int, longest: int) -> tuple[int, str]:
    h, size = divmod(h, longest - shortest + 1)
    h, at = divmod(h, _OFFSETS)
    return h, pool[at : at + shortest + size]


def _person(base0: int, h: int, date_time: int, config: NexmarkConfig) -> dict[str, Any]:
    h, first = divmod(h, len(FIRST_NAMES))
    h, last = divmod(h, len(LAST_NAMES))
    h, user = _text(h, _LETTERS, 3, 6)
    h, domain = _text(h, _LETTERS, 3, 4)
    h, card = divmod(h, 10**16)
    h, city = divmod(h, len(US_CITIES))
    h, state = divmod(h, len(US_STATES))
    h, extra = _text(h, _LETTERS, 0, config.extra_size)
    return {
        "type": "person",
        "id": FIRST_PERSON_ID + base0,
        "name": f"{FIRST_NAMES[first]} {LAST_NAMES[last]}",
        "email_address": f"{user}@{domain}.com",
        "credit_card": " ".join(f"{card // 10 ** (4 * i) % 10000:04d}" for i in range(4)),
        "city": US_CITIES[city],
        "state": US_STATES[state],
        "date_time": date_time,
        "extra": extra,
    }


def _auction(base0: int, last_person: int, h: int, date_time: int, config: NexmarkConfig) -> dict[str, Any]:
    h, hot = divmod(h, config.hot_sellers_ratio)
    if hot:  # probability 1 - 1/hot_sellers_ratio: the first person of the last batch of 100
        seller = last_person // _HOT_BATCH * _HOT_BATCH
    else:
        h, seller = _active_person(last_person, h, config)
    h, category = divmod(h, NUM_CATEGORIES)
    h, initial_bid = _price(h)
    h, premium = _price(h)
    # Beam: the length averages the time until num_in_flight_auctions more auctions have appeared.
    horizon_events = config.num_in_flight_auctions * PROPORTION_DENOMINATOR // 3
    horizon_ms = horizon_events * 1000 // config.events_per_second
    h, length = divmod(h, max(2 * horizon_ms, 1))
    h, item_name = _text(h, _TEXT, 3, 19)
    h, description = _text(h, _TEXT, 3, 99)
    h, extra = _text(h, _LETTERS, 0, config.extra_size)
    return {
        "type": "auction",
        "id": FIRST_AUCTION_ID + base0,
        "item_name": item_name.strip(),
        "description": description.strip(),
        "initial_bid": initial_bid,
        "reserve": initial_bid + premium,
        "date_time": date_time,
        "expires": date_time + 1 + length,
        "seller": FIRST_PERSON_ID + seller,
        "category": FIRST_CATEGORY_ID + category,
        "extra": extra,
    }


def _bid(epoch: int, words: tuple[int, ...], date_time: int, config: NexmarkConfig) -> dict[str, Any]:
    _, w1, w2, w3, w4 = words
    last_auction = epoch * 3 + 2  # the three auctions of this epoch precede its bids
    if (w1 & _LOW) % config.hot_auction_ratio:
        # probability 1 - 1/hot_auction_ratio: the first auction of the last batch of 100
        auction = last_auction // _HOT_BATCH * _HOT_BATCH
    else:
        low = max(last_auction - config.num_in_flight_auctions, 0)
        auction = low + (w1 >> 32) % (last_auction - low + 1)
    if (w2 & _LOW) % config.hot_bidders_ratio:
        # The second person of the batch, so hot bidders are not hot sellers; Beam may name a person
        # not generated yet (a batch of one), we take the last one then.
        bidder = min(epoch // _HOT_BATCH * _HOT_BATCH + 1, epoch)
    else:
        active = min(epoch + 1, config.num_active_people)
        bidder = epoch + 1 - active + (w2 >> 32) % active
    channel = (w3 & _LOW) % (2 * _NUM_CHANNELS)
    if channel < _NUM_CHANNELS:  # one bid in two comes from a hot channel (Flink's HOT_CHANNELS_RATIO)
        channel_name, url = HOT_CHANNELS[channel % 4], _HOT_URLS[channel % 4]
    else:
        channel_name, url = _CHANNELS[channel - _NUM_CHANNELS]
    at = (w4 >> 32) % _OFFSETS
    return {
        "type": "bid",
        "auction": FIRST_AUCTION_ID + auction,
        "bidder": FIRST_PERSON_ID + bidder,
        "price": int(10.0 ** ((w3 >> 32) * _PRICE_SCALE) * 100.0 + 0.5),
        "channel": channel_name,
        "url": url,
        "date_time": date_time,
        "extra": _LETTERS[at : at + (w4 & _LOW) % (config.extra_size + 1)],
    }


class NexmarkSource(Source):
    """The Nexmark stream: ``count`` events, or without end when ``count`` is ``None``.

    A :class:`~connectors.generator.GeneratorSource` of :func:`event`, and it behaves exactly like one:
    instance ``k`` of ``p`` produces events ``k, k+p, k+2p, ...``; its offset is how many it has
    produced (with a ``rate``, also when its schedule started); ``rate`` offers the whole source at
    that many events per second (a schedule a reader behind it catches up on at full speed, ignored by
    ``read_exact`` so recovery does too); ``batch_hint`` caps one ``read``. The
    ``rate`` is wall-clock pacing only: event time comes from ``config.events_per_second``.

    >>> import asyncio
    >>> reader = NexmarkSource(count=10, config=NexmarkConfig(seed=1)).open(index=0, parallelism=1)
    >>> reader.seek(4)
    >>> [e["type"] for e in asyncio.run(reader.read_exact(2))], reader.offset()
    (['bid', 'bid'], 6)
    """

    def __init__(
        self,
        count: int | None = None,
        rate: float | None = None,
        *,
        config: NexmarkConfig | None = None,
        batch_hint: int = 1000,
    ):
        config = _DEFAULT if config is None else config
        if not isinstance(config, NexmarkConfig):
            raise ParameterError(
                f"NexmarkSource: config must be a NexmarkConfig, got {type(config).__name__}"
            )
        try:
            self._generator = GeneratorSource(
                functools.partial(event, config=config), count, rate, batch_hint=batch_hint
            )
        except ParameterError as exc:  # the same checks; name the source the user wrote
            raise ParameterError(str(exc).replace("GeneratorSource:", "NexmarkSource:", 1)) from None
        self.config = config
        self.count = count
        self.rate = rate
        self.batch_hint = batch_hint
        self.bounded = count is not None

    def open(self, index: int, parallelism: int) -> SourceReader:
        """Return the reader of instance ``index``: events ``index, index + parallelism, ...``."""
        return self._generator.open(index, parallelism)
