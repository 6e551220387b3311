"""Exact and near-duplicate examples in a pool: find the groups, keep one example of each.

SFT pools collect near-copies (templated generators, scraped mirrors), and a balanced sampler
spends budget on them. Two examples are

- **exact duplicates** when their texts are equal after normalisation (Unicode NFKC, case
  folded, sentence punctuation at the edges of words dropped, whitespace collapsed);
- **near duplicates** when the Jaccard similarity of the sets of character ``shingle``-grams of
  their normalised texts is at least ``threshold``.

Exact duplicates are found by hashing the normalised texts. Near-duplicate candidates come from
MinHash locality-sensitive hashing (``datasketch``); every candidate pair is then confirmed on
its shingle sets, so LSH can cost recall (a pair it never proposes) but not precision. Groups
are the connected components of the confirmed pairs (union-find): a chain a~b~c is one group even
when a and c alone fall below the threshold. The first member in pool order is kept.

Shingles are character n-grams, not word n-grams, because SFT prompts and responses are short:
in a 20-word prompt one changed word removes 5 of 16 word 5-grams (Jaccard about 0.5) but only
about 10 of 110 character 5-grams (about 0.85), so "a few words changed" stays on the near side
of a threshold like 0.8. Character n-grams also need no tokeniser for code, maths or languages
written without spaces.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from smalltolarge.data import Pool, write_subset
from smalltolarge.errors import S2LError
from smalltolarge.runs import atomic_write_json, fingerprint, output_dir
from smalltolarge.settings import (
    DEDUP_ON,
    DEFAULT_DEDUP_THRESHOLD,
    check_choice,
    check_in_range,
    check_non_negative_int,
    check_positive_int,
)

#: written beside ``pool.json`` by ``prepare(dedup=...)`` and ``s2l dedup``
DUPLICATES_FILE = "duplicates.json"
#: How a dropped duplicate's problem starts in ``Pool.skipped`` (the rest: ``<id> (<kind>)``).
DUPLICATE_PROBLEM = "duplicate of "


@dataclass(frozen=True)
class DedupSettings:
    """Settings of duplicate detection, checked once here.

    ``on``: one of :data:`DEDUP_ON`; ``threshold``: the Jaccard similarity in (0, 1] from which
    two examples are near duplicates (1: their shingle sets are equal); ``num_perm``: MinHash
    permutations (more: fewer missed pairs, slower); ``shingle``: characters per shingle;
    ``seed``: the MinHash permutations'.
    """

    on: str = "both"
    threshold: float = DEFAULT_DEDUP_THRESHOLD
    num_perm: int = 128
    shingle: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("dedup", self.on, DEDUP_ON)
        check_in_range("dedup_threshold", self.threshold, 0, 1, closed="(]")
        check_positive_int("dedup num_perm", self.num_perm)
        if self.num_perm < 2:  # LSH needs at least two hash values to band
            raise S2LError(f"dedup num_perm must be at least 2, not {self.num_perm}")
        check_positive_int("dedup shingle", self.shingle)
        check_non_negative_int("dedup seed", self.seed)

    def pool_fingerprint(self, pool_fingerprint: str) -> str:
        """The fingerprint of the pool with ``pool_fingerprint`` once deduplicated with these
        settings (known before the work is done, so a run directory can be checked first)."""
        return fingerprint("dedup", pool_fingerprint, asdict(self))


@dataclass(frozen=True)
class DuplicateGroup:
    """One group of duplicates.

    ``members``: pool positions (0-based indices into ``Pool.dataset``), ascending, at least
    two; the first is kept. ``kind``: ``"exact"`` when every member has the same normalised
    text, else ``"near"``.
    """

    members: tuple[int, ...]
    kind: str

    @property
    def kept(self) -> int:
        return self.members[0]

    @property
    def dropped(self) -> tuple[int, ...]:
        return self.members[1:]


def find_duplicates(
    pool: Pool,
    *,
    on: str = "both",
    threshold: float = DEFAULT_DEDUP_THRESHOLD,
    num_perm: int = 128,
    shingle: int = 5,
    seed: int = 0,
) -> list[DuplicateGroup]:
    """The groups of exact and near-duplicate examples of ``pool``, ordered by kept position.

    See the module docstring for what counts as a duplicate and :class:`DedupSettings` for the
    settings. Deterministic for given settings. Examples in no group are unique.

    Raises:
        S2LError: a setting is out of range (``on`` unknown, ``threshold`` outside (0, 1], ...).
    """
    settings = DedupSettings(
        on=on, threshold=threshold, num_perm=num_perm, shingle=shingle, seed=seed
    )
    return _find(pool_texts(pool, settings.on), settings)


def dedup_pool(pool: Pool, settings: DedupSettings) -> tuple[Pool, list[DuplicateGroup]]:
    """``pool`` without the dropped members of its duplicate groups, and the groups.

    The returned pool keeps the first member of each group and the input's order; each dropped
    example is appended to ``Pool.skipped`` with the problem ``"duplicate of <kept id>
    (<kind>)"``, so a subset is still written from the original file. Its fingerprint is
    ``settings.pool_fingerprint(pool.fingerprint)``.
    """
    groups = _find(pool_texts(pool, settings.on), settings)
    dropped = {i: group for group in groups for i in group.dropped}
    if not dropped:
        keep = np.arange(len(pool))
    else:
        keep = np.setdiff1d(np.arange(len(pool)), np.fromiter(dropped, dtype=np.int64))
    ids = pool.ids
    rows = pool.dataset.with_format("arrow")["row"].to_pylist()
    skipped = [
        {
            "where": f"{pool.source_path} record {rows[i] + 1}",
            "id": ids[i],
            "problem": f"{DUPLICATE_PROBLEM}{ids[group.kept]} ({group.kind})",
        }
        for i, group in sorted(dropped.items())
    ]
    new_fp = settings.pool_fingerprint(pool.fingerprint)
    dataset = pool.dataset if not dropped else pool.dataset.select(keep, new_fingerprint=new_fp)
    deduped = Pool(
        dataset=dataset,
        source_path=pool.source_path,
        format=pool.format,
        schema=pool.schema,
        fingerprint=new_fp,
        skipped=[*pool.skipped, *skipped],
    )
    return deduped, groups


def duplicates_report(
    pool: Pool, groups: Sequence[DuplicateGroup], settings: DedupSettings
) -> dict[str, Any]:
    """The JSON record of ``groups`` (ids, not positions) with counts and settings."""
    ids = pool.ids
    kinds = Counter(group.kind for group in groups)
    dropped = Counter({kind: 0 for kind in ("exact", "near")})
    for group in groups:
        dropped[group.kind] += len(group.dropped)
    return {
        "fingerprint": settings.pool_fingerprint(pool.fingerprint),
        "pool_fingerprint": pool.fingerprint,
        "settings": asdict(settings),
        "n_examples": len(pool),
        "n_groups": len(groups),
        "n_dropped": sum(dropped.values()),
        "n_dropped_exact": dropped["exact"],
        "n_dropped_near": dropped["near"],
        "n_groups_exact": kinds["exact"],
        "n_groups_near": kinds["near"],
        "groups": [
            {"kept": ids[g.kept], "dropped": [ids[i] for i in g.dropped], "kind": g.kind}
            for g in groups
        ],
    }


def write_deduplicated(
    pool: Pool, out_dir: str | Path, settings: DedupSettings
) -> tuple[Path, dict[str, Any]]:
    """Write the examples ``pool`` keeps after deduplication, and the groups, to ``out_dir``.

    Returns the path :func:`~smalltolarge.data.write_subset` wrote (``subset.jsonl`` etc.: the
    kept examples in the input's format, with its original columns) and the report written to
    ``out_dir/duplicates.json`` (see :func:`duplicates_report`).
    """
    out_dir = output_dir(out_dir)
    deduped, groups = dedup_pool(pool, settings)
    report = duplicates_report(pool, groups, settings)
    rows = deduped.dataset.with_format("arrow")["row"].to_numpy()
    written = write_subset(pool, rows, out_dir)
    atomic_write_json(out_dir / DUPLICATES_FILE, report)
    return written, report


def count_duplicates(skipped: Sequence[dict[str, Any]]) -> int:
    """How many of a pool's ``skipped`` records are dropped duplicates (not invalid examples)."""
    return sum(str(s.get("problem", "")).startswith(DUPLICATE_PROBLEM) for s in skipped)


def pair_precision_recall(
    groups: Sequence[DuplicateGroup], labels: Sequence[Any]
) -> tuple[float, float]:
    """Pairwise precision and recall of ``groups`` against true duplicate ``labels``.

    ``labels[i]`` names the true group of pool position ``i`` (a unique label for a unique
    example). A pair counts when both of its examples share a found group (precision's
    denominator) or a true label (recall's). A side with no pairs scores 1.0.
    """
    found = np.arange(len(labels))
    for k, group in enumerate(groups):
        found[list(group.members)] = len(labels) + k
    true = np.unique(np.asarray([str(x) for x in labels]), return_inverse=True)[1]
    both = Counter(zip(found.tolist(), true.tolist(), strict=True))

    def pairs(counts) -> int:
        return sum(n * (n - 1) // 2 for n in counts)

    hits = pairs(both.values())
    n_found = pairs(Counter(found.tolist()).values())
    n_true = pairs(Counter(true.tolist()).values())
    return (hits / n_found if n_found else 1.0), (hits / n_true if n_true else 1.0)


# --------------------------------------------------------------------------------------------
# Normalising, shingling, grouping
# --------------------------------------------------------------------------------------------

# A run of non-word characters touching a word edge (or the text's ends). Only its sentence
# punctuation is dropped: "3.5", "don't" and "2*3" keep theirs, "Hello, world!" loses it.
_EDGE_PUNCT = re.compile(r"(?<!\w)[^\w\s]+|[^\w\s]+(?!\w)")
# Punctuation that carries meaning in maths and code is never dropped.
_KEEP_PUNCT = frozenset("#%&*/@\\")


def normalise_text(text: str) -> str:
    """``text`` as compared for duplicates: NFKC, case folded, sentence punctuation at word
    edges dropped (brackets, dashes and ``#%&*/@\\`` kept), whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _EDGE_PUNCT.sub(_strip_punct, text)
    return " ".join(text.split())


def _strip_punct(match: re.Match) -> str:
    return "".join(c for c in match.group() if not _is_sentence_punct(c))


@lru_cache(maxsize=4096)
def _is_sentence_punct(char: str) -> bool:
    # Po: . , ; : ! ? ' " and the like; Pi/Pf: opening and closing quotes.
    return unicodedata.category(char) in ("Po", "Pi", "Pf") and char not in _KEEP_PUNCT


def pool_texts(pool: Pool, on: str) -> list[str]:
    """The normalised text compared for every example, in pool order.

    For ``"both"`` the prompt and the response are joined by a NUL, which normalisation never
    produces from ordinary text, so ("ab", "c") and ("a", "bc") stay apart.
    """
    table = pool.dataset.with_format("arrow")
    prompts = responses = None
    if on in ("prompt", "both"):
        prompts = [
            normalise_text(f"{instruction}\n{extra}" if extra else instruction)
            for instruction, extra in zip(
                table["instruction"].to_pylist(), table["input"].to_pylist(), strict=True
            )
        ]
    if on in ("response", "both"):
        responses = [normalise_text(r) for r in table["response"].to_pylist()]
    if prompts is None:
        return responses
    if responses is None:
        return prompts
    return [f"{p}\x00{r}" for p, r in zip(prompts, responses, strict=True)]


def _find(texts: list[str], settings: DedupSettings) -> list[DuplicateGroup]:
    from datasketch import MinHash, MinHashLSH

    n = len(texts)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = root(i), root(j)
        if a != b:  # the smaller position becomes the root: groups keep their first member
            parent[max(a, b)] = min(a, b)

    first_of: dict[str, int] = {}
    representatives = []
    for i, text in enumerate(texts):
        j = first_of.setdefault(text, i)
        if j == i:
            representatives.append(i)
        else:
            union(j, i)

    lsh = MinHashLSH(
        num_perm=settings.num_perm, params=_lsh_bands(settings.threshold, settings.num_perm)
    )
    # `int` turns the precomputed shingle hashes into what MinHash permutes; MinHash.copy()
    # shares the permutations instead of drawing them again for every example.
    empty = MinHash(num_perm=settings.num_perm, seed=settings.seed, hashfunc=int)
    for i in representatives:
        shingles = shingle_hashes(texts[i], settings.shingle)
        if not len(shingles):
            continue
        minhash = empty.copy()
        minhash.update_batch(shingles.tolist())
        for j in lsh.query(minhash):
            if (
                root(i) != root(j)
                and jaccard_to(shingles, texts[j], settings) >= settings.threshold
            ):
                union(j, i)
        lsh.insert(i, minhash)

    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    groups = []
    for top, group in sorted(members.items()):
        if len(group) > 1:
            kind = "exact" if all(texts[i] == texts[top] for i in group) else "near"
            groups.append(DuplicateGroup(members=tuple(group), kind=kind))
    return groups


def _lsh_bands(threshold: float, num_perm: int, at_threshold: float = 0.99) -> tuple[int, int]:
    """``(bands, rows)`` of the LSH: the most rows per band (fewest candidates to confirm)
    that still make a pair of similarity ``threshold`` a candidate with probability
    ``at_threshold``. datasketch's own choice balances misses against false candidates and
    proposes a pair at the threshold about half the time; here false candidates only cost a
    confirmation, while a miss is a duplicate kept. A threshold of 1 (equal shingle sets, so
    equal MinHash signatures: always a candidate) gets two bands of half the permutations."""
    for rows in range(num_perm // 2, 0, -1):  # two bands at least: datasketch refuses one
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= at_threshold:
            return bands, rows
    return num_perm, 1


def jaccard_to(shingles: np.ndarray, other_text: str, settings: DedupSettings) -> float:
    """Jaccard similarity of a shingle-hash set and another text's (recomputed: keeping every
    example's set would take about four bytes per character of the pool)."""
    other = shingle_hashes(other_text, settings.shingle)
    common = np.intersect1d(shingles, other, assume_unique=True).size
    return common / (shingles.size + other.size - common)


_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_BASE = np.uint64(0x100000001B3)


def shingle_hashes(text: str, k: int) -> np.ndarray:
    """The set of the text's character k-grams, as sorted unique uint32 hashes.

    A text shorter than ``k`` is one shingle. Each k-gram of code points is folded into 64 bits
    by a polynomial, mixed by the splitmix64 finaliser and cut to its top 32 bits (MinHash's
    input width).
    """
    if not text:
        return np.zeros(0, dtype=np.uint32)
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint64)
    k = min(k, len(codes))
    h = np.zeros(len(codes) - k + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(k):
            h = h * _BASE + codes[offset : offset + len(h)] + np.uint64(1)
        h ^= h >> np.uint64(30)
        h *= _MIX1
        h ^= h >> np.uint64(27)
        h *= _MIX2
        h ^= h >> np.uint64(31)
    return np.unique((h >> np.uint64(32)).astype(np.uint32))
