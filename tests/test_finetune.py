"""Tests for smalltolarge.finetune: full and LoRA fine-tuning of a tiny real target, selection
directories as training data, skipping, retraining and resuming an interrupted run.

The target is a two-layer Llama built from a config with a BPE tokenizer trained on the
training texts, saved like any HF model directory. One full fine-tuning run is shared by the
module (``reference``); tests that train again keep their runs short.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM, TrainerCallback

from smalltolarge.data import load_pool
from smalltolarge.demo_data import DEMO_POOL
from smalltolarge.errors import S2LError
from smalltolarge.finetune import FinetuneResult, finetune, resolve_train_data
from smalltolarge.formatting import TokenArrays, format_prompt, length_batches, tokenise_pool
from smalltolarge.losses import score_model
from smalltolarge.models import load_tokenizer, train_bpe_tokenizer
from smalltolarge.runs import read_json

from .conftest import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

N_TRAIN = 64
MAX_LENGTH = 128
# 64 examples (a few excluded as too long), batches of 8: 8 steps per epoch, 16 in all
SETTINGS = dict(
    max_length=MAX_LENGTH,
    epochs=2,
    learning_rate=3e-3,
    batch_size=8,
    precision="fp32",
    save_steps=2,  # a resumable checkpoint every 2 steps (the default is at least 50 apart)
    seed=0,
    progress=False,
)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def mean_response_loss(model_dir: Path, train_file: Path, tokenizer_dir: Path) -> float:
    """Mean response loss (fp32) of the training examples under the model in ``model_dir``."""
    tokenised = tokenise_pool(
        load_pool(train_file), load_tokenizer(tokenizer_dir), max_length=MAX_LENGTH
    )
    arrays = TokenArrays.from_dataset(tokenised.dataset)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    losses = score_model(model, arrays, length_batches(arrays.lengths, 4096), precision="fp32")
    return float(losses.mean())


class StopAfter(TrainerCallback):
    """Interrupts training after ``step`` optimiser steps, as Ctrl-C would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt
        return control


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    """The first ``N_TRAIN`` bundled demo examples, JSONL in the Alpaca schema."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    with open(DEMO_POOL, encoding="utf-8") as f:
        path.write_text("".join(next(f) for _ in range(N_TRAIN)), encoding="utf-8")
    return path


def _save_tiny_target(directory: Path, train_file: Path, *, pad_token: bool = True) -> Path:
    records = [json.loads(line) for line in train_file.read_text().splitlines()]
    texts = [format_prompt(r["instruction"]) + r["output"] for r in records]
    tokenizer = train_bpe_tokenizer(texts, 1024)
    if not pad_token:
        tokenizer.pad_token = None
    tiny_llama(tokenizer).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def target(tmp_path_factory, train_file) -> Path:
    """A tiny untrained Llama and its tokenizer, saved as a HF model directory."""
    return _save_tiny_target(tmp_path_factory.mktemp("target"), train_file)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, target, train_file) -> tuple[Path, FinetuneResult]:
    """One uninterrupted full fine-tuning run with :data:`SETTINGS`."""
    out = tmp_path_factory.mktemp("finetuned") / "reference"
    return out, finetune(target, train_file, out, **SETTINGS)


# --------------------------------------------------------------------------------------------
# full fine-tuning
# --------------------------------------------------------------------------------------------


def test_finetune_reduces_the_training_loss(reference, target, train_file):
    out, result = reference
    meta = read_json(out / "finetune.json")
    assert result.model_dir == out / "model" and not result.skipped
    assert sorted(p.name for p in out.iterdir()) == ["finetune.json", "model"]  # resume/ removed
    assert meta["n_train"] + meta["n_excluded"] == N_TRAIN and meta["n_excluded"] > 0
    assert len(meta["excluded_ids"]) == min(meta["n_excluded"], 10)
    assert meta["n_trainable_parameters"] == meta["n_parameters"]
    assert meta["total_steps"] == meta["global_step"] == 16
    assert meta["resumed_from_step"] is None

    before = mean_response_loss(target, train_file, target)
    after = mean_response_loss(result.model_dir, train_file, result.model_dir)
    assert after < before - 0.5, (before, after)
    assert result.train_loss_last < result.train_loss_first
    # the saved directory is complete on its own: the tokenizer went with the weights
    assert load_tokenizer(result.model_dir).get_vocab() == load_tokenizer(target).get_vocab()


def test_rerun_with_same_settings_is_skipped(reference, target, train_file, capsys):
    out, first = reference
    before = (out / "model" / "model.safetensors").stat().st_mtime_ns
    again = finetune(target, train_file, out, **{**SETTINGS, "progress": True})
    assert again.skipped and "up to date" in capsys.readouterr().out
    assert (again.n_train, again.train_loss_last) == (first.n_train, first.train_loss_last)
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_changed_learning_rate_retrains_and_discards_stale_resume_state(
    reference, target, train_file, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    # an interrupted run with yet other settings leaves trainer state that must not be used
    with pytest.raises(KeyboardInterrupt):
        finetune(
            target, train_file, out, **{**SETTINGS, "learning_rate": 1e-3}, callbacks=[StopAfter(3)]
        )
    assert (out / "resume" / "checkpoint-2").is_dir()

    result = finetune(target, train_file, out, **{**SETTINGS, "learning_rate": 2e-3})
    meta = read_json(out / "finetune.json")
    assert not result.skipped and meta["learning_rate"] == 2e-3
    assert meta["resumed_from_step"] is None and not (out / "resume").exists()
    new, old = weights(out / "model"), weights(reference[0] / "model")
    assert any(not torch.equal(new[k], old[k]) for k in old)


def test_interrupted_run_resumes_to_the_same_weights(reference, target, train_file, tmp_path):
    out = tmp_path / "out"
    # step 11 is in the second epoch, and checkpoints come every 2 steps: resume from 10
    with pytest.raises(KeyboardInterrupt):
        finetune(target, train_file, out, **SETTINGS, callbacks=[StopAfter(11)])
    assert not (out / "finetune.json").exists() and not (out / "model").exists()
    assert sorted(p.name for p in (out / "resume").iterdir()) == [
        "checkpoint-10",
        "fingerprint.json",
    ]

    result = finetune(target, train_file, out, **SETTINGS)
    meta, ref_meta = read_json(out / "finetune.json"), read_json(reference[0] / "finetune.json")
    assert meta["resumed_from_step"] == 10 and meta["global_step"] == meta["total_steps"] == 16
    assert [s for s, _ in meta["train_loss_history"]] == list(range(1, 17))
    assert result.train_loss_first == ref_meta["train_loss_first"]
    # CPU fp32 training is deterministic, the checkpoint holds the exact weights, optimiser
    # and schedule, and the batch order is seeded per epoch: the same weights, bit for bit
    assert meta["train_loss_history"] == ref_meta["train_loss_history"]
    resumed, uninterrupted = weights(out / "model"), weights(reference[0] / "model")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


# --------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------


# peft asks the model a question that transformers has renamed; not ours to fix
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_lora_trains_adapters_and_saves_a_merged_plain_model(tmp_path, train_file):
    # a tokenizer without a pad token: batches are padded with eos, no token is added
    base_dir = _save_tiny_target(tmp_path / "target", train_file, pad_token=False)
    out = tmp_path / "lora"
    result = finetune(
        base_dir,
        train_file,
        out,
        **{**SETTINGS, "epochs": 1, "learning_rate": 1e-2},
        lora=True,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
    )
    meta = read_json(out / "finetune.json")
    assert meta["lora_target_modules"] == ["q_proj", "v_proj"]  # peft's choice for Llama
    assert meta["n_trainable_parameters"] < 0.05 * meta["n_parameters"]
    assert meta["pad_token_id"] == load_tokenizer(base_dir).eos_token_id
    before = mean_response_loss(base_dir, train_file, base_dir)
    after = mean_response_loss(result.model_dir, train_file, result.model_dir)
    assert after < before - 0.1, (before, after)

    assert not (result.model_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(result.model_dir), dtype=torch.float32)
    assert type(merged) is LlamaForCausalLM
    base, tuned = weights(base_dir), merged.state_dict()
    assert len(load_tokenizer(result.model_dir)) == len(load_tokenizer(base_dir))
    q, k = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    assert not torch.equal(tuned[q], base[q])  # adapted and merged
    assert torch.equal(tuned[k], base[k])  # not a LoRA target: untouched


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (dict(batch_size=0), "batch_size"),
        (dict(epochs=0), "epochs"),
        (dict(warmup_ratio=1.5), "warmup_ratio"),
        (dict(lora_r=0), "lora_r"),
        (dict(lora_alpha=0), "lora_alpha"),
        (dict(lora_dropout=1.0), "lora_dropout"),
        (dict(lora_target_modules=[]), "lora_target_modules"),
        (dict(lora_target_modules="q_proj"), "lora_target_modules"),
    ],
)
def test_invalid_settings_are_refused(option, message, tmp_path, train_file):
    # checked before anything is loaded, so the model need not exist
    with pytest.raises(S2LError, match=message):
        finetune(tmp_path / "absent", train_file, tmp_path / "out", lora=True, **option)


def test_lora_target_modules_not_in_the_model_are_refused(target, train_file, tmp_path):
    with pytest.raises(S2LError, match="LoRA"):
        finetune(
            target,
            train_file,
            tmp_path / "out",
            **SETTINGS,
            lora=True,
            lora_target_modules=["no_such_layer"],
        )


# --------------------------------------------------------------------------------------------
# training data
# --------------------------------------------------------------------------------------------


def _make_selection(run: Path, train_file: Path, n: int) -> Path:
    """A selection written by hand: a subset with the user's own column names (q/a), the run's
    pool.json recording them, and summary.json naming the subset file."""
    selection = run / "selections" / "pick"
    selection.mkdir(parents=True)
    lines = train_file.read_text().splitlines()[:n]
    renamed = [
        {"key": r["id"], "q": r["instruction"], "a": r["output"]} for r in map(json.loads, lines)
    ]
    (selection / "subset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in renamed))
    schema = dict(kind="explicit", prompt="q", input=None, response="a", source=None, id="key")
    (run / "pool.json").write_text(json.dumps({"schema": schema}))
    (selection / "ids.txt").write_text("".join(f"{r['key']}\n" for r in renamed))
    (selection / "summary.json").write_text(json.dumps({"subset_file": "subset.jsonl"}))
    return selection


def test_resolve_train_data(tmp_path, train_file):
    selection = _make_selection(tmp_path / "run", train_file, 4)
    path, options = resolve_train_data(selection)
    assert path == str(selection / "subset.jsonl")
    assert options == dict(prompt_column="q", response_column="a", id_column="key")
    assert resolve_train_data(train_file) == (str(train_file), {})
    assert resolve_train_data("some/dataset") == ("some/dataset", {})

    (selection / "summary.json").unlink()
    with pytest.raises(S2LError, match="unfinished selection"):
        resolve_train_data(selection)


def test_selection_directory_as_training_data(target, train_file, tmp_path):
    selection = _make_selection(tmp_path / "run", train_file, 16)
    out = tmp_path / "out"
    result = finetune(target, selection, out, **{**SETTINGS, "epochs": 1})
    meta = read_json(out / "finetune.json")
    assert meta["train_data"] == str(selection / "subset.jsonl")
    assert result.n_train + result.n_excluded == 16
    assert set(meta["excluded_ids"]) <= {json.loads(x)["id"] for x in train_file.open()}
    assert meta["total_steps"] == int(np.ceil(result.n_train / 8))


def test_empty_training_set_is_an_error(target, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(S2LError, match="no examples"):
        finetune(target, empty, tmp_path / "out", **SETTINGS)
    assert not (tmp_path / "out").exists()


def test_unknown_option_is_a_type_error(target, train_file, tmp_path):
    with pytest.raises(TypeError, match="prompt_colum"):
        finetune(target, train_file, tmp_path / "out", prompt_colum="q")


def test_unloadable_model_is_an_error(train_file, tmp_path):
    with pytest.raises(S2LError, match="could not load"):
        finetune(tmp_path / "no-such-model", train_file, tmp_path / "out", **SETTINGS)
