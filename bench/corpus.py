"""Deterministic generator of a Zipf-distributed, English-like text corpus for the word-count benchmarks.

::

    python bench/corpus.py --words 10000000 --out bench/data/corpus-10M [--files 4] [--seed 1]

writes ``corpus-<i>.txt`` files of lines of 8-15 space-separated lowercase words and a
``manifest.json`` that records how they were made. The vocabulary has ``--vocab`` tokens (100k by
default): the most common English function words at the top ranks, then synthetic pronounceable
tokens built from syllables, shorter ones tending to the more frequent ranks (Zipf's law of
abbreviation). Each word is drawn independently with probability proportional to ``1 / rank**s``
(``s = 1.1`` by default).

The same arguments give byte-identical files on every run (``random.Random`` is seeded with strings,
which CPython hashes with SHA-512, so the stream does not depend on ``PYTHONHASHSEED``). A second run
with the same arguments finds a matching manifest and files of the recorded sizes and does nothing.
Files are generated in parallel, one process per file up to the number of CPUs.

Tokens are ``[a-z]+`` only, so ``str.split()`` in every system under test sees the same words.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["CorpusSpec", "ensure_corpus", "main", "make_vocabulary"]

#: Bump when the output for the same arguments changes, so stale corpora are regenerated.
GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
MIN_WORDS_PER_LINE = 8
MAX_WORDS_PER_LINE = 15
#: Words drawn per call to ``random.choices``: large enough to amortize the call, small enough to stream.
CHUNK_WORDS = 1 << 18


def _words(text: str) -> list[str]:
    return text.split()


# The most frequent English words, roughly in frequency order; they take the top ranks.
_COMMON = _words(
    "the of and to a in is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there one all we their been has when who will more no if out so "
    "said what up its about into than them can only other new some could time these two may then do"
)
_ONSETS = [
    *_words(
        "b c d f g h j k l m n p r s t v w y z bl br ch cl cr dr fl fr gl gr pl pr sc sh sk sl sm sn sp st "
        "str sw th tr wh"
    ),
    "",
]
_NUCLEI = _words("a e i o u a e i o u ai ea ee ie oa oo ou")
_CODAS = [*_words("n r s t d l m nd nt st ng ck rt ll ss th"), *[""] * 8]
_SYLLABLES = (1, 2, 3, 4)
_SYLLABLE_WEIGHTS = (3, 5, 3, 1)


@dataclass(frozen=True)
class CorpusSpec:
    """Everything that determines a corpus's content; recorded in its manifest."""

    words: int
    files: int = 4
    seed: int = 1
    vocab: int = 100_000
    zipf_s: float = 1.1
    generator: int = GENERATOR_VERSION

    def file_words(self) -> list[int]:
        """How many words each file gets: an even split, the remainder to the first files."""
        base, extra = divmod(self.words, self.files)
        return [base + (1 if i < extra else 0) for i in range(self.files)]


def make_vocabulary(size: int, seed: int) -> list[str]:
    """``size`` distinct ``[a-z]+`` tokens, most frequent rank first."""
    if size < len(_COMMON):
        return _COMMON[:size]
    rng = random.Random(f"stashflow-corpus-vocab:{seed}")
    seen = set(_COMMON)
    synthetic: list[str] = []
    while len(synthetic) < size - len(_COMMON):
        n = rng.choices(_SYLLABLES, _SYLLABLE_WEIGHTS)[0]
        token = "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS) for _ in range(n))
        if token not in seen:
            seen.add(token)
            synthetic.append(token)
    # Shorter words tend to be more frequent, but only as a tendency: the noise keeps long words
    # among the common ones and short ones in the tail, as in real text.
    noisy_length = {token: len(token) + rng.gauss(0.0, 2.5) for token in synthetic}
    synthetic.sort(key=noisy_length.__getitem__)
    return _COMMON + synthetic


def _zipf_cum_weights(size: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / rank**s for rank in range(1, size + 1)))


def _write_file(spec: CorpusSpec, index: int, words: int, path: Path) -> int:
    """Write file ``index`` of the corpus to ``path`` atomically; return its size in bytes."""
    vocab = make_vocabulary(spec.vocab, spec.seed)
    cum = _zipf_cum_weights(len(vocab), spec.zipf_s)
    rng = random.Random(f"stashflow-corpus:{spec.seed}:{index}")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="ascii", newline="\n") as out:
        left = words
        while left > 0:
            # Line lengths first, then the words for whole lines: only a file's last line is cut short.
            lengths: list[int] = []
            chunk = 0
            while chunk < CHUNK_WORDS and chunk < left:
                n = min(rng.randint(MIN_WORDS_PER_LINE, MAX_WORDS_PER_LINE), left - chunk)
                lengths.append(n)
                chunk += n
            drawn = iter(rng.choices(vocab, cum_weights=cum, k=chunk))
            left -= chunk
            out.write("\n".join(" ".join(itertools.islice(drawn, n)) for n in lengths))
            out.write("\n")
    tmp.replace(path)
    return path.stat().st_size


def _file_name(index: int) -> str:
    return f"corpus-{index}.txt"


def corpus_files(out: Path) -> list[Path]:
    """The text files of the corpus in ``out``, in index order (not the manifest)."""
    return sorted(out.glob("corpus-*.txt"), key=lambda p: int(p.stem.split("-")[1]))


def _read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _is_current(out: Path, spec: CorpusSpec) -> bool:
    manifest = _read_manifest(out)
    if manifest is None or manifest.get("spec") != asdict(spec):
        return False
    return all(
        (out / f["name"]).is_file() and (out / f["name"]).stat().st_size == f["bytes"]
        for f in manifest["files"]
    )


def ensure_corpus(out: Path, spec: CorpusSpec, *, log=print) -> dict:
    """Make sure ``out`` holds the corpus of ``spec``; return its manifest. Generates only if needed."""
    if _is_current(out, spec):
        log(f"corpus {out}: up to date ({spec.words:,} words in {spec.files} files)")
        return json.loads((out / MANIFEST).read_text())
    if spec.words < 1 or spec.files < 1 or spec.vocab < 1:
        raise ValueError(f"corpus needs positive words, files and vocab; got {spec}")
    out.mkdir(parents=True, exist_ok=True)
    # The manifest goes first and last: a run that dies half-way leaves no manifest that could match.
    (out / MANIFEST).unlink(missing_ok=True)
    for stale in corpus_files(out):
        stale.unlink()
    log(f"corpus {out}: generating {spec.words:,} words in {spec.files} files ...")
    started = time.perf_counter()
    counts = spec.file_words()
    paths = [out / _file_name(i) for i in range(spec.files)]
    workers = max(1, min(spec.files, os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        sizes = list(pool.map(_write_file, itertools.repeat(spec), range(spec.files), counts, paths))
    manifest = {
        "spec": asdict(spec),
        "files": [
            {"name": p.name, "words": w, "bytes": b} for p, w, b in zip(paths, counts, sizes, strict=True)
        ],
        "total_bytes": sum(sizes),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    elapsed = time.perf_counter() - started
    log(f"corpus {out}: {sum(sizes) / 1e6:.1f} MB in {elapsed:.1f} s")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=10_000_000, help="total words (default 10M)")
    parser.add_argument("--out", type=Path, default=Path("bench/data/corpus"), help="output directory")
    parser.add_argument("--files", type=int, default=4, help="number of files, the unit of parallel reading")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=100_000, help="vocabulary size")
    parser.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent")
    args = parser.parse_args(argv)
    spec = CorpusSpec(
        words=args.words, files=args.files, seed=args.seed, vocab=args.vocab, zipf_s=args.zipf_s
    )
    try:
        ensure_corpus(args.out, spec)
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
