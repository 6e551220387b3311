"""The ``s2l`` command: one sub-command per stage, each a thin layer over the Python API.

Input problems (:class:`~smalltolarge.errors.S2LError`) are printed as one line on stderr with
exit status 2, no traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from smalltolarge.errors import S2LError
from smalltolarge.selection import SELECTORS  # numpy only: `s2l --help` stays fast

app = typer.Typer(
    name="s2l",
    help="S2L (SmallToLarge) data selection: train a small proxy on your SFT pool, record every "
    "example's loss trajectory, cluster the trajectories and pick a balanced subset.\n\n"
    "Stages: prepare -> train-proxy -> score -> select; `run` chains them, `demo` runs them on "
    "the bundled pool. Then finetune and evaluate the target on a selection, and `experiment` "
    "compares methods at equal budgets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

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
TemplateOpt = Annotated[str, typer.Option(help="Prompt format: alpaca, or the tokenizer's chat.")]
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
EpochsOpt = Annotated[float, typer.Option(help="Proxy training epochs.")]
LrOpt = Annotated[
    float | None,
    typer.Option("--lr", help="Learning rate (default: preset's, or 2e-5).", show_default=False),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(help="Per-device batch (default: preset's, or 128).", show_default=False),
]
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
PrecisionOpt = Annotated[str, typer.Option(help="auto (bf16 where fast), fp32, bf16 or fp16.")]
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


def _print_version(value: bool) -> None:
    if value:
        from smalltolarge import __version__

        typer.echo(f"s2l (smalltolarge) {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


@app.command("prepare")
def prepare_cmd(
    pool: PoolArg,
    run_dir: RunDirOpt = Path("runs/default"),
    proxy: ProxyOpt = "tiny",
    template: TemplateOpt = "alpaca",
    max_length: MaxLenOpt = 512,
    prompt_column: PromptColOpt = None,
    input_column: InputColOpt = None,
    response_column: ResponseColOpt = None,
    source_column: SourceColOpt = None,
    id_column: IdColOpt = None,
    split: Annotated[str, typer.Option(help="Split of a dataset dir or hub name.")] = "train",
    skip_invalid: Annotated[
        bool, typer.Option(help="Drop invalid examples and report them instead of stopping.")
    ] = False,
    preset: PresetOpt = None,
    dedup: Annotated[
        str | None,
        typer.Option(
            help="Drop exact and near duplicates first, compared on: prompt, response or both "
            "(one kept per group; groups in RUN/duplicates.json).",
            show_default=False,
        ),
    ] = None,
    dedup_threshold: Annotated[
        float | None,
        typer.Option(
            help="Character 5-gram Jaccard similarity from which two examples are near "
            "duplicates, in (0, 1] (default 0.8).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """1-2. Load the pool, get the proxy's tokenizer, tokenise with the response mask."""
    from smalltolarge.dedup import DedupSettings
    from smalltolarge.prepare import prepare

    if dedup_threshold is not None and dedup is None:
        raise S2LError("--dedup-threshold needs --dedup prompt, response or both")

    prepare(
        pool,
        run_dir,
        proxy=proxy,
        template=template,
        max_length=max_length,
        prompt_column=prompt_column,
        input_column=input_column,
        response_column=response_column,
        source_column=source_column,
        id_column=id_column,
        split=split,
        on_invalid="skip" if skip_invalid else "error",
        preset=preset,
        dedup=dedup,
        dedup_threshold=DedupSettings.threshold if dedup_threshold is None else dedup_threshold,
    )


@app.command("dedup")
def dedup_cmd(
    pool: PoolArg,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for the kept examples and the groups.")
    ],
    on: Annotated[str, typer.Option(help="Compare on: prompt, response or both.")] = "both",
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Character 5-gram Jaccard similarity from which two examples are near "
            "duplicates, in (0, 1] (default 0.8).",
            show_default=False,
        ),
    ] = None,
    prompt_column: PromptColOpt = None,
    input_column: InputColOpt = None,
    response_column: ResponseColOpt = None,
    id_column: IdColOpt = None,
    split: Annotated[str, typer.Option(help="Split of a dataset dir or hub name.")] = "train",
    skip_invalid: Annotated[
        bool, typer.Option(help="Drop invalid examples and report them instead of stopping.")
    ] = False,
) -> None:
    """Drop exact and near-duplicate examples: OUT/subset.* keeps one of each group, in the
    input's format; OUT/duplicates.json lists the groups."""
    from smalltolarge.data import load_pool
    from smalltolarge.dedup import DUPLICATES_FILE, DedupSettings, write_deduplicated

    settings = DedupSettings(
        on=on, threshold=DedupSettings.threshold if threshold is None else threshold
    )
    loaded = load_pool(
        pool,
        prompt_column=prompt_column,
        input_column=input_column,
        response_column=response_column,
        id_column=id_column,
        split=split,
        on_invalid="skip" if skip_invalid else "error",
    )
    written, report = write_deduplicated(loaded, out, settings)
    typer.echo(
        f"dedup: kept {report['n_examples'] - report['n_dropped']} of {report['n_examples']} "
        f"examples in {written}; dropped {report['n_dropped_exact']} exact and "
        f"{report['n_dropped_near']} near duplicates in {report['n_groups']} groups, listed in "
        f"{Path(out) / DUPLICATES_FILE}"
    )


@app.command("train-proxy")
def train_proxy_cmd(
    run_dir: RunDirOpt = Path("runs/default"),
    epochs: EpochsOpt = 3.0,
    lr: LrOpt = None,
    batch_size: BatchOpt = None,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    warmup_ratio: Annotated[float, typer.Option(help="Warm-up fraction of training.")] = 0.03,
    checkpoints: CkptOpt = 12,
    checkpoint_every: EveryOpt = None,
    seed: Annotated[int, typer.Option(help="Proxy initialisation and data-order seed.")] = 0,
    precision: PrecisionOpt = "auto",
    save_checkpoints: Annotated[
        bool, typer.Option(help="Keep the proxy's weights at each checkpoint.")
    ] = True,
    record: Annotated[
        bool, typer.Option(help="Score the trajectories during training (no `s2l score` needed).")
    ] = True,
    score_precision: Annotated[
        str | None,
        typer.Option(
            help="Precision of in-training scoring (default: --precision).", show_default=False
        ),
    ] = None,
    force: ForceOpt = False,
    preset: PresetOpt = None,
) -> None:
    """3. Train the proxy on the whole pool, recording its trajectories at T points of training."""
    from smalltolarge.proxy import train_proxy

    done = train_proxy(
        run_dir,
        epochs=epochs,
        learning_rate=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        warmup_ratio=warmup_ratio,
        n_checkpoints=checkpoints,
        checkpoint_every=checkpoint_every,
        seed=seed,
        precision=precision,
        save_checkpoints=save_checkpoints,
        record=record,
        score_precision=score_precision,
        force=force,
        preset=preset,
    )
    if not _is_main_process():
        return
    typer.echo(
        f"proxy: {len(done)} checkpoints in {Path(run_dir) / 'proxy'} "
        f"(steps {[s for s, _ in done]})"
    )


@app.command("score")
def score_cmd(
    run_dir: RunDirOpt = Path("runs/default"),
    precision: PrecisionOpt = "auto",
    max_tokens: MaxTokOpt = 4096,
    chunk_tokens: Annotated[
        int, typer.Option(help="Tokens per resumable work unit (per checkpoint).")
    ] = 1 << 20,
    embeddings: Annotated[
        bool, typer.Option(help="Also save final-checkpoint embeddings (embedding baselines).")
    ] = True,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ...", show_default=False)
    ] = None,
    force: ForceOpt = False,
    preset: PresetOpt = None,
) -> None:
    """4. Record every example's response loss at every proxy checkpoint (trajectories)."""
    from smalltolarge.scoring import score_trajectories

    traj = score_trajectories(
        run_dir,
        precision=precision,
        max_tokens=max_tokens,
        chunk_tokens=chunk_tokens,
        device=device,
        embeddings=embeddings,
        force=force,
        preset=preset,
    )
    n, t = traj.losses.shape
    if not _is_main_process():
        return
    typer.echo(
        f"trajectories: {n} examples x {t} checkpoints in "
        f"{Path(run_dir) / 'trajectories'} (losses.npy, ids.parquet, meta.json)"
    )


@app.command("select")
def select_cmd(
    run_dir: RunDirOpt = Path("runs/default"),
    method: MethodOpt = "s2l",
    budget: BudgetOpt = "0.3",
    clusters: ClustersOpt = None,
    stratify_by: StratOpt = None,
    seed: SeedOpt = 0,
    name: Annotated[
        str | None, typer.Option(help="Selection directory name.", show_default=False)
    ] = None,
    trajectories: Annotated[
        Path | None,
        typer.Option(
            help="Trajectories computed elsewhere: an N x T .npy (with "
            "--trajectory-ids) or a .jsonl/.parquet/.csv with an id column and one "
            "loss column per checkpoint.",
            show_default=False,
        ),
    ] = None,
    trajectory_ids: Annotated[
        Path | None,
        typer.Option(help="Ids of a .npy's rows (.txt, .json, .parquet).", show_default=False),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(
            help="The pool, when the run directory has none (with --trajectories).",
            show_default=False,
        ),
    ] = None,
    outlier_max_size: Annotated[
        int | None,
        typer.Option(
            help="S2L: set aside clusters of at most this many rows; they only fill budget "
            "left over at the end (reference: 2; default 0, off).",
            show_default=False,
        ),
    ] = None,
    force: ForceOpt = False,
    preset: PresetOpt = None,
    report: Annotated[
        bool, typer.Option("--report", help="Also write the HTML report (see `s2l report`).")
    ] = False,
) -> None:
    """5. Cluster the trajectories and select a balanced subset (or a baseline's).

    Several budgets, comma-separated (--budget 0.05,0.1,0.3), select with S2L from one
    clustering: each subset contains the smaller ones, and order.txt ranks the examples so
    that any prefix is a balanced selection."""
    from smalltolarge.report import print_paths, print_selection_summary
    from smalltolarge.subset import select_subset

    if "," in budget:
        _select_nested(run_dir, method, budget, clusters, stratify_by, seed, name,
                       trajectories, outlier_max_size, report)  # fmt: skip
        return
    result = select_subset(
        run_dir,
        method=method,
        budget=budget,
        seed=seed,
        n_clusters=clusters,
        stratify_by=stratify_by,
        name=name,
        trajectories=trajectories,
        trajectory_ids=trajectory_ids,
        pool=pool,
        settings={"outlier_max_size": outlier_max_size},
        preset=preset,
        force=force,
    )
    print_selection_summary(result.summary)
    print_paths(_selection_paths(result))
    if report:
        from smalltolarge.html_report import write_report

        typer.echo(f"report: {write_report(run_dir, result.directory.name)}")
    else:
        typer.echo(f"report: `s2l report {run_dir} --selection {result.directory.name}`")


@app.command("run")
def run_cmd(
    pool: PoolArg,
    run_dir: RunDirOpt = Path("runs/default"),
    proxy: ProxyOpt = "tiny",
    template: TemplateOpt = "alpaca",
    max_length: MaxLenOpt = 512,
    prompt_column: PromptColOpt = None,
    input_column: InputColOpt = None,
    response_column: ResponseColOpt = None,
    source_column: SourceColOpt = None,
    id_column: IdColOpt = None,
    skip_invalid: Annotated[
        bool, typer.Option(help="Drop invalid examples and report them instead of stopping.")
    ] = False,
    epochs: EpochsOpt = 3.0,
    lr: LrOpt = None,
    batch_size: BatchOpt = None,
    checkpoints: CkptOpt = 12,
    checkpoint_every: EveryOpt = None,
    precision: PrecisionOpt = "auto",
    max_tokens: MaxTokOpt = 4096,
    method: MethodOpt = "s2l",
    budget: BudgetOpt = "0.3",
    clusters: ClustersOpt = None,
    stratify_by: StratOpt = None,
    seed: SeedOpt = 0,
    proxy_seed: Annotated[int, typer.Option(help="Proxy training seed.")] = 0,
    preset: PresetOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Re-train the proxy (re-recording the trajectories) and redo the selection "
            "even when they are up to date; the pool is re-tokenised only when it changed."
        ),
    ] = False,
) -> None:
    """1-5. The whole chain; stages whose inputs and settings did not change are reused."""
    from smalltolarge.pipeline import run_pipeline

    result = run_pipeline(
        pool,
        run_dir,
        proxy=proxy,
        template=template,
        max_length=max_length,
        prompt_column=prompt_column,
        input_column=input_column,
        response_column=response_column,
        source_column=source_column,
        id_column=id_column,
        on_invalid="skip" if skip_invalid else "error",
        epochs=epochs,
        learning_rate=lr,
        batch_size=batch_size,
        n_checkpoints=checkpoints,
        checkpoint_every=checkpoint_every,
        precision=precision,
        proxy_seed=proxy_seed,
        max_tokens=max_tokens,
        method=method,
        budget=budget,
        n_clusters=clusters,
        stratify_by=stratify_by,
        seed=seed,
        preset=preset,
        force=force,
    )
    _report_run(result)


@app.command("finetune")
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
    template: TemplateOpt = "alpaca",
    max_length: MaxLenOpt = 512,
    epochs: Annotated[float, typer.Option(help="Target fine-tuning epochs.")] = 3.0,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 2e-5,
    batch_size: Annotated[int, typer.Option(help="Per-device batch.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    lora: Annotated[
        bool,
        typer.Option(
            help="LoRA (peft) instead of full fine-tuning; the "
            "adapter is merged into the saved model."
        ),
    ] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    precision: PrecisionOpt = "auto",
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    skip_invalid: Annotated[
        bool, typer.Option(help="Drop invalid examples and report them instead of stopping.")
    ] = False,
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
        lora=lora,
        lora_r=lora_r,
        precision=precision,
        seed=seed,
        force=force,
        on_invalid="skip" if skip_invalid else "error",
    )
    if _is_main_process():
        typer.echo(
            f"finetune: {result.n_train} examples, loss {result.train_loss_first} -> "
            f"{result.train_loss_last}; model in {result.model_dir}"
        )


@app.command("evaluate")
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
    template: TemplateOpt = "alpaca",
    metric: Annotated[
        str,
        typer.Option(
            help="exact_match, rouge_l, auto, or loss: the mean response loss (nats per "
            "token) with the training template and mask, one forward pass, no generation; "
            "written to losses.jsonl and loss.json."
        ),
    ] = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="Generation length limit.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 16,
    max_examples: Annotated[
        int | None, typer.Option(help="Evaluate the first N only.", show_default=False)
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(
            help="--metric loss: tokens per example, as in fine-tuning (default: 512).",
            show_default=False,
        ),
    ] = None,
    precision: PrecisionOpt = "auto",
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


@app.command("experiment")
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


@app.command("demo")
def demo_cmd(
    run_dir: RunDirOpt = Path("runs/demo"),
    budget: BudgetOpt = "0.3",
    seed: SeedOpt = 0,
    report: Annotated[
        bool, typer.Option("--report", help="Also write the HTML report (see `s2l report`).")
    ] = False,
) -> None:
    """Run the whole chain on the bundled multi-source math pool with the tiny proxy."""
    from smalltolarge.demo import run_demo

    result = run_demo(run_dir, budget=budget, seed=seed)
    _report_run(result)
    name = result.selection.directory.name
    if report:
        from smalltolarge.html_report import write_report

        typer.echo(f"report: {write_report(run_dir, name)}")
    else:
        typer.echo(f"report: `s2l report {run_dir} --selection {name}`")


@app.command("truncate-model")
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


@app.command("init-model")
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


@app.command("report")
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


@app.command("export")
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


@app.command("estimate")
def estimate_cmd(
    pool: PoolArg,
    target: Annotated[
        str, typer.Option(help="The model to fine-tune: a HF name or path, or a short name.")
    ],
    proxy: ProxyOpt = "tiny",
    gpus: Annotated[int, typer.Option(help="Devices in parallel (perfect scaling assumed).")] = 1,
    checkpoints: CkptOpt = 12,
    epochs: EpochsOpt = 3.0,
    target_epochs: Annotated[
        float | None,
        typer.Option(help="Target fine-tuning epochs (default: --epochs).", show_default=False),
    ] = None,
    budget: Annotated[
        str, typer.Option(help="Budgets, comma-separated: fractions (0.1,0.3) or counts.")
    ] = "0.1,0.3",
    max_length: MaxLenOpt = 512,
    template: TemplateOpt = "alpaca",
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
) -> None:
    """Before training anything: the pool's tokens, each stage's FLOPs and wall time, what
    selection costs and what fine-tuning on the subset saves."""
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
    )
    typer.echo(format_estimate(result))


@app.command("curve")
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


def _select_nested(
    run_dir, method, budget, clusters, stratify_by, seed, name, trajectories, outlier, report
) -> None:
    from smalltolarge.nested import ORDER_FILE, select_nested
    from smalltolarge.report import print_paths, print_selection_summary

    if method != "s2l" or stratify_by is not None or trajectories is not None:
        raise S2LError(
            "nested budgets (a comma-separated --budget) are for s2l on the run's own "
            "trajectories, without --stratify-by"
        )
    results = select_nested(
        run_dir,
        [b.strip() for b in budget.split(",") if b.strip()],
        seed=seed,
        n_clusters=clusters,
        outlier_max_size=outlier or 0,
        name=name,
    )
    for result in results:
        print_selection_summary(result.summary)
    paths = {f"selection {r.summary['budget']}": r.directory for r in results}
    print_paths({**paths, "ranking": results[-1].directory / ORDER_FILE})
    if report:
        from smalltolarge.html_report import write_report

        for r in results:
            typer.echo(f"report: {write_report(run_dir, r.directory.name)}")


def _report_run(result) -> None:
    from smalltolarge.report import print_paths, print_selection_summary
    from smalltolarge.runs import RunDir

    print_selection_summary(result.selection.summary)
    rd = Path(result.run_dir)
    print_paths(
        {
            "pool (normalised)": rd / "pool",
            "tokenised pool": rd / "tokenised",
            "proxy checkpoints": rd / "proxy",
            "trajectories": RunDir(rd).trajectories_losses,
            **_selection_paths(result.selection),
        }
    )
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    typer.echo(f"time: {stages}; total {sum(result.seconds.values()):.1f}s")


def _selection_paths(result) -> dict[str, Path]:
    return {
        "selected ids": result.directory / "ids.txt",
        "subset": result.subset_path,
        "summary": result.directory / "summary.json",
    }


def _is_main_process() -> bool:
    from smalltolarge.runs import distributed_state

    return distributed_state().is_main_process


def main() -> None:
    """Entry point of the ``s2l`` console command."""
    _quiet_libraries()
    started = time.perf_counter()
    try:
        app()
    except S2LError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted after {time.perf_counter() - started:.0f}s; re-run the same "
            "command to resume",
            err=True,
        )
        sys.exit(130)


def _quiet_libraries() -> None:
    # OMP_WAIT_POLICY and TOKENIZERS_PARALLELISM are set by `import smalltolarge` (above).
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


if __name__ == "__main__":
    main()
