"""The ``s2l`` command: one sub-command per stage, each a thin layer over the Python API.

Input problems (:class:`~smalltolarge.errors.S2LError`) are printed as one line on stderr with
exit status 2, no traceback.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from smalltolarge.errors import S2LError

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
ColOpt = Annotated[str | None, typer.Option(show_default=False)]
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
MethodOpt = Annotated[str, typer.Option(help="Selection method: s2l or random.")]
BudgetOpt = Annotated[str, typer.Option(help="A fraction (0.3, 30%) or a count (3000).")]
ClustersOpt = Annotated[
    int | None,
    typer.Option("--clusters", help="S2L k-means clusters K [default: 100].", show_default=False),
]
StratOpt = Annotated[
    str | None,
    typer.Option(help="Select per source: the pool's source column.", show_default=False),
]
SeedOpt = Annotated[int, typer.Option(help="Selection seed.")]
ForceOpt = Annotated[bool, typer.Option(help="Redo the stage even if it is up to date.")]


@app.command("prepare")
def prepare_cmd(
    pool: PoolArg,
    run_dir: RunDirOpt = Path("runs/default"),
    proxy: ProxyOpt = "tiny",
    template: TemplateOpt = "alpaca",
    max_length: MaxLenOpt = 512,
    prompt_column: ColOpt = None,
    input_column: ColOpt = None,
    response_column: ColOpt = None,
    source_column: ColOpt = None,
    id_column: ColOpt = None,
    split: Annotated[str, typer.Option(help="Split of a dataset dir or hub name.")] = "train",
    skip_invalid: Annotated[
        bool, typer.Option(help="Drop invalid examples and report them instead of stopping.")
    ] = False,
) -> None:
    """1-2. Load the pool, get the proxy's tokenizer, tokenise with the response mask."""
    from smalltolarge.prepare import prepare

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
    force: ForceOpt = False,
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
        force=force,
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
    force: ForceOpt = False,
) -> None:
    """5. Cluster the trajectories and select a balanced subset (or a baseline's)."""
    from smalltolarge.report import print_paths, print_selection_summary
    from smalltolarge.subset import select_subset

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
        force=force,
    )
    print_selection_summary(result.summary)
    print_paths(_selection_paths(result))


@app.command("run")
def run_cmd(
    pool: PoolArg,
    run_dir: RunDirOpt = Path("runs/default"),
    proxy: ProxyOpt = "tiny",
    template: TemplateOpt = "alpaca",
    max_length: MaxLenOpt = 512,
    prompt_column: ColOpt = None,
    input_column: ColOpt = None,
    response_column: ColOpt = None,
    source_column: ColOpt = None,
    id_column: ColOpt = None,
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
    epochs: EpochsOpt = 3.0,
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
        Path, typer.Option("--out-dir", "-o", help="predictions.jsonl and scores.json go here.")
    ],
    template: TemplateOpt = "alpaca",
    metric: Annotated[str, typer.Option(help="exact_match, rouge_l or auto.")] = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="Generation length limit.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 16,
    max_examples: Annotated[
        int | None, typer.Option(help="Evaluate the first N only.", show_default=False)
    ] = None,
    precision: PrecisionOpt = "auto",
) -> None:
    """7. Generate answers greedily and score them (exact match or ROUGE-L, with 95% CIs)."""
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
        precision=precision,
    )
    o = result.overall
    typer.echo(
        f"{result.metric}: {o['mean']:.4f} (95% CI {o['ci_low']:.4f}-{o['ci_high']:.4f}, "
        f"n={o['n']})"
    )
    for source, s in sorted(result.per_source.items()):
        typer.echo(
            f"  {source}: {s['mean']:.4f} ({s['ci_low']:.4f}-{s['ci_high']:.4f}, n={s['n']})"
        )
    typer.echo(f"predictions: {result.predictions_path}\nscores: {result.scores_path}")


@app.command("experiment")
def experiment_cmd(
    config: Annotated[
        Path, typer.Argument(help="Experiment YAML (see benchmarks/experiment.yaml).")
    ],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out-dir", "-o", help="Override the config's out_dir.", show_default=False),
    ] = None,
) -> None:
    """Methods x budgets x seeds (+ the full pool): select, fine-tune, evaluate; resumable.
    Writes results.csv, results.md and results.png."""
    from smalltolarge.experiment import run_experiment

    result = run_experiment(config, out_dir=out_dir)
    typer.echo(Path(result.table_md).read_text())
    typer.echo(f"results: {result.results_csv}\ntable: {result.table_md}\nplot: {result.plot_png}")


@app.command("demo")
def demo_cmd(
    run_dir: RunDirOpt = Path("runs/demo"),
    budget: BudgetOpt = "0.3",
    seed: SeedOpt = 0,
) -> None:
    """Run the whole chain on the bundled multi-source math pool with the tiny proxy."""
    from smalltolarge.demo import run_demo

    _report_run(run_demo(run_dir, budget=budget, seed=seed))


def _report_run(result) -> None:
    from smalltolarge.report import print_paths, print_selection_summary

    print_selection_summary(result.selection.summary)
    rd = Path(result.run_dir)
    print_paths(
        {
            "pool (normalised)": rd / "pool",
            "tokenised pool": rd / "tokenised",
            "proxy checkpoints": rd / "proxy",
            "trajectories": rd / "trajectories" / "losses.npy",
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
    # Idle OpenMP threads sleep instead of spinning (read when torch loads, so set it first):
    # on a machine whose cores are busy with other work, spinning threads slowed the tiny
    # proxy's training tenfold and more. OMP_WAIT_POLICY=ACTIVE restores spinning.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


if __name__ == "__main__":
    main()
