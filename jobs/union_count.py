"""Running word counts over two merged sources: the shape the fault-tolerance tests kill.

Two generated streams of sentences are merged with ``union`` (so the order in which an instance
receives their batches is truly nondeterministic), split into words, keyed by word and counted with a
running ``count``: every word ``w`` seen ``N_w`` times produces the records ``(w, 1) .. (w, N_w)``.

    stashflow run jobs/union_count.py -P sentences=20000 -P output=out/union --parallelism 2
"""

from connectors import FileSink, GeneratorSource
from engine import Job

VOCABULARY = [f"w{i:03d}" for i in range(200)]


def sentence(i: int, salt: int) -> str:
    """A deterministic 'sentence' of 5 words for record ``i`` of the source salted ``salt``."""
    n = len(VOCABULARY)
    return " ".join(VOCABULARY[(i * 7 + k * 13 + salt * 31 + (i * i) % 17) % n] for k in range(5))


def build(
    sentences: str = "20000", output: str = "out/union_count", rate: str = "", sink_parallelism: str = ""
) -> Job:
    count = int(sentences)
    per_second = float(rate) if rate else None
    job = Job("union_count")
    left = job.source("left", GeneratorSource(lambda i: sentence(i, 1), count=count, rate=per_second))
    right = job.source("right", GeneratorSource(lambda i: sentence(i, 2), count=count, rate=per_second))
    words = left.union("merge", right).flat_map("split", str.split)
    counts = words.key_by(lambda w: w).count("count")
    # a sink of another parallelism runs as its own task (not chained to count): it can be killed alone
    counts.sink("write", FileSink(output), parallelism=int(sink_parallelism) if sink_parallelism else None)
    return job
