"""Word count in Bytewax 0.21: the baseline that ``bench/wordcount.py`` runs against stashflow.

Same shape as ``jobs/wordcount.py``: read the corpus files line by line, split lines into words,
count every word once the input ends (``count_final``), write ``["word", count]`` JSON lines to
``part-<i>.jsonl`` files. Files are Bytewax's unit of source parallelism, so a corpus of 4 files
splits over 2 processes; ``count_final`` exchanges words between workers by key.

Runs in the Bytewax venv made by ``bench/setup_bytewax.sh``, one ``bytewax.run`` per process
(``bench/wordcount.py`` starts them with free loopback ports and waits for both)::

    A="127.0.0.1:2101;127.0.0.1:2102"
    for i in 0 1; do
        bench/.venv-bytewax/bin/python -m bytewax.run -i $i -a "$A" \\
            "bench/bytewax_wordcount.py:build('bench/data/corpus-10M', 'bench/out/bytewax')" &
    done; wait

(``python -m bytewax.testing -p 2`` does the same with fixed ports on ``localhost``.) The output
directory must exist; its ``part-*.jsonl`` files are truncated and rewritten.
"""

from __future__ import annotations

import json
from pathlib import Path

import bytewax.operators as op
from bytewax.connectors.files import DirSink, DirSource
from bytewax.dataflow import Dataflow

#: The sink's files, as stashflow's FileSink names them; partitioned by a hash of the word.
OUTPUT_FILES = 2


def _word(word: str) -> str:
    return word


def _as_json_line(word_count: tuple[str, int]) -> tuple[str, str]:
    # DirSink takes (key, text) and routes each item by its key to the worker owning that file.
    return word_count[0], json.dumps(word_count)


def _file_name(index: int, _count: int) -> str:
    return f"part-{index}.jsonl"


def build(input_dir: str, output_dir: str, glob: str = "corpus-*.txt") -> Dataflow:
    """The word-count dataflow over the files ``glob`` in ``input_dir``, writing to ``output_dir``."""
    flow = Dataflow("wordcount")
    lines = op.input("read", flow, DirSource(Path(input_dir), glob_pat=glob))
    words = op.flat_map("split", lines, str.split)
    counts = op.count_final("count", words, key=_word)
    formatted = op.map("format", counts, _as_json_line)
    op.output("write", formatted, DirSink(Path(output_dir), OUTPUT_FILES, file_namer=_file_name))
    return flow
