"""Running an experiment: one proxy, then select, fine-tune and evaluate every planned run.

:func:`run_experiment` checks the config, the budgets and the eval set against the pool before
anything is trained, trains and scores the proxy once (each stage skipped when up to date), then
works through the plan (:mod:`smalltolarge.experiment.plan`), appending each finished run's
rows to ``results.csv`` at once, and ends with the report, the comparisons and the plots
(:mod:`smalltolarge.experiment.results`).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smalltolarge.compare import BASE, FULL_POOL, calibration_markdown, write_comparisons
from smalltolarge.data import Pool, iter_jsonl_lines, load_pool
from smalltolarge.errors import S2LError
from smalltolarge.evaluate import evaluate
from smalltolarge.experiment.config import ExperimentConfig, load_config
from smalltolarge.experiment.plan import PlannedRun, calibration_runs, planned_runs
from smalltolarge.experiment.results import (
    LOSS,
    plot_calibration,
    plot_results,
    read_results,
    write_results,
    write_table,
)
from smalltolarge.finetune import finetune
from smalltolarge.prepare import prepare
from smalltolarge.probe import probe_target
from smalltolarge.progress import messages
from smalltolarge.proxy import train_proxy
from smalltolarge.runs import (
    RunDir,
    atomic_open,
    atomic_write_json,
    atomic_write_text,
    fingerprint,
    read_json,
)
from smalltolarge.scoring import score_trajectories
from smalltolarge.selection import make_selector, resolve_budget
from smalltolarge.selection.base import needs_probe
from smalltolarge.settings import (
    EvalSettings,
    FinetuneSettings,
    PrepareSettings,
    ProxySettings,
)
from smalltolarge.subset import SelectionExistsError, select_subset

__all__ = ["ExperimentResult", "check_no_overlap", "run_experiment"]


@dataclass
class ExperimentResult:
    """Where an experiment wrote its outputs, and every row of ``results.csv``
    (``calibration_md``/``calibration_png`` only for a calibration)."""

    out_dir: Path
    results_csv: Path
    table_md: Path
    plot_png: Path
    rows: list[dict[str, str]]
    comparisons_csv: Path | None = None
    calibration_md: Path | None = None
    calibration_png: Path | None = None


def run_experiment(
    config: str | os.PathLike | dict,
    *,
    out_dir: str | os.PathLike | None = None,
    calibrate: bool = False,
    progress: bool = True,
) -> ExperimentResult:
    """Run (or resume) the experiment described by ``config``; see :mod:`smalltolarge.experiment`.

    The whole config, the budgets (against the pool size) and the absence of overlap between
    the eval set and the pool are checked before anything is trained. ``out_dir`` overrides
    the config's. ``calibrate`` runs only random at the smallest and largest budget and the
    full pool, and writes ``calibration.md`` and ``calibration.png`` besides the usual outputs.

    Raises:
        S2LError: an invalid config, an eval set sharing prompts with the pool, results in
            ``out_dir`` made with other settings, or any error of the stages themselves.
    """
    cfg = load_config(config, out_dir=out_dir)
    say = messages(progress)
    started = time.perf_counter()
    pool_path, eval_path = _materialise_data(cfg)
    pool, eval_pool = load_pool(pool_path), load_pool(eval_path)
    for spec in cfg.methods:
        for budget in spec.budgets:
            resolve_budget(budget, len(pool))
    check_no_overlap(eval_pool, pool)
    csv_path = cfg.out_dir / "results.csv"
    _check_same_settings(cfg, pool, eval_pool, csv_path)

    runs, notes = calibration_runs(cfg, len(pool)) if calibrate else (planned_runs(cfg), [])
    for note in notes:
        say(f"calibrate: {note}")
    rows = read_results(csv_path)
    done = {(r["method"], r["budget"], r["seed"]) for r in rows if r["source"] == "all"}
    run_dir = RunDir(cfg.out_dir / "run")
    if any(run.method not in (FULL_POOL, BASE) and run.key not in done for run in runs):
        _train_proxy(cfg, pool_path, run_dir, progress)

    n_skipped = 0
    for k, run in enumerate(runs, 1):
        label = f"[{k}/{len(runs)}] {run.label}"
        if run.key in done:
            say(f"{label}: already in {csv_path.name}, skipped")
            n_skipped += 1
            continue
        say(f"{label}: started")
        new_rows = _do_run(cfg, run, run_dir, pool_path, eval_path, progress)
        rows += new_rows
        write_results(csv_path, rows)
        for overall in (r for r in new_rows if r["source"] == "all"):
            say(
                f"{label}: {overall['metric']} {float(overall['value']):.4g} "
                f"[{float(overall['ci_low']):.4g}, {float(overall['ci_high']):.4g}] on "
                f"{overall['n_eval']} items, n_train {overall['n_train']} "
                f"(train {float(overall['train_seconds']):.0f} s, "
                f"eval {float(overall['eval_seconds']):.0f} s)"
            )

    table_path, png_path = cfg.out_dir / "results.md", cfg.out_dir / "results.png"
    table = write_table(csv_path, command=cfg.command)
    atomic_write_text(table_path, table)
    comparisons_path = write_comparisons(cfg.out_dir)
    plot_results(csv_path, png_path)
    result = ExperimentResult(cfg.out_dir, csv_path, table_path, png_path, rows, comparisons_path)
    say(table)
    if calibrate:
        result.calibration_md = cfg.out_dir / "calibration.md"
        calibration = calibration_markdown(cfg.out_dir)
        if notes:
            calibration += "\n" + "\n".join(f"Note: {note}" for note in notes) + "\n"
        if cfg.command:
            calibration += f"\nProduced by `{cfg.command} --calibrate`.\n"
        atomic_write_text(result.calibration_md, calibration)
        result.calibration_png = plot_calibration(csv_path, cfg.out_dir / "calibration.png")
        say(calibration)
    say(
        f"experiment {cfg.name}: {len(runs)} runs ({n_skipped} skipped) in "
        f"{time.perf_counter() - started:.0f} s; results in {csv_path}, {table_path}, "
        f"{comparisons_path}, {png_path}"
        + (f", {result.calibration_md}, {result.calibration_png}" if calibrate else "")
    )
    return result


def _materialise_data(cfg: ExperimentConfig) -> tuple[Path, Path]:
    """The pool and eval files to use: the configured ones, or their cut-down copies in OUT."""
    pool_path, eval_path = cfg.pool, cfg.eval
    if cfg.pool_limit is not None:
        lines = _jsonl_lines(cfg.pool, "pool_limit")
        if len(lines) < cfg.pool_limit:
            raise S2LError(
                f"pool_limit {cfg.pool_limit}, but {cfg.pool} has only {len(lines)} examples"
            )
        pool_path = cfg.out_dir / "pool.jsonl"
        _write_if_changed(pool_path, b"".join(lines[: cfg.pool_limit]))
    if cfg.eval_per_source is not None:
        lines = _jsonl_lines(cfg.eval, "eval_per_source")
        full = load_pool(cfg.eval)
        if not full.has_sources:
            raise S2LError(f"eval_per_source: {cfg.eval} has no source column")
        taken: dict[str, int] = {}
        keep = []
        for row, source in zip(full.dataset["row"], full.sources(), strict=True):
            if taken.get(source, 0) < cfg.eval_per_source:
                taken[source] = taken.get(source, 0) + 1
                keep.append(row)
        eval_path = cfg.out_dir / "eval.jsonl"
        _write_if_changed(eval_path, b"".join(lines[row] for row in keep))
    return pool_path, eval_path


def _jsonl_lines(path: Path, key: str) -> list[bytes]:
    """The non-blank lines of a JSONL file, byte for byte (newline-terminated), by record."""
    if path.suffix != ".jsonl":
        raise S2LError(f"{key} needs a JSONL file; {path} is not one")
    return [
        line if line.endswith(b"\n") else line + b"\n"
        for _, _, line in iter_jsonl_lines(os.fspath(path))
    ]


def _write_if_changed(path: Path, content: bytes) -> None:
    # An unchanged file keeps its mtime, so a resumed experiment looks exactly as it left off.
    if path.is_file() and path.read_bytes() == content:
        return
    with atomic_open(path, "wb") as f:
        f.write(content)


def check_no_overlap(eval_pool: Pool, pool: Pool) -> None:
    """Refuse an eval set that shares a prompt with the training pool.

    Prompts are compared as instruction + input (+ chat turns), whitespace-collapsed and
    case-folded, so a re-formatted copy of a training item is caught too.

    Raises:
        S2LError: naming the number of overlapping eval items and the first pair of ids.
    """
    pool_ids = dict(zip(_prompt_keys(pool), pool.ids, strict=True))
    overlap = [
        (eval_id, pool_ids[key])
        for key, eval_id in zip(_prompt_keys(eval_pool), eval_pool.ids, strict=True)
        if key in pool_ids
    ]
    if overlap:
        eval_id, pool_id = overlap[0]
        raise S2LError(
            f"{len(overlap)} of the {len(eval_pool)} eval items share a prompt with the pool "
            f"(first: eval id {eval_id} = pool id {pool_id}); a held-out set must be disjoint "
            "from the training pool"
        )


def _prompt_keys(pool: Pool) -> list[str]:
    columns = (pool.dataset[c] for c in ("instruction", "input", "messages"))
    return [" ".join("\n".join(parts).split()).casefold() for parts in zip(*columns, strict=True)]


def _check_same_settings(cfg: ExperimentConfig, pool: Pool, eval_pool: Pool, csv: Path) -> None:
    """Refuse to add to results made with other data or settings: a resumed experiment would
    otherwise silently mix them in one table. Adding methods, budgets or seeds is fine."""
    meta_path = cfg.out_dir / "experiment.json"
    shared = fingerprint(
        pool.fingerprint, eval_pool.fingerprint, cfg.proxy, cfg.target, cfg.evaluation,
        cfg.stratify_by,
    )  # fmt: skip
    # By label: the same label must keep meaning the same selection across resumes.
    entries = {
        spec.label: {
            "method": spec.method,
            "settings": spec.settings,
            "stratify_by": cfg.stratify_column(spec),
            # only when set, so that results made before the key existed still resume
            **({"preset": spec.preset} if spec.preset else {}),
            **(
                {"target_set": str(spec.target_set), "target_weight": spec.target_weight}
                if spec.target_set
                else {}
            ),
        }
        for spec in cfg.methods
    }
    if csv.is_file() and meta_path.is_file():
        saved = read_json(meta_path)
        changed = [m for m, e in saved.get("methods", {}).items() if entries.get(m, e) != e]
        if saved.get("fingerprint") != shared or changed:
            what = f"the settings of {', '.join(changed)}" if changed else "the data or settings"
            raise S2LError(
                f"{csv} holds results made with other {what.removeprefix('the ')}; "
                "use another out_dir, or delete results.csv to start over"
            )
        entries = {**saved.get("methods", {}), **entries}
    atomic_write_json(meta_path, {"name": cfg.name, "fingerprint": shared, "methods": entries})


def _train_proxy(cfg: ExperimentConfig, pool_path: Path, run_dir: RunDir, progress: bool) -> None:
    """Prepare, train and score the proxy; each stage is skipped when already up to date."""
    prepare(pool_path, run_dir, **cfg.stage_kwargs("proxy", PrepareSettings), progress=progress)
    training = cfg.stage_kwargs("proxy", ProxySettings)
    train_proxy(run_dir, **training, progress=progress)
    score_trajectories(run_dir, precision=training["precision"], progress=progress)
    if cfg.probe or any(_reads_probe(spec) for spec in cfg.methods):
        # once per experiment: the untrained target's loss on a sample of the pool
        probe_target(
            run_dir,
            cfg.target["model"],
            template=cfg.target["template"],
            max_length=cfg.target["max_length"],
            progress=progress,
        )


def _reads_probe(spec) -> bool:
    """Whether the method of a methods entry reads the target's probe losses."""
    return needs_probe(make_selector(spec.method, **spec.settings))


def _do_run(
    cfg: ExperimentConfig,
    run: PlannedRun,
    run_dir: RunDir,
    pool_path: Path,
    eval_path: Path,
    progress: bool,
) -> list[dict[str, str]]:
    """Select, fine-tune and evaluate one run; return its results.csv rows ("all" first)."""
    started = time.perf_counter()
    target = cfg.target
    model_out = cfg.out_dir / "models" / run.name
    if run.method == BASE:
        model_dir, n_train, train_seconds = Path(target["model"]), 0, 0.0
    else:
        if run.method == FULL_POOL:
            train_data: Path = pool_path
        else:
            settings = dict(run.settings)
            # select_subset takes S2L's K as its own argument, not among the settings
            n_clusters = settings.pop("n_clusters", None)
            try:
                train_data = select_subset(
                    run_dir,
                    method=run.selector,
                    budget=run.budget_value,
                    seed=run.seed,
                    n_clusters=n_clusters,
                    stratify_by=run.stratify_by,
                    settings=settings,
                    preset=run.preset,
                    target_set=run.target_set,
                    target_weight=run.target_weight,
                    name=run.name,
                ).directory
            except SelectionExistsError as e:  # `s2l experiment` has no --name or --force
                raise S2LError(
                    f"{e.directory} holds a complete selection {e.why}: the experiment's run "
                    f"{run_dir.root} was made with other data or settings; use another out_dir, "
                    f"or delete {e.directory} to select it again"
                ) from None
        train_started = time.perf_counter()
        tuned = finetune(
            target["model"],
            train_data,
            model_out,
            **{**cfg.stage_kwargs("target", FinetuneSettings), "seed": run.seed},
            progress=progress,
        )
        train_seconds = time.perf_counter() - train_started
        model_dir, n_train = tuned.model_dir, tuned.n_train

    results = _evaluate_run(cfg, model_dir, eval_path, cfg.out_dir / "eval" / run.name, progress)
    if run.method != BASE and not cfg.keep_models:
        # finetune.json and the eval outputs stay; the weights (0.5 GB for 135M) go
        shutil.rmtree(model_dir, ignore_errors=True)

    common = {
        "method": run.method,
        "budget": run.budget,
        "seed": run.key[2],
        "n_train": str(n_train),
        "train_seconds": f"{train_seconds:.1f}",
        "wall_seconds": f"{time.perf_counter() - started:.1f}",
    }
    rows = []
    for result, eval_seconds in results:
        macro = getattr(result, "macro", None)
        scores = {"all": result.overall, **({"macro": macro} if macro else {}), **result.per_source}
        rows += [
            {
                **common,
                "metric": result.metric,
                "value": f"{s['mean']:.6g}",
                "ci_low": f"{s['ci_low']:.6g}",
                "ci_high": f"{s['ci_high']:.6g}",
                # the macro mean is over sources, but of the same items
                "n_eval": str(int(result.overall["n"] if source == "macro" else s["n"])),
                "source": source,
                "eval_seconds": f"{eval_seconds:.1f}",
            }
            for source, s in scores.items()
        ]
    return rows


def _evaluate_run(
    cfg: ExperimentConfig, model_dir: Path, eval_path: Path, out: Path, progress: bool
) -> list[tuple[Any, float]]:
    """The generation metric (unless ``evaluation.metric`` is ``loss``) and the held-out loss
    of one model, each with its seconds; per-item results go to ``out``."""
    evaluation, results = cfg.evaluation, []
    metrics = [LOSS] if evaluation["metric"] == LOSS else [evaluation["metric"], LOSS]
    for metric in metrics:
        eval_started = time.perf_counter()
        result = evaluate(
            model_dir,
            eval_path,
            out,
            **{
                **cfg.stage_kwargs("evaluation", EvalSettings),
                "metric": metric,
                # the loss is taken as fine-tuning sees the data
                "max_length": cfg.target["max_length"],
            },
            progress=progress,
        )
        results.append((result, time.perf_counter() - eval_started))
    return results
