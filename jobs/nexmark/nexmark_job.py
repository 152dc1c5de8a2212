"""What the Nexmark jobs share: the event source and their parameters.

Every query file takes the same ``-P`` parameters (strings, as typed on the command line):
``events`` (how many events, default 100000), ``rate`` (events/s of wall-clock pacing, default none),
``seed``, ``out_of_order_ms`` (how far event times may go back; the watermark allows for it),
``events_per_second`` (of event time: how fast the generated clock runs) and ``output`` (a FileSink
directory).
"""

from __future__ import annotations

from typing import Any

from connectors import NexmarkSource
from connectors.nexmark import NexmarkConfig
from engine import BoundedOutOfOrderness, Job, Stream
from engine.errors import ParameterError

__all__ = ["event_source", "event_time", "is_auction", "is_bid", "is_person"]


def event_time(e: dict[str, Any]) -> int:
    """A Nexmark event's event time, in milliseconds."""
    t: int = e["date_time"]
    return t


def is_bid(e: dict[str, Any]) -> bool:
    return e["type"] == "bid"


def is_auction(e: dict[str, Any]) -> bool:
    return e["type"] == "auction"


def is_person(e: dict[str, Any]) -> bool:
    return e["type"] == "person"


def _int(name: str, value: str, low: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if number < low:
        raise ParameterError(
            f"parameter {name}={value!r}: expected an integer >= {low}, e.g. -P {name}=100000"
        )
    return number


def event_source(
    job: Job,
    events: str,
    rate: str,
    seed: str,
    out_of_order_ms: str,
    events_per_second: str,
    *,
    event_time_needed: bool = True,
) -> Stream:
    """The ``events`` source step of ``job``: with event time and watermarks unless not needed."""
    per_second = float(rate) if rate else None
    delay = _int("out_of_order_ms", out_of_order_ms, 0)
    config = NexmarkConfig(
        seed=_int("seed", seed, 0),
        max_out_of_order_ms=delay,
        events_per_second=_int("events_per_second", events_per_second, 1),
    )
    source = NexmarkSource(_int("events", events, 1), per_second, config=config)
    if not event_time_needed:
        return job.source("events", source)
    return job.source("events", source, timestamp=event_time, watermark=BoundedOutOfOrderness(delay))
