"""The options several ``s2l`` commands share, as ``Annotated`` types.

Only the help text lives here; each command takes its defaults from the stage's settings
(:mod:`smalltolarge.settings`), and lists of choices are built from the same constants, so the
help cannot drift from what the stages accept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from smalltolarge.selection import SELECTORS  # numpy only: `s2l --help` stays fast
from smalltolarge.settings import ASSISTANT_TURNS, DEDUP_ON, PRECISIONS, TEMPLATES


def choices(values: tuple[str, ...] | list[str]) -> str:
    """``a, b or c``: a list of choices for a help text."""
    values = list(values)
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


RunDirOpt = Annotated[Path, typer.Option("--run-dir", "-r", help="Run directory (artifacts).")]
PoolArg = Annotated[
    str,
    typer.Argument(
        help="Pool: .jsonl/.json/.parquet/.csv, a save_to_disk dir, or a "
        "datasets.load_dataset name."
    ),
]
ProxyOpt = Annotated[
    str, typer.Option(help="Proxy: a preset (tiny, small) or any HF causal LM name or path.")
]
TemplateOpt = Annotated[
    str,
    typer.Option(help=f"Prompt format: {choices(TEMPLATES)} (chat: the tokenizer's template)."),
]
AssistantTurnsOpt = Annotated[
    str,
    typer.Option(
        help=f"Multi-turn chats: the assistant turns the loss covers, {choices(ASSISTANT_TURNS)} "
        "(all: what trainers learn by default; the export says which masking matches).",
    ),
]
MaxLenOpt = Annotated[int, typer.Option(help="Maximum tokens per example (prompt + response).")]
PromptColOpt = Annotated[
    str | None,
    typer.Option(
        help="Column of the instruction / prompt (default: detected: instruction, question, "
        "prompt).",
        show_default=False,
    ),
]
InputColOpt = Annotated[
    str | None,
    typer.Option(
        help="Column of an optional input appended to the prompt (default: input, if present).",
        show_default=False,
    ),
]
ResponseColOpt = Annotated[
    str | None,
    typer.Option(
        help="Column of the response (default: detected: output, answer, completion, response).",
        show_default=False,
    ),
]
SourceColOpt = Annotated[
    str | None,
    typer.Option(
        help="Column naming each example's source or task (per-source report and "
        "--stratify-by) (default: source, if present).",
        show_default=False,
    ),
]
IdColOpt = Annotated[
    str | None,
    typer.Option(
        help="Column of unique example ids (default: id, if present; else the row index).",
        show_default=False,
    ),
]
SplitOpt = Annotated[str, typer.Option(help="Split of a dataset dir or hub name.")]
SkipInvalidOpt = Annotated[
    bool, typer.Option(help="Drop invalid examples and report them instead of stopping.")
]
DedupOpt = Annotated[
    str | None,
    typer.Option(
        help=f"Drop exact and near duplicates first, compared on: {choices(DEDUP_ON)} "
        "(one kept per group; groups in RUN/duplicates.json).",
        show_default=False,
    ),
]
DedupThresholdOpt = Annotated[
    float,
    typer.Option(
        help="With --dedup: the character 5-gram Jaccard similarity from which two examples "
        "are near duplicates, in (0, 1]."
    ),
]
EpochsOpt = Annotated[float, typer.Option(help="Proxy training epochs.")]
LrOpt = Annotated[
    float | None,
    typer.Option("--lr", help="Learning rate (default: preset's, or 2e-5).", show_default=False),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(help="Per-device batch (default: preset's, or 128).", show_default=False),
]
GradAccumOpt = Annotated[int, typer.Option(help="Gradient accumulation steps.")]
WarmupOpt = Annotated[float, typer.Option(help="Warm-up fraction of training.")]
CkptOpt = Annotated[
    int,
    typer.Option(
        "--checkpoints", help="Number of evenly spaced checkpoints (trajectory length T)."
    ),
]
EveryOpt = Annotated[
    int | None,
    typer.Option(help="Checkpoint every N steps instead of --checkpoints.", show_default=False),
]
PrecisionOpt = Annotated[
    str, typer.Option(help=f"{choices(PRECISIONS)} (auto: bf16 where the device runs it fast).")
]
ScorePrecisionOpt = Annotated[
    str | None,
    typer.Option(
        help="Precision of the trajectory scoring (default: --precision).", show_default=False
    ),
]
MaxTokOpt = Annotated[int, typer.Option(help="Scoring batch size in tokens (padding included).")]
MethodOpt = Annotated[str, typer.Option(help=f"Selection method: {', '.join(SELECTORS)}.")]
BudgetOpt = Annotated[str, typer.Option(help="A fraction (0.3, 30%) or a count (3000).")]
ClustersOpt = Annotated[
    int | None,
    typer.Option(
        "--clusters",
        help="S2L k-means clusters K (default 100; at most one per 10 rows).",
        show_default=False,
    ),
]
StratOpt = Annotated[
    str | None,
    typer.Option(help="Select per source: the pool's source column.", show_default=False),
]
SeedOpt = Annotated[int, typer.Option(help="Selection seed.")]
TargetSetOpt = Annotated[
    str | None,
    typer.Option(
        help="Examples of the task that matters (a file read like the pool): scored at the "
        "kept proxy checkpoints, they move S2L's cluster quotas toward their clusters "
        "(s2l, selecting globally).",
        show_default=False,
    ),
]
TargetWeightOpt = Annotated[
    float,
    typer.Option(help="With --target-set: 0 is plain S2L, 1 fully target-weighted quotas."),
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        help="Settings bundle: 'reference' = the public reference code's mode (per-source "
        "selection, clusters of <= 2 rows set aside, '### Response:' with no newline, fp32 "
        "scoring); default: this package's own.",
        show_default=False,
    ),
]
ForceOpt = Annotated[bool, typer.Option(help="Redo the stage even if it is up to date.")]
ReportOpt = Annotated[
    bool, typer.Option("--report", help="Also write the HTML report (see `s2l report`).")
]
