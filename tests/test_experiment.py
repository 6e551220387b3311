"""The experiment harness end to end, on a miniature experiment with tiny real models.

The pool is the first bundled demo examples, the eval set two items per source of the bundled
eval set, the proxy the ``tiny`` preset and the target a 2-layer Llama (hidden 64) with a BPE
tokenizer trained on the pool, so that the whole chain (proxy, selection, fine-tuning,
generation, scoring, table, plot) really runs, in seconds.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch

from smalltolarge.demo_data import DEMO_EVAL, DEMO_POOL
from smalltolarge.errors import S2LError
from smalltolarge.experiment import (
    RESULT_COLUMNS,
    load_config,
    plot_results,
    run_experiment,
    write_table,
)
from smalltolarge.models import train_bpe_tokenizer

from .conftest import tiny_llama

N_POOL = 80
EVAL_PER_SOURCE = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run torch single-threaded: with matrices this small, torch's worker threads mostly wait
    on each other on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pool.jsonl"
    with open(DEMO_POOL, encoding="utf-8") as f:
        path.write_text("".join(next(f) for _ in range(N_POOL)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def target(tmp_path_factory, pool_file) -> Path:
    """A tiny untrained Llama and its tokenizer, saved as a HF model directory."""
    records = [json.loads(line) for line in pool_file.read_text().splitlines()]
    tokenizer = train_bpe_tokenizer((r["instruction"] + r["output"] for r in records), 512)
    directory = tmp_path_factory.mktemp("target")
    tiny_llama(tokenizer).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def config(pool_file, target) -> dict:
    return {
        "name": "mini",
        "pool": str(pool_file),
        "eval": "bundled:demo_eval",
        "eval_per_source": EVAL_PER_SOURCE,
        "proxy": {"name": "tiny", "epochs": 1, "checkpoints": 2, "max_length": 128,
                  "precision": "fp32"},
        "target": {"model": str(target), "epochs": 1, "max_length": 128, "batch_size": 8,
                   "learning_rate": 1e-3, "precision": "fp32"},
        "evaluation": {"max_new_tokens": 8, "batch_size": 16, "precision": "fp32"},
        "methods": [
            {"method": "s2l", "budgets": [0.5], "seeds": [0], "settings": {"n_clusters": 4}},
            {"method": "random", "budgets": [0.5], "seeds": [0]},
        ],
        "full_pool": True,
    }  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory, config):
    out = tmp_path_factory.mktemp("experiment") / "mini"
    return run_experiment(config, out_dir=out, progress=False)


def _sources_of_eval() -> set[str]:
    with open(DEMO_EVAL, encoding="utf-8") as f:
        return {json.loads(line)["source"] for line in f if line.strip()}


def test_results_csv_has_one_row_per_run_and_source(finished):
    sources = _sources_of_eval()
    with open(finished.results_csv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == RESULT_COLUMNS
        rows = list(reader)
    assert rows == finished.rows
    assert len(rows) == 3 * (1 + len(sources))
    runs = {(r["method"], r["budget"], r["seed"]) for r in rows}
    assert runs == {("s2l", "0.5", "0"), ("random", "0.5", "0"), ("full-pool", "1.0", "0")}
    for r in rows:
        assert 0.0 <= float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"]) <= 1.0
        assert r["metric"] == "exact_match"
    overall = {r["method"]: r for r in rows if r["source"] == "all"}
    # n_train counts what was trained on: examples whose prompt fills max_length are excluded
    for method, most in (("s2l", N_POOL // 2), ("random", N_POOL // 2), ("full-pool", N_POOL)):
        assert most // 2 < int(overall[method]["n_train"]) <= most
    assert overall["s2l"]["n_eval"] == str(EVAL_PER_SOURCE * len(sources))
    assert {r["source"] for r in rows} == sources | {"all"}


def test_outputs_table_plot_and_no_weights_left(finished):
    table = finished.table_md.read_text(encoding="utf-8")
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines[1:]] == ["s2l", "random", "full-pool"]
    assert finished.plot_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table == write_table(finished.results_csv)  # a dict config: no command line
    models = finished.out_dir / "models"
    for run in ("s2l-0.5-seed0", "random-0.5-seed0", "full-pool-seed0"):
        assert (models / run / "finetune.json").is_file()
        assert not (models / run / "model").exists()
        assert (finished.out_dir / "eval" / run / "scores.json").is_file()
    assert (finished.out_dir / "run" / "selections" / "s2l-0.5-seed0" / "ids.txt").is_file()


def test_rerun_skips_every_run(finished, config, capsys):
    before = finished.results_csv.read_bytes()
    again = run_experiment(config, out_dir=finished.out_dir, progress=True)
    out = capsys.readouterr().out
    assert out.count("skipped") >= 3
    assert "finetune:" not in out
    assert again.results_csv.read_bytes() == before


def test_plot_and_table_rerun_from_csv_alone(finished, tmp_path):
    png = plot_results(finished.results_csv, tmp_path / "again.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "Produced by `s2l experiment x.yaml`" in write_table(
        finished.results_csv, command="s2l experiment x.yaml"
    )


def test_changed_settings_are_refused_on_resume(finished, config):
    changed = copy.deepcopy(config)
    changed["target"]["epochs"] = 2
    with pytest.raises(S2LError, match="other data or settings"):
        run_experiment(changed, out_dir=finished.out_dir, progress=False)


def test_overlapping_eval_is_refused_before_training(tmp_path, config, pool_file):
    overlapping = tmp_path / "eval.jsonl"
    lines = pool_file.read_text(encoding="utf-8").splitlines(keepends=True)
    # a re-spaced, re-cased copy of pool line 3 is still the same prompt
    record = json.loads(lines[3])
    record.update(id="copy", instruction="  " + record["instruction"].upper().replace(" ", "  "))
    overlapping.write_text(json.dumps(record) + "\n", encoding="utf-8")
    bad = {**config, "eval": str(overlapping), "eval_per_source": None}
    out = tmp_path / "out"
    first_id = json.loads(lines[3])["id"]
    with pytest.raises(S2LError, match=f"1 of the 1 eval items.*eval id copy = pool id {first_id}"):
        run_experiment(bad, out_dir=out, progress=False)
    assert not (out / "run").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 3}, "unknown key in the config: epochs"),
        ({"target": {"model": "x", "epoch": 1}}, "unknown key in target: epoch"),
        ({"methods": [{"method": "nope", "budgets": [0.1]}]}, "unknown selection method 'nope'"),
        ({"methods": [{"method": "random", "budgets": [0.1], "seed": [0]}]}, r"methods\[0\]"),
        ({"methods": [{"method": "random", "budgets": [0.1], "settings": {"k": 2}}]}, "take"),
        ({"evaluation": {"metric": "bleu"}}, "evaluation.metric"),
    ],
)
def test_invalid_configs_are_refused(config, change, message):
    with pytest.raises(S2LError, match=message):
        load_config({**config, **change})


def test_budget_larger_than_pool_is_refused_before_training(config, tmp_path):
    bad = {**config, "methods": [{"method": "random", "budgets": [N_POOL + 1]}]}
    with pytest.raises(S2LError, match="budget"):
        run_experiment(bad, out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "run").exists()


def test_yaml_config_paths_resolve_against_its_directory(tmp_path, pool_file):
    (tmp_path / "pool.jsonl").write_bytes(pool_file.read_bytes())
    path = tmp_path / "exp.yaml"
    path.write_text(
        "pool: pool.jsonl\neval: bundled:demo_eval\ntarget: {model: m}\n"
        "methods: [{method: random, budgets: [0.1]}]\n",
        encoding="utf-8",
    )
    cfg = load_config(path)
    assert cfg.name == "exp"
    assert cfg.pool == tmp_path / "pool.jsonl"
    assert cfg.eval == DEMO_EVAL
    assert cfg.out_dir == Path("runs/experiments/exp")
    assert cfg.command == f"s2l experiment {path}"
    assert cfg.methods[0].seeds == (0,)
    assert cfg.evaluation["template"] == "alpaca"


def test_pool_limit_copies_the_first_lines_byte_for_byte(tmp_path, config):
    cfg = {**config, "pool": "bundled:demo_pool", "pool_limit": 30}
    bad = {**cfg, "methods": [{"method": "random", "budgets": [31]}]}
    with pytest.raises(S2LError, match="budget"):
        run_experiment(bad, out_dir=tmp_path, progress=False)
    with open(DEMO_POOL, "rb") as f:
        assert (tmp_path / "pool.jsonl").read_bytes() == b"".join(next(f) for _ in range(30))
