"""The shared training recipe: resuming skips a checkpoint cut short by a kill; step counts."""

from __future__ import annotations

import math

from smalltolarge.training import Recipe, last_complete_checkpoint


def test_a_half_written_checkpoint_is_removed_and_the_previous_one_used(tmp_path):
    for step in (2, 4, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (2, 4):  # trainer_state.json is the last file Trainer writes
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "not-a-checkpoint").mkdir()

    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert not (tmp_path / "checkpoint-10").exists()
    assert (tmp_path / "not-a-checkpoint").exists()


def test_no_checkpoint(tmp_path):
    assert last_complete_checkpoint(tmp_path / "missing") is None
    (tmp_path / "checkpoint-3").mkdir()
    assert last_complete_checkpoint(tmp_path, is_main_process=False) is None
    assert (tmp_path / "checkpoint-3").exists()  # only the main process removes


def test_total_steps_count_every_process_and_accumulation():
    recipe = Recipe(
        epochs=2.5,
        learning_rate=1e-3,
        batch_size=8,
        grad_accum=2,
        warmup_ratio=0.0,
        precision="fp32",
        seed=0,
    )
    # 100 examples, 16 per step on one process: 7 steps per epoch (the last one short)
    assert recipe.total_steps(100, processes=1) == math.ceil(7 * 2.5)
    assert recipe.total_steps(100, processes=2) == math.ceil(4 * 2.5)
    assert set(recipe.settings()) == {
        "epochs",
        "learning_rate",
        "batch_size",
        "grad_accum",
        "warmup_ratio",
        "precision",
        "seed",
    }
