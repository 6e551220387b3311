"""Tests for smalltolarge.evaluate: scoring predictions, ROUGE-L, and evaluate() end to end
with a tiny real model (answers, intervals and generation have their own test files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import smalltolarge.evaluate as ev
from smalltolarge.errors import S2LError
from smalltolarge.evaluate import EvalResult, evaluate, rouge_l, score_predictions
from smalltolarge.formatting import format_prompt
from smalltolarge.intervals import wilson_interval
from smalltolarge.models import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

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
def model_dir(tmp_path_factory, tiny_model, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------
# scoring and ROUGE-L
# --------------------------------------------------------------------------------------------


def test_rouge_l_identical_disjoint_and_partial():
    text = "the cat sat on the mat"
    assert rouge_l(text, text) == pytest.approx(1.0)
    assert rouge_l("alpha beta gamma", "delta epsilon zeta") == 0.0
    # LCS "the cat the mat" = 4 tokens of 6 and 5: P = 4/5, R = 4/6, F1 = 8/11
    assert rouge_l("the cat and the mat", text) == pytest.approx(8 / 11)


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
