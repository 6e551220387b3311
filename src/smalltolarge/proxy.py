"""Train the small proxy on the whole pool and keep its weights at T points of training.

The proxy is trained with the Hugging Face ``Trainer`` (AdamW, cosine schedule with warm-up,
gradient accumulation, bf16, and multi-GPU through ``accelerate launch`` for free), on the same
response-only loss that S2L scores. :class:`CheckpointCallback` saves the weights, and nothing
else, at the chosen steps as ``proxy/step-00000500/``; checkpoints are always listed in step
order (the public reference code read them in file-system order). While training runs, a
resumable trainer state is kept in ``proxy/resume/`` so that an interrupted run continues
instead of starting over; it is deleted when training finishes.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from smalltolarge.errors import S2LError
from smalltolarge.formatting import collate, load_tokenised
from smalltolarge.models import (
    PRESETS,
    REFERENCE_BATCH_SIZE,
    REFERENCE_LEARNING_RATE,
    build_preset_model,
    count_parameters,
    is_preset,
    load_causal_lm,
    load_tokenizer,
    resolve_precision,
)
from smalltolarge.presets import apply_preset
from smalltolarge.progress import quiet_libraries_unless_progress
from smalltolarge.runs import (
    RunDir,
    atomic_dir,
    atomic_write_json,
    distributed_state,
    fingerprint,
    list_checkpoints,
    read_json,
    read_proxy_meta,
    stage_is_current,
)
from smalltolarge.scoring import (
    DEFAULT_MAX_TOKENS,
    TrajectoryCallback,
    checkpoint_steps,
    trajectory_fingerprint,
)
from smalltolarge.training import (
    LossProgressCallback,
    SeededOrderTrainer,
    check_training_settings,
    last_complete_checkpoint,
    last_logged_loss,
    training_arguments,
)

# Re-exported: where users of the proxy stage look for them.
__all__ = [
    "CheckpointCallback",
    "check_proxy_settings",
    "checkpoint_steps",
    "list_checkpoints",
    "read_proxy_meta",
    "train_proxy",
]


@quiet_libraries_unless_progress
def train_proxy(
    run_dir: str | Path | RunDir,
    *,
    epochs: float = 3.0,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    grad_accum: int = 1,
    warmup_ratio: float = 0.03,
    n_checkpoints: int | None = 12,
    checkpoint_every: int | None = None,
    seed: int = 0,
    precision: str = "auto",
    score_precision: str | None = None,
    save_checkpoints: bool = True,
    record: bool = True,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    embeddings: bool = True,
    force: bool = False,
    preset: str | None = None,
    progress: bool = True,
) -> list[tuple[int, Path]]:
    """Train the run's proxy on its tokenised pool; return ``[(step, checkpoint_dir), ...]``.

    Reads ``tokenised/``, ``tokenised.json`` and ``tokenizer/``; writes ``proxy/proxy.json``,
    ``proxy/step-*`` (weights only) when ``save_checkpoints``, and, when ``record``, the
    trajectories themselves (``trajectories/``, scored in training at the same steps by
    :class:`~smalltolarge.scoring.TrajectoryCallback`, so that ``s2l score`` has nothing left
    to do). ``learning_rate`` and ``batch_size`` default to the preset's values for a preset
    proxy and to S2L's reference values (2e-5, 128) for a pretrained one; the effective batch
    is ``batch_size * grad_accum * processes``. Skipped when ``proxy.json`` records the same
    inputs and settings and every asked-for output exists, unless ``force``.
    ``score_precision`` is the precision of the in-training scoring (default: ``precision``);
    ``preset="reference"`` scores in fp32 as the reference code does.
    """
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    check_proxy_settings(
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        grad_accum=grad_accum,
        warmup_ratio=warmup_ratio,
        n_checkpoints=n_checkpoints,
        checkpoint_every=checkpoint_every,
        precision=precision,
        score_precision=score_precision,
        max_tokens=max_tokens,
    )
    tok_pool = load_tokenised(run_dir)
    proxy = read_json(run_dir.tokenised_meta)["proxy"]
    architecture = PRESETS.get(proxy)
    learning_rate = learning_rate or (
        architecture.learning_rate if architecture else REFERENCE_LEARNING_RATE
    )
    batch_size = batch_size or (architecture.batch_size if architecture else REFERENCE_BATCH_SIZE)
    precision = resolve_precision(precision)
    score_precision = apply_preset(preset, score_precision=(score_precision, None))[
        "score_precision"
    ]
    score_precision = precision if score_precision is None else resolve_precision(score_precision)
    # Under `accelerate launch` every process runs this function; the state knows how many.
    state = distributed_state()
    steps_per_epoch = math.ceil(len(tok_pool) / (batch_size * state.num_processes * grad_accum))
    total_steps = math.ceil(steps_per_epoch * epochs)
    if checkpoint_every is not None:
        n_checkpoints = None
    steps = checkpoint_steps(total_steps, n_checkpoints, checkpoint_every)
    settings = {
        "proxy": proxy,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "warmup_ratio": warmup_ratio,
        "checkpoint_steps": steps,
        "seed": seed,
        "precision": precision,
    }
    fp = fingerprint(tok_pool.fingerprint, settings)
    traj_fp = trajectory_fingerprint(tok_pool.fingerprint, fp, score_precision)
    if not force and _is_complete(run_dir, fp, traj_fp, save_checkpoints, record):
        if progress:
            print(f"proxy: {run_dir.proxy_dir} is up to date ({len(steps)} checkpoints), skipped")
        return _saved_checkpoints(run_dir)

    tokenizer = load_tokenizer(run_dir.tokenizer_dir)
    if is_preset(proxy):
        model = build_preset_model(proxy, tokenizer, seed)
    else:
        model = load_causal_lm(proxy)
    proxy_dir = run_dir.proxy_dir
    resume_dir = proxy_dir / "resume"
    if state.is_main_process:
        _discard_stale(proxy_dir, resume_dir, fp)
        proxy_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(resume_dir / "fingerprint.json", {"fingerprint": fp})
    state.wait_for_everyone()

    args = training_arguments(
        resume_dir,
        total_steps=total_steps,
        save_steps=max(1, steps[0]),
        progress=progress,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        grad_accum=grad_accum,
        warmup_ratio=warmup_ratio,
        precision=precision,
        seed=seed,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    callbacks: list[TrainerCallback] = []
    if save_checkpoints:
        callbacks.append(CheckpointCallback(steps, proxy_dir))
    if record:
        callbacks.append(
            TrajectoryCallback(
                run_dir,
                steps,
                precision=score_precision,
                max_tokens=max_tokens,
                embeddings=embeddings,
                fingerprint=traj_fp,
                pad_id=pad_id,
                progress=progress,
                meta={"proxy_fingerprint": fp, "proxy": proxy, "recorded": "during training"},
            )
        )
    trainer = SeededOrderTrainer(
        model=model,
        args=args,
        train_dataset=tok_pool.dataset,
        data_collator=lambda examples: collate(examples, pad_id),
        callbacks=callbacks,
    )
    if not progress:
        trainer.remove_callback(PrinterCallback)
    else:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LossProgressCallback("training proxy"))
        print(
            f"proxy: training {proxy} ({count_parameters(model) / 1e6:.2f}M parameters) on "
            f"{len(tok_pool)} examples, {total_steps} steps, checkpoints at steps {steps}"
        )
    last = last_complete_checkpoint(resume_dir, is_main_process=state.is_main_process)
    if last and progress:
        print(f"proxy: resuming from {last}")
    trainer.train(resume_from_checkpoint=last)
    if trainer.is_world_process_zero():
        atomic_write_json(
            run_dir.proxy_meta,
            {
                "fingerprint": fp,
                "tokenised_fingerprint": tok_pool.fingerprint,
                **settings,
                "total_steps": total_steps,
                "n_parameters": count_parameters(model),
                "pad_token_id": pad_id,
                "final_train_loss": last_logged_loss(trainer),
                "save_checkpoints": save_checkpoints,
                "recorded_trajectories": record,
            },
        )
        shutil.rmtree(resume_dir, ignore_errors=True)
    return _saved_checkpoints(run_dir)


def check_proxy_settings(
    *,
    epochs: float = 3.0,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    grad_accum: int = 1,
    warmup_ratio: float = 0.03,
    n_checkpoints: int | None = 12,
    checkpoint_every: int | None = None,
    precision: str = "auto",
    score_precision: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> None:
    """Refuse proxy-training and scoring settings that cannot work, before anything runs
    (:func:`~smalltolarge.pipeline.run_pipeline` calls it before it prepares the pool)."""
    check_training_settings(
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        grad_accum=grad_accum,
        warmup_ratio=warmup_ratio,
    )
    for name, value in (("checkpoints", n_checkpoints), ("checkpoint_every", checkpoint_every)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise S2LError(f"{name} must be a positive integer, not {value!r}")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise S2LError(f"max_tokens must be a positive integer, not {max_tokens!r}")
    for value in (precision, score_precision):
        if value not in (None, "auto"):
            resolve_precision(value)  # refuses an unknown name


class CheckpointCallback(TrainerCallback):
    """Save the model's weights (only) at the given global steps as ``step-XXXXXXXX/``."""

    def __init__(self, steps: list[int], out_dir: str | Path):
        self.steps = set(steps)
        self.out_dir = Path(out_dir)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps and state.is_world_process_zero:
            target = self.out_dir / f"step-{state.global_step:08d}"
            with atomic_dir(target) as tmp:
                model.save_pretrained(str(tmp), safe_serialization=True)
        return control


def _is_complete(
    run_dir: RunDir, fp: str, traj_fp: str, save_checkpoints: bool, record: bool
) -> bool:
    if not stage_is_current(run_dir.proxy_meta, fp):
        return False
    if record and not stage_is_current(run_dir.trajectories_dir / "meta.json", traj_fp):
        return False
    saved = {s for s, _ in _saved_checkpoints(run_dir)}
    return not save_checkpoints or saved == set(read_json(run_dir.proxy_meta)["checkpoint_steps"])


def _saved_checkpoints(run_dir: RunDir) -> list[tuple[int, Path]]:
    try:
        return list_checkpoints(run_dir.proxy_dir)
    except S2LError:
        return []


def _discard_stale(proxy_dir: Path, resume_dir: Path, fp: str) -> None:
    """Remove checkpoints and trainer state left by a run with other inputs or settings."""
    marker = resume_dir / "fingerprint.json"
    if marker.is_file() and read_json(marker).get("fingerprint") == fp:
        return  # an interrupted run of this very training: keep it and resume
    if proxy_dir.is_dir():
        shutil.rmtree(proxy_dir)
