"""Reading the final answer out of a text, and judging it against a reference answer.

Exact match is the metric of math and other short-answer tasks: :func:`extract_answer` finds
the final answer a text states (``####``, ``\\boxed{}``, "the answer is", else its last
number), :func:`answers_match` decides whether it equals the reference (with ``math-verify``
when it is installed), and :func:`choose_metric` tells short-answer references from free text.

Scorers of reasoning-gym (``reasoning_gym.get_score_answer_fn``) are deliberately not used: they
give partial credit (0.5, 0.1, 0.01 for a wrong answer in some tasks), which is not an
exact-match proportion, and several need the generator's ``metadata`` that eval files do not
carry, so one checker for every source is both simpler and comparable across sources.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

#: A reference on one line with at most this many characters and words (runs of letters
#: outside LaTeX commands) counts as a short answer: "42", "3/4", "2 × 2 × 11", "Tuesday".
SHORT_ANSWER_CHARS = 40
SHORT_ANSWER_WORDS = 3

_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*:?[ \t]*([^\n]*)", re.IGNORECASE)
# A sign counts only where it cannot be a binary minus ("5-3" ends in 3, "x = -3" in -3).
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}])[-+−])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_PLAIN_FRACTION = re.compile(r"([-+]?\d+)\s*/\s*(\d+)")
_LATEX_FRACTION = re.compile(r"([-+]?)\\frac\{([-+]?\d+)\}\{([-+]?\d+)\}")


def choose_metric(references: Sequence[str]) -> str:
    """The metric ``auto`` resolves to for these references.

    ``exact_match`` when at least half of the references look like short answers: they contain
    ``####`` (GSM8K), ``\\boxed{`` or "the answer is" (any case), or they are a single line of
    at most :data:`SHORT_ANSWER_CHARS` characters and :data:`SHORT_ANSWER_WORDS` words
    (``"42"``, ``"3/4"``, ``"\\frac{1}{2}"``, ``"Tuesday"``); otherwise ``rouge_l``.
    """
    short = sum(_looks_like_short_answer(r) for r in references)
    return "exact_match" if references and 2 * short >= len(references) else "rouge_l"


def extract_answer(text: str) -> str | None:
    """The final answer stated in ``text``, or None when it states none.

    Tried in order, the first that applies wins:

    1. the rest of the line after the last ``####`` (GSM8K style);
    2. the content of the last ``\\boxed{...}`` (balanced braces, so ``\\boxed{\\frac{1}{2}}``
       gives ``\\frac{1}{2}``);
    3. the rest of the line after the last "The answer is" (any case, optional colon);
    4. the last number: optional sign, thousands commas, decimals, or a fraction ``a/b``.

    The answer is stripped of whitespace and a final period, and thousands commas are removed
    from a plain number (``"1,234"`` -> ``"1234"``).
    """
    for finder in (_after_hashes, _last_boxed, _after_answer_is, _last_number):
        found = finder(text)
        if found is not None:
            cleaned = _clean(found)
            if cleaned:
                return cleaned
    return None


def answers_match(predicted: str | None, reference: str) -> bool:
    """Whether a predicted final answer equals the reference final answer.

    1. Both are normalised (surrounding ``$``, ``\\text{}``, ``\\dfrac``, a final period,
       thousands commas, whitespace and case) and compared as strings; equal means correct.
    2. A reference in words (two or more letters in a row outside LaTeX commands, like
       ``"Tuesday"``) is judged by step 1 alone. When the reference is mathematical but the
       prediction has words (``"12 apples"``), its last number stands for it.
    3. With ``math-verify`` installed, ``verify(parse(reference), parse(prediction))`` decides:
       it knows LaTeX, fractions, percentages, sets and symbolic equivalence
       (``"0.5"`` == ``"\\frac{1}{2}"``). It compares *values*, so a form the task asks for
       is not checked: ``"6/34"`` matches ``"3/17"`` and ``"44"`` matches ``"2 × 2 × 11"``.
    4. Without it, a simpler fallback: both must read as plain numbers (integers, decimals,
       ``a/b``, ``\\frac{a}{b}``) equal within a relative tolerance of 1e-6.
    """
    if predicted is None or not predicted.strip():
        return False
    pred_norm, ref_norm = _normalise(predicted), _normalise(reference)
    if pred_norm == ref_norm:
        return True
    if _has_words(ref_norm):
        return False
    if _has_words(pred_norm):
        number = _last_number(predicted)
        if number is None:
            return False
        predicted, pred_norm = number, _normalise(number)
        if pred_norm == ref_norm:
            return True
    mv = _math_verify()
    if mv is not None:
        parse, verify = mv
        # math-verify times out through signal.alarm, which only works in the main thread.
        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        gold = parse(_as_latex(reference), parsing_timeout=timeout)
        target = parse(_as_latex(predicted), parsing_timeout=timeout)
        return bool(gold and target and verify(gold, target, timeout_seconds=timeout))
    a, b = _as_number(pred_norm), _as_number(ref_norm)
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def prediction_answer(text: str) -> str | None:
    """:func:`extract_answer`, else the whole text when it is short (:func:`choose_metric`'s
    rule): a bare ``"Tuesday"`` states its answer without any of the patterns."""
    found = extract_answer(text)
    if found is not None:
        return found
    return _clean(text) if _is_short(text) else None


def checker_description() -> str:
    """Which checker :func:`answers_match` uses here (math-verify and its version, or the
    fallback), for the record of a scores file."""
    if _math_verify() is None:
        return "normalised string / number equality (math-verify not installed)"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"math-verify {version('math-verify')}"
    except PackageNotFoundError:
        return "math-verify"


def _after_hashes(text: str) -> str | None:
    matches = _HASHES.findall(text)
    return matches[-1] if matches else None


def _after_answer_is(text: str) -> str | None:
    matches = _ANSWER_IS.findall(text)
    return matches[-1] if matches else None


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), with nested braces."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None  # unbalanced: the answer was cut off


def _last_number(text: str) -> str | None:
    numbers = [m.group(0) for m in _NUMBER.finditer(text) if m.group(0)]
    return numbers[-1].replace("−", "-") if numbers else None


def _clean(answer: str) -> str:
    answer = answer.strip().rstrip(".").strip()
    number = _THOUSANDS.sub("", answer)
    if _PLAIN_NUMBER.fullmatch(number):
        return number
    # "#### $18" or "The answer is £5": the currency is not part of the value.
    if number[:1] in "$£€" and _PLAIN_NUMBER.fullmatch(number[1:].strip()):
        return number[1:].strip()
    return answer


def _looks_like_short_answer(reference: str) -> bool:
    text = reference.strip()
    lowered = text.lower()
    if "####" in text or "\\boxed{" in text or "the answer is" in lowered:
        return True
    return _is_short(text)


def _is_short(text: str) -> bool:
    """One line of at most SHORT_ANSWER_CHARS characters and SHORT_ANSWER_WORDS words."""
    text = text.strip()
    if not text or "\n" in text or len(text) > SHORT_ANSWER_CHARS:
        return False
    return len(re.findall(r"[^\W\d_]+", _LATEX_COMMAND.sub(" ", text))) <= SHORT_ANSWER_WORDS


def _normalise(answer: str) -> str:
    """A canonical string form for comparing answers (see :func:`answers_match`)."""
    s = answer.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left) : len(s) - len(right)].strip()
    s = _TEXT_COMMAND.sub(r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "").replace("{,}", ",").replace("−", "-")
    s = _THOUSANDS.sub("", s)
    s = s.rstrip(".").strip()
    return " ".join(s.split()).casefold()


def _has_words(normalised: str) -> bool:
    return re.search(r"[a-z]{2,}", _LATEX_COMMAND.sub(" ", normalised)) is not None


def _as_number(normalised: str) -> float | None:
    """The value of a plain number, ``a/b`` or ``\\frac{a}{b}``; None for anything else."""
    s = normalised.replace(" ", "")
    try:
        if _PLAIN_NUMBER.fullmatch(s):
            return float(Fraction(s))
        if m := _PLAIN_FRACTION.fullmatch(s):
            return float(Fraction(int(m.group(1)), int(m.group(2))))
        if m := _LATEX_FRACTION.fullmatch(s):
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return float(-value if m.group(1) == "-" else value)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _as_latex(answer: str) -> str:
    """An extracted answer as math-verify input: in ``$...$``, Unicode operators as LaTeX.

    Without delimiters math-verify looks for a number in the text and takes a fragment
    (``"2 × 2 × 11"`` parses as 11, which would then "equal" ``"3 × 11"``).
    """
    s = answer.strip().replace("×", "\\times ").replace("·", "\\cdot ").replace("⋅", "\\cdot ")
    s = s.replace("÷", "\\div ").replace("−", "-")
    if "$" in s or s.startswith(("\\(", "\\[")):
        return s
    return f"${s}$"


@functools.cache
def _math_verify() -> tuple[Any, Any] | None:
    """``(parse, verify)`` of math-verify, or None when it is not installed."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    return parse, verify
