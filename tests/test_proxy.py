"""Tests for smalltolarge.proxy: checkpoint schedules, checkpoint listing, training, skipping,
retraining, determinism and a Hugging Face model as proxy."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from smalltolarge.errors import S2LError
from smalltolarge.formatting import TokenArrays, load_tokenised
from smalltolarge.losses import score_model
from smalltolarge.models import PRESETS, load_tokenizer
from smalltolarge.prepare import prepare
from smalltolarge.proxy import checkpoint_steps, list_checkpoints, read_proxy_meta, train_proxy
from smalltolarge.runs import RunDir, read_json
from smalltolarge.scoring import score_trajectories
from smalltolarge.trajectories import Trajectories

# the settings of the session fixture `trained_run` (see conftest.py)
FIXTURE_SETTINGS = dict(epochs=2, batch_size=8, n_checkpoints=4, precision="fp32", seed=0)
# a short training for the tests that train again: a quarter epoch, 4 steps, 2 checkpoints,
# no trajectories recorded (test_record_without_checkpoints_and_... covers recording)
SHORT = dict(
    epochs=0.25, batch_size=8, n_checkpoints=2, precision="fp32", record=False, progress=False
)


def weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint_dir / "model.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def copy_run(run: RunDir, dest: Path) -> RunDir:
    shutil.copytree(run.root, dest)
    return RunDir(dest)


def mtimes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*")}


# --------------------------------------------------------------------------------------------
# checkpoint schedule
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "n", "expected"),
    [
        (100, 4, [25, 50, 75, 100]),
        (10, 3, [3, 7, 10]),
        (30, 4, [8, 15, 22, 30]),
        (7, 1, [7]),
        (5, 5, [1, 2, 3, 4, 5]),
    ],
)
def test_checkpoint_steps_evenly_spaced(total, n, expected):
    assert checkpoint_steps(total, n) == expected


def test_checkpoint_steps_evenly_spaced_properties():
    for total in range(1, 80):
        for n in range(1, total + 1):
            steps = checkpoint_steps(total, n)
            assert len(steps) == n, (total, n)
            assert steps[-1] == total and steps[0] >= 1
            gaps = np.diff([0, *steps])
            assert (
                gaps.min() >= math.floor(total / n) - 1 and gaps.max() <= math.ceil(total / n) + 1
            )


@pytest.mark.parametrize(
    ("total", "every", "expected"),
    [
        (100, 30, [30, 60, 90]),
        (100, 25, [25, 50, 75, 100]),
        (100, 100, [100]),
        (5, 1, [1, 2, 3, 4, 5]),
    ],
)
def test_checkpoint_steps_interval(total, every, expected):
    assert checkpoint_steps(total, every=every) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(total_steps=100, n_checkpoints=4, every=10), "not both"),
        (dict(total_steps=100), "not both"),
        (
            dict(total_steps=10, n_checkpoints=11),
            "11 checkpoints asked for, but training has only 10",
        ),
        (dict(total_steps=100, every=101), "interval 101 exceeds the 100 training steps"),
        (dict(total_steps=100, n_checkpoints=0), "must be positive, not 0"),
        (dict(total_steps=100, n_checkpoints=-2), "must be positive, not -2"),
        (dict(total_steps=100, every=0), "must be positive, not 0"),
        (dict(total_steps=100, every=-5), "must be positive, not -5"),
        (dict(total_steps=0, n_checkpoints=1), "training has no steps"),
        (dict(total_steps=0, every=1), "training has no steps"),
    ],
)
def test_checkpoint_steps_errors(kwargs, message):
    with pytest.raises(S2LError, match=message):
        checkpoint_steps(**kwargs)


# --------------------------------------------------------------------------------------------
# listing checkpoints
# --------------------------------------------------------------------------------------------


def test_list_checkpoints_in_step_order(tmp_path):
    for name in ("step-100", "step-20", "step-3", "step-00000050", "resume", "step-x", "step-"):
        (tmp_path / name).mkdir()
    (tmp_path / "step-7").write_text("a file, not a checkpoint")
    (tmp_path / "proxy.json").write_text("{}")
    found = list_checkpoints(tmp_path)
    assert found == [
        (3, tmp_path / "step-3"),
        (20, tmp_path / "step-20"),
        (50, tmp_path / "step-00000050"),
        (100, tmp_path / "step-100"),
    ]
    assert list_checkpoints(str(tmp_path)) == found


def test_list_checkpoints_empty(tmp_path):
    (tmp_path / "resume").mkdir()
    with pytest.raises(S2LError, match="no proxy checkpoints"):
        list_checkpoints(tmp_path)
    with pytest.raises(S2LError, match="no proxy checkpoints"):
        list_checkpoints(tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# the trained proxy
# --------------------------------------------------------------------------------------------


def test_trained_proxy_artifacts(trained_run):
    meta = read_proxy_meta(trained_run)
    n = len(load_tokenised(trained_run))
    total = 2 * math.ceil(n / 8)
    assert meta["total_steps"] == total
    assert meta["checkpoint_steps"] == checkpoint_steps(total, 4)
    assert len(meta["checkpoint_steps"]) == 4
    assert meta["proxy"] == "tiny" and meta["precision"] == "fp32" and meta["seed"] == 0
    assert meta["learning_rate"] == PRESETS["tiny"].learning_rate  # the preset's
    assert meta["batch_size"] == 8
    assert meta["tokenised_fingerprint"] == load_tokenised(trained_run).fingerprint
    assert 5e5 < meta["n_parameters"] < 1e6
    assert np.isfinite(meta["final_train_loss"])
    found = list_checkpoints(trained_run.proxy_dir)
    assert [s for s, _ in found] == meta["checkpoint_steps"]
    assert [p.name for _, p in found] == [f"step-{s:08d}" for s in meta["checkpoint_steps"]]
    assert not (trained_run.proxy_dir / "resume").exists()
    assert meta["save_checkpoints"] is True and meta["recorded_trajectories"] is True
    # the trajectories were recorded while training, at the checkpoint steps
    traj = Trajectories.load(trained_run.trajectories_dir)
    assert traj.steps == meta["checkpoint_steps"]
    assert traj.meta["proxy_fingerprint"] == meta["fingerprint"]
    assert traj.meta["recorded"] == "during training"
    assert traj.losses.shape == (n, 4)
    # weights only: no optimizer or trainer state in a checkpoint
    assert not any(
        "optimizer" in f.name or "trainer_state" in f.name for _, p in found for f in p.iterdir()
    )


def test_checkpoints_load_and_the_proxy_learned(trained_run):
    found = list_checkpoints(trained_run.proxy_dir)
    models = [AutoModelForCausalLM.from_pretrained(str(found[k][1])) for k in (0, -1)]
    assert all(isinstance(m, LlamaForCausalLM) for m in models)
    first, last = (dict(m.named_parameters()) for m in models)
    assert first.keys() == last.keys()
    assert not any(torch.equal(first[k], last[k]) for k in first if "norm" not in k)
    tok = load_tokenizer(trained_run.tokenizer_dir)
    assert models[0].config.vocab_size == len(tok)
    arrays = TokenArrays.from_dataset(load_tokenised(trained_run).dataset)
    first_loss, last_loss = (score_model(m, arrays, pad_id=tok.pad_token_id).mean() for m in models)
    assert last_loss < first_loss - 0.5, (first_loss, last_loss)


# --------------------------------------------------------------------------------------------
# skipping, retraining, determinism
# --------------------------------------------------------------------------------------------


def test_same_settings_are_skipped(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "run")
    before = mtimes(run.proxy_dir)
    started = time.perf_counter()
    found = train_proxy(run, **FIXTURE_SETTINGS, progress=False)
    assert time.perf_counter() - started < 10
    assert [s for s, _ in found] == read_proxy_meta(trained_run)["checkpoint_steps"]
    assert mtimes(run.proxy_dir) == before


def test_changed_settings_retrain_and_training_is_deterministic(tmp_path, trained_run):
    a = copy_run(trained_run, tmp_path / "a")
    b = copy_run(trained_run, tmp_path / "b")
    found_a = train_proxy(a, learning_rate=1e-3, **SHORT)
    # other settings than the fixture's: the old checkpoints are replaced
    assert [s for s, _ in found_a] == [2, 4]
    assert sorted(p.name for p in a.proxy_dir.iterdir()) == [
        "proxy.json",
        "step-00000002",
        "step-00000004",
    ]
    assert read_json(a.proxy_meta)["learning_rate"] == 1e-3
    # same settings again: skipped
    before = mtimes(a.proxy_dir)
    assert train_proxy(a, learning_rate=1e-3, **SHORT) == found_a
    assert mtimes(a.proxy_dir) == before

    # the same training in another copy gives bit-identical weights
    found_b = train_proxy(b, learning_rate=1e-3, **SHORT)
    for (_, pa), (_, pb) in zip(found_a, found_b, strict=True):
        assert same_weights(weights(pa), weights(pb))
    last_lr1 = weights(found_a[-1][1])

    # the checkpoints went missing (proxy.json still current): trained again, same result
    for _, path in found_b:
        shutil.rmtree(path)
    assert train_proxy(b, learning_rate=1e-3, **SHORT) == found_b
    assert same_weights(weights(found_b[-1][1]), last_lr1)

    # force: trained again although up to date, with the same result
    before_b = mtimes(b.proxy_dir)
    assert train_proxy(b, learning_rate=1e-3, force=True, **SHORT) == found_b
    assert mtimes(b.proxy_dir)["proxy.json"] != before_b["proxy.json"]
    assert same_weights(weights(found_b[-1][1]), last_lr1)

    # only the learning rate changes: retrained, with other weights
    found_a2 = train_proxy(a, learning_rate=2e-3, **SHORT)
    assert [s for s, _ in found_a2] == [2, 4]
    assert read_json(a.proxy_meta)["learning_rate"] == 2e-3
    assert all(before[k] != v for k, v in mtimes(a.proxy_dir).items() if k in before)
    assert not same_weights(weights(found_a2[-1][1]), last_lr1)


RECORD = {**SHORT, "record": True}


def test_record_without_checkpoints_and_checkpoints_without_record(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "run")
    shutil.rmtree(run.trajectories_dir)
    found = train_proxy(run, learning_rate=1e-3, save_checkpoints=False, **RECORD)
    assert found == [] and not list(run.proxy_dir.glob("step-*"))
    meta = read_proxy_meta(run)
    assert meta["save_checkpoints"] is False and meta["recorded_trajectories"] is True
    traj = Trajectories.load(run.trajectories_dir)
    assert traj.steps == [2, 4] and traj.meta["proxy_fingerprint"] == meta["fingerprint"]
    assert np.isfinite(traj.losses).all()
    # up to date: skipped; and scoring has nothing to do
    before = mtimes(run.root)
    assert train_proxy(run, learning_rate=1e-3, save_checkpoints=False, **RECORD) == []
    assert score_trajectories(run, precision="fp32", progress=False).steps == [2, 4]
    assert mtimes(run.root) == before
    # but cannot re-score without checkpoints
    with pytest.raises(S2LError, match="without saving checkpoints"):
        score_trajectories(run, precision="fp32", force=True, progress=False)

    # checkpoints only: nothing recorded, scoring does it from the checkpoints
    other = copy_run(trained_run, tmp_path / "other")
    shutil.rmtree(other.trajectories_dir)
    found = train_proxy(other, learning_rate=1e-3, **SHORT)
    assert [s for s, _ in found] == [2, 4]
    assert not other.trajectories_dir.exists()
    assert read_proxy_meta(other)["recorded_trajectories"] is False
    scored = score_trajectories(other, precision="fp32", progress=False)
    assert np.array_equal(np.asarray(scored.losses), np.asarray(traj.losses))


def test_checkpoint_every(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "run")
    settings = {**SHORT, "n_checkpoints": None}
    found = train_proxy(run, learning_rate=1e-3, checkpoint_every=3, **settings)
    assert [s for s, _ in found] == [3]
    assert read_proxy_meta(run)["checkpoint_steps"] == [3]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (dict(learning_rate=0), "learning_rate must be positive, not 0"),
        (dict(learning_rate=-1e-3), "learning_rate must be positive"),
        (dict(batch_size=0), r"batch_size must be a positive integer \(>= 1\), not 0"),
        (dict(grad_accum=0), "grad_accum must be a positive integer"),
        (dict(epochs=0), "epochs must be positive"),
        (dict(warmup_ratio=1.0), "warmup_ratio"),
    ],
)
def test_invalid_settings_are_refused_not_replaced_by_defaults(option, message, tmp_path):
    # refused before the run is read: an empty directory shows that nothing else was reached
    # (0 used to fall back to the default through `or`, training with lr 1e-3 and batch 16)
    with pytest.raises(S2LError, match=message):
        train_proxy(RunDir(tmp_path / "empty"), progress=False, **option)


def test_none_means_the_default_learning_rate_and_batch_size(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "run")
    train_proxy(run, **{**SHORT, "learning_rate": None, "batch_size": None, "epochs": 0.5})
    meta = read_proxy_meta(run)
    assert meta["learning_rate"] == PRESETS["tiny"].learning_rate
    assert meta["batch_size"] == PRESETS["tiny"].batch_size


def test_train_proxy_needs_a_prepared_run(tmp_path):
    with pytest.raises(S2LError, match="no tokenised pool"):
        train_proxy(RunDir(tmp_path / "empty"), progress=False)
    with pytest.raises(S2LError, match="proxy is not trained"):
        read_proxy_meta(RunDir(tmp_path / "empty"))


# --------------------------------------------------------------------------------------------
# a Hugging Face model as proxy
# --------------------------------------------------------------------------------------------


def test_hf_model_proxy(tmp_path, pool_file, trained_run):
    tok = load_tokenizer(trained_run.tokenizer_dir)
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=2,
        n_positions=256,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model_dir = tmp_path / "gpt2-proxy"
    GPT2LMHeadModel(config).save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    initial = weights(model_dir)

    run = RunDir(tmp_path / "run")
    prepared = prepare(pool_file, run, proxy=str(model_dir), max_length=128, progress=False)
    assert len(prepared.tokenised) == len(load_tokenised(trained_run))
    assert read_json(run.tokenised_meta)["proxy"] == str(model_dir)
    found = train_proxy(
        run,
        epochs=1,
        batch_size=8,
        n_checkpoints=2,
        precision="fp32",
        learning_rate=1e-3,
        progress=False,
    )
    total = math.ceil(len(prepared.tokenised) / 8)
    assert [s for s, _ in found] == checkpoint_steps(total, 2)
    meta = read_proxy_meta(run)
    assert meta["proxy"] == str(model_dir) and meta["learning_rate"] == 1e-3
    for _, path in found:
        loaded = AutoModelForCausalLM.from_pretrained(str(path))
        assert isinstance(loaded, GPT2LMHeadModel)
        assert loaded.config.vocab_size == len(tok)  # never resized
    trained = weights(found[-1][1])
    assert trained.keys() == initial.keys()
    assert not same_weights(trained, initial)
    assert not torch.equal(trained["transformer.wte.weight"], initial["transformer.wte.weight"])
