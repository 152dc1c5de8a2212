"""Print the most frequent words from the output of ``jobs/wordcount.py``.

::

    python scripts/top_words.py 'demo-out/wordcount/part-*.jsonl' [--top 10]

Each line of the JSON Lines files is ``["word", count]``: one final count per word. Each word is counted
by exactly one instance, so a word that appears twice across the files means a duplicated result;
that is reported as an error, never summed away.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

__all__ = ["main", "read_counts"]


class OutputError(Exception):
    """The word-count output is missing or malformed."""


def read_counts(paths: list[Path]) -> dict[str, int]:
    """The ``{word: count}`` in ``paths``, checking that each word appears once and counts are ints."""
    counts: dict[str, int] = {}
    seen_in: dict[str, str] = {}
    for path in paths:
        with path.open(encoding="utf-8") as lines:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    word, count = json.loads(line)
                except ValueError as exc:
                    raise OutputError(
                        f"{where}: expected a JSON array [word, count], got {line.strip()[:80]!r}"
                    ) from exc
                if not isinstance(word, str) or not isinstance(count, int) or isinstance(count, bool):
                    raise OutputError(f"{where}: expected [str, int], got {line.strip()[:80]}")
                if word in counts:
                    raise OutputError(
                        f"{where}: word {word!r} already counted at {seen_in[word]}: the output has a duplicate"
                    )
                counts[word] = count
                seen_in[word] = where
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("pattern", help="glob of the JSON Lines output files, e.g. 'out/part-*.jsonl'")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="how many words to print (10)")
    args = parser.parse_args(argv)

    paths = sorted(Path(p) for p in glob.glob(args.pattern))
    if not paths:
        print(
            f"top_words: no file matches {args.pattern!r}: did the job write its output there?",
            file=sys.stderr,
        )
        return 1
    try:
        counts = read_counts(paths)
    except OutputError as exc:
        print(f"top_words: {exc}", file=sys.stderr)
        return 1

    total = sum(counts.values())
    # Ties broken by the word, so the listing is the same on every run.
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: args.top]
    files = f"{len(paths)} file" if len(paths) == 1 else f"{len(paths)} files"
    print(f"top {len(top)} of {len(counts):,} distinct words ({total:,} in all), from {files}:")
    width = max((len(word) for word, _ in top), default=0)
    for word, count in top:
        print(f"  {word:<{width}}  {count:>10,}  {count / total:6.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
