"""Time, recall and precision of duplicate detection on a synthetic pool of 100,000 examples.

Run from the repository root (one core, as measured in the README)::

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/dedup_scale.py
    .venv/bin/python benchmarks/dedup_scale.py --n 10000          # quick look

The pool is built by templated generators (instructions such as "Write a short story about
...", "Summarise the following text: ...", "What is 37 * 52?", with responses of 20-80 words
drawn from a few hundred common English words), seeded. Then planted duplicates replace some
originals' slots: ``--exact`` fraction exact copies after normalisation (case changed, spaces
doubled, sentence punctuation dropped or added) and ``--near`` fraction near copies (one to three
words of the response replaced by others). Every example carries the label of
its original, so :func:`smalltolarge.dedup.pair_precision_recall` scores the groups found by
:func:`smalltolarge.dedup.find_duplicates` pair by pair.

Loading the JSONL (``load_pool``) is timed apart from ``find_duplicates``, whose wall-clock
and CPU seconds are both reported (on a shared machine the CPU time is the steadier figure).
"near pairs at or over the threshold" counts the planted near copies whose exact shingle
Jaccard reaches the threshold: recall on those is what MinHash LSH alone decides.

The last line printed is one JSON object::

    {"n": ..., "on": ..., "threshold": ..., "seconds": ..., "cpu_seconds": ..., ...,
     "precision": ..., "recall": ..., "n_groups": ..., "n_dropped": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from smalltolarge.data import load_pool
from smalltolarge.dedup import (
    DedupSettings,
    find_duplicates,
    jaccard_to,
    pair_precision_recall,
    pool_texts,
    shingle_hashes,
)

_WORD_TEXT = (
    "the of and to in is was he for it with as his on be at by had are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if "
    "out so said what up its about into than them can only other new some could time these two "
    "may then do first any my now such like our over man me even most made after also did many "
    "before must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work long get "
    "here between both life being under never day same another know while last might us great "
    "old year off come since against go came right used take three states himself few house "
    "use during without again place around however home small found thought went say part once "
    "general high upon school every does got united left number course war until always away "
    "something fact though water less public put think almost hand enough far took head yet "
    "government system better set told nothing night end why called did eyes find going look "
    "asked later knew point next program city business give group toward young days let room "
    "president side social given present several order national possible rather second face "
    "per among form important often things looked early white case large become john big need "
    "four within felt along children saw best church ever least power development light thing"
)
WORDS = tuple(_WORD_TEXT.split())

NOUNS = ("river", "mountain", "robot", "teacher", "garden", "dragon", "city", "ocean", "library")
ADJECTIVES = ("short", "funny", "sad", "formal", "detailed", "simple", "clear", "brief", "vivid")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="examples in the pool")
    parser.add_argument("--exact", type=float, default=0.1, help="fraction of exact copies")
    parser.add_argument("--near", type=float, default=0.1, help="fraction of near copies")
    parser.add_argument("--on", default="both")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--shingle", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    records, labels, near_pairs = make_pool(args.n, args.exact, args.near, args.seed)
    with tempfile.TemporaryDirectory(prefix="s2l-dedup-") as tmp:
        path = Path(tmp) / "pool.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        started = time.perf_counter()
        pool = load_pool(path)
        load_seconds = time.perf_counter() - started

        settings = DedupSettings(
            on=args.on,
            threshold=args.threshold,
            num_perm=args.num_perm,
            shingle=args.shingle,
            seed=args.seed,
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        groups = find_duplicates(
            pool,
            on=args.on,
            threshold=args.threshold,
            num_perm=args.num_perm,
            shingle=args.shingle,
            seed=args.seed,
        )
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started

        precision, recall = pair_precision_recall(groups, labels)
        texts = pool_texts(pool, settings.on)
        over = [
            (i, j)
            for i, j in near_pairs
            if jaccard_to(shingle_hashes(texts[i], settings.shingle), texts[j], settings)
            >= settings.threshold
        ]
    group_of = {i: k for k, g in enumerate(groups) for i in g.members}
    found_over = sum(1 for i, j in over if i in group_of and group_of[i] == group_of.get(j))

    result = {
        "n": len(records),
        "on": args.on,
        "threshold": args.threshold,
        "num_perm": args.num_perm,
        "shingle": args.shingle,
        "seed": args.seed,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "examples_per_cpu_second": round(len(records) / cpu_seconds),
        "load_seconds": round(load_seconds, 2),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "n_groups": len(groups),
        "n_dropped": sum(len(g.dropped) for g in groups),
        "n_planted_dropped": len(records) - len(set(labels)),
        "near_pairs_planted": len(near_pairs),
        "near_pairs_over_threshold": len(over),
        "lsh_recall_over_threshold": round(found_over / len(over), 4) if over else 1.0,
    }
    print(
        f"find_duplicates: {result['n']} examples in {result['seconds']} s "
        f"({result['cpu_seconds']} s of CPU time)"
    )
    print(f"pairwise precision {result['precision']}, recall {result['recall']}")
    print("reproduce: " + shlex.join([sys.executable, *sys.argv]))
    print(json.dumps(result))


def make_pool(
    n: int, exact: float, near: float, seed: int
) -> tuple[list[dict], list[int], list[tuple[int, int]]]:
    """``n`` Alpaca records, the original each copies (its own index for an original), and the
    (original, near copy) position pairs."""
    rng = np.random.default_rng(seed)
    n_exact, n_near = int(n * exact), int(n * near)
    n_orig = n - n_exact - n_near
    originals = [_original(rng, i) for i in range(n_orig)]
    sources = rng.integers(0, n_orig, size=n_exact + n_near)
    copies = [(_exact_copy(rng, originals[s]), int(s)) for s in sources[:n_exact]]
    copies += [(_near_copy(rng, originals[s]), int(s)) for s in sources[n_exact:]]
    # Copies land anywhere in the pool, before or after their original.
    order = rng.permutation(n)
    entries = [(r, i) for i, r in enumerate(originals)] + copies
    records, labels, position_of = [], [], {}
    for slot in order:
        record, label = entries[slot]
        records.append({"id": str(len(records)), **record})
        labels.append(label)
        if slot < n_orig:
            position_of[label] = len(records) - 1
    near_pairs = [
        (position_of[label], k)
        for k, slot in enumerate(order)
        if slot >= n_orig + n_exact
        for label in [labels[k]]
    ]
    return records, labels, near_pairs


def _words(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(low, high))))


def _original(rng: np.random.Generator, i: int) -> dict:
    kind = i % 4
    noun, adj = rng.choice(NOUNS), rng.choice(ADJECTIVES)
    if kind == 0:
        instruction = f"Write a {adj} story about a {noun} and {_words(rng, 3, 6)}."
        output = f"Once upon a time, {_words(rng, 40, 80)}."
    elif kind == 1:
        instruction = "Summarise the following text."
        text = f"{_words(rng, 30, 60)}."
        return {"instruction": instruction, "input": text, "output": f"{_words(rng, 20, 40)}."}
    elif kind == 2:
        a, b = rng.integers(10, 1000, size=2)
        instruction = f"What is {a} * {b}? Explain your steps about the {noun}."
        output = f"{a} * {b} = {a * b}. {_words(rng, 25, 50)}."
    else:
        instruction = f"Give a {adj} answer: {_words(rng, 6, 12)}?"
        output = f"{_words(rng, 30, 70)}."
    return {"instruction": instruction, "input": "", "output": output}


def _exact_copy(rng: np.random.Generator, record: dict) -> dict:
    def vary(text: str) -> str:
        choice = int(rng.integers(0, 4))
        if choice == 0:
            return text.upper()
        if choice == 1:
            return "  " + text.replace(" ", "  ") + " "
        if choice == 2:
            return text.rstrip(".?!")
        return text.title()

    return {key: vary(value) if value else value for key, value in record.items()}


def _near_copy(rng: np.random.Generator, record: dict) -> dict:
    words = record["output"].split(" ")
    for k in rng.choice(len(words), size=int(rng.integers(1, 4)), replace=False):
        words[k] = str(rng.choice(WORDS))
    return {**record, "output": " ".join(words)}


if __name__ == "__main__":
    main()
