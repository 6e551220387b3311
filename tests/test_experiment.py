"""The experiment harness end to end, on a miniature experiment with tiny real models.

The pool is the first bundled demo examples, the eval set two items per source of the bundled
eval set, the proxy the ``tiny`` preset and the target a 2-layer Llama (hidden 64) with a BPE
tokenizer trained on the pool, so that the whole chain (proxy, selection, fine-tuning,
generation, held-out loss, scoring, comparisons, table, plot) really runs, in seconds.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

from smalltolarge.compare import (
    COMPARISON_COLUMNS,
    comparisons,
    detectable_differences,
    learning_curve,
    read_item_values,
)
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

pytestmark = pytest.mark.usefixtures("one_thread")

N_POOL = 80
EVAL_PER_SOURCE = 2


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
            {"method": "random", "label": "random-per-source", "stratify": True,
             "budgets": [0.5], "seeds": [0]},
        ],
        "full_pool": True,
    }  # fmt: skip


RUNS = ("s2l-0.5-seed0", "random-0.5-seed0", "random-per-source-0.5-seed0", "full-pool-seed0")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, config):
    out = tmp_path_factory.mktemp("experiment") / "mini"
    return run_experiment(config, out_dir=out, progress=False)


def _sources_of_eval() -> set[str]:
    with open(DEMO_EVAL, encoding="utf-8") as f:
        return {json.loads(line)["source"] for line in f if line.strip()}


def test_results_csv_has_one_row_per_run_metric_and_source(finished):
    sources = _sources_of_eval()
    with open(finished.results_csv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == RESULT_COLUMNS
        rows = list(reader)
    assert rows == finished.rows
    # exact match: all + each source; loss: all + macro + each source with a scorable item
    # (the tiny tokenizer makes some sources' prompts longer than max_length)
    loss_sources = {
        run: {
            json.loads(line)["source"]
            for line in (finished.out_dir / "eval" / run / "losses.jsonl").read_text().splitlines()
        }
        for run in RUNS
    }
    assert len(rows) == sum((1 + len(sources)) + (2 + len(loss_sources[run])) for run in RUNS)
    runs = {(r["method"], r["budget"], r["seed"]) for r in rows}
    assert runs == {
        ("s2l", "0.5", "0"),
        ("random", "0.5", "0"),
        ("random-per-source", "0.5", "0"),
        ("full-pool", "1.0", "0"),
    }
    for r in rows:
        high = 1.0 if r["metric"] == "exact_match" else 20.0
        assert 0.0 <= float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"]) <= high
        assert r["metric"] in ("exact_match", "loss")
    overall = {r["method"]: r for r in rows if r["source"] == "all" and r["metric"] != "loss"}
    # n_train counts what was trained on: examples whose prompt fills max_length are excluded
    for method, most in (("s2l", N_POOL // 2), ("random", N_POOL // 2), ("full-pool", N_POOL)):
        assert most // 2 < int(overall[method]["n_train"]) <= most
    assert overall["s2l"]["n_eval"] == str(EVAL_PER_SOURCE * len(sources))
    assert {r["source"] for r in rows if r["metric"] == "exact_match"} == sources | {"all"}
    loss = {r["source"]: r for r in rows if r["metric"] == "loss" and r["method"] == "s2l"}
    assert set(loss) == loss_sources["s2l-0.5-seed0"] | {"all", "macro"}
    per_source = [float(loss[s]["value"]) for s in loss_sources["s2l-0.5-seed0"]]
    assert float(loss["macro"]["value"]) == pytest.approx(sum(per_source) / len(per_source), 1e-4)


def test_per_item_results_are_kept_for_paired_statistics(finished):
    n_eval = EVAL_PER_SOURCE * len(_sources_of_eval())
    for run in RUNS:
        directory = finished.out_dir / "eval" / run
        correct = read_item_values(directory, "exact_match")
        losses = read_item_values(directory, "loss")
        assert correct is not None and losses is not None
        assert len(correct) == n_eval and set(correct.values()) <= {0.0, 1.0}
        assert set(losses) <= set(correct) and all(v > 0 for v in losses.values())


def test_labels_and_per_entry_stratification(finished):
    selections = finished.out_dir / "run" / "selections"
    per_source = json.loads(
        (selections / "random-per-source-0.5-seed0" / "summary.json").read_text()
    )
    plain = json.loads((selections / "random-0.5-seed0" / "summary.json").read_text())
    assert "source" in json.dumps(per_source) and per_source != plain
    saved = json.loads((finished.out_dir / "experiment.json").read_text())
    assert saved["methods"]["random-per-source"] == {
        "method": "random", "settings": {}, "stratify_by": "source"
    }  # fmt: skip
    assert saved["methods"]["random"]["stratify_by"] is None


def test_comparisons_csv_and_report(finished):
    with open(finished.comparisons_csv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COMPARISON_COLUMNS
        rows = list(reader)
    assert rows == comparisons(finished.out_dir)
    pairs = {(r["method"], r["metric"], r["baseline"]) for r in rows}
    for metric in ("exact_match", "loss"):
        assert ("s2l", metric, "random") in pairs and ("s2l", metric, "full-pool") in pairs
        assert ("random-per-source", metric, "random") in pairs
        assert ("random", metric, "full-pool") in pairs
    for r in rows:
        assert float(r["ci_low"]) <= float(r["difference"]) <= float(r["ci_high"])
        assert r["verdict"] in ("ahead", "behind", "level")
    table = finished.table_md.read_text(encoding="utf-8")
    assert "## Paired differences" in table and "## Detectable difference" in table
    assert "Not computable" in table  # one seed of random: no detectable difference


def test_outputs_table_plot_and_no_weights_left(finished):
    table = finished.table_md.read_text(encoding="utf-8")
    first_table = table.split("\n\n\n")[0].split("loss (nats")[0]
    lines = [line for line in first_table.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines[1:]] == [
        "s2l", "random", "random-per-source", "full-pool"
    ]  # fmt: skip
    assert "loss (nats per response token, lower is better)" in table
    assert finished.plot_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table == write_table(finished.results_csv)  # a dict config: no command line
    models = finished.out_dir / "models"
    for run in RUNS:
        assert (models / run / "finetune.json").is_file()
        assert not (models / run / "model").exists()
        assert (finished.out_dir / "eval" / run / "scores.json").is_file()
    assert (finished.out_dir / "run" / "selections" / "s2l-0.5-seed0" / "ids.txt").is_file()


def test_rerun_skips_every_run(finished, config, capsys):
    before = finished.results_csv.read_bytes()
    again = run_experiment(config, out_dir=finished.out_dir, progress=True)
    out = capsys.readouterr().out
    assert out.count("skipped") >= len(RUNS)
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
        ({"evaluation": {"metric": "bleu"}}, "evaluation: unknown metric 'bleu'"),
        ({"methods": [{"method": "s2l", "budgets": [0.1], "label": "a b"}]}, "label"),
        ({"methods": [{"method": "s2l", "budgets": [0.1], "label": "random"}]}, "baseline"),
        ({"methods": [{"method": "s2l", "budgets": [0.1], "stratify": "yes"}]}, "stratify"),
        (
            {
                "methods": [
                    {"method": "random", "budgets": [0.1]},
                    {"method": "random", "budgets": [0.2], "stratify": True},
                ]
            },
            "labelled 'random' but select differently",
        ),
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


def test_calibration_runs_random_at_both_ends_and_the_full_pool(config, tmp_path, capsys):
    """Loss only (no generation): random at the smallest and largest budget, seed 1 added to the
    config's one seed, the full pool; the learning curve and the detectable differences."""
    cfg = {
        **config,
        "evaluation": {**config["evaluation"], "metric": "loss"},
        "methods": [
            {"method": "s2l", "budgets": [0.5], "seeds": [0], "settings": {"n_clusters": 4}},
            {"method": "random", "budgets": [0.25, 0.5], "seeds": [0]},
        ],
        "full_pool": False,
    }
    result = run_experiment(cfg, out_dir=tmp_path, calibrate=True, progress=True)
    out = capsys.readouterr().out
    assert "seed(s) 1 are added" in out
    assert "seed(s) 1 are added" in result.calibration_md.read_text(encoding="utf-8")
    runs = {(r["method"], r["budget"], r["seed"]) for r in result.rows}
    assert runs == {
        ("random", "0.25", "0"),
        ("random", "0.25", "1"),
        ("random", "0.5", "0"),
        ("random", "0.5", "1"),
        ("full-pool", "1.0", "0"),
    }
    assert {r["metric"] for r in result.rows} == {"loss"}
    assert not (tmp_path / "eval" / "random-0.25-seed0" / "predictions.jsonl").exists()
    assert result.calibration_png.read_bytes()[:4] == b"\x89PNG"

    [curve] = learning_curve(tmp_path).values()
    assert [p[0] for p in curve] == ["0.25", "0.5", "all"]
    detectable = detectable_differences(tmp_path)
    assert [(d["budget"], d["metric"], d["n_seeds"]) for d in detectable] == [
        ("0.25", "loss", "2"),
        ("0.5", "loss", "2"),
    ]
    widths = [float(d["detectable"]) for d in detectable]
    assert all(w > 0 for w in widths)
    calibration = result.calibration_md.read_text(encoding="utf-8")
    report = result.table_md.read_text(encoding="utf-8")
    for d in detectable:
        row = f"| {d['budget']} | {d['n_train']} | loss | ±{float(d['detectable']):.4f} |"
        assert row in calibration and row in report
    gain = curve[0][2] - curve[-1][2]  # loss falls as the training set grows
    warned = "cannot separate selection methods" in report
    assert warned == (gain < 2 * max(widths))
    assert warned == ("cannot separate selection methods" in calibration)


def test_methods_entries_take_a_preset_and_refuse_an_unknown_one(tmp_path):
    from smalltolarge.experiment import load_config
    from smalltolarge.experiment.plan import method_run

    base = {
        "name": "p",
        "pool": "bundled:demo_pool",
        "eval": "bundled:demo_eval",
        "target": {"model": "tiny-target"},
        "out_dir": str(tmp_path),
    }
    entry = {"method": "s2l", "label": "s2l-ref", "preset": "reference", "budgets": [0.1]}
    cfg = load_config({**base, "methods": [entry]})
    (spec,) = cfg.methods
    assert spec.preset == "reference" and spec.label == "s2l-ref"
    assert method_run(cfg, spec, 0.1, 0).preset == "reference"
    with pytest.raises(S2LError, match="preset 'paper' is not one of"):
        load_config({**base, "methods": [{**entry, "preset": "paper"}]})


def test_a_methods_entry_takes_a_target_set(config, tmp_path):
    target = tmp_path / "target.jsonl"
    target.write_text("", encoding="utf-8")
    entry = {"method": "s2l", "label": "s2l-targeted", "budgets": [0.5], "target_set": str(target),
             "target_weight": 1.0}  # fmt: skip
    spec = load_config({**config, "methods": [entry]}).methods[0]
    assert (spec.target_set, spec.target_weight) == (target, 1.0)
    with pytest.raises(S2LError, match="target_weight"):
        load_config({**config, "methods": [{**entry, "target_weight": 3}]})
    with pytest.raises(S2LError, match="steers s2l selecting globally"):
        load_config({**config, "methods": [{**entry, "method": "random", "label": "r"}]})
    with pytest.raises(S2LError, match="stratify: false"):
        load_config({**config, "stratify_by": "source", "methods": [entry]})
