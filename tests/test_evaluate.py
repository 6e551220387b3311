"""Tests for smalltolarge.evaluate: answer extraction and comparison, confidence intervals,
ROUGE-L, greedy batched generation with a tiny real model, and evaluate() end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import smalltolarge.evaluate as ev
from smalltolarge.demo_data import DEMO_EVAL
from smalltolarge.errors import S2LError
from smalltolarge.evaluate import (
    EvalResult,
    answers_match,
    bootstrap_interval,
    choose_metric,
    evaluate,
    extract_answer,
    generate,
    rouge_l,
    score_predictions,
    summarise,
    wilson_interval,
)
from smalltolarge.formatting import format_prompt
from smalltolarge.models import load_tokenizer, train_bpe_tokenizer

from .conftest import tiny_llama

PREDICTION_FIELDS = {
    "id",
    "source",
    "prompt",
    "prediction",
    "extracted",
    "reference",
    "correct",
    "score",
}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The models here are tiny: with several busy processes on few cores, torch's thread pool
    # waits far longer than the arithmetic takes (seconds instead of milliseconds per call).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_records() -> list[dict]:
    return _read_jsonl(DEMO_EVAL)


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory, demo_records) -> Path:
    """12 bundled eval items: the first 4 of each of three sources."""
    chosen: list[dict] = []
    for source in ("chain_sum", "gsm_symbolic", "calendar_arithmetic"):
        chosen += [r for r in demo_records if r["source"] == source][:4]
    path = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(demo_records):
    texts = [format_prompt(r["instruction"]) + r["output"] for r in demo_records]
    return train_bpe_tokenizer(texts, 512)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    """A randomly initialised 2-layer Llama (hidden 64), fp32; deterministic for the seed."""
    return tiny_llama(tokenizer, tie_word_embeddings=True).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompts(demo_records) -> list[str]:
    # Different sources give prompts of clearly different token lengths, so batches pad.
    picked = demo_records[::45][:8]
    return [format_prompt(r["instruction"]) for r in picked]


def _force_tokens(model, schedule: list[int], fill: int):
    """Make the model emit ``schedule`` (one token per decoding step), then ``fill`` forever,
    by adding a large logit at the scheduled token; returns the hook handle."""
    step = {"n": 0}

    def hook(module, inputs, output):
        k = step["n"]
        step["n"] += 1
        boost = torch.zeros(output.shape[-1], dtype=output.dtype)
        boost[schedule[k] if k < len(schedule) else fill] = 1e4
        return output + boost

    return model.lm_head.register_forward_hook(hook)


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
    monkeypatch.setattr(ev, "_math_verify", lambda: None)
    assert answers_match(predicted, reference) is expected


# --------------------------------------------------------------------------------------------
# statistics and ROUGE-L
# --------------------------------------------------------------------------------------------


def test_wilson_interval_matches_a_hand_computation():
    # 8/10, z = 1.96: centre = (0.8 + z²/20) / (1 + z²/10) = 0.716740,
    # half-width = z * sqrt(0.8 * 0.2 / 10 + z²/400) / (1 + z²/10) = 0.226578
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490162, abs=1e-6)
    assert high == pytest.approx(0.943318, abs=1e-6)


def test_wilson_interval_edges():
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.277533, abs=1e-6))
    assert wilson_interval(10, 10) == (pytest.approx(0.722467, abs=1e-6), 1.0)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_bootstrap_interval_is_deterministic_and_brackets_the_mean():
    values = [0.1, 0.4, 0.35, 0.8, 0.9, 0.2, 0.55, 0.6]
    low, high = bootstrap_interval(values)
    assert (low, high) == bootstrap_interval(values)
    assert low < sum(values) / len(values) < high
    assert bootstrap_interval([0.5] * 5) == (0.5, 0.5)


def test_summarise_uses_wilson_for_exact_match():
    summary = summarise([1.0] * 8 + [0.0] * 2, "exact_match")
    assert summary["mean"] == pytest.approx(0.8)
    assert summary["n"] == 10
    assert (summary["ci_low"], summary["ci_high"]) == wilson_interval(8, 10)


def test_rouge_l_identical_disjoint_and_partial():
    text = "the cat sat on the mat"
    assert rouge_l(text, text) == pytest.approx(1.0)
    assert rouge_l("alpha beta gamma", "delta epsilon zeta") == 0.0
    # LCS "the cat the mat" = 4 tokens of 6 and 5: P = 4/5, R = 4/6, F1 = 8/11
    assert rouge_l("the cat and the mat", text) == pytest.approx(8 / 11)


def test_choose_metric():
    assert choose_metric(["42", "3/4", "Tuesday"]) == "exact_match"
    assert choose_metric(["Step one.\nStep two.\n#### 5", "long text " * 20]) == "exact_match"
    free_text = ["Photosynthesis converts light energy into chemical energy in plants."] * 3
    assert choose_metric(free_text) == "rouge_l"
    assert choose_metric(free_text + ["42"]) == "rouge_l"


def test_score_predictions_by_hand():
    predictions = [
        "48 / 2 = 24\n#### 72",  # right
        "The answer is 71.",  # wrong
        "So we get \\boxed{\\frac{1}{2}}",  # right (0.5)
        "Tuesday",  # right, a bare word answer
        "I am not sure.",  # wrong, no answer
        "The answer is 1,000.",  # right
    ]
    references = ["72", "72", "0.5", "Tuesday", "8", "1000"]
    sources = ["gsm", "gsm", "frac", "calendar", "calendar", ""]
    scores = score_predictions(predictions, references, metric="exact_match", sources=sources)
    assert scores.metric == "exact_match"
    assert scores.values == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert scores.extracted == ["72", "71", "\\frac{1}{2}", "Tuesday", None, "1000"]
    assert scores.overall["mean"] == pytest.approx(4 / 6)
    assert scores.overall["n"] == 6
    assert (scores.overall["ci_low"], scores.overall["ci_high"]) == wilson_interval(4, 6)
    assert set(scores.per_source) == {"gsm", "frac", "calendar", "(none)"}
    assert scores.per_source["gsm"]["mean"] == 0.5
    assert scores.per_source["calendar"]["n"] == 2
    assert scores.per_source["(none)"]["mean"] == 1.0


def test_reference_responses_of_the_demo_eval_set_score_100_percent(demo_records):
    """The bundled responses state their answers in several styles (bare, "The answer is",
    "####", LaTeX fractions, "2 × 2 × 11", weekdays); read back, each matches its answer."""
    predictions = [r["output"] for r in demo_records]
    answers = [r["answer"] for r in demo_records]
    scores = score_predictions(predictions, answers, metric="exact_match")
    assert scores.overall["mean"] == 1.0
    shifted = score_predictions(predictions, answers[1:] + answers[:1], metric="exact_match")
    assert shifted.overall["mean"] < 0.1


def test_score_predictions_rouge_l_and_auto():
    scores = score_predictions(
        ["the cat sat on the mat", "a dog"],
        ["the cat sat on the mat", "plants convert light into chemical energy"],
        metric="auto",
    )
    assert scores.metric == "rouge_l"
    assert scores.values == [pytest.approx(1.0), 0.0]
    assert scores.extracted == [None, None]
    assert scores.per_source == {}
    assert scores.overall["ci_low"] <= scores.overall["mean"] <= scores.overall["ci_high"]


def test_score_predictions_rejects_bad_input():
    with pytest.raises(S2LError, match="unknown metric"):
        score_predictions(["1"], ["1"], metric="bleu")
    with pytest.raises(S2LError, match="references"):
        score_predictions(["1", "2"], ["1"], metric="exact_match")


# --------------------------------------------------------------------------------------------
# generation with a tiny real model
# --------------------------------------------------------------------------------------------


def test_generate_is_deterministic(tiny_model, tokenizer, prompts):
    first = generate(tiny_model, tokenizer, prompts, max_new_tokens=10, batch_size=4)
    second = generate(tiny_model, tokenizer, prompts, max_new_tokens=10, batch_size=4)
    assert first == second
    assert len(first) == len(prompts)
    assert any(first)


def test_left_padded_batches_equal_one_prompt_at_a_time(tiny_model, tokenizer, prompts):
    lengths = {len(tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 1  # the batch really pads
    side = tokenizer.padding_side
    batched = generate(
        tiny_model, tokenizer, prompts, max_new_tokens=12, batch_size=8, precision="fp32"
    )
    alone = generate(
        tiny_model, tokenizer, prompts, max_new_tokens=12, batch_size=1, precision="fp32"
    )
    assert batched == alone
    assert any(batched)
    # and the outputs are in input order, not in the length order of the batches
    assert generate(tiny_model, tokenizer, [prompts[3]], max_new_tokens=12) == [batched[3]]
    assert tokenizer.padding_side == side


def test_generate_respects_max_new_tokens(tiny_model, tokenizer, prompts):
    a = tokenizer.convert_tokens_to_ids("a")
    handle = _force_tokens(tiny_model, [], fill=a)
    try:
        out = generate(tiny_model, tokenizer, prompts[:3], max_new_tokens=5, batch_size=2)
    finally:
        handle.remove()
    assert out == ["aaaaa"] * 3


def test_generate_stops_at_eos(tiny_model, tokenizer, prompts):
    a, b, z = (tokenizer.convert_tokens_to_ids(c) for c in "abz")
    handle = _force_tokens(tiny_model, [a, b, tokenizer.eos_token_id], fill=z)
    try:
        out = generate(tiny_model, tokenizer, prompts[:3], max_new_tokens=20, batch_size=3)
    finally:
        handle.remove()
    assert out == ["ab"] * 3


def test_generate_edge_cases(tiny_model, tokenizer):
    assert generate(tiny_model, tokenizer, [], max_new_tokens=4) == []
    with pytest.raises(S2LError, match="max_new_tokens"):
        generate(tiny_model, tokenizer, ["x"], max_new_tokens=0)
    with pytest.raises(S2LError, match="batch_size"):
        generate(tiny_model, tokenizer, ["x"], batch_size=0)


# --------------------------------------------------------------------------------------------
# evaluate() end to end
# --------------------------------------------------------------------------------------------


def test_evaluate_end_to_end(tmp_path, model_dir, eval_file, demo_records):
    out = tmp_path / "eval"
    result = evaluate(
        model_dir,
        eval_file,
        out,
        max_new_tokens=8,
        batch_size=5,
        precision="fp32",
        device="cpu",
        progress=False,
    )
    assert isinstance(result, EvalResult)
    assert result.metric == "exact_match"  # auto: the eval set has short `answer`s
    rows = _read_jsonl(result.predictions_path)
    assert len(rows) == 12
    assert all(set(row) == PREDICTION_FIELDS for row in rows)
    expected = [json.loads(line) for line in eval_file.read_text().splitlines()]
    assert [r["id"] for r in rows] == [e["id"] for e in expected]
    assert [r["reference"] for r in rows] == [e["answer"] for e in expected]
    assert all(r["prompt"].endswith("### Response:\n") for r in rows)
    assert all(r["score"] in (0.0, 1.0) and r["correct"] == (r["score"] == 1.0) for r in rows)

    scores = json.loads(result.scores_path.read_text())
    assert scores["metric"] == "exact_match"
    assert scores["overall"]["n"] == 12
    assert set(scores["per_source"]) == {"chain_sum", "gsm_symbolic", "calendar_arithmetic"}
    assert all(s["n"] == 4 for s in scores["per_source"].values())
    assert scores["settings"]["precision"] == "fp32"
    assert scores["settings"]["max_new_tokens"] == 8
    assert scores["seconds"] > 0
    assert scores["overall"] == result.overall
    assert not list(out.glob(".*tmp"))  # atomic writes leave nothing behind

    # Same settings, same predictions.
    again = evaluate(
        model_dir, eval_file, tmp_path / "again", max_new_tokens=8, batch_size=3,
        precision="fp32", device="cpu", progress=False,
    )  # fmt: skip
    assert [r["prediction"] for r in _read_jsonl(again.predictions_path)] == [
        r["prediction"] for r in rows
    ]


def test_evaluate_counts_right_answers(tmp_path, monkeypatch, model_dir, eval_file):
    """The whole pipeline after generation, with predictions written by hand: 2 of the 4 items
    of each source are answered right, in each source's own answer style."""
    records = [json.loads(line) for line in eval_file.read_text().splitlines()]
    canned = {}
    for k, r in enumerate(records):
        right = k % 4 < 2
        answer = r["answer"] if right else "nothing useful"
        canned[format_prompt(r["instruction"])] = (
            f"Some working.\n#### {answer}" if r["source"] == "gsm_symbolic" else answer
        )

    def fake_generate(model, tokenizer, prompts, **kwargs):
        return [canned[p] for p in prompts]

    monkeypatch.setattr(ev, "generate", fake_generate)
    result = evaluate(model_dir, eval_file, tmp_path, device="cpu", progress=False)
    assert result.overall["mean"] == pytest.approx(0.5)
    assert (result.overall["ci_low"], result.overall["ci_high"]) == wilson_interval(6, 12)
    assert {s: v["mean"] for s, v in result.per_source.items()} == {
        "calendar_arithmetic": 0.5,
        "chain_sum": 0.5,
        "gsm_symbolic": 0.5,
    }
    rows = _read_jsonl(result.predictions_path)
    assert [r["correct"] for r in rows] == [k % 4 < 2 for k in range(12)]


def test_evaluate_extracts_references_from_responses(tmp_path, monkeypatch, model_dir):
    """Without an answer column the reference is read from the response (GSM8K schema)."""
    path = tmp_path / "gsm.jsonl"
    items = [
        {"question": "Q1", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "Q2", "answer": "It costs 1,000 + 200.\n#### 1,200"},
        {"question": "Q3", "answer": "Half of it.\nThe answer is \\boxed{\\frac{1}{2}}"},
    ]
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    monkeypatch.setattr(ev, "generate", lambda m, t, p, **kw: ["#### 7", "1200", "0.5"])
    result = evaluate(model_dir, path, tmp_path / "out", device="cpu", progress=False)
    rows = _read_jsonl(result.predictions_path)
    assert [r["reference"] for r in rows] == ["7", "1200", "\\frac{1}{2}"]
    assert result.metric == "exact_match"
    assert result.overall["mean"] == 1.0
    assert result.per_source == {}


def test_evaluate_rouge_l(tmp_path, model_dir):
    path = tmp_path / "free.jsonl"
    items = [
        {"instruction": f"Describe item {k}.", "output": f"Item {k} is a long description " * 4}
        for k in range(3)
    ]
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    result = evaluate(
        model_dir, path, tmp_path / "out", max_new_tokens=4, precision="fp32", device="cpu",
        progress=False,
    )  # fmt: skip
    assert result.metric == "rouge_l"
    scores = json.loads(result.scores_path.read_text())
    assert "bootstrap" in scores["settings"]["ci"]
    assert 0.0 <= result.overall["mean"] <= 1.0
    assert result.overall["n"] == 3


def test_evaluate_max_examples(tmp_path, monkeypatch, model_dir, eval_file):
    monkeypatch.setattr(ev, "generate", lambda m, t, p, **kw: ["0"] * len(p))
    result = evaluate(model_dir, eval_file, tmp_path, max_examples=5, device="cpu", progress=False)
    assert len(_read_jsonl(result.predictions_path)) == 5
    assert result.overall["n"] == 5


def test_evaluate_chat_template(tmp_path, monkeypatch, tokenizer, tiny_model, eval_file):
    chat_dir = tmp_path / "chat-model"
    tiny_model.save_pretrained(chat_dir)
    tokenizer.save_pretrained(chat_dir)
    chat_tok = load_tokenizer(chat_dir)  # a copy: the shared fixture stays without a template
    chat_tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    chat_tok.save_pretrained(chat_dir)
    seen = {}

    def fake_generate(model, tok, prompts, **kwargs):
        seen.update(prompts=prompts, **kwargs)
        return ["0"] * len(prompts)

    monkeypatch.setattr(ev, "generate", fake_generate)
    evaluate(chat_dir, eval_file, tmp_path / "out", template="chat", device="cpu", progress=False)
    first = json.loads(eval_file.read_text().splitlines()[0])
    assert seen["prompts"][0] == f"<|user|>{first['instruction']}\n<|assistant|>"
    assert seen["add_special_tokens"] is False


def test_evaluate_user_errors(tmp_path, model_dir, eval_file):
    with pytest.raises(S2LError, match="unknown metric"):
        evaluate(model_dir, eval_file, tmp_path, metric="bleu")
    with pytest.raises(S2LError, match="unknown template"):
        evaluate(model_dir, eval_file, tmp_path, template="vicuna")
    with pytest.raises(S2LError, match="answer_column"):
        evaluate(model_dir, eval_file, tmp_path, answer_column="final")
    with pytest.raises(S2LError, match="chat template"):
        evaluate(model_dir, eval_file, tmp_path, template="chat", device="cpu")

    no_response = tmp_path / "prompts_only.jsonl"
    no_response.write_text('{"instruction": "What is 2 + 2?"}\n', encoding="utf-8")
    with pytest.raises(S2LError, match="response"):
        evaluate(model_dir, no_response, tmp_path)

    no_answer = tmp_path / "essays.jsonl"
    essay = "A long essay without any figure in it, spread over\nseveral lines of text."
    no_answer.write_text(json.dumps({"instruction": "Write.", "output": essay}) + "\n")
    with pytest.raises(S2LError, match="final answer"):
        evaluate(model_dir, no_answer, tmp_path, metric="exact_match")
