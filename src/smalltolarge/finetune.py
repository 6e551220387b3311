"""Fine-tune the large target model on a selected subset (the last stage of S2L).

The subset is read like any pool (:func:`~smalltolarge.data.load_pool`), or from a selection
directory (``selections/NAME/``), and tokenised with the target's own tokenizer through
:func:`~smalltolarge.formatting.tokenise_pool`: the same template and the same response-only
loss (response + eos) that the proxy was trained and scored with, over the same assistant turns
of a multi-turn chat (those the selection's run scored; every one otherwise, as trainers do).
Training is the proxy's recipe (:func:`smalltolarge.training.fit`: AdamW, cosine schedule with
warm-up, gradient accumulation, bf16/fp16, length-grouped batches, multi-GPU through
``accelerate launch``), with a resumable trainer state in ``OUT/resume/`` guarded by a
fingerprint marker, and a skip when ``OUT/finetune.json`` records the same inputs and settings.

Full fine-tuning is the default; ``lora=True`` trains LoRA adapters with ``peft`` and merges
them into the weights before saving, so ``OUT/model/`` is always a plain model directory
(weights, config, tokenizer) that ``AutoModelForCausalLM.from_pretrained`` loads without peft.
"""

from __future__ import annotations

import inspect
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback

from smalltolarge.data import load_pool
from smalltolarge.errors import S2LError
from smalltolarge.formatting import TokenArrays, TokenisedPool, tokenise_pool
from smalltolarge.models import (
    autocast_dtype,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    pad_token_id,
)
from smalltolarge.progress import library_bars, messages
from smalltolarge.runs import (
    RunDir,
    atomic_dir,
    distributed_state,
    fingerprint,
    output_dir,
    read_json,
    stage_is_current,
)
from smalltolarge.settings import FinetuneSettings, PrepareSettings
from smalltolarge.training import Recipe, fit

if TYPE_CHECKING:
    from accelerate import PartialState

#: Bumped when a change to this module changes what the same settings produce.
_VERSION = "finetune-v1"
#: Roughly this many resumable checkpoints per run: a full model's trainer state (weights and
#: two AdamW moments) is three times its size, so saving it every few steps would dominate.
_CHECKPOINTS_PER_RUN = 10
#: ... and never more often than this: a short run is cheaper to redo than to checkpoint (one
#: save of a 135M model's trainer state took longer than a training step on a CPU).
_MIN_SAVE_STEPS = 50
#: Excluded ids named in messages and in finetune.json (all of them are counted).
_SHOWN_EXCLUDED = 10
_LOAD_POOL_OPTIONS = frozenset(inspect.signature(load_pool).parameters) - {"path_or_name"}


@dataclass
class FinetuneResult:
    """A fine-tuned target: where the saved model lies and how training went.

    ``train_loss_first``/``train_loss_last`` are the first and last logged training losses
    (mean response-token loss over the logging interval; the first is step 1's). ``seconds``
    is the training time of the call that finished the run (a resumed run counts only its own
    part; a skipped call reports the recorded run's). ``skipped`` is True when an up-to-date
    result was found and nothing was trained.
    """

    model_dir: Path
    n_train: int
    train_loss_first: float | None
    train_loss_last: float | None
    seconds: float
    skipped: bool
    n_excluded: int = 0


def finetune(
    model: str | os.PathLike,
    train_data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    template: str = FinetuneSettings.template,
    max_length: int = FinetuneSettings.max_length,
    epochs: float = FinetuneSettings.epochs,
    learning_rate: float = FinetuneSettings.learning_rate,
    batch_size: int = FinetuneSettings.batch_size,
    grad_accum: int = FinetuneSettings.grad_accum,
    warmup_ratio: float = FinetuneSettings.warmup_ratio,
    lora: bool = FinetuneSettings.lora,
    lora_r: int = FinetuneSettings.lora_r,
    lora_alpha: int = FinetuneSettings.lora_alpha,
    lora_dropout: float = FinetuneSettings.lora_dropout,
    lora_target_modules: list[str] | str | None = FinetuneSettings.lora_target_modules,
    precision: str = FinetuneSettings.precision,
    seed: int = FinetuneSettings.seed,
    save_steps: int | None = FinetuneSettings.save_steps,
    force: bool = False,
    progress: bool = True,
    callbacks: list[TrainerCallback] | None = None,
    **load_kwargs: Any,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``train_data`` and save it as a plain HF model in ``OUT/model``.

    Args:
        model: the target causal LM, a HF name or a local directory (anything
            :func:`~smalltolarge.models.load_causal_lm` loads); its tokenizer is used.
        train_data: a pool file, directory or dataset name readable by
            :func:`~smalltolarge.data.load_pool` (``load_kwargs`` such as ``prompt_column``
            are passed on), or a selection directory ``RUN/selections/NAME/``, whose subset
            file is read with the column names its run was prepared with.
        out_dir: where ``model/``, ``finetune.json`` and, while training, ``resume/`` go.
        template, max_length: as for the proxy; examples whose prompt fills ``max_length``
            are excluded (counted and named in ``finetune.json``), longer responses are cut.
        epochs, learning_rate, batch_size, grad_accum, warmup_ratio: AdamW with a cosine
            schedule; the effective batch is ``batch_size * grad_accum * processes``.
        lora: train LoRA adapters (rank ``lora_r``, scale ``lora_alpha``, ``lora_dropout``)
            on ``lora_target_modules`` (module names, or ``"all-linear"``; default: peft's
            choice for a known architecture, else every linear layer) instead of every
            weight; merged into the saved model.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` mixed precision. Full
            fine-tuning keeps fp32 master weights; under LoRA the frozen base is loaded in
            the training precision, which halves its memory.
        seed: seeds the LoRA initialisation, the data order and dropout.
        save_steps: steps between resumable checkpoints (default: about ten per run, at least
            50 steps apart). Not part
            of the fingerprint: it changes when progress is saved, not what is trained.
        force: train even when ``finetune.json`` records the same inputs and settings.
        progress: a progress bar with loss and ETA, and a few summary lines; False is silent.
        callbacks: extra ``TrainerCallback`` objects handed to the ``Trainer`` (an extension
            point, e.g. for custom logging or to stop a run early).

    Raises:
        S2LError: unreadable or empty training data, no example fitting ``max_length``, a
            model or tokenizer that cannot be loaded or that do not match, or an invalid
            training or LoRA setting (checked before anything is loaded).
        TypeError: a keyword argument that neither ``finetune`` nor ``load_pool`` takes.
    """
    unknown = set(load_kwargs) - _LOAD_POOL_OPTIONS
    if unknown:
        raise TypeError(
            f"finetune() got unexpected keyword arguments: {', '.join(sorted(unknown))}"
        )
    checked = FinetuneSettings(  # every setting checked once, here, before anything is loaded
        **{name: value for name, value in locals().items() if name in FinetuneSettings.names()}
    )
    recipe = Recipe.of(checked)
    out_dir = output_dir(out_dir)
    model_dir, meta_path = out_dir / "model", out_dir / "finetune.json"
    # Under `accelerate launch` every process runs this function; the state knows how many.
    state = distributed_state()
    say = messages(progress and state.is_main_process)

    data_path, data_kwargs = resolve_train_data(train_data)
    pool = load_pool(data_path, **{**data_kwargs, **load_kwargs})
    tokenizer = load_tokenizer(model)
    tok_pool = tokenise_pool(
        pool,
        tokenizer,
        template=template,
        max_length=max_length,
        assistant_turns=_scored_turns(train_data),
    )
    settings = {
        "template": template,
        "max_length": max_length,
        **recipe.settings(),
        "lora": (
            {
                "r": lora_r,
                "alpha": lora_alpha,
                "dropout": lora_dropout,
                "targets": lora_target_modules,
            }
            if lora
            else None
        ),
    }
    # The data enter by content (the tokenised fingerprint), not by path: the same subset
    # read from another file is the same training.
    fp = fingerprint(tok_pool.fingerprint, _model_identity(model), settings, _VERSION)
    if not force and stage_is_current(meta_path, fp) and (model_dir / "config.json").is_file():
        say(f"finetune: {model_dir} is up to date, skipped")
        return _result(out_dir, read_json(meta_path), skipped=True)
    _report_data(tok_pool, data_path, say)

    total_steps = recipe.total_steps(len(tok_pool), state.num_processes)
    # A frozen LoRA base only needs the training precision; fully trained weights stay fp32
    # so that small updates are not rounded away (autocast does the low-precision maths).
    load_dtype = (autocast_dtype(recipe.precision) if lora else None) or torch.float32
    with library_bars(progress):
        net = load_causal_lm(model, dtype=load_dtype)
    _check_vocabulary(net, tok_pool, model)
    n_parameters = count_parameters(net)
    lora_targets: set[str] = set()
    if lora:
        net, lora_targets = _add_lora(
            net, lora_r, lora_alpha, lora_dropout, lora_target_modules, seed
        )
    n_trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    what = f"LoRA r={lora_r} on {', '.join(sorted(lora_targets))}" if lora else "all weights"
    say(
        f"finetune: training {model} ({n_parameters / 1e6:.2f}M parameters, {what}, "
        f"{n_trainable / 1e6:.2f}M trainable) on {len(tok_pool)} examples, {total_steps} steps"
    )

    def save(trainer: Trainer) -> dict[str, Any]:
        _save_model(trainer, tokenizer, model_dir, merge_lora=lora, state=state)
        return {
            "tokenised_fingerprint": tok_pool.fingerprint,
            "model": str(model),
            "train_data": str(data_path),
            **settings,
            "lora_target_modules": sorted(lora_targets) or None,
            "n_train": len(tok_pool),
            "n_truncated": tok_pool.n_truncated,
            "n_excluded": len(tok_pool.excluded),
            "excluded_ids": [e["id"] for e in tok_pool.excluded[:_SHOWN_EXCLUDED]],
            "n_parameters": n_parameters,
            "n_trainable_parameters": n_trainable,
        }

    meta = fit(
        net,
        tok_pool.dataset,
        recipe,
        resume_dir=out_dir / "resume",
        meta_path=meta_path,
        fingerprint=fp,
        save=save,
        total_steps=total_steps,
        save_steps=save_steps
        or max(_MIN_SAVE_STEPS, math.ceil(total_steps / _CHECKPOINTS_PER_RUN)),
        pad_id=pad_token_id(tokenizer),
        callbacks=callbacks or (),
        name="finetune",
        description="fine-tuning",
        progress=progress,
    )
    say(
        f"finetune: saved {model_dir} (train loss {_fmt(meta['train_loss_first'])} -> "
        f"{_fmt(meta['train_loss_last'])}, {meta['seconds']:.0f} s)"
    )
    return _result(out_dir, meta, skipped=False)


def resolve_train_data(train_data: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """The path to load for ``train_data``, and ``load_pool`` options it implies.

    A selection directory (one with a ``summary.json`` naming its ``subset_file``) gives its
    subset file, plus the column names its run's ``pool.json`` was loaded with, because the
    subset keeps the input's own columns and a pool prepared with ``--prompt-column`` would
    not be recognised again without them. Anything else is passed to ``load_pool`` as it is,
    but a file ``s2l export`` wrote from a selection that was replaced since is refused (see
    :func:`~smalltolarge.export.check_export`).
    """
    path = Path(train_data)
    summary_path = path / "summary.json"
    if not path.is_dir():
        from smalltolarge.export import check_export

        check_export(path)  # an export of a selection replaced since is refused
        return os.fspath(train_data), {}
    if not summary_path.is_file():
        if (path / "ids.txt").is_file():
            raise S2LError(f"{path}: an unfinished selection (no summary.json); select again")
        return os.fspath(train_data), {}
    summary = read_json(summary_path)
    if not isinstance(summary, dict) or "subset_file" not in summary:
        return os.fspath(train_data), {}
    subset = path / summary["subset_file"]
    if not subset.exists():
        raise S2LError(
            f"{path}: the subset file {summary['subset_file']} named in summary.json is missing"
        )
    return os.fspath(subset), _pool_columns(RunDir.of_selection(path).pool_meta)


def _scored_turns(train_data: str | os.PathLike) -> str:
    """The assistant turns the run of a selection directory scored (its ``tokenised.json``);
    S2L's default (every one) for anything else or a run tokenised before the setting."""
    meta = RunDir.of_selection(train_data).tokenised_meta
    if Path(train_data, "summary.json").is_file() and meta.is_file():
        return read_json(meta).get("assistant_turns", "last")
    return PrepareSettings.assistant_turns


def _pool_columns(pool_meta: Path) -> dict[str, Any]:
    """``load_pool`` column options reproducing the schema recorded in a run's ``pool.json``."""
    if not pool_meta.is_file():
        return {}
    schema = read_json(pool_meta).get("schema") or {}
    names = {"input": "input_column", "source": "source_column", "id": "id_column"}
    if schema.get("kind") != "messages":
        # naming the chat column as prompt/response would turn the chat schema off
        names.update(prompt="prompt_column", response="response_column")
    return {option: schema[key] for key, option in names.items() if schema.get(key)}


def _model_identity(model: str | os.PathLike) -> dict[str, Any]:
    """What identifies the target for the fingerprint: its name, and for a local directory
    its config and weight-file sizes, so a model replaced in place is trained again."""
    path = Path(model)
    if not path.is_dir():
        return {"name": str(model)}
    config = path / "config.json"
    return {
        "path": str(path.resolve()),
        "config": config.read_text(encoding="utf-8") if config.is_file() else None,
        "weights": sorted(
            (p.name, p.stat().st_size)
            for p in path.iterdir()
            if p.suffix in (".safetensors", ".bin", ".pt")
        ),
    }


def _report_data(tok_pool: TokenisedPool, data_path: str, say) -> None:
    lengths = tok_pool.lengths
    say(
        f"finetune: {len(tok_pool)} training examples from {data_path}, {int(lengths.sum())} "
        f"tokens (max {lengths.max()}), {tok_pool.n_truncated} truncated at "
        f"max_length={tok_pool.max_length}"
    )
    if tok_pool.excluded:
        ids = ", ".join(e["id"] for e in tok_pool.excluded[:_SHOWN_EXCLUDED])
        more = " ..." if len(tok_pool.excluded) > _SHOWN_EXCLUDED else ""
        say(
            f"finetune: EXCLUDED {len(tok_pool.excluded)} examples whose prompt leaves no room "
            f"for a response (ids {ids}{more})"
        )


def _check_vocabulary(net: PreTrainedModel, tok_pool: TokenisedPool, name: Any) -> None:
    """Refuse a tokenizer whose ids the model has no embedding for (an index error deep in
    the forward pass otherwise); the embeddings are never resized."""
    n_embeddings = net.get_input_embeddings().num_embeddings
    largest = int(TokenArrays.from_dataset(tok_pool.dataset).values.max())
    if largest >= n_embeddings:
        raise S2LError(
            f"'{name}': the tokenizer produces token id {largest} but the model has only "
            f"{n_embeddings} embeddings; the model and tokenizer do not match"
        )


def _add_lora(
    net: PreTrainedModel,
    r: int,
    alpha: float,
    dropout: float,
    targets: list[str] | None,
    seed: int,
) -> tuple[torch.nn.Module, set[str]]:
    """Wrap ``net`` with LoRA adapters; return the peft model and the adapted layer names."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN
    except ImportError as e:
        raise S2LError("lora=True needs the peft package: pip install peft") from e
    if targets is None and getattr(net.config, "model_type", None) not in KNOWN:
        targets = "all-linear"
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
    )
    # LoRA's A matrices are drawn at random: seed them without disturbing the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            peft_model = get_peft_model(net, config)
        except ValueError as e:
            raise S2LError(f"cannot add LoRA adapters: {str(e).strip().splitlines()[0]}") from e
    # "all-linear" resolves to full module paths; the layer names are what a reader wants
    adapted = {name.rsplit(".", 1)[-1] for name in peft_model.peft_config["default"].target_modules}
    return peft_model, adapted


def _save_model(
    trainer: Trainer,
    tokenizer: Any,
    model_dir: Path,
    *,
    merge_lora: bool,
    state: PartialState,
) -> None:
    """Save the trained weights and the tokenizer as a plain model directory, atomically.

    Every process takes part in ``trainer.save_model`` (FSDP and DeepSpeed gather sharded
    weights there), so the weights go to a staging directory every process can name, which
    the main process then moves into place.
    """
    staging = model_dir.with_name(f".{model_dir.name}.staging")
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    if merge_lora:
        if state.is_main_process:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(str(staging), safe_serialization=True)
    else:
        trainer.save_model(str(staging))
    state.wait_for_everyone()
    if state.is_main_process:
        tokenizer.save_pretrained(str(staging))
        # Trainer leaves its arguments beside the weights; they are not part of a model.
        (staging / "training_args.bin").unlink(missing_ok=True)
        with atomic_dir(model_dir) as tmp:
            for child in staging.iterdir():
                os.replace(child, tmp / child.name)
        staging.rmdir()
    state.wait_for_everyone()


def _result(out_dir: Path, meta: dict[str, Any], *, skipped: bool) -> FinetuneResult:
    return FinetuneResult(
        model_dir=out_dir / "model",
        n_train=meta["n_train"],
        train_loss_first=meta["train_loss_first"],
        train_loss_last=meta["train_loss_last"],
        seconds=meta["seconds"],
        skipped=skipped,
        n_excluded=meta["n_excluded"],
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
