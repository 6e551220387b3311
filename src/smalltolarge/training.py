"""The training recipe shared by the proxy and the target: arguments, batch order, progress.

Both are trained with the Hugging Face ``Trainer`` (AdamW, cosine schedule with warm-up,
gradient accumulation, bf16/fp16, length-grouped batches, several processes through
``accelerate launch``), with a resumable state saved every few steps; this module holds what
the two stages share so that they cannot drift apart.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from smalltolarge.errors import S2LError
from smalltolarge.progress import bar

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def check_training_settings(
    *,
    epochs: float,
    learning_rate: float | None,
    batch_size: int | None,
    grad_accum: int,
    warmup_ratio: float,
    save_steps: int | None = None,
) -> None:
    """Refuse settings that would fail deep inside the Trainer, or train nothing (proxy and
    target alike; None for ``learning_rate`` or ``batch_size`` means the stage's default)."""
    for name, value in (("batch_size", batch_size), ("grad_accum", grad_accum)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise S2LError(f"{name} must be a positive integer, not {value!r}")
    if not epochs > 0:
        raise S2LError(f"epochs must be positive, not {epochs!r}")
    if learning_rate is not None and not learning_rate > 0:
        raise S2LError(f"learning_rate must be positive, not {learning_rate!r}")
    if not 0 <= warmup_ratio < 1:
        raise S2LError(f"warmup_ratio must be in [0, 1), not {warmup_ratio!r}")
    if save_steps is not None and (not isinstance(save_steps, int) or save_steps < 1):
        raise S2LError(f"save_steps must be a positive integer, not {save_steps!r}")


def training_arguments(
    resume_dir: Path,
    *,
    total_steps: int,
    save_steps: int,
    progress: bool,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    grad_accum: int,
    warmup_ratio: float,
    precision: str,
    seed: int,
) -> TrainingArguments:
    """S2L's training recipe, with the resumable state in ``resume_dir`` saved every
    ``save_steps`` steps (only the latest kept)."""
    return TrainingArguments(
        output_dir=str(resume_dir),
        num_train_epochs=epochs,
        max_steps=total_steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        # a float below 1 is read as a fraction of the total steps
        warmup_steps=warmup_ratio,
        weight_decay=0.0,
        optim="adamw_torch",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        logging_steps=max(1, total_steps // 50),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=1,
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,
        # peft's forward takes **kwargs, from which Trainer cannot tell the label column
        label_names=["labels"],
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )


class SeededOrderTrainer(Trainer):
    """``Trainer`` whose length-grouped batch order is a function of the seed and the epoch.

    The stock length-grouped sampler draws each epoch's order from the global RNG, which a
    resumed run reaches in another state than an uninterrupted one, so a run resumed after
    its first epoch would train on other batches. With the order seeded per epoch, a resumed
    run trains on exactly the batches of an uninterrupted one.
    """

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return EpochSeededLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=list(dataset[self.args.length_column_name]),
            seed=seed,
        )


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from a generator seeded with ``(seed, epoch)``.

    accelerate's data loaders call ``set_epoch`` before every epoch, also after a resume.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        entropy = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]
        self.generator = torch.Generator().manual_seed(int(entropy))
        return super().__iter__()


class LossProgressCallback(ProgressCallback):
    """Trainer's progress bar (steps, ETA), with the latest loss shown on the bar itself
    instead of a printed dictionary per logging step."""

    def __init__(self, description: str = "training"):
        super().__init__()
        self.description = description

    def on_train_begin(self, args, state, control, **kwargs):
        # Trainer's own bar draws into a log file too; this one only on a terminal.
        if state.is_world_process_zero:
            self.training_bar = bar(
                progress=True, total=state.max_steps, dynamic_ncols=True, desc=self.description
            )
        self.current_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = {k: f"{logs[k]:.4g}" for k in ("loss", "learning_rate") if k in logs}
            if shown:
                self.training_bar.set_postfix(shown, refresh=False)


def last_logged_loss(trainer: Trainer) -> float | None:
    """The last training loss the trainer logged, or None."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses[-1] if losses else None


def last_complete_checkpoint(resume_dir: str | Path, *, is_main_process: bool = True) -> str | None:
    """The newest trainer checkpoint in ``resume_dir`` that was written to the end, or None.

    ``Trainer`` writes ``trainer_state.json`` after the weights, optimizer, scheduler and RNG
    states, so a checkpoint without it was cut short (a run killed while saving); resuming
    from it would fail, so it is removed (by the main process) and the one before is used.
    """
    resume_dir = Path(resume_dir)
    if not resume_dir.is_dir():
        return None
    found = []
    for child in resume_dir.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    for _, path in sorted(found, reverse=True):
        if (path / "trainer_state.json").is_file():
            return str(path)
        if is_main_process:
            shutil.rmtree(path, ignore_errors=True)
    return None
