"""Stage 5: select a subset of the pool with a selection method and write it out.

Reads the run's pool, tokenised pool and trajectories; writes
``selections/NAME/`` with ``ids.txt`` (selected ids, pool order), the subset in the input's
format (``subset.jsonl``, ``subset.parquet``, ...) and ``summary.json`` (written last: it marks
the selection complete). The same inputs, method, budget and seed give the same ids, bit for
bit; a selection whose summary records the same fingerprint is reused.

A complete selection is never replaced in place: other settings or other inputs (a pool grown
by ``s2l extend``, trajectories scored again) under the same name are refused, saying what
changed, unless ``force``; then the whole directory is replaced in one step, so that what was
derived from the old selection inside it (``export/``, ``report/``) goes with it. Derived
outputs record the fingerprint of the selection they came from (``selection_fingerprint``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smalltolarge.data import Pool, load_pool, load_saved_pool, write_subset
from smalltolarge.dedup import count_duplicates
from smalltolarge.errors import S2LError
from smalltolarge.formatting import load_tokenised
from smalltolarge.nested import ORDER_FILE
from smalltolarge.presets import apply_preset
from smalltolarge.probe import load_probe, proxy_fit, proxy_fit_warnings
from smalltolarge.runs import (
    RunDir,
    atomic_dir,
    atomic_open,
    atomic_write_json,
    atomic_write_text,
    fingerprint,
    read_json,
)
from smalltolarge.selection import (
    Selector,
    Signals,
    Stratified,
    accepts,
    make_selector,
    resolve_budget,
    trajectory_diagnostics,
)
from smalltolarge.selection.base import needs_probe
from smalltolarge.settings import SelectSettings, budget_label
from smalltolarge.trajectories import align_to_pool, import_trajectories, load_run_trajectories

#: Per-example cluster labels of a selection (``id``, ``cluster``), next to ``ids.txt``.
CLUSTERS_FILE = "clusters.parquet"

#: The files a selection writes itself (besides its subset, ``subset.*``); anything else in a
#: selection directory was derived from it (``export/``, ``report/``).
SELECTION_FILES = ("ids.txt", "summary.json", CLUSTERS_FILE, ORDER_FILE)


@dataclass
class SelectionResult:
    """A written selection: the selected ids (pool order), where it lies, and its summary."""

    ids: list[str]
    directory: Path
    subset_path: Path
    summary: dict[str, Any]
    reused: bool = False


def select_subset(
    run_dir: str | os.PathLike | RunDir,
    *,
    method: str = SelectSettings.method,
    budget: float | int | str = SelectSettings.budget,
    seed: int = SelectSettings.seed,
    n_clusters: int | None = SelectSettings.n_clusters,
    stratify_by: str | None = SelectSettings.stratify_by,
    name: str | None = None,
    trajectories: str | os.PathLike | None = None,
    trajectory_ids: str | os.PathLike | None = None,
    pool: str | os.PathLike | None = None,
    settings: dict[str, Any] | None = None,
    preset: str | None = None,
    target_set: str | os.PathLike | None = SelectSettings.target_set,
    target_weight: float = SelectSettings.target_weight,
    force: bool = False,
) -> SelectionResult:
    """Select ``budget`` examples of the run's pool with ``method`` and write them out.

    ``budget`` is a fraction of the pool (``0.3``, ``"30%"``) or a count (``3000``);
    ``stratify_by`` names the pool's source column to select per source (the reference code's
    mode) instead of globally. ``n_clusters`` is S2L's K (default 100); ``settings`` are further
    constructor arguments of the method. By default the run's own trajectories are used;
    ``trajectories`` (+ ``trajectory_ids`` for a ``.npy``) imports ones computed elsewhere (see
    :func:`~smalltolarge.trajectories.import_trajectories`), matched to the pool by id; the
    pool is the run's, or the file ``pool``. ``preset="reference"`` selects as the public
    reference code does: per source, with clusters of at most two rows set aside (see
    :mod:`smalltolarge.presets`).

    ``target_set`` (a file of examples of the task the user cares about, read like a pool;
    S2L selecting globally only) is scored at the run's kept proxy checkpoints, never trained
    on, and S2L's cluster quotas move toward the clusters it falls in by ``target_weight`` (0:
    plain S2L, 1: fully target-weighted; see :mod:`smalltolarge.selection.targeted`); the
    summary's ``targeted`` entry shows how the quotas moved.
    """
    run_dir = RunDir.of(run_dir)
    SelectSettings(  # checked once, here, before anything is read
        method=method,
        budget=budget,
        seed=seed,
        n_clusters=n_clusters,
        stratify_by=stratify_by,
        target_set=None if target_set is None else os.fspath(target_set),
        target_weight=target_weight,
    )
    check_target_set_use(target_set, method, stratify_by, preset, trajectories)
    if trajectories is None and (trajectory_ids is not None or pool is not None):
        given = "trajectory_ids" if trajectory_ids is not None else "pool"
        raise S2LError(
            f"{given} goes with imported trajectories (trajectories=...); the run's own "
            "trajectories need neither"
        )
    if trajectories is None:
        inputs = run_inputs(run_dir)
    else:
        inputs = _imported_inputs(run_dir, trajectories, trajectory_ids, pool)
    the_pool, signals = inputs.pool, inputs.signals
    target = None
    if target_set is not None:
        from smalltolarge.rescore import score_target_set

        target_losses, target_tok = score_target_set(run_dir, target_set)
        signals = dataclasses.replace(
            signals, target_losses=target_losses, target_weight=target_weight
        )
        target = {
            "target_set": os.fspath(target_set),
            "target_fingerprint": target_tok.fingerprint,
            "target_weight": target_weight,
        }

    n_budget = resolve_budget(budget, len(the_pool), n_selectable=signals.n)
    defaults = make_selector(method).get_params()  # a setting at its default changes nothing
    given = {
        k: v
        for k, v in {"n_clusters": n_clusters, **(settings or {})}.items()
        if v is not None and defaults.get(k, object()) != v
    }
    selector = make_pool_selector(
        the_pool,
        method=method,
        n_clusters=n_clusters,
        stratify_by=stratify_by,
        settings=settings,
        preset=preset,
    )
    stratify = isinstance(selector, Stratified)
    described = selector.settings()
    if target is not None:  # in the name, the fingerprint and the recorded settings
        described = {**described, **target}
        given = {**given, "target": target["target_fingerprint"][:8], "tw": target_weight}
    name = name or _default_name(method, budget, seed, stratify, preset, given)
    out = run_dir.selection_dir(name)
    reads_probe = needs_probe(selector)
    if reads_probe and signals.target_probe is None:
        raise S2LError(
            f"method {method} needs the target's probe losses: run `s2l probe --run-dir "
            f"{run_dir.root} --target MODEL` first (MODEL: the model you will fine-tune)"
        )
    probe_fp = inputs.notes.get("probe", {}).get("fingerprint") if reads_probe else None
    parts = [inputs.fingerprint, method, str(described), n_budget, seed, stratify]
    fp = fingerprint(*parts, *([probe_fp] if reads_probe else []))
    recorded = recorded_settings(method, preset, described, budget, seed)
    if not force:
        now = {"pool": the_pool.fingerprint, "trajectories": inputs.fingerprint, "probe": probe_fp}
        complete = complete_selection(out, fp, now, recorded)
        if complete is not None:
            return complete

    picked = selector.select(signals, n_budget, seed)
    rounded = _budget_rounding_note(budget, len(the_pool), n_budget)
    return write_selection(
        out,
        inputs,
        selector,
        picked,
        budget=budget,
        seed=seed,
        record={
            "fingerprint": fp,
            "selection_settings": recorded,
            "method": method,
            "preset": preset or "default",
            "settings": described,
        },
        warnings=[rounded] if rounded else [],
    )


def complete_selection(
    out: Path, fp: str, now: dict[str, str | None], recorded: dict[str, Any] | None = None
) -> SelectionResult | None:
    """The complete selection in ``out`` when it was made from the same inputs and settings
    (its summary records the fingerprint ``fp``), to be reused; None when ``out`` holds no
    complete selection.

    Raises:
        SelectionExistsError: ``out`` holds a complete selection made with other settings than
            ``recorded`` (the settings that differ are named) or on other inputs than ``now``
            (``pool``, ``trajectories`` and, for a method that reads it, ``probe``
            fingerprints; those that changed are named, then and now).
    """
    if not (out / "summary.json").is_file():
        return None
    summary = read_json(out / "summary.json")
    if summary.get("fingerprint") == fp:
        return SelectionResult(
            ids=(out / "ids.txt").read_text().splitlines(),
            directory=out,
            subset_path=out / summary["subset_file"],
            summary=summary,
            reused=True,
        )
    if recorded is not None:
        refuse_other_settings(out, summary.get("selection_settings"), recorded)
    then = {
        "pool": summary.get("pool_fingerprint"),
        "trajectories": summary.get("trajectories_fingerprint"),
        "probe": (summary.get("probe") or {}).get("fingerprint"),
    }
    changed = [
        f"{what} fingerprint {then[what]} then, {now[what]} now"
        for what in ("pool", "trajectories", "probe")
        if now.get(what) is not None and then[what] is not None and then[what] != now[what]
    ] or [f"fingerprint {summary.get('fingerprint')} then, {fp} now"]
    derived = derived_outputs(out)
    raise SelectionExistsError(
        out,
        "made with these settings on other inputs (" + "; ".join(changed) + ")",
        derived,
    )


def derived_outputs(directory: Path) -> list[str]:
    """The entries of a selection directory that the selection did not write itself but were
    derived from it (``export/``, ``report/``, ...: a directory's name ends with ``/``), sorted."""
    return sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in directory.iterdir()
        if p.name not in SELECTION_FILES
        and not p.name.startswith(("subset", "."))  # its subset; temporary files
    )


class SelectionExistsError(S2LError):
    """A complete selection is in the way: never replaced in place without ``force``.

    ``directory`` is the selection; ``why`` what makes it another selection (other settings,
    other inputs); ``derived`` what was derived from it inside its directory (``export/``,
    ``report/``), which ``--force`` removes with it. The message says how to keep it (a new
    ``--name``) or replace it (``--force``).
    """

    def __init__(self, directory: Path, why: str, derived: Sequence[str] = ()):
        self.directory, self.why, self.derived = directory, why, list(derived)
        also = f" and remove what was derived from it ({', '.join(derived)})" if derived else ""
        super().__init__(
            f"{directory} holds a complete selection {why}; a selection is never replaced in "
            "place, so that its ids, subset and what was derived from it agree: to keep it, "
            f"make a new selection beside it (`s2l select --run-dir "
            f"{directory.parent.parent}` with the same options and --name NEW_NAME); to "
            f"replace it{also}, pass --force"
        )


def check_target_set_use(
    target_set: str | os.PathLike | None,
    method: str,
    stratify_by: str | None,
    preset: str | None,
    trajectories: str | os.PathLike | None = None,
) -> None:
    """Refuse a target set where it would steer nothing: it moves plain S2L's cluster quotas
    over the whole pool, scored at the run's own proxy checkpoints (so not with another
    method, per source, under a preset that selects per source, or on imported
    trajectories). Cheap: :func:`~smalltolarge.pipeline.run_pipeline` calls it before
    training."""
    if target_set is None:
        return
    per_source = stratify_by or (preset not in (None, "default"))
    if method != "s2l" or per_source:
        raise S2LError(
            "a target set steers plain S2L selecting over the whole pool: use method s2l "
            "without stratify_by or a preset"
        )
    if trajectories is not None:
        raise S2LError(
            "a target set is scored at the run's own proxy checkpoints, so it cannot steer a "
            "selection made on imported trajectories"
        )


def write_selection(
    out: Path,
    inputs: SelectionInputs,
    selector: Selector,
    picked: np.ndarray,
    *,
    budget: float | int | str,
    seed: int,
    record: dict[str, Any],
    warnings: Sequence[str] = (),
    files: dict[str, str] | None = None,
) -> SelectionResult:
    """Write the selection of ``picked`` by the fitted ``selector`` to the directory ``out``.

    Writes the subset in the pool's format, ``ids.txt`` (pool order), the text ``files``
    (name -> content), :data:`CLUSTERS_FILE` for a clustering method, and ``summary.json``
    last: the pool and selection counts, ``selector.summary_()``, trajectory diagnostics, then
    ``inputs.notes``, ``record`` (fingerprint, method, settings, ...) and where things are.
    The directory is built under a temporary name and replaces ``out`` as a whole: whatever
    ``out`` held (a selection the caller chose to replace, and what was derived from it) goes
    in the same step, and a write that fails leaves ``out`` as it was. The summary's
    ``replaced`` entry names the complete selection replaced and what went with it.

    Args:
        out: the selection directory.
        inputs: what the selection read.
        selector: the selector, fitted on ``inputs.signals``.
        picked: ``(k,)`` int rows of ``inputs.signals`` selected.
        budget, seed: as given by the user, recorded in the summary.
        record: entries of ``summary.json`` that describe the selection.
        warnings: notes put before the selector's own warnings.
        files: further text files to write before the summary.
    """
    pool, signals = inputs.pool, inputs.signals
    selected_pool_index = np.sort(inputs.pool_index[picked])
    pool_rows = np.asarray(pool.dataset["row"], dtype=np.int64)[selected_pool_index]
    ids = [str(i) for i in np.asarray(pool.dataset["id"], dtype=object)[selected_pool_index]]

    summary = _summary(selector, signals, picked, pool, budget=budget, seed=seed)
    summary["warnings"][:0] = warnings
    replaced = _replaced(out)
    with atomic_dir(out) as tmp:
        subset_name = write_subset(pool, pool_rows, tmp).name
        atomic_write_text(tmp / "ids.txt", "".join(f"{i}\n" for i in ids))
        for file_name, text in (files or {}).items():
            atomic_write_text(tmp / file_name, text)
        _write_clusters(tmp / CLUSTERS_FILE, signals.ids, selector.labels_)
        summary.update(
            inputs.notes,
            **record,
            name=out.name,
            subset_file=subset_name,
            pool_fingerprint=pool.fingerprint,
            trajectories_fingerprint=inputs.fingerprint,
            n_checkpoints=int(signals.losses.shape[1]),
            **({"replaced": replaced} if replaced else {}),
        )
        atomic_write_json(tmp / "summary.json", summary)
    return SelectionResult(ids=ids, directory=out, subset_path=out / subset_name, summary=summary)


def _replaced(out: Path) -> dict[str, Any] | None:
    """What :func:`write_selection` is about to replace in ``out``: the complete selection's
    fingerprint and size, and what was derived from it; None when there is none."""
    if not (out / "summary.json").is_file():
        return None
    old = read_json(out / "summary.json")
    return {
        "fingerprint": old.get("fingerprint"),
        "n_selected": old.get("n_selected"),
        "removed": derived_outputs(out),
    }


def make_pool_selector(
    pool: Pool,
    *,
    method: str = "s2l",
    n_clusters: int | None = None,
    stratify_by: str | None = None,
    settings: dict[str, Any] | None = None,
    preset: str | None = None,
) -> Selector:
    """The selector that :func:`select_subset` would use on ``pool``, its settings checked
    (method, K, the source column of ``stratify_by``, the preset's settings). Cheap: the
    pipeline calls it before training so that a bad setting fails first, not last."""
    settings = dict(settings or {})
    chosen = apply_preset(
        preset,
        stratify_by=(stratify_by, None),
        outlier_max_size=(settings.get("outlier_max_size"), None),
    )
    if chosen["outlier_max_size"] is not None and accepts(method, "outlier_max_size"):
        settings["outlier_max_size"] = chosen["outlier_max_size"]
    stratify = _check_stratify(pool, chosen["stratify_by"])
    return make_selector(method, stratify=stratify, n_clusters=n_clusters, **settings)


def _check_stratify(pool: Pool, stratify_by: str | None) -> bool:
    if stratify_by is None:
        return False
    column = pool.schema.get("source")
    if stratify_by not in (column, "source"):
        raise S2LError(
            f"--stratify-by {stratify_by}: the pool was loaded with "
            + (f"source column '{column}'" if column else "no source column")
            + f"; re-run `s2l prepare` with --source-column {stratify_by}"
        )
    if not pool.has_sources:
        raise S2LError("--stratify-by needs a source column; the pool has none")
    return True


def _default_name(
    method: str,
    budget: float | int | str,
    seed: int,
    stratify: bool,
    preset: str | None,
    given: dict[str, Any],
) -> str:
    """``method[-preset][-stratified]-budget[-kK][-setting-value...]-seedS``: every setting
    the user gave is in the name, so two different selections never share a directory."""
    mode = f"-{preset}" if preset not in (None, "default") else ""
    parts = [
        f"k{value}" if key == "n_clusters" else f"{key.replace('_', '-')}{value}"
        for key, value in given.items()
    ]
    extra = "".join(f"-{part}" for part in parts)
    strat = "-stratified" if stratify else ""
    return f"{method}{mode}{strat}-{budget_label(budget)}{extra}-seed{seed}"


def recorded_settings(
    method: str, preset: str | None, described: dict[str, Any], budget, seed: int
) -> dict[str, Any]:
    """The settings that make a selection what it is, JSON-normal so that they compare equal
    to the copy read back from ``summary.json``."""
    return json.loads(
        json.dumps(
            {
                "method": method,
                "preset": preset or "default",
                "settings": described,
                "budget": budget_label(budget),
                "seed": seed,
            },
            default=str,
        )
    )


def refuse_other_settings(out: Path, theirs: dict[str, Any] | None, ours: dict[str, Any]) -> None:
    """A selection directory holding a selection made with other settings is never replaced
    silently (nor one made on other inputs: see :func:`complete_selection`)."""
    if theirs is None or theirs == ours:
        return
    differ = [
        f"{key} {theirs.get(key)!r} there, {ours.get(key)!r} now"
        for key in dict.fromkeys([*ours, *theirs])
        if key != "settings" and theirs.get(key) != ours.get(key)
    ]
    ours_s, theirs_s = ours["settings"], theirs.get("settings") or {}
    if theirs.get("method") == ours["method"]:  # another method's settings say nothing
        differ += [
            f"{key} {theirs_s.get(key)!r} there, {ours_s.get(key)!r} now"
            for key in sorted(set(ours_s) | set(theirs_s))
            if theirs_s.get(key) != ours_s.get(key)
        ]
    raise SelectionExistsError(
        out, f"made with other settings ({'; '.join(differ)})", derived_outputs(out)
    )


def _budget_rounding_note(budget: float | int | str, n_pool: int, n_budget: int) -> str | None:
    """A warning when a fractional budget was rounded up to one example."""
    label = budget_label(budget)
    if "." not in label and "e" not in label:
        return None
    exact = float(label) * n_pool
    if exact >= 0.5:
        return None
    return f"budget {budget} of {n_pool} examples is {exact:.3g} examples, rounded up to {n_budget}"


@dataclass
class SelectionInputs:
    """What a selection reads: the pool, the signals of its selectable examples, where each
    signal row sits in the pool (``pool_index``, ``(n,)`` int64), a fingerprint of it all, and
    notes for the summary."""

    pool: Pool
    signals: Signals
    pool_index: np.ndarray
    fingerprint: str
    notes: dict[str, Any]


def run_inputs(run_dir: RunDir) -> SelectionInputs:
    """The run's own inputs: its saved pool, tokenised pool and trajectories, rows checked."""
    pool = load_saved_pool(run_dir)
    tokenised = load_tokenised(run_dir)
    traj = load_run_trajectories(run_dir)
    if list(traj.ids) != list(tokenised.dataset["id"]):
        raise S2LError(f"{run_dir.trajectories_dir}: ids do not match the tokenised pool")
    pool_index = np.asarray(tokenised.dataset["pool_index"], dtype=np.int64)
    signals = Signals(
        losses=np.asarray(traj.losses, dtype=np.float32),
        ids=np.asarray(traj.ids, dtype=object),
        sources=_sources(pool, pool_index),
        lengths=tokenised.response_lengths,
        embeddings=None if traj.embeddings is None else np.asarray(traj.embeddings, np.float32),
    )
    notes = {"n_scorable": len(tokenised), "n_excluded": len(tokenised.excluded)}
    probe = load_probe(run_dir)
    if probe is not None:
        signals.target_probe = probe.aligned(signals.ids)
        notes["probe"] = {
            "target": probe.meta.get("target"),
            "n_probed": int(np.isfinite(signals.target_probe).sum()),
            "fingerprint": probe.fingerprint,
            "seconds": probe.meta.get("seconds"),
            "counts_against_budget": False,
        }
    return SelectionInputs(pool, signals, pool_index, traj.fingerprint or "", notes)


def _imported_inputs(run_dir: RunDir, path, ids, pool_path) -> SelectionInputs:
    pool = load_pool(pool_path) if pool_path is not None else load_saved_pool(run_dir)
    traj = import_trajectories(path, ids=ids)
    rows, pool_index, report = align_to_pool(traj, pool.ids, where=str(path))
    if report["non_finite"]:
        print(
            f"trajectories: {report['non_finite']} rows with a non-finite loss left out "
            f"(ids {', '.join(report['non_finite_ids'])}...)"
        )
    if report["without_trajectory"]:
        print(
            f"trajectories: {report['without_trajectory']} pool examples have no trajectory "
            f"and cannot be selected (ids {', '.join(report['without_trajectory_ids'])}...)"
        )
    signals = Signals(
        losses=np.asarray(traj.losses, dtype=np.float32)[rows],
        ids=np.asarray(traj.ids, dtype=object)[rows],
        sources=_sources(pool, pool_index),
    )
    notes = {
        "n_scorable": int(len(rows)),
        "n_excluded": int(len(pool) - len(rows)),
        "imported_trajectories": str(path),
        "excluded_because": "no trajectory, or a non-finite loss",
        **report,
    }
    return SelectionInputs(
        pool, signals, pool_index, fingerprint(traj.fingerprint, pool.fingerprint), notes
    )


def _sources(pool: Pool, pool_index: np.ndarray) -> np.ndarray | None:
    if not pool.has_sources:
        return None
    return np.asarray(pool.dataset["source"], dtype=object)[pool_index]


def _summary(
    selector: Selector, signals: Signals, picked: np.ndarray, pool: Pool, *, budget, seed: int
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "budget": budget,
        "n_selected": int(len(picked)),
        "seed": seed,
        "n_pool": len(pool),
        "n_skipped_invalid": len(pool.skipped) - count_duplicates(pool.skipped),
    }
    if count_duplicates(pool.skipped):
        summary["n_duplicates_dropped"] = count_duplicates(pool.skipped)
    if signals.lengths is not None:
        summary["mean_response_tokens"] = {
            "pool": round(float(signals.lengths.mean()), 2),
            "subset": round(float(signals.lengths[picked].mean()), 2),
        }
    fitted = selector.summary_()
    warnings = fitted.pop("warnings")
    summary.update(fitted)
    diagnostics = trajectory_diagnostics(
        signals.losses,
        labels=selector.labels_,
        sources=signals.sources,
        lengths=signals.lengths,
    )
    summary["diagnostics"] = diagnostics
    summary["warnings"] = [*warnings, *diagnostics["warnings"]]
    if signals.target_probe is not None:
        # the cheapest check that the proxy sees the data as the target does
        fit = proxy_fit(signals.losses[:, -1], signals.target_probe, signals.sources)
        if fit is not None:
            summary["proxy_fit"] = fit
            summary["warnings"] += proxy_fit_warnings(fit)
    if signals.sources is not None:
        in_pool = Counter(str(s) for s in signals.sources)
        in_subset = Counter(str(s) for s in signals.sources[picked])
        summary["sources"] = [
            {"source": s, "pool": in_pool[s], "subset": in_subset.get(s, 0)}
            for s in sorted(in_pool)
        ]
    return summary


def _write_clusters(path: Path, ids: np.ndarray, labels: np.ndarray | None) -> None:
    """Write the cluster of every selectable example (columns ``id``, ``cluster``) as Parquet,
    for reports; a method that does not cluster leaves no file."""
    if labels is None:
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [str(i) for i in ids], "cluster": np.asarray(labels, np.int64)})
    with atomic_open(path) as f:
        pq.write_table(table, f)
