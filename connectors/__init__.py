"""Built-in sources and sinks.

Sources: :class:`FileSource` (lines of text files, split by byte range across instances),
:class:`GeneratorSource` (``fn(i)`` for record numbers, optionally rate-limited), :class:`ListSource`
(a fixed list, for tests), :class:`NexmarkSource` (the Nexmark benchmark's persons, auctions and
bids). Sinks: :class:`FileSink` (JSON Lines, one part file per instance),
:class:`StdoutSink` (``print``), :class:`CollectSink` (in memory, for in-process tests).

Write your own by subclassing :class:`engine.connector.Source` / :class:`engine.connector.Sink`.

>>> import asyncio
>>> from connectors import GeneratorSource
>>> asyncio.run(GeneratorSource(str, count=3).open(index=0, parallelism=1).read(10))
['0', '1', '2']
"""

from typing import Any

from connectors.files import FileSink, FileSource
from connectors.generator import GeneratorSource
from connectors.memory import CollectSink, ListSource
from connectors.stdout import StdoutSink

__all__ = [
    "CollectSink",
    "FileSink",
    "FileSource",
    "GeneratorSource",
    "ListSource",
    "NexmarkSource",
    "StdoutSink",
]


def __getattr__(name: str) -> Any:
    # imported on first use: connectors.nexmark builds its text pools at import (~70 ms of CPU), which
    # every worker process would otherwise pay at start, whatever its job
    if name == "NexmarkSource":
        from connectors.nexmark import NexmarkSource

        return NexmarkSource
    raise AttributeError(f"module 'connectors' has no attribute {name!r}")
