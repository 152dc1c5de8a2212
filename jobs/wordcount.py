"""Word count: the classic. Reads text files, counts every word, writes ``["word", count]`` lines.

stashflow run jobs/wordcount.py -P input='corpus/*.txt' -P output=out/wordcount --parallelism 2
"""

from connectors import FileSink, FileSource
from engine import Job


def build(input: str = "demo-data/corpus/*.txt", output: str = "demo-out/wordcount") -> Job:
    job = Job("wordcount")
    words = job.source("read", FileSource(input)).flat_map("split", str.split)
    words.key_by(lambda w: w).count_final("count").sink("write", FileSink(output))
    return job
