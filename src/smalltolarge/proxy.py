"""Train the small proxy on the whole pool and keep its weights at T points of training.

The proxy is trained with the shared recipe (:func:`smalltolarge.training.fit`) on the same
response-only loss that S2L scores. :class:`CheckpointCallback` saves the weights, and nothing
else, at the chosen steps as ``proxy/step-00000500/``; checkpoints are always listed in step
order (the public reference code read them in file-system order). While training runs, a
resumable trainer state is kept in ``proxy/resume/`` so that an interrupted run continues
instead of starting over; it is deleted when training finishes.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer, TrainerCallback

from smalltolarge.errors import S2LError
from smalltolarge.formatting import load_tokenised
from smalltolarge.models import (
    PRESETS,
    REFERENCE_BATCH_SIZE,
    REFERENCE_LEARNING_RATE,
    build_preset_model,
    count_parameters,
    is_preset,
    load_causal_lm,
    load_tokenizer,
    pad_token_id,
    resolve_precision,
)
from smalltolarge.presets import apply_preset
from smalltolarge.progress import quiet_libraries_unless_progress
from smalltolarge.recording import TrajectoryCallback, trajectory_fingerprint
from smalltolarge.runs import (
    RunDir,
    atomic_dir,
    distributed_state,
    fingerprint,
    list_checkpoints,
    read_json,
    read_proxy_meta,
    stage_is_current,
)
from smalltolarge.settings import ProxySettings
from smalltolarge.training import (
    Recipe,
    checkpoint_steps,
    fit,
    last_logged_loss,
)

# Re-exported: where users of the proxy stage look for them.
__all__ = [
    "CheckpointCallback",
    "checkpoint_steps",
    "list_checkpoints",
    "read_proxy_meta",
    "train_proxy",
]


@quiet_libraries_unless_progress
def train_proxy(
    run_dir: str | Path | RunDir,
    *,
    epochs: float = ProxySettings.epochs,
    learning_rate: float | None = ProxySettings.learning_rate,
    batch_size: int | None = ProxySettings.batch_size,
    grad_accum: int = ProxySettings.grad_accum,
    warmup_ratio: float = ProxySettings.warmup_ratio,
    n_checkpoints: int | None = ProxySettings.n_checkpoints,
    checkpoint_every: int | None = ProxySettings.checkpoint_every,
    seed: int = ProxySettings.seed,
    precision: str = ProxySettings.precision,
    score_precision: str | None = ProxySettings.score_precision,
    save_checkpoints: bool = True,
    record: bool = True,
    max_tokens: int = ProxySettings.max_tokens,
    embeddings: bool = True,
    force: bool = False,
    preset: str | None = None,
    progress: bool = True,
) -> list[tuple[int, Path]]:
    """Train the run's proxy on its tokenised pool; return ``[(step, checkpoint_dir), ...]``.

    Reads ``tokenised/``, ``tokenised.json`` and ``tokenizer/``; writes ``proxy/proxy.json``,
    ``proxy/step-*`` (weights only) when ``save_checkpoints``, and, when ``record``, the
    trajectories themselves (``trajectories/``, scored in training at the same steps by
    :class:`~smalltolarge.recording.TrajectoryCallback`, so that ``s2l score`` has nothing
    left to do). ``learning_rate`` and ``batch_size`` (None: the default; other values must
    be positive) default to the preset's values for a preset proxy and to S2L's reference
    values (2e-5, 128) for a pretrained one; the effective batch is
    ``batch_size * grad_accum * processes``. Skipped when ``proxy.json`` records the same
    inputs and settings and every asked-for output exists, unless ``force``.
    ``score_precision`` is the precision of the in-training scoring (default: ``precision``);
    ``preset="reference"`` scores in fp32 as the reference code does.
    """
    run_dir = RunDir.of(run_dir)
    checked = ProxySettings(  # every setting checked once, here
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        grad_accum=grad_accum,
        warmup_ratio=warmup_ratio,
        n_checkpoints=n_checkpoints,
        checkpoint_every=checkpoint_every,
        seed=seed,
        precision=precision,
        score_precision=score_precision,
        max_tokens=max_tokens,
    )
    n_checkpoints = checked.n_checkpoints  # None when checkpoint_every is given
    tok_pool = load_tokenised(run_dir)
    proxy = read_json(run_dir.tokenised_meta)["proxy"]
    architecture = PRESETS.get(proxy)
    if learning_rate is None:
        learning_rate = architecture.learning_rate if architecture else REFERENCE_LEARNING_RATE
    if batch_size is None:
        batch_size = architecture.batch_size if architecture else REFERENCE_BATCH_SIZE
    recipe = Recipe.of(checked, learning_rate=learning_rate, batch_size=batch_size)
    score_precision = apply_preset(preset, score_precision=(score_precision, None))[
        "score_precision"
    ]
    score_precision = (
        recipe.precision if score_precision is None else resolve_precision(score_precision)
    )
    # Under `accelerate launch` every process runs this function; the state knows how many.
    total_steps = recipe.total_steps(len(tok_pool), distributed_state().num_processes)
    steps = checkpoint_steps(total_steps, n_checkpoints, checkpoint_every)
    settings = {"proxy": proxy, **recipe.settings(), "checkpoint_steps": steps}
    fp = fingerprint(tok_pool.fingerprint, settings)
    traj_fp = trajectory_fingerprint(tok_pool.fingerprint, fp, score_precision)
    if not force and _is_complete(run_dir, fp, traj_fp, save_checkpoints, record):
        if progress:
            print(f"proxy: {run_dir.proxy_dir} is up to date ({len(steps)} checkpoints), skipped")
        return _saved_checkpoints(run_dir)

    tokenizer = load_tokenizer(run_dir.tokenizer_dir)
    model = (
        build_preset_model(proxy, tokenizer, seed) if is_preset(proxy) else load_causal_lm(proxy)
    )
    pad_id = pad_token_id(tokenizer)
    callbacks: list[TrainerCallback] = []
    if save_checkpoints:
        callbacks.append(CheckpointCallback(steps, run_dir.proxy_dir))
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
    if progress and distributed_state().is_main_process:
        print(
            f"proxy: training {proxy} ({count_parameters(model) / 1e6:.2f}M parameters) on "
            f"{len(tok_pool)} examples, {total_steps} steps, checkpoints at steps {steps}"
        )

    def save(trainer: Trainer) -> dict:
        # the weights were saved at the checkpoint steps; only the metadata is left
        return {
            "tokenised_fingerprint": tok_pool.fingerprint,
            **settings,
            "n_parameters": count_parameters(model),
            "final_train_loss": last_logged_loss(trainer),
            "save_checkpoints": save_checkpoints,
            "recorded_trajectories": record,
        }

    fit(
        model,
        tok_pool.dataset,
        recipe,
        resume_dir=run_dir.proxy_resume_dir,
        meta_path=run_dir.proxy_meta,
        fingerprint=fp,
        save=save,
        total_steps=total_steps,
        save_steps=max(1, steps[0]),
        pad_id=pad_id,
        # checkpoints and metadata of a training with other inputs or settings go too
        stale=run_dir.proxy_dir,
        callbacks=callbacks,
        name="proxy",
        description="training proxy",
        progress=progress,
    )
    return _saved_checkpoints(run_dir)


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
    if record and not stage_is_current(run_dir.trajectories_meta, traj_fp):
        return False
    saved = {s for s, _ in _saved_checkpoints(run_dir)}
    return not save_checkpoints or saved == set(read_json(run_dir.proxy_meta)["checkpoint_steps"])


def _saved_checkpoints(run_dir: RunDir) -> list[tuple[int, Path]]:
    try:
        return list_checkpoints(run_dir.proxy_dir)
    except S2LError:
        return []
