"""benchmarks/paper/: the paper's main setup (MathInstruct, Pythia-70M proxy, GSM8K + MATH).

It needs GPUs and the hub, so it is only checked here: the config validates, and the download
script writes files in the shape the experiment reads (with the hub replaced by small
in-memory datasets; nothing is downloaded).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import datasets
import pytest

from smalltolarge.data import load_pool
from smalltolarge.experiment import check_no_overlap, load_config

PAPER = Path(__file__).resolve().parents[1] / "benchmarks" / "paper"


def test_paper_config_is_valid_and_is_the_paper_setup():
    cfg = load_config(PAPER / "mathinstruct.yaml")
    assert cfg.pool == PAPER / "data" / "mathinstruct.jsonl"
    assert cfg.eval == PAPER / "data" / "eval.jsonl"
    proxy = cfg.proxy
    assert proxy["name"] == "EleutherAI/pythia-70m-deduped"
    assert (proxy["epochs"], proxy["checkpoints"], proxy["learning_rate"]) == (3, 12, 2e-5)
    assert (proxy["batch_size"], proxy["max_length"]) == (128, 512)
    assert cfg.target["model"] == "EleutherAI/pythia-1b"
    assert cfg.target["batch_size"] * cfg.target["grad_accum"] == 128
    assert cfg.evaluation["metric"] == "exact_match"
    assert cfg.stratify_by == "source"

    by_label = {spec.label: spec for spec in cfg.methods}
    s2l = by_label["s2l"]
    assert s2l.settings == {"n_clusters": 100} and s2l.stratify is True
    assert by_label["random"].stratify is False  # the paper's random baseline is global
    assert set(s2l.budgets) == set(by_label["random"].budgets) == {30000, 50000}
    assert cfg.full_pool and cfg.evaluate_base


@pytest.fixture
def fetch_data(monkeypatch):
    """benchmarks/paper/fetch_data.py, with ``datasets.load_dataset`` serving tiny stand-ins."""
    hub = {
        ("openai/gsm8k", "main", "test"): [
            {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7\n#### 7"},
            {"question": "A pen costs $2. Cost of 600 pens?", "answer": "2*600=1200\n#### 1,200"},
        ],
        ("HuggingFaceH4/MATH-500", None, "test"): [
            {
                "problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?",
                "solution": "$\\boxed{3/4}$",
                "answer": "\\frac{3}{4}",
            },
        ],
        ("TIGER-Lab/MathInstruct", None, "train"): [
            {"instruction": "What is 2+2?", "output": "4", "source": "data/CoT/gsm_rft.json"},
            # the eval question again, re-spaced and re-cased: must be dropped
            {
                "instruction": "tom has 3 apples and  buys 4. How many?",
                "output": "7",
                "source": "data/CoT/gsm_train.json",
            },
            {"instruction": "Solve x+1=3.", "output": "x=2", "source": "data/CoT/MATH_train.json"},
            {"instruction": "  ", "output": "empty prompt", "source": "data/CoT/aqua_rat.json"},
        ],
    }

    def load_dataset(name, config=None, *, split):
        return datasets.Dataset.from_list(hub[(name, config, split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    spec = importlib.util.spec_from_file_location("fetch_data", PAPER / "fetch_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fetched_files_are_what_the_experiment_reads(fetch_data, tmp_path, capsys):
    fetch_data.main(["--out-dir", str(tmp_path)])
    assert "dropped 1 empty, 1 sharing a question" in capsys.readouterr().out

    items = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [(i["source"], i["answer"]) for i in items] == [
        ("gsm8k", "7"),
        ("gsm8k", "1200"),
        ("math", "\\frac{3}{4}"),
    ]
    pool = load_pool(tmp_path / "mathinstruct.jsonl")
    assert pool.ids == ["mi-0", "mi-2"]
    assert set(pool.sources()) == {"data/CoT/gsm_rft.json", "data/CoT/MATH_train.json"}
    eval_pool = load_pool(tmp_path / "eval.jsonl")
    assert eval_pool.schema["kind"] == "alpaca" and eval_pool.has_sources
    check_no_overlap(eval_pool, pool)  # what run_experiment checks before any training


def test_gsm8k_only(fetch_data, tmp_path):
    fetch_data.main(["--out-dir", str(tmp_path), "--no-math"])
    items = (tmp_path / "eval.jsonl").read_text().splitlines()
    assert {json.loads(line)["source"] for line in items} == {"gsm8k"}
