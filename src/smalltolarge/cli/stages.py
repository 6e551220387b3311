"""The selection stages on a run directory: ``prepare``, ``dedup``, ``train-proxy``,
``score``, ``select``, and ``run`` / ``demo`` that chain them.

Every default is the stage's own (:mod:`smalltolarge.settings`); the stage functions check
the values, so a bad one is refused there, once, with the message the Python API gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from smalltolarge.cli.common import (
    command,
    is_main_process,
    report_run,
    report_selection,
    selection_paths,
)
from smalltolarge.cli.modes import (
    PER_SOURCE,
    PREPARE,
    RUN,
    SELECT,
    TRAIN_PROXY,
    check_options,
    select_modes,
    selects_per_source,
)
from smalltolarge.cli.options import (
    AssistantTurnsOpt,
    BatchOpt,
    BudgetOpt,
    CkptOpt,
    ClustersOpt,
    DedupOpt,
    DedupThresholdOpt,
    EpochsOpt,
    EveryOpt,
    ForceOpt,
    GradAccumOpt,
    IdColOpt,
    InputColOpt,
    LrOpt,
    MaxLenOpt,
    MaxTokOpt,
    MethodOpt,
    PoolArg,
    PrecisionOpt,
    PresetOpt,
    PromptColOpt,
    ProxyOpt,
    ReportOpt,
    ResponseColOpt,
    RunDirOpt,
    ScorePrecisionOpt,
    SeedOpt,
    SkipInvalidOpt,
    SourceColOpt,
    SplitOpt,
    StratOpt,
    TargetSetOpt,
    TargetWeightOpt,
    TemplateOpt,
    WarmupOpt,
    choices,
)
from smalltolarge.errors import S2LError
from smalltolarge.settings import (
    DEDUP_ON,
    DEFAULT_DEDUP_THRESHOLD,
    DEFAULT_RUN_DIR,
    PrepareSettings,
    ProbeSettings,
    ProxySettings,
    ScoreSettings,
    SelectSettings,
    spelled_as,
)

#: How ``prepare`` and ``run`` spell the dedup settings (``s2l dedup`` has its own names).
DEDUP_OPTIONS = {"dedup": "--dedup", "dedup_threshold": "--dedup-threshold"}


@command("prepare")
def prepare_cmd(
    ctx: typer.Context,
    pool: PoolArg,
    run_dir: RunDirOpt = DEFAULT_RUN_DIR,
    proxy: ProxyOpt = PrepareSettings.proxy,
    template: TemplateOpt = PrepareSettings.template,
    max_length: MaxLenOpt = PrepareSettings.max_length,
    prompt_column: PromptColOpt = PrepareSettings.prompt_column,
    input_column: InputColOpt = PrepareSettings.input_column,
    response_column: ResponseColOpt = PrepareSettings.response_column,
    source_column: SourceColOpt = PrepareSettings.source_column,
    id_column: IdColOpt = PrepareSettings.id_column,
    split: SplitOpt = PrepareSettings.split,
    skip_invalid: SkipInvalidOpt = False,
    preset: PresetOpt = None,
    dedup: DedupOpt = PrepareSettings.dedup,
    dedup_threshold: DedupThresholdOpt = PrepareSettings.dedup_threshold,
    assistant_turns: AssistantTurnsOpt = PrepareSettings.assistant_turns,
) -> None:
    """1-2. Load the pool, get the proxy's tokenizer, tokenise with the response mask."""
    from smalltolarge.prepare import prepare

    check_options(ctx, PREPARE, {"prepare"})
    with spelled_as(DEDUP_OPTIONS):
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
            dedup_threshold=dedup_threshold,
            assistant_turns=assistant_turns,
        )


@command("dedup")
def dedup_cmd(
    pool: PoolArg,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for the kept examples and the groups.")
    ],
    on: Annotated[str, typer.Option(help=f"Compare on: {choices(DEDUP_ON)}.")] = "both",
    threshold: Annotated[
        float,
        typer.Option(
            help="Character 5-gram Jaccard similarity from which two examples are near "
            "duplicates, in (0, 1]."
        ),
    ] = DEFAULT_DEDUP_THRESHOLD,
    prompt_column: PromptColOpt = None,
    input_column: InputColOpt = None,
    response_column: ResponseColOpt = None,
    id_column: IdColOpt = None,
    split: SplitOpt = PrepareSettings.split,
    skip_invalid: SkipInvalidOpt = False,
) -> None:
    """Drop exact and near-duplicate examples: OUT/subset.* keeps one of each group, in the
    input's format; OUT/duplicates.json lists the groups."""
    from smalltolarge.data import load_pool
    from smalltolarge.dedup import DUPLICATES_FILE, DedupSettings, write_deduplicated
    from smalltolarge.runs import output_dir

    with spelled_as({"dedup": "--on", "dedup_threshold": "--threshold"}):
        settings = DedupSettings(on=on, threshold=threshold)
    output_dir(out)  # before the pool is read
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


@command("train-proxy")
def train_proxy_cmd(
    ctx: typer.Context,
    run_dir: RunDirOpt = DEFAULT_RUN_DIR,
    epochs: EpochsOpt = ProxySettings.epochs,
    lr: LrOpt = ProxySettings.learning_rate,
    batch_size: BatchOpt = ProxySettings.batch_size,
    grad_accum: GradAccumOpt = ProxySettings.grad_accum,
    warmup_ratio: WarmupOpt = ProxySettings.warmup_ratio,
    checkpoints: CkptOpt = ProxySettings.n_checkpoints,
    checkpoint_every: EveryOpt = ProxySettings.checkpoint_every,
    seed: Annotated[
        int, typer.Option(help="Proxy initialisation and data-order seed.")
    ] = ProxySettings.seed,
    precision: PrecisionOpt = ProxySettings.precision,
    save_checkpoints: Annotated[
        bool, typer.Option(help="Keep the proxy's weights at each checkpoint.")
    ] = True,
    record: Annotated[
        bool, typer.Option(help="Score the trajectories during training (no `s2l score` needed).")
    ] = True,
    score_precision: ScorePrecisionOpt = ProxySettings.score_precision,
    max_tokens: MaxTokOpt = ProxySettings.max_tokens,
    force: ForceOpt = False,
    preset: PresetOpt = None,
) -> None:
    """3. Train the proxy on the whole pool, recording its trajectories at T points of training."""
    from smalltolarge.proxy import train_proxy

    check_options(ctx, TRAIN_PROXY, {"recording" if record else "not-recording"})
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
        max_tokens=max_tokens,
        force=force,
        preset=preset,
    )
    if not is_main_process():
        return
    typer.echo(
        f"proxy: {len(done)} checkpoints in {Path(run_dir) / 'proxy'} "
        f"(steps {[s for s, _ in done]})"
    )


@command("score")
def score_cmd(
    run_dir: RunDirOpt = DEFAULT_RUN_DIR,
    precision: PrecisionOpt = ScoreSettings.precision,
    max_tokens: MaxTokOpt = ScoreSettings.max_tokens,
    chunk_tokens: Annotated[
        int, typer.Option(help="Tokens per resumable work unit (per checkpoint).")
    ] = ScoreSettings.chunk_tokens,
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
    if not is_main_process():
        return
    typer.echo(
        f"trajectories: {n} examples x {t} checkpoints in "
        f"{Path(run_dir) / 'trajectories'} (losses.npy, ids.parquet, meta.json)"
    )


@command("select")
def select_cmd(
    ctx: typer.Context,
    run_dir: RunDirOpt = DEFAULT_RUN_DIR,
    method: MethodOpt = SelectSettings.method,
    budget: BudgetOpt = str(SelectSettings.budget),
    clusters: ClustersOpt = SelectSettings.n_clusters,
    stratify_by: StratOpt = SelectSettings.stratify_by,
    seed: SeedOpt = SelectSettings.seed,
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
    target_set: TargetSetOpt = SelectSettings.target_set,
    target_weight: TargetWeightOpt = SelectSettings.target_weight,
    method_setting: Annotated[
        list[str] | None,
        typer.Option(
            "--method-setting",
            help="KEY=VALUE: a further setting of the method, by its Python name (e.g. "
            "check_weight=0.5 for s2l-checked, cut_fraction=0.2 for s2l-cut, n_iter=50); "
            "repeatable. A setting the method does not take is refused.",
            show_default=False,
        ),
    ] = None,
    force: ForceOpt = False,
    preset: PresetOpt = None,
    report: ReportOpt = False,
) -> None:
    """5. Cluster the trajectories and select a balanced subset (or a baseline's).

    Several budgets, comma-separated (--budget 0.05,0.1,0.3), select with S2L from one
    clustering: each subset contains the smaller ones, and order.txt ranks the examples so
    that any prefix is a balanced selection."""
    from smalltolarge.report import print_paths, print_selection_summary
    from smalltolarge.subset import select_subset

    modes = select_modes(budget, stratify_by, preset, trajectories)
    check_options(ctx, SELECT, modes)
    if "nested" in modes:
        _select_nested(run_dir, method, budget, clusters, stratify_by, seed, name,
                       outlier_max_size, preset, force, report)  # fmt: skip
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
        settings={"outlier_max_size": outlier_max_size, **method_settings(method_setting)},
        preset=preset,
        target_set=target_set,
        target_weight=target_weight,
        force=force,
    )
    print_selection_summary(result.summary)
    print_paths(selection_paths(result))
    report_selection(run_dir, result.directory.name, report)


def method_settings(pairs: list[str] | None) -> dict[str, object]:
    """``["k=v", ...]`` of ``--method-setting`` as ``{k: v}``, each value read as JSON where it
    is JSON (``0.5``, ``3``, ``true``), else as text."""
    import json

    out: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise S2LError(f"--method-setting {pair!r}: give KEY=VALUE, e.g. check_weight=0.5")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key.strip()] = value
    return out


@command("probe")
def probe_cmd(
    run_dir: RunDirOpt = DEFAULT_RUN_DIR,
    target: Annotated[
        str,
        typer.Option(
            help="The model you will fine-tune (HF name, local directory or offline short "
            "name), untrained: its loss on a sample of the pool is the probe.",
            show_default=False,
        ),
    ] = ...,
    fraction: Annotated[
        float, typer.Option(help="Share of every source to probe, in (0, 1].")
    ] = ProbeSettings.fraction,
    max_examples: Annotated[
        int, typer.Option(help="At most this many examples in all (the fraction is lowered).")
    ] = ProbeSettings.max_examples,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = ProbeSettings.seed,
    template: TemplateOpt = ProbeSettings.template,
    max_length: MaxLenOpt = ProbeSettings.max_length,
    precision: PrecisionOpt = ProbeSettings.precision,
    max_tokens: MaxTokOpt = ProbeSettings.max_tokens,
    force: ForceOpt = False,
) -> None:
    """4b. Score a per-source sample of the pool with the untrained TARGET (never trained on,
    not counted against the budget): every selection then reports how well the proxy's final
    loss agrees with the target's (proxy_fit), and s2l-checked sizes its cluster budgets by it."""
    from smalltolarge.probe import probe_target

    probe_target(
        run_dir,
        target,
        fraction=fraction,
        max_examples=max_examples,
        seed=seed,
        template=template,
        max_length=max_length,
        precision=precision,
        max_tokens=max_tokens,
        force=force,
        progress=is_main_process(),
    )


@command("extend")
def extend_cmd(
    run_dir: Annotated[Path, typer.Argument(help="The run to grow.")],
    new_pool: Annotated[str, typer.Argument(help="The new examples: a pool file or dataset.")],
    selection: Annotated[
        str | None,
        typer.Option(
            help="The S2L selection to extend (default: the latest made on the run's "
            "trajectories).",
            show_default=False,
        ),
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            help="A fraction of the grown pool or a count (default: the selection's, as given).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of the new draws (default: the selection's).", show_default=False),
    ] = None,
    prompt_column: PromptColOpt = PrepareSettings.prompt_column,
    input_column: InputColOpt = PrepareSettings.input_column,
    response_column: ResponseColOpt = PrepareSettings.response_column,
    source_column: SourceColOpt = PrepareSettings.source_column,
    id_column: IdColOpt = PrepareSettings.id_column,
    split: SplitOpt = PrepareSettings.split,
    skip_invalid: SkipInvalidOpt = False,
) -> None:
    """Add new examples to a run: score them at the kept proxy checkpoints (they only), assign
    them to the selection's clusters and extend it, keeping every example it selected."""
    from smalltolarge.extend import extend_run
    from smalltolarge.report import print_paths, print_selection_summary

    result = extend_run(
        run_dir,
        new_pool,
        selection=selection,
        budget=budget,
        seed=seed,
        prompt_column=prompt_column,
        input_column=input_column,
        response_column=response_column,
        source_column=source_column,
        id_column=id_column,
        split=split,
        on_invalid="skip" if skip_invalid else "error",
    )
    if result.selection is None:
        typer.echo(f"extend: {result.name} added; no S2L selection to extend: `s2l select`")
        return
    print_selection_summary(result.selection.summary)
    print_paths(selection_paths(result.selection))


@command("run")
def run_cmd(
    ctx: typer.Context,
    pool: PoolArg,
    run_dir: RunDirOpt = DEFAULT_RUN_DIR,
    proxy: ProxyOpt = PrepareSettings.proxy,
    template: TemplateOpt = PrepareSettings.template,
    max_length: MaxLenOpt = PrepareSettings.max_length,
    prompt_column: PromptColOpt = PrepareSettings.prompt_column,
    input_column: InputColOpt = PrepareSettings.input_column,
    response_column: ResponseColOpt = PrepareSettings.response_column,
    source_column: SourceColOpt = PrepareSettings.source_column,
    id_column: IdColOpt = PrepareSettings.id_column,
    split: SplitOpt = PrepareSettings.split,
    skip_invalid: SkipInvalidOpt = False,
    dedup: DedupOpt = PrepareSettings.dedup,
    dedup_threshold: DedupThresholdOpt = PrepareSettings.dedup_threshold,
    assistant_turns: AssistantTurnsOpt = PrepareSettings.assistant_turns,
    epochs: EpochsOpt = ProxySettings.epochs,
    lr: LrOpt = ProxySettings.learning_rate,
    batch_size: BatchOpt = ProxySettings.batch_size,
    grad_accum: GradAccumOpt = ProxySettings.grad_accum,
    warmup_ratio: WarmupOpt = ProxySettings.warmup_ratio,
    checkpoints: CkptOpt = ProxySettings.n_checkpoints,
    checkpoint_every: EveryOpt = ProxySettings.checkpoint_every,
    precision: PrecisionOpt = ProxySettings.precision,
    score_precision: ScorePrecisionOpt = ProxySettings.score_precision,
    max_tokens: MaxTokOpt = ProxySettings.max_tokens,
    method: MethodOpt = SelectSettings.method,
    budget: BudgetOpt = str(SelectSettings.budget),
    clusters: ClustersOpt = SelectSettings.n_clusters,
    stratify_by: StratOpt = SelectSettings.stratify_by,
    target_set: TargetSetOpt = SelectSettings.target_set,
    target_weight: TargetWeightOpt = SelectSettings.target_weight,
    seed: SeedOpt = SelectSettings.seed,
    proxy_seed: Annotated[int, typer.Option(help="Proxy training seed.")] = ProxySettings.seed,
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

    check_options(ctx, RUN, {PER_SOURCE if selects_per_source(stratify_by, preset) else "global"})
    with spelled_as(DEDUP_OPTIONS):
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
            split=split,
            on_invalid="skip" if skip_invalid else "error",
            dedup=dedup,
            dedup_threshold=dedup_threshold,
            assistant_turns=assistant_turns,
            epochs=epochs,
            learning_rate=lr,
            batch_size=batch_size,
            grad_accum=grad_accum,
            warmup_ratio=warmup_ratio,
            n_checkpoints=checkpoints,
            checkpoint_every=checkpoint_every,
            precision=precision,
            score_precision=score_precision,
            proxy_seed=proxy_seed,
            max_tokens=max_tokens,
            method=method,
            budget=budget,
            n_clusters=clusters,
            stratify_by=stratify_by,
            target_set=target_set,
            target_weight=target_weight,
            seed=seed,
            preset=preset,
            force=force,
        )
    report_run(result)


@command("demo")
def demo_cmd(
    run_dir: RunDirOpt = Path("runs/demo"),
    budget: BudgetOpt = str(SelectSettings.budget),
    seed: SeedOpt = SelectSettings.seed,
    report: ReportOpt = False,
) -> None:
    """Run the whole chain on the bundled multi-source math pool with the tiny proxy."""
    from smalltolarge.demo import run_demo

    result = run_demo(run_dir, budget=budget, seed=seed)
    report_run(result)
    report_selection(run_dir, result.selection.directory.name, report)


def _select_nested(
    run_dir, method, budget, clusters, stratify_by, seed, name, outlier, preset, force, report
) -> None:
    from smalltolarge.nested import ORDER_FILE, select_nested
    from smalltolarge.report import print_paths, print_selection_summary

    if method != "s2l":
        raise S2LError(
            f"nested budgets (a comma-separated --budget) are for s2l, not --method {method}: "
            "select one budget at a time"
        )
    results = select_nested(
        run_dir,
        [b.strip() for b in budget.split(",") if b.strip()],
        seed=seed,
        n_clusters=clusters,
        outlier_max_size=outlier,
        stratify_by=stratify_by,
        name=name,
        preset=preset,
        force=force,
    )
    for result in results:
        print_selection_summary(result.summary)
    paths = {f"selection {r.summary['budget']}": r.directory for r in results}
    print_paths({**paths, "ranking": results[-1].directory / ORDER_FILE})
    if report:
        from smalltolarge.html_report import write_report

        for r in results:
            typer.echo(f"report: {write_report(run_dir, r.directory.name)}")
