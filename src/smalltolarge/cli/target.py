"""The target model: ``finetune`` on a selection, ``evaluate`` it, and the ``experiment`` and
``curve`` commands that compare selection methods by the targets they train.

Every default is the stage's own (:class:`~smalltolarge.settings.FinetuneSettings`,
:class:`~smalltolarge.settings.EvalSettings`); the stage functions check the values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from smalltolarge.cli.common import command, is_main_process
from smalltolarge.cli.options import (
    ForceOpt,
    GradAccumOpt,
    MaxLenOpt,
    PrecisionOpt,
    SkipInvalidOpt,
    TemplateOpt,
    WarmupOpt,
    choices,
)
from smalltolarge.settings import METRICS, EvalSettings, FinetuneSettings


@command("finetune")
def finetune_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="Target: a HF causal LM name or path, or a short name such as smollm2-135m."
        ),
    ],
    train_data: Annotated[
        str, typer.Argument(help="A selection directory (RUN/selections/NAME) or any pool file.")
    ],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Where model/ goes.")],
    template: TemplateOpt = FinetuneSettings.template,
    max_length: MaxLenOpt = FinetuneSettings.max_length,
    epochs: Annotated[
        float, typer.Option(help="Target fine-tuning epochs.")
    ] = FinetuneSettings.epochs,
    lr: Annotated[
        float, typer.Option("--lr", help="Learning rate.")
    ] = FinetuneSettings.learning_rate,
    batch_size: Annotated[
        int, typer.Option(help="Per-device batch.")
    ] = FinetuneSettings.batch_size,
    grad_accum: GradAccumOpt = FinetuneSettings.grad_accum,
    warmup_ratio: WarmupOpt = FinetuneSettings.warmup_ratio,
    lora: Annotated[
        bool,
        typer.Option(
            help="LoRA (peft) instead of full fine-tuning; the "
            "adapter is merged into the saved model."
        ),
    ] = FinetuneSettings.lora,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = FinetuneSettings.lora_r,
    lora_alpha: Annotated[
        int, typer.Option(help="LoRA scale (alpha).")
    ] = FinetuneSettings.lora_alpha,
    lora_dropout: Annotated[
        float, typer.Option(help="LoRA dropout, in [0, 1).")
    ] = FinetuneSettings.lora_dropout,
    precision: PrecisionOpt = FinetuneSettings.precision,
    seed: Annotated[int, typer.Option(help="Training seed.")] = FinetuneSettings.seed,
    save_steps: Annotated[
        int | None,
        typer.Option(
            help="Steps between resumable checkpoints (default: about ten per run, at least "
            "50 steps apart).",
            show_default=False,
        ),
    ] = FinetuneSettings.save_steps,
    skip_invalid: SkipInvalidOpt = False,
    force: ForceOpt = False,
) -> None:
    """6. Fine-tune the target on a selection (or any pool), with the same prompt format and
    response-only loss as the proxy; resumable."""
    from smalltolarge.finetune import finetune

    result = finetune(
        model,
        train_data,
        out_dir,
        template=template,
        max_length=max_length,
        epochs=epochs,
        learning_rate=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        warmup_ratio=warmup_ratio,
        lora=lora,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        precision=precision,
        seed=seed,
        save_steps=save_steps,
        force=force,
        on_invalid="skip" if skip_invalid else "error",
    )
    if is_main_process():
        typer.echo(
            f"finetune: {result.n_train} examples, loss {result.train_loss_first} -> "
            f"{result.train_loss_last}; model in {result.model_dir}"
        )


@command("evaluate")
def evaluate_cmd(
    model: Annotated[str, typer.Argument(help="A fine-tuned model directory or model name.")],
    eval_data: Annotated[str, typer.Argument(help="Held-out items, any pool format.")],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out-dir",
            "-o",
            help="predictions.jsonl and scores.json go here (--metric loss: losses.jsonl and "
            "loss.json).",
        ),
    ],
    template: TemplateOpt = EvalSettings.template,
    metric: Annotated[
        str,
        typer.Option(
            help=f"{choices(METRICS)}; loss: the mean response loss (nats per "
            "token) with the training template and mask, one forward pass, no generation; "
            "written to losses.jsonl and loss.json."
        ),
    ] = EvalSettings.metric,
    max_new_tokens: Annotated[
        int, typer.Option(help="Generation length limit.")
    ] = EvalSettings.max_new_tokens,
    batch_size: Annotated[
        int, typer.Option(help="Prompts per generation batch.")
    ] = EvalSettings.batch_size,
    max_examples: Annotated[
        int | None, typer.Option(help="Evaluate the first N only.", show_default=False)
    ] = EvalSettings.max_examples,
    max_length: Annotated[
        int, typer.Option(help="--metric loss: tokens per example, as in fine-tuning.")
    ] = EvalSettings.max_length,
    precision: PrecisionOpt = EvalSettings.precision,
) -> None:
    """7. Generate answers greedily and score them (exact match or ROUGE-L, with 95% CIs), or
    measure the held-out response loss (--metric loss)."""
    from smalltolarge.evaluate import evaluate

    result = evaluate(
        model,
        eval_data,
        out_dir,
        template=template,
        metric=metric,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_examples=max_examples,
        max_length=max_length,
        precision=precision,
        progress=metric != "loss",  # the loss prints its own summary below
    )
    o = result.overall
    typer.echo(
        f"{result.metric}: {o['mean']:.4f} (95% CI {o['ci_low']:.4f}-{o['ci_high']:.4f}, "
        f"n={o['n']})"
    )
    macro = getattr(result, "macro", None)
    if macro:
        typer.echo(
            f"macro (mean over {macro['n']} sources): {macro['mean']:.4f} "
            f"(95% CI {macro['ci_low']:.4f}-{macro['ci_high']:.4f})"
        )
    for source, s in sorted(result.per_source.items()):
        typer.echo(
            f"  {source}: {s['mean']:.4f} ({s['ci_low']:.4f}-{s['ci_high']:.4f}, n={s['n']})"
        )
    typer.echo(f"per item: {result.predictions_path}\nscores: {result.scores_path}")


@command("experiment")
def experiment_cmd(
    config: Annotated[
        Path, typer.Argument(help="Experiment YAML (see benchmarks/experiment.yaml).")
    ],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out-dir", "-o", help="Override the config's out_dir.", show_default=False),
    ] = None,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="Run only random at the smallest and largest budget (all its seeds, at least "
            "2) and the full pool; write calibration.md and calibration.png: the learning "
            "curve and the smallest difference the setup can detect at each budget.",
        ),
    ] = False,
) -> None:
    """Methods x budgets x seeds (+ the full pool): select, fine-tune, evaluate; resumable.
    Writes results.csv, results.md (with paired differences to random and the full pool),
    comparisons.csv and results.png."""
    from smalltolarge.experiment import run_experiment

    result = run_experiment(config, out_dir=out_dir, calibrate=calibrate)
    typer.echo(
        f"results: {result.results_csv}\ntable: {result.table_md}\n"
        f"comparisons: {result.comparisons_csv}\nplot: {result.plot_png}"
    )
    if result.calibration_md is not None:
        typer.echo(f"calibration: {result.calibration_md}, {result.calibration_png}")


@command("curve")
def curve_cmd(
    results_dir: Annotated[Path, typer.Argument(help="An experiment's out_dir (results.csv).")],
    metric: Annotated[
        str | None, typer.Option(help="Only this metric (default: all).", show_default=False)
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(
            help="Within this much of the full pool, in the metric's units (default: 0.01, "
            "1 point; the loss: 1% of the full pool's).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """How much data is enough: fit a saturating learning curve per method and report the
    smallest budget within tolerance of the full pool (no extrapolation below the smallest
    measured budget). Writes learning_curves.md and learning_curves.png."""
    from smalltolarge.curves import curves_markdown, write_learning_curves

    fits, md, png = write_learning_curves(results_dir, metric=metric, tolerance=tolerance)
    typer.echo(curves_markdown(fits) + f"\ntable: {md}\nplot: {png}")
