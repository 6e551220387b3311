"""The shared training recipe: resuming skips a checkpoint cut short by a kill."""

from __future__ import annotations

from smalltolarge.training import last_complete_checkpoint


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
