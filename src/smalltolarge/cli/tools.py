"""Tools around the stages: make a proxy or a target (``truncate-model``, ``init-model``),
look at a selection (``report``), hand it to another trainer (``export``), and cost a run
before starting it (``estimate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from smalltolarge.cli.common import command
from smalltolarge.cli.options import (
    BatchOpt,
    CkptOpt,
    EpochsOpt,
    MaxLenOpt,
    PoolArg,
    ProxyOpt,
    TemplateOpt,
)
from smalltolarge.settings import FinetuneSettings, PrepareSettings, ProxySettings


@command("truncate-model")
def truncate_model_cmd(
    model: Annotated[
        str, typer.Argument(help="A HF causal LM name or path, or a short name (smollm2-135m).")
    ],
    layers: Annotated[int, typer.Option("--layers", "-k", help="Decoder layers to keep.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Directory to write.")],
) -> None:
    """A pretrained proxy: MODEL's embeddings, first K decoder layers, final norm and head,
    saved as a model directory for `--proxy DIR`."""
    from smalltolarge.runs import read_json
    from smalltolarge.truncate import MARKER, truncate_model

    out = truncate_model(model, layers, out_dir)
    meta = read_json(out / MARKER)
    typer.echo(
        f"truncated {model}: {meta['layers_kept']} of {meta['layers_of_source']} layers, "
        f"{meta['parameters']:,} of {meta['parameters_of_source']:,} parameters; in {out}"
    )


@command("init-model")
def init_model_cmd(
    preset: Annotated[str, typer.Argument(help="A model preset: tiny, small or medium.")],
    pool: Annotated[str, typer.Argument(help="Pool whose texts train the BPE tokenizer.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Directory to write.")],
    vocab_size: Annotated[
        int | None,
        typer.Option(help="Tokenizer vocabulary (default: the preset's).", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option(help="Weight initialisation seed.")] = 0,
) -> None:
    """An untrained preset model with a tokenizer trained on POOL: a from-scratch target for
    `s2l finetune` / `s2l evaluate` (a fast benchmark tier)."""
    from smalltolarge.models import INIT_MARKER, init_model
    from smalltolarge.runs import read_json

    out = init_model(preset, pool, out_dir, vocab_size=vocab_size, seed=seed)
    meta = read_json(out / INIT_MARKER)
    typer.echo(
        f"init-model {preset}: {meta['parameters']:,} parameters, {meta['vocab_size']:,}-token "
        f"vocabulary trained on {pool}; untrained weights in {out}"
    )


@command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    selection: Annotated[
        str | None,
        typer.Option(help="Selection name (default: the latest).", show_default=False),
    ] = None,
) -> None:
    """A self-contained HTML page of a selection (cluster curves, data map, source mix,
    examples per cluster, settings and warnings), written to RUN/selections/NAME/report/."""
    from smalltolarge.html_report import write_report

    typer.echo(f"report: {write_report(run_dir, selection)}")


@command("export")
def export_cmd(
    selection_dir: Annotated[Path, typer.Argument(help="A selection: RUN/selections/NAME.")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="llama-factory, axolotl, messages or alpaca.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Directory (default: SELECTION/export/FORMAT).", show_default=False
        ),
    ] = None,
) -> None:
    """Write a selection's subset for another trainer, keeping the original columns."""
    from smalltolarge.export import export_selection

    done = export_selection(selection_dir, fmt, out)
    typer.echo(f"export ({done.format}): {done.n} examples; " + ", ".join(map(str, done.files)))
    for note in done.notes:  # multi-turn chats: the trainer setting that learns what S2L scored
        typer.echo(f"export: {note}")


@command("estimate")
def estimate_cmd(
    pool: PoolArg,
    target: Annotated[
        str, typer.Option(help="The model to fine-tune: a HF name or path, or a short name.")
    ],
    proxy: ProxyOpt = PrepareSettings.proxy,
    gpus: Annotated[int, typer.Option(help="Devices in parallel (perfect scaling assumed).")] = 1,
    checkpoints: CkptOpt = ProxySettings.n_checkpoints,
    epochs: EpochsOpt = ProxySettings.epochs,
    target_epochs: Annotated[
        float | None,
        typer.Option(help="Target fine-tuning epochs (default: --epochs).", show_default=False),
    ] = None,
    budget: Annotated[
        str, typer.Option(help="Budgets, comma-separated: fractions (0.1,0.3) or counts.")
    ] = "0.1,0.3",
    max_length: MaxLenOpt = PrepareSettings.max_length,
    template: TemplateOpt = PrepareSettings.template,
    tokens_per_second: Annotated[
        float | None,
        typer.Option(
            help="Proxy training tokens/s per device (default: measure a short probe here).",
            show_default=False,
        ),
    ] = None,
    target_tokens_per_second: Annotated[
        float | None,
        typer.Option(
            help="Target fine-tuning tokens/s per device (default: the proxy's FLOP/s).",
            show_default=False,
        ),
    ] = None,
    batch_size: BatchOpt = ProxySettings.batch_size,
    target_batch_size: Annotated[
        int, typer.Option(help="Per-device batch of target fine-tuning.")
    ] = FinetuneSettings.batch_size,
) -> None:
    """Before training anything: the pool's tokens, each stage's FLOPs and wall time, what
    selection costs and what fine-tuning on the subset saves, and the peak memory of proxy
    training and fine-tuning against this machine's free memory."""
    from smalltolarge.estimate import estimate, format_estimate

    result = estimate(
        pool,
        proxy=proxy,
        target=target,
        gpus=gpus,
        checkpoints=checkpoints,
        epochs=epochs,
        target_epochs=target_epochs,
        budgets=tuple(b.strip() for b in budget.split(",") if b.strip()),
        max_length=max_length,
        template=template,
        tokens_per_second=tokens_per_second,
        target_tokens_per_second=target_tokens_per_second,
        batch_size=batch_size,
        target_batch_size=target_batch_size,
    )
    typer.echo(format_estimate(result))
