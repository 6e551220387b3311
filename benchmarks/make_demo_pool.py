"""Regenerate the bundled demo SFT pool and its held-out eval set.

The demo pool is a small analogue of MathInstruct: a mixed, multi-source pool of math problems
with responses, built from procedural generators of ``reasoning-gym`` (Apache-2.0), with uneven
source sizes, several difficulty tiers per source, and a mix of short-answer and worked-solution
responses. It is what ``smalltolarge.demo_data.DEMO_POOL`` points at.

Usage (from the repository root)::

    .venv/bin/python benchmarks/make_demo_pool.py          # rewrite the shipped files
    .venv/bin/python benchmarks/make_demo_pool.py --check  # regenerate in memory, compare bytes

Outputs (one JSON object per line, Alpaca schema plus bookkeeping fields)::

    src/smalltolarge/bundled/demo_pool.jsonl   # ~3,000 examples, 9 sources, < 1 MB
    src/smalltolarge/bundled/demo_eval.jsonl   # 40 held-out items per source, < 300 KB

    {"id": "<source>-<k>", "instruction": question, "input": "", "output": response,
     "source": generator name, "answer": final answer string, "difficulty": str or null}

Eval ids are ``<source>-eval-<k>`` so they never collide with pool ids. ``difficulty`` is the
tier (``easy``/``medium``/``hard``) whose generator config produced the item (see ``SOURCES``);
it is null for ``gsm_symbolic`` (one difficulty only) and ``calendar_arithmetic`` (no tiers).
The pool is shuffled; the eval file is grouped by source. Generation takes ~1 s.

Determinism: everything derives from the fixed seeds below; no wall clock, no hash-order
dependence. Running the script twice gives byte-identical files (``--check`` verifies it). The
output depends on the generator code, so it is pinned to the reasoning-gym version below (the
``simple_equations`` generator also goes through sympy); a different version prints a warning
and may give different files.

Notes on the generators (reasoning-gym 0.1.25):

* ``reasoning_gym.__version__`` reports 0.1.19 although the installed distribution is 0.1.25;
  the version check below reads the distribution metadata.
* Item ``i`` of ``create_dataset(name, size=n, seed=s)`` is drawn from ``Random(s + i)``, so
  seeds ``s`` and ``s + 1`` give the same items shifted by one. Every (split, source, tier)
  therefore gets a seed at least 100,000 away from every other one.
* ``gsm_symbolic`` templates are symbolic variants of **GSM8K test** questions. A model trained
  on this pool must not be scored on GSM8K test as if that were clean held-out data. Its
  responses are the generator's ``answer_cot`` (ending in ``#### N``). A few templates truncate
  non-integer intermediate results (e.g. ``17*0.5=8``, ``48 / 18 = 2`` pans); items whose
  chain of thought contains such a checkably wrong ``a op b = c`` step are dropped (a heuristic
  check, not a proof that the kept ones are all correct), and so are items that print
  floating-point noise (``22.083333333333336 hours``). Together ~3-6% of drawn items.
* ``time_intervals`` uses ``date.today()`` inside the generator, so its metadata is not
  reproducible; it is not used here. ``polynomial_equations`` (~800-char instructions) and
  ``power_function`` (answer not in the format its question asks for) are not used either.
* Worked responses for ``chain_sum``, ``leg_counting``, ``gcd``, ``fraction_simplification``
  and ``prime_factorization`` are built here from the item metadata and checked against the
  generator's answer (an ``AssertionError`` stops the script on any disagreement). The other
  sources keep the plain answer as the response.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import math
import operator
import random
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "src" / "smalltolarge" / "bundled"
POOL_NAME = "demo_pool.jsonl"
EVAL_NAME = "demo_eval.jsonl"

EXPECTED_REASONING_GYM = "0.1.25"
POOL_SEED = 20_240_601
EVAL_SEED = POOL_SEED + 500_000_000
SOURCE_STRIDE = 1_000_000  # seed distance between sources
TIER_STRIDE = 100_000  # seed distance between tiers of one source (> any index we read)
EVAL_PER_SOURCE = 40
MAX_POOL_BYTES = 1_000_000
MAX_EVAL_BYTES = 300_000


@dataclass(frozen=True)
class Tier:
    difficulty: str | None
    pool_n: int
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    name: str
    respond: str  # key into RESPONDERS
    tiers: tuple[Tier, ...]

    @property
    def pool_n(self) -> int:
        return sum(t.pool_n for t in self.tiers)


# Uneven source sizes (largest ~10x smallest), 3 difficulty tiers where the generator has knobs.
SOURCES: tuple[Source, ...] = (
    Source(
        "chain_sum",
        "chain_sum",
        (
            Tier("easy", 290, dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2)),
            Tier("medium", 240, dict(min_terms=3, max_terms=4, min_digits=2, max_digits=3)),
            Tier("hard", 190, dict(min_terms=5, max_terms=6, min_digits=3, max_digits=4)),
        ),
    ),
    Source(
        "basic_arithmetic",
        "plain",
        (
            Tier("easy", 260, dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2)),
            Tier("medium", 240, dict(min_terms=3, max_terms=4, min_digits=1, max_digits=3)),
            Tier("hard", 190, dict(min_terms=5, max_terms=6, min_digits=2, max_digits=4)),
        ),
    ),
    Source("gsm_symbolic", "gsm_cot", (Tier(None, 300),)),
    Source(
        "leg_counting",
        "leg_counting",
        (
            Tier("easy", 120, dict(min_animals=2, max_animals=3, min_instances=1, max_instances=5)),
            Tier(
                "medium", 100, dict(min_animals=4, max_animals=6, min_instances=1, max_instances=10)
            ),
            Tier("hard", 80, dict(min_animals=7, max_animals=9, min_instances=1, max_instances=15)),
        ),
    ),
    Source(
        "simple_equations",
        "plain",
        (
            Tier("easy", 130, dict(min_terms=2, max_terms=2, min_value=1, max_value=20)),
            Tier("medium", 110, dict(min_terms=2, max_terms=3, min_value=1, max_value=50)),
            Tier("hard", 90, dict(min_terms=3, max_terms=4, min_value=1, max_value=100)),
        ),
    ),
    Source(
        "gcd",
        "gcd",
        (
            Tier("easy", 80, dict(min_value=1, max_value=100)),
            Tier("medium", 70, dict(min_value=1, max_value=1000)),
            Tier("hard", 50, dict(min_value=1000, max_value=10000)),
        ),
    ),
    Source(
        "fraction_simplification",
        "fraction",
        (
            Tier("easy", 60, dict(min_value=1, max_value=20, min_factor=2, max_factor=10)),
            Tier("medium", 55, dict(min_value=1, max_value=100, min_factor=2, max_factor=50)),
            Tier("hard", 45, dict(min_value=1, max_value=1000, min_factor=2, max_factor=100)),
        ),
    ),
    Source("calendar_arithmetic", "plain", (Tier(None, 120),)),
    Source(
        "prime_factorization",
        "prime_factorization",
        (
            Tier("easy", 30, dict(min_value=2, max_value=100)),
            Tier("medium", 30, dict(min_value=101, max_value=1000)),
            Tier("hard", 20, dict(min_value=1001, max_value=10000)),
        ),
    ),
)


# --------------------------------------------------------------------------- responses


def _respond_plain(item: dict[str, Any]) -> str:
    return str(item["answer"])


def _final(answer: str) -> str:
    return f"The answer is {answer}."


def _respond_chain_sum(item: dict[str, Any]) -> str:
    tokens = item["metadata"]["expression"].split()
    assert len(tokens) % 2 == 1, tokens
    total = int(tokens[0])
    lines = []
    for op, term in zip(tokens[1::2], tokens[2::2], strict=True):
        assert op in {"+", "-"}, tokens
        new = total + int(term) if op == "+" else total - int(term)
        lines.append(f"{total} {op} {term} = {new}")
        total = new
    assert str(total) == item["answer"], (tokens, item["answer"])
    return "\n".join([*lines, _final(item["answer"])])


def _respond_leg_counting(item: dict[str, Any]) -> str:
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    animals: dict[str, int] = item["metadata"]["animals"]
    lines, subtotals = [], []
    for animal, count in animals.items():
        legs = ANIMALS[animal]
        subtotals.append(count * legs)
        lines.append(f"{animal}: {count} × {legs} = {count * legs}")
    total = sum(subtotals)
    assert str(total) == item["answer"] == str(item["metadata"]["total_legs"]), item
    lines.append("Total: " + " + ".join(map(str, subtotals)) + f" = {total}")
    return "\n".join([*lines, _final(item["answer"])])


def _respond_gcd(item: dict[str, Any]) -> str:
    numbers = item["metadata"]["numbers"]
    assert len(numbers) == 2, numbers
    a, b = max(numbers), min(numbers)
    assert b > 0, numbers
    lines = ["Use the Euclidean algorithm."]
    while b:
        q, r = divmod(a, b)
        lines.append(f"{a} = {q} × {b} + {r}")
        a, b = b, r
    assert a == math.gcd(*numbers) and str(a) == item["answer"], item
    return "\n".join([*lines, _final(item["answer"])])


def _respond_fraction(item: dict[str, Any]) -> str:
    meta = item["metadata"]
    num, den = meta["numerator"], meta["denominator"]
    g = math.gcd(num, den)
    assert (num // g, den // g) == (meta["simplified_numerator"], meta["simplified_denominator"])
    if g == 1:
        lines = [f"gcd({num}, {den}) = 1, so the fraction is already in lowest terms."]
    else:
        lines = [f"gcd({num}, {den}) = {g}", f"{num} ÷ {g} = {num // g}"]
        lines.append(f"{den} ÷ {g} = {den // g}")
    return "\n".join([*lines, _final(item["answer"])])


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def _respond_prime_factorization(item: dict[str, Any]) -> str:
    n, factors = item["metadata"]["number"], item["metadata"]["factors"]
    assert factors == sorted(factors) and all(map(_is_prime, factors)), item
    assert math.prod(factors) == n and " × ".join(map(str, factors)) == item["answer"], item
    lines, rest = [], n
    for p in factors[:-1]:
        lines.append(f"{rest} ÷ {p} = {rest // p}")
        rest //= p
    lines.append(f"{rest} is prime.")
    return "\n".join([*lines, _final(item["answer"])])


_NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
_OPERAND = r"\(?\s*" + _NUM + r"%?\s*\)?"
_OP = r"[-+*/×x÷]"
_STEP = re.compile(
    r"(?<![\w.,])" + _OPERAND + r"(?:\s*" + _OP + r"\s*" + _OPERAND + r")+"
    r"\s*=\s*\$?(" + _NUM + r")(%?)(?![\w.,]?\d|\s*" + _OP + r"\s*\d)"
)
_FLOAT_ARTIFACT = re.compile(r"\d\.\d{5,}")
_BINOPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _eval_arith(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval_arith(node.left), _eval_arith(node.right))
    raise ValueError("not plain arithmetic")


def wrong_cot_steps(cot: str) -> list[str]:
    """Return the ``a op b (op c ...) = d`` steps of a chain of thought that do not compute.

    Heuristic: only digit-and-operator spans are checked (steps with units between the numbers
    are skipped), ``a÷b/c`` reads as ``a÷(b/c)``, ``%`` as ``/100``, and a result written with
    >= 2 decimals may be rounded to that many decimals.
    """
    wrong = []
    for m in _STEP.finditer(cot):
        before = cot[: m.start()].rsplit("\n", 1)[-1]
        if re.search(_OP + r"[\sA-Za-z/$]*$", before):
            continue  # the match is the tail of a longer expression (e.g. with units)
        lhs = m.group(0).rsplit("=", 1)[0]
        lhs = re.sub(r"÷\s*(" + _NUM + r")\s*/\s*(" + _NUM + ")", r"/(\1/\2)", lhs)
        for old, new in ((",", ""), ("×", "*"), ("÷", "/"), ("x", "*"), ("%", "/100")):
            lhs = lhs.replace(old, new)
        try:
            value = _eval_arith(ast.parse(lhs.strip(), mode="eval").body)
        except (SyntaxError, ValueError, ZeroDivisionError):
            continue
        text, percent = m.group(1), m.group(2)
        claimed = float(text.replace(",", "")) / (100 if percent else 1)
        decimals = (len(text.split(".")[1]) if "." in text else 0) + (2 if percent else 0)
        ok = abs(value - claimed) <= 1e-6 * max(1.0, abs(claimed)) or (
            decimals >= 2 and abs(round(value, decimals) - claimed) < 1e-9
        )
        if not ok:
            wrong.append(m.group(0))
    return wrong


def _respond_gsm_cot(item: dict[str, Any]) -> str | None:
    cot = item["metadata"]["answer_cot"].strip()
    final = cot.rsplit("####", 1)[-1].strip()
    assert float(final.replace(",", "")) == float(item["answer"]), (final, item["answer"])
    if wrong_cot_steps(cot):
        return None  # drop: the template truncated a non-integer intermediate result
    if _FLOAT_ARTIFACT.search(item["question"] + "\n" + cot):
        return None  # drop: binary floating-point noise such as 0.3333333333333333
    return cot


RESPONDERS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "plain": _respond_plain,
    "chain_sum": _respond_chain_sum,
    "leg_counting": _respond_leg_counting,
    "gcd": _respond_gcd,
    "fraction": _respond_fraction,
    "prime_factorization": _respond_prime_factorization,
    "gsm_cot": _respond_gsm_cot,
}


# --------------------------------------------------------------------------- generation


def _stream(name: str, seed: int, config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(name, size=TIER_STRIDE, seed=seed, **config)
    for idx in range(TIER_STRIDE):
        yield dataset[idx]


def _make_split(
    base_seed: int,
    per_tier: Callable[[Source, int], int],
    exclude: set[str],
    id_infix: str,
    stats: dict[str, int],
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    seen = set(exclude)
    for s_idx, source in enumerate(SOURCES):
        k = 0
        for t_idx, tier in enumerate(source.tiers):
            want = per_tier(source, t_idx)
            seed = base_seed + s_idx * SOURCE_STRIDE + t_idx * TIER_STRIDE
            got = 0
            for item in _stream(source.name, seed, tier.config):
                if got == want:
                    break
                stats["drawn"] += 1
                question = item["question"]
                if question in seen:
                    stats["duplicate_or_excluded"] += 1
                    continue
                output = RESPONDERS[source.respond](item)
                if output is None:
                    stats[f"dropped_{source.name}"] += 1
                    continue
                seen.add(question)
                records.append(
                    {
                        "id": f"{source.name}-{id_infix}{k}",
                        "instruction": question,
                        "input": "",
                        "output": output,
                        "source": source.name,
                        "answer": str(item["answer"]),
                        "difficulty": tier.difficulty,
                    }
                )
                k += 1
                got += 1
            assert got == want, (source.name, tier.difficulty, got, want)
    return records


def _eval_per_tier(source: Source, t_idx: int) -> int:
    n_tiers = len(source.tiers)
    return EVAL_PER_SOURCE // n_tiers + (1 if t_idx < EVAL_PER_SOURCE % n_tiers else 0)


def _to_bytes(records: list[dict[str, Any]]) -> bytes:
    lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records]
    return ("\n".join(lines) + "\n").encode("utf-8")


def build() -> tuple[bytes, bytes, dict[str, int]]:
    """Return the bytes of the pool and eval files plus generation counters."""
    from collections import Counter

    stats: Counter[str] = Counter()
    pool = _make_split(POOL_SEED, lambda s, t: s.tiers[t].pool_n, set(), "", stats)
    random.Random(POOL_SEED).shuffle(pool)
    pool_questions = {r["instruction"] for r in pool}
    eval_stats: Counter[str] = Counter()
    evals = _make_split(EVAL_SEED, _eval_per_tier, pool_questions, "eval-", eval_stats)

    # Hard guarantees.
    assert len(pool_questions) == len(pool), "duplicate question in pool"
    eval_questions = {r["instruction"] for r in evals}
    assert len(eval_questions) == len(evals), "duplicate question in eval"
    assert not pool_questions & eval_questions, "eval question shared with pool"
    assert len({r["id"] for r in pool} | {r["id"] for r in evals}) == len(pool) + len(evals)
    assert 2500 <= len(pool) <= 3500, len(pool)
    assert len(evals) == EVAL_PER_SOURCE * len(SOURCES), len(evals)
    pool_bytes, eval_bytes = _to_bytes(pool), _to_bytes(evals)
    assert len(pool_bytes) < MAX_POOL_BYTES, len(pool_bytes)
    assert len(eval_bytes) < MAX_EVAL_BYTES, len(eval_bytes)
    merged = dict(stats)
    merged.update({f"eval_{k}": v for k, v in eval_stats.items()})
    return pool_bytes, eval_bytes, merged


def _summary(data: bytes) -> str:
    records = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    out = [f"{len(records)} examples, {len(data):,} bytes"]
    for source in SOURCES:
        rows = [r for r in records if r["source"] == source.name]
        instr = statistics.mean(len(r["instruction"]) for r in rows)
        output = statistics.mean(len(r["output"]) for r in rows)
        out.append(
            f"  {source.name:24s} {len(rows):5d}  instr {instr:6.1f}  output {output:6.1f} chars"
        )
    for key in ("instruction", "output"):
        lengths = [len(r[key]) for r in records]
        out.append(
            f"  {key}: mean {statistics.mean(lengths):.1f}, median {statistics.median(lengths)}, "
            f"max {max(lengths)} chars"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR)
    parser.add_argument(
        "--check", action="store_true", help="do not write; fail if the files in --out-dir differ"
    )
    args = parser.parse_args(argv)

    version = importlib.metadata.version("reasoning-gym")
    if version != EXPECTED_REASONING_GYM:
        warnings.warn(
            f"reasoning-gym {version} != {EXPECTED_REASONING_GYM}: output may differ",
            stacklevel=1,
        )
    start = time.perf_counter()
    pool_bytes, eval_bytes, stats = build()
    elapsed = time.perf_counter() - start

    outputs = {args.out_dir / POOL_NAME: pool_bytes, args.out_dir / EVAL_NAME: eval_bytes}
    if args.check:
        stale = [p for p, data in outputs.items() if not p.exists() or p.read_bytes() != data]
        for path in stale:
            print(f"differs: {path}", file=sys.stderr)
        if stale:
            return 1
    else:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for path, data in outputs.items():
            path.write_bytes(data)
    print(f"reasoning-gym {version}; generated in {elapsed:.1f} s; counters {stats}")
    print("pool:", _summary(pool_bytes))
    print("eval:", _summary(eval_bytes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
