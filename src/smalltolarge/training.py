"""The one training recipe of the proxy and the target: :func:`fit`.

Both are trained with the Hugging Face ``Trainer`` (AdamW, cosine schedule with warm-up,
gradient accumulation, bf16/fp16, length-grouped batches, several processes through
``accelerate launch``), with a resumable state saved every few steps. :func:`fit` does what the
two stages share, top to bottom: set up, resume, train, save; each stage keeps only what
differs (its model, its data, its outputs and its metadata).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from smalltolarge.errors import S2LError
from smalltolarge.estimate import BatchPlan, available_memory, plan_batch, training_memory
from smalltolarge.formatting import collate
from smalltolarge.losses import chunked_lm_loss, supports_chunked_loss
from smalltolarge.progress import bar, library_bars, messages
from smalltolarge.runs import atomic_write_json, distributed_state, read_json, step_dirs


@dataclass(frozen=True)
class Recipe:
    """The settings that decide what is trained: AdamW with a cosine schedule and warm-up.

    The effective batch is ``batch_size * grad_accum * processes``; ``precision`` is a
    resolved name (``fp32``, ``bf16`` or ``fp16``); ``seed`` seeds the data order and dropout.
    Values are checked by the stage's settings (:mod:`smalltolarge.settings`) at its public entry.
    """

    epochs: float
    learning_rate: float
    batch_size: int
    grad_accum: int
    warmup_ratio: float
    precision: str
    seed: int

    @classmethod
    def of(cls, settings: Any, **resolved: Any) -> Recipe:
        """The recipe of a stage's checked settings (:class:`~smalltolarge.settings.
        ProxySettings` or :class:`~smalltolarge.settings.FinetuneSettings`), with the values the
        stage resolved itself in ``resolved`` (e.g. a preset's learning rate for None)."""
        from smalltolarge.models import resolve_precision

        names = ("epochs", "learning_rate", "batch_size", "grad_accum", "warmup_ratio", "seed")
        values = {name: getattr(settings, name) for name in names}
        values["precision"] = resolve_precision(settings.precision)
        return cls(**{**values, **resolved})

    def total_steps(self, n_examples: int, processes: int) -> int:
        """Optimiser steps to train ``n_examples`` for ``epochs`` on ``processes`` processes."""
        per_step = self.batch_size * self.grad_accum * processes
        return math.ceil(math.ceil(n_examples / per_step) * self.epochs)

    def settings(self) -> dict[str, Any]:
        """The recipe as a JSON-ready dict (for fingerprints and metadata)."""
        return asdict(self)


def fit(
    model: torch.nn.Module,
    dataset: Any,
    recipe: Recipe,
    *,
    resume_dir: Path,
    meta_path: Path,
    fingerprint: str,
    save: Callable[[Trainer], dict[str, Any]],
    total_steps: int,
    save_steps: int,
    pad_id: int,
    stale: Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    name: str = "training",
    description: str = "training",
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` on the tokenised ``dataset`` with ``recipe``, resumably; return the
    metadata written to ``meta_path``.

    1. Set up: trainer state in ``resume_dir`` left by another training (its
       ``fingerprint.json`` names another ``fingerprint``) is removed, with all of ``stale``
       (default: ``resume_dir``) -- outputs of that other training.
    2. Resume from the last checkpoint in ``resume_dir`` that was written to the end.
    3. Train ``total_steps`` steps, saving resumable state every ``save_steps``; batches are
       right-padded with ``pad_id``. Where the estimated peak memory of the recipe's batch
       (:func:`~smalltolarge.estimate.plan_batch`) would not fit the device, the per-device
       batch is divided and the gradient accumulation multiplied by the same factor (the
       effective batch, the data of each step and the fingerprint stay), said in one line;
       where even one example would not fit, :class:`S2LError` with the numbers.
    4. Save: ``save(trainer)`` (called on every process, which may have to take part in
       gathering sharded weights) writes the stage's outputs and returns its metadata; the
       main process writes it to ``meta_path`` with ``fingerprint`` and how training went
       (steps, resumed-from step, losses as ``[step, loss]`` pairs, seconds), then removes
       ``resume_dir``.

    Under ``accelerate launch`` every process calls this. ``name`` prefixes the messages
    (printed only when ``progress``), ``description`` labels the progress bar.
    """
    state = distributed_state()
    say = messages(progress and state.is_main_process)

    # set up
    if state.is_main_process:
        marker = resume_dir / "fingerprint.json"
        if not (marker.is_file() and read_json(marker).get("fingerprint") == fingerprint):
            shutil.rmtree(stale or resume_dir, ignore_errors=True)
        atomic_write_json(marker, {"fingerprint": fingerprint})
    state.wait_for_everyone()
    plan = batch_plan(model, dataset, recipe)
    if plan.split:
        say(f"{name}: {plan.message()}")
    run_recipe = replace(recipe, batch_size=plan.batch_size, grad_accum=plan.grad_accum)
    trainer = SeededOrderTrainer(
        model=model,
        args=training_arguments(
            resume_dir,
            run_recipe,
            total_steps=total_steps,
            save_steps=save_steps,
            progress=progress,
        ),
        train_dataset=dataset,
        data_collator=lambda examples: collate(examples, pad_id),
        callbacks=list(callbacks),
    )
    if progress:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LossProgressCallback(description))
    else:
        trainer.remove_callback(PrinterCallback)

    # resume
    last = last_complete_checkpoint(resume_dir, is_main_process=state.is_main_process)
    resumed_from = int(Path(last).name.rsplit("-", 1)[-1]) if last else None
    if last:
        say(f"{name}: resuming from step {resumed_from} ({last})")

    # train
    started = time.perf_counter()
    # the libraries' own bars (one per checkpoint written) would break into the training bar
    with library_bars(False):
        trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - started

    # save
    if state.is_main_process:
        # An old metadata file next to half-replaced outputs would vouch for the wrong ones.
        meta_path.unlink(missing_ok=True)
    with library_bars(progress):
        stage_meta = save(trainer)
    losses = [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h]
    meta = {
        "fingerprint": fingerprint,
        **stage_meta,
        "total_steps": total_steps,
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed_from,
        "processes": state.num_processes,
        "pad_token_id": pad_id,
        "memory": plan.record(),
        "train_loss_first": losses[0][1] if losses else None,
        "train_loss_last": losses[-1][1] if losses else None,
        "train_loss_history": losses,
        "seconds": round(seconds, 2),
    }
    if state.is_main_process:
        atomic_write_json(meta_path, meta)
        shutil.rmtree(resume_dir, ignore_errors=True)
    state.wait_for_everyone()
    return meta


def batch_plan(model: torch.nn.Module, dataset: Any, recipe: Recipe) -> BatchPlan:
    """The per-device batch and accumulation that ``recipe`` trains ``model`` with on this
    process's device (:func:`~smalltolarge.estimate.plan_batch`, for the dataset's longest
    example; on a CPU the processes of the machine share its free memory); under
    ``accelerate launch`` every process takes the smallest batch any of them needs, so that
    all accumulate alike."""
    state = distributed_state()
    sizes = dict(longest=int(max(dataset["length"])), precision=recipe.precision)
    available = available_memory(state.device)
    if available is not None and state.device.type == "cpu":
        # the processes of this machine share its memory
        available //= int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
    plan = plan_batch(
        model,
        batch_size=recipe.batch_size,
        grad_accum=recipe.grad_accum,
        device=state.device,
        available=available,
        **sizes,
    )
    if state.num_processes > 1 and torch.distributed.is_initialized():
        smallest = torch.tensor([plan.batch_size], device=state.device)
        torch.distributed.all_reduce(smallest, op=torch.distributed.ReduceOp.MIN)
        batch = int(smallest.item())  # a divisor of the recipe's batch, as every plan's is
        if batch != plan.batch_size:
            plan = replace(
                plan,
                batch_size=batch,
                grad_accum=recipe.grad_accum * (recipe.batch_size // batch),
                chosen=training_memory(model, batch_size=batch, device=state.device, **sizes),
            )
    return plan


def last_logged_loss(trainer: Trainer) -> float | None:
    """The last training loss the trainer logged, or None."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses[-1] if losses else None


def checkpoint_steps(
    total_steps: int, n_checkpoints: int | None = None, every: int | None = None
) -> list[int]:
    """The steps at which to record the proxy (and keep its weights, if asked).

    ``n_checkpoints`` evenly spaced points ending at the last step, or every ``every`` steps
    (the reference code: every 500). Exactly one of the two must be given.
    """
    if (n_checkpoints is None) == (every is None):
        raise S2LError("give either a number of checkpoints or a checkpoint interval, not both")
    if total_steps < 1:
        raise S2LError("training has no steps: the pool is empty or the batch too large")
    if every is not None:
        if every < 1:
            raise S2LError(f"checkpoint interval must be positive, not {every}")
        steps = list(range(every, total_steps + 1, every))
        if not steps:
            raise S2LError(f"checkpoint interval {every} exceeds the {total_steps} training steps")
        return steps
    assert n_checkpoints is not None
    if n_checkpoints < 1:
        raise S2LError(f"number of checkpoints must be positive, not {n_checkpoints}")
    if n_checkpoints > total_steps:
        raise S2LError(
            f"{n_checkpoints} checkpoints asked for, but training has only {total_steps} steps; "
            "ask for fewer checkpoints, more epochs or a smaller batch"
        )
    return sorted({round(total_steps * k / n_checkpoints) for k in range(1, n_checkpoints + 1)})


def training_arguments(
    resume_dir: Path, recipe: Recipe, *, total_steps: int, save_steps: int, progress: bool
) -> TrainingArguments:
    """S2L's training recipe, with the resumable state in ``resume_dir`` saved every
    ``save_steps`` steps (only the latest kept)."""
    return TrainingArguments(
        output_dir=str(resume_dir),
        num_train_epochs=recipe.epochs,
        max_steps=total_steps,
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type="cosine",
        # a float below 1 is read as a fraction of the total steps
        warmup_steps=recipe.warmup_ratio,
        weight_decay=0.0,
        optim="adamw_torch",
        bf16=recipe.precision == "bf16",
        fp16=recipe.precision == "fp16",
        logging_steps=max(1, total_steps // 50),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=1,
        seed=recipe.seed,
        data_seed=recipe.seed,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,
        # peft's forward takes **kwargs, from which Trainer cannot tell the label column
        label_names=["labels"],
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )


def last_complete_checkpoint(resume_dir: str | Path, *, is_main_process: bool = True) -> str | None:
    """The newest trainer checkpoint in ``resume_dir`` that was written to the end, or None.

    ``Trainer`` writes ``trainer_state.json`` after the weights, optimizer, scheduler and RNG
    states, so a checkpoint without it was cut short (a run killed while saving); resuming
    from it would fail, so it is removed (by the main process) and the one before is used.
    """
    for _, path in reversed(step_dirs(resume_dir, "checkpoint-")):
        if (path / "trainer_state.json").is_file():
            return str(path)
        if is_main_process:
            shutil.rmtree(path, ignore_errors=True)
    return None


class SeededOrderTrainer(Trainer):
    """``Trainer`` whose length-grouped batch order is a function of the seed and the epoch,
    and whose loss needs no full-vocabulary logits.

    The stock length-grouped sampler draws each epoch's order from the global RNG, which a
    resumed run reaches in another state than an uninterrupted one, so a run resumed after
    its first epoch would train on other batches. With the order seeded per epoch, a resumed
    run trains on exactly the batches of an uninterrupted one.

    The loss is the model's own (``model(**batch).loss``, normalised over the accumulated
    batch as ``Trainer`` does it), computed by :func:`~smalltolarge.losses.chunked_lm_loss`:
    the output projection and cross-entropy of the labelled positions only, in chunks. The
    (batch x length x vocabulary) logits of the plain forward pass were most of the memory
    of training (8.5 GB in fp32 for a batch of 128 x 339 tokens of a 49,152-token vocabulary,
    several times that with their copies in the loss and its gradient). Models it does not
    apply to (:func:`~smalltolarge.losses.supports_chunked_loss`), sharded training (FSDP,
    DeepSpeed: the output projection's weight is not whole outside the forward pass) and
    ``chunked_loss = False`` get the stock loss.
    """

    chunked_loss: bool = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lm = self._chunked_loss_model(return_outputs)
        if lm is not None and "labels" in inputs:
            # Trainer.compute_loss calls the model and applies its own scaling (accumulation
            # across processes) to what comes back: it gets the chunked loss in its place.
            model = _ChunkedLoss(model, lm, self.accelerator.autocast)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _chunked_loss_model(self, return_outputs: bool):
        """The causal LM whose loss is computed chunked, or None for the stock loss."""
        if not self.chunked_loss or return_outputs:
            return None
        if self.label_smoother is not None or self.compute_loss_func is not None:
            return None
        if getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False):
            return None
        lm = self.accelerator.unwrap_model(self.model)
        if hasattr(lm, "get_base_model"):  # peft: the model with the adapters in place
            lm = lm.get_base_model()
        return lm if supports_chunked_loss(lm) else None

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


class _ChunkedLoss:
    """Stands in for the model in ``Trainer.compute_loss``: returns ``{"loss": ...}`` computed
    by :func:`~smalltolarge.losses.chunked_lm_loss` through the (possibly wrapped) model, or
    the model's own output where that gives None."""

    def __init__(self, model, lm, autocast):
        self.model, self.lm, self.autocast = model, lm, autocast

    def __call__(self, num_items_in_batch=None, **inputs):
        with self.autocast():
            loss = chunked_lm_loss(
                self.lm, inputs, num_items_in_batch=num_items_in_batch, forward=self.model
            )
        if loss is None:
            extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
            return self.model(**inputs, **extra)
        return {"loss": loss}


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
