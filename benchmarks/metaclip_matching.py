"""MetaCLIP entry matching: captions per second of `EntryMatcher` against the plain scan.

    python3 benchmarks/metaclip_matching.py [--entries 500000] [--captions 200]

MetaCLIP's entry list has about 500k entries (WordNet synsets, Wikipedia uni- and bigrams and
titles). Here they are made-up words and two-word phrases of the same count, and the captions
are 5-30 words drawn from a vocabulary that overlaps the entries. The plain scan
(`f" {e} " in caption` per entry, as MetaCLIP's substr_matching.py without Aho-Corasick)
runs on a tenth of the captions. One JSON line, with both matchers' results checked equal.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import time

from contrastive_jax.data.filters import metaclip


def make_words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 10))) for _ in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=500_000)
    p.add_argument("--captions", type=int, default=200)
    args = p.parse_args()
    rng = random.Random(0)
    vocab = make_words(rng, 100_000)
    entries = [rng.choice(vocab) if rng.random() < 0.5 else f"{rng.choice(vocab)} "
               f"{rng.choice(vocab)}" for _ in range(args.entries)]
    captions = [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 30))) + "."
                for _ in range(args.captions)]

    start = time.perf_counter()
    matcher = metaclip.EntryMatcher(entries)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    matches = [matcher.match(c) for c in captions]
    index_s = time.perf_counter() - start

    sample = captions[: max(1, len(captions) // 10)]
    spaced_entries = [f" {e} " for e in entries]
    start = time.perf_counter()
    scanned = []
    for caption in sample:
        spaced = metaclip.spacing(caption)
        scanned.append([i for i, e in enumerate(spaced_entries) if e in spaced])
    scan_s = time.perf_counter() - start
    assert scanned == matches[: len(sample)], "the matchers disagree"

    print(json.dumps({
        "entries": args.entries, "captions": len(captions),
        "mean_matches": round(sum(map(len, matches)) / len(matches), 2),
        "index_build_s": round(build_s, 2),
        "index_captions_per_s": round(len(captions) / index_s, 1),
        "scan_captions_per_s": round(len(sample) / scan_s, 2),
        "speedup": round((len(captions) / index_s) / (len(sample) / scan_s), 1),
    }))


if __name__ == "__main__":
    main()
