"""Tests for smalltolarge.answers: reading final answers out of texts, comparing them (with
and without math-verify), and telling short-answer references from free text."""

from __future__ import annotations

import pytest

import smalltolarge.answers as answers
from smalltolarge.answers import answers_match, choose_metric, extract_answer

# --------------------------------------------------------------------------------------------
# answer extraction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She pays 1,000 + 234 = 1,234 dollars.\n#### 1,234", "1234"),
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("#### $18", "18"),
        ("So the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("first \\boxed{3}, then \\boxed{\\frac{a^{2}}{b_{1}}}", "\\frac{a^{2}}{b_{1}}"),
        ("9 - 3 = 6\n6 + 8 = 14\nThe answer is 14.", "14"),
        ("The answer is 42.", "42"),
        ("the final answer is: 2 × 2 × 11.", "2 × 2 × 11"),
        ("The answer is $\\dfrac{3}{17}$.", "$\\dfrac{3}{17}$"),
        ("I count 3 cats and then 7 dogs", "7"),
        ("It dropped to -5 and then to -3.5", "-3.5"),
        ("x = -12", "-12"),
        ("5-3", "3"),
        ("about 3/4 of them", "3/4"),
        ("a total of 3,000,000 grains", "3000000"),
        ("no digits here at all", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_hashes_win_over_a_later_number_and_boxed_over_answer_is():
    assert extract_answer("#### 72\nchecked with 3 other ways") == "72"
    assert extract_answer("The answer is 5. Or rather \\boxed{6}") == "6"


# --------------------------------------------------------------------------------------------
# answer comparison
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predicted", "reference", "expected"),
    [
        ("1,000", "1000", True),
        ("42.", "42", True),
        ("-53", "-53", True),
        ("-53", "53", False),
        ("13", "14", False),
        ("0.5", "1/2", True),
        ("3/4", "0.75", True),
        ("14.0", "14", True),
        ("tuesday", "Tuesday", True),
        ("Monday", "Tuesday", False),
        ("12 apples", "12", True),
        ("2 × 2 × 11", "2 × 2 × 11", True),
        (None, "1", False),
        ("", "1", False),
    ],
)
def test_answers_match(predicted, reference, expected):
    assert answers_match(predicted, reference) is expected


@pytest.mark.parametrize(
    ("predicted", "reference", "expected"),
    [
        ("0.5", "\\frac{1}{2}", True),
        ("\\frac{5}{17}", "$\\dfrac{5}{17}$", True),
        ("$4/5$", "0.8", True),
        ("\\sqrt{2}", "\\sqrt{2}", True),
        ("3 × 11", "2 × 2 × 11", False),
        ("10\\%", "0.1", True),
    ],
)
def test_answers_match_with_math_verify(predicted, reference, expected):
    pytest.importorskip("math_verify")
    assert answers_match(predicted, reference) is expected


def test_math_verify_judges_values_not_forms():
    # A documented limitation: "44" is the value of the factorisation, not the factorisation.
    pytest.importorskip("math_verify")
    assert answers_match("44", "2 × 2 × 11")
    assert answers_match("6/34", "3/17")


@pytest.mark.parametrize(
    ("predicted", "reference", "expected"),
    [
        ("0.5", "1/2", True),
        ("1,000", "1000", True),
        ("42.", "42", True),
        ("\\frac{1}{2}", "0.5", True),
        ("0.3333333", "0.333333333", True),
        ("0.33", "1/3", False),
        ("44", "2 × 2 × 11", False),
        ("\\sqrt{2}", "1.41421356", False),
    ],
)
def test_answers_match_fallback_without_math_verify(monkeypatch, predicted, reference, expected):
    monkeypatch.setattr(answers, "_math_verify", lambda: None)
    assert answers_match(predicted, reference) is expected


# --------------------------------------------------------------------------------------------
# choosing the metric
# --------------------------------------------------------------------------------------------


def test_choose_metric():
    assert choose_metric(["42", "3/4", "Tuesday"]) == "exact_match"
    assert choose_metric(["Step one.\nStep two.\n#### 5", "long text " * 20]) == "exact_match"
    free_text = ["Photosynthesis converts light energy into chemical energy in plants."] * 3
    assert choose_metric(free_text) == "rouge_l"
    assert choose_metric(free_text + ["42"]) == "rouge_l"
