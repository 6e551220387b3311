"""Growing a run: new examples join the pool after a selection was made.

:func:`extend_run` tokenises a file of new examples as the pool was, scores them at the proxy
checkpoints the run kept (one pass per checkpoint, over the new examples only) and appends them
to ``pool/``, ``tokenised/`` and ``trajectories/``, whose old rows stay as they were, bit for
bit. The new trajectories join the clusters of an S2L selection (nearest cluster mean, within
their source for a stratified one) and the selection is redone at the budget, keeping every
example it held, as ``selections/<name>-extN``. The grown pool's subsets are written from
``extensions/pool-extN.jsonl``, every record of the pool file and of each extension (JSONL
lines byte for byte), so that a pool row still names one record; ``extensions.json`` records
which examples came with which extension, from which file, and what scoring them cost.

The proxy never trained on the new examples: their trajectories are those of unseen examples.
Where that matters, train the proxy again on the grown run (``s2l train-proxy`` sees a new
tokenised pool and trains again).
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.parquet as pq

from smalltolarge.data import Pool, load_pool, load_saved_pool, save_pool
from smalltolarge.errors import S2LError
from smalltolarge.formatting import (
    TokenisedPool,
    load_tokenised,
    save_tokenised,
    tokenise_pool,
)
from smalltolarge.models import (
    default_device,
    load_tokenizer,
    pad_token_id,
    tokenizer_fingerprint,
)
from smalltolarge.progress import quiet_libraries_unless_progress
from smalltolarge.readers import MISSING, iter_jsonl_lines, read_input
from smalltolarge.recording import trajectory_fingerprint
from smalltolarge.rescore import kept_checkpoints, score_at_checkpoints
from smalltolarge.runs import (
    RunDir,
    atomic_open,
    atomic_write_json,
    atomic_write_text,
    fingerprint,
    read_json,
    read_proxy_meta,
)
from smalltolarge.selection import Selector, resolve_budget
from smalltolarge.selection.base import cluster_summary, water_fill_above
from smalltolarge.settings import DEFAULT_MAX_TOKENS, budget_label
from smalltolarge.subset import CLUSTERS_FILE, SelectionResult, run_inputs, write_selection
from smalltolarge.trajectories import Trajectories, load_run_trajectories


@dataclass
class ExtendResult:
    """What :func:`extend_run` did.

    ``name`` is the extension's name (``ext1``, ``ext2``, ...); ``new_ids`` the examples added
    to the pool (pool order); ``n_scored`` those scored (the rest did not fit ``max_length``,
    see ``excluded``); ``forward_rows`` the examples passed through the proxy, all checkpoints
    together (``n_scored * len(steps)``); ``seconds_scoring`` the time scoring took;
    ``selection`` the redone selection, or None when the run had none to extend.
    """

    name: str
    new_ids: list[str]
    n_scored: int
    steps: list[int]
    forward_rows: int
    seconds_scoring: float
    excluded: list[dict] = field(default_factory=list)
    selection: SelectionResult | None = None


@quiet_libraries_unless_progress
def extend_run(
    run_dir: str | os.PathLike | RunDir,
    new_pool: str | os.PathLike,
    *,
    selection: str | None = None,
    budget: float | int | str | None = None,
    seed: int | None = None,
    device: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
    **pool_options: Any,
) -> ExtendResult:
    """Add the examples of ``new_pool`` to the run and extend its S2L selection.

    Args:
        run_dir: a run whose proxy kept its checkpoints and whose trajectories are scored.
        new_pool: a pool file or dataset, read by :func:`~smalltolarge.data.load_pool` with
            the run's schema (its column names: the grown pool and its subsets keep one
            schema; a file without them is refused, naming them) and ``pool_options``
            (``on_invalid``, ``split``; a ``*_column`` may only name the run's own column).
        selection: the S2L selection to extend (a name under ``RUN/selections``); default: the
            latest one made on the run's current trajectories, none if there is none.
        budget: a fraction of the grown pool or a count; default: the selection's budget as it
            was given (so a fraction grows with the pool). It may not be smaller than the
            selection: every previously selected example is kept.
        seed: the seed of the new draws; default: the selection's.
        device: where to score (default: CUDA if available); the precision is the one the
            trajectories were scored in.
        max_tokens: token budget of a scoring batch.

    Writes the grown ``pool/``, ``tokenised/`` and ``trajectories/`` (old rows unchanged),
    ``extensions.json`` and the new selection ``selections/<name>-extN`` (see the module
    docstring). Everything is checked before scoring starts, and nothing is written before
    scoring ends, so a refused or interrupted extension leaves the run as it was.

    Raises:
        S2LError: the new examples are not in the run's schema, a new id is already in the
            pool, the proxy kept no checkpoints, the selection
            is not an S2L selection of these trajectories, the budget would drop previously
            selected examples, or no new example fits ``max_length``.
    """
    run = RunDir.of(run_dir)
    say = print if progress else (lambda *a, **k: None)
    base = load_saved_pool(run)
    tokenised = load_tokenised(run)
    traj = load_run_trajectories(run)
    proxy_meta = read_proxy_meta(run)
    checkpoints = kept_checkpoints(run, proxy_meta, traj.steps)
    tokenizer = load_tokenizer(run.tokenizer_dir)
    if tokenizer_fingerprint(tokenizer) != tokenised.tokenizer_fingerprint:
        raise S2LError(f"{run.tokenizer_dir}: not the tokenizer the pool was tokenised with")
    previous = _previous_selection(run, selection, traj)

    with warnings.catch_warnings():
        if progress:  # the line below says it
            warnings.filterwarnings("ignore", r".*skipped \d+ invalid", UserWarning)
        added = load_pool(new_pool, like=base.schema, **pool_options)
    _refuse_known_ids(base, added, new_pool)
    new_tok = tokenise_pool(
        added,
        tokenizer,
        template=tokenised.template,
        max_length=tokenised.max_length,
        assistant_turns=tokenised.assistant_turns,
    )
    history = _history(run, base)
    name = f"ext{len(history['extensions']) + 1}"
    plan = None
    if previous is not None:
        plan = _plan(previous, budget, seed, len(base) + len(added), len(tokenised) + len(new_tok))
        plan["out"] = _extension_dir(run, previous["name"], name)
    elif budget is not None or seed is not None:
        raise S2LError(
            f"{run.selections_dir}: no S2L selection of the current trajectories to extend, so "
            "a budget or seed means nothing here; extend without them, then `s2l select`"
        )
    say(  # only once everything is checked: an announced extension is not then refused
        f"extend: {len(added)} new examples from {new_pool} ({name}; {len(new_tok)} scorable, "
        f"{len(new_tok.excluded)} excluded at max_length={tokenised.max_length}, "
        f"{len(added.skipped)} invalid skipped)"
    )

    start = time.perf_counter()
    losses, embeddings = score_at_checkpoints(
        new_tok, checkpoints, embeddings=traj.embeddings is not None, progress=progress,
        pad_id=pad_token_id(tokenizer), precision=traj.meta.get("precision", "fp32"),
        device=device or default_device(), max_tokens=max_tokens,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    say(
        f"extend: scored {len(new_tok)} new examples at {len(checkpoints)} checkpoints in "
        f"{seconds:.1f} s (the {len(tokenised)} examples already scored were not scored again)"
    )

    grown = _grow(run, base, added, tokenised, new_tok, traj, proxy_meta, losses, embeddings, name)
    record = dict(
        name=name, source_path=os.fspath(new_pool), format=added.format, schema=added.schema,
        fingerprint=added.fingerprint, pool_positions=[len(base), len(base) + len(added)],
        ids_file=f"{run.extensions_dir.name}/{name}.ids.txt", n_examples=len(added),
        n_scored=len(new_tok), n_excluded=len(new_tok.excluded),
        n_skipped_invalid=len(added.skipped), steps=list(traj.steps),
        forward_rows=len(new_tok) * len(checkpoints), seconds_scoring=round(seconds, 2),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )  # fmt: skip
    atomic_write_text(run.root / record["ids_file"], "".join(f"{i}\n" for i in added.ids))
    result = ExtendResult(name, added.ids, len(new_tok), list(traj.steps),
                          record["forward_rows"], seconds, new_tok.excluded)  # fmt: skip
    if plan is not None:
        result.selection = _reselect(run, plan, name, record)
        # by name and fingerprint: a complete selection is never replaced in place (`s2l
        # select` refuses without --force), and a replaced one no longer has this fingerprint
        record["selection"] = result.selection.directory.name
        record["selection_fingerprint"] = result.selection.summary["fingerprint"]
        say(
            f"extend: selection {result.selection.directory.name}: "
            f"{result.selection.summary['n_selected']} examples, all {len(previous['ids'])} of "
            f"{previous['name']} kept"
        )
    history["pool_fingerprint"] = grown.fingerprint
    history["extensions"].append(record)
    atomic_write_json(run.extensions_meta, history)
    return result


def _previous_selection(run: RunDir, name: str | None, traj: Trajectories) -> dict | None:
    """The selection to extend, checked: an S2L selection of these trajectories, with its
    clusters. ``name`` None: the latest such selection, or None when there is none."""
    found = sorted(run.selections_dir.glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    if name is None:
        usable = [p.parent for p in found if _extendable(p.parent, traj) is None]
        if not usable:
            return None
        directory = usable[-1]
    else:
        directory = run.selection_dir(name)
        if not (directory / "summary.json").is_file():
            known = ", ".join(p.parent.name for p in found) or "none"
            raise S2LError(f"{directory}: no finished selection (selections: {known})")
        problem = _extendable(directory, traj)
        if problem:
            raise S2LError(f"{directory}: {problem}")
    summary = read_json(directory / "summary.json")
    table = pq.read_table(directory / CLUSTERS_FILE).to_pydict()
    labels = dict(zip(table["id"], table["cluster"], strict=True))
    if set(labels) != {str(i) for i in traj.ids}:
        raise S2LError(f"{directory / CLUSTERS_FILE}: does not cover the run's trajectories")
    return {
        "name": directory.name,
        "summary": summary,
        "ids": (directory / "ids.txt").read_text(encoding="utf-8").splitlines(),
        "labels": np.array([labels[str(i)] for i in traj.ids], dtype=np.int64),
    }


def _extendable(directory: Path, traj: Trajectories) -> str | None:
    """Why the selection in ``directory`` cannot be extended, or None."""
    summary = read_json(directory / "summary.json")
    if summary.get("method") != "s2l" or not (directory / CLUSTERS_FILE).is_file():
        return (
            f"a {summary.get('method')!r} selection; only S2L selections (with their "
            f"{CLUSTERS_FILE}) can be extended: run `s2l select` on the grown run instead"
        )
    if summary.get("trajectories_fingerprint") != traj.fingerprint:
        return (
            "made on other trajectories than the run's current ones (scored or extended since); "
            "extend a selection made on them, or run `s2l select` first"
        )
    if "target_set" in summary.get("settings", {}):
        return (
            "a targeted selection (--target-set): its quotas follow the target set, which an "
            "extension does not re-score; extend a plain S2L selection, or run `s2l select "
            "--target-set` again on the grown run"
        )
    return None


def _extension_dir(run: RunDir, previous: str, extension: str) -> Path:
    """``selections/<name>-<extension>``, the extended selection's directory (``<name>``
    without an ``-extN`` of its own), checked before anything is scored: an extension never
    writes over a complete selection (an earlier extension's, when the pool was prepared
    again since, or one of the user's), since what was derived from it would no longer agree.
    """
    out = run.selection_dir(re.sub(r"-ext\d+$", "", previous) + f"-{extension}")
    if (out / "summary.json").is_file():
        raise S2LError(
            f"{out} holds a complete selection, and an extension never replaces one; move it "
            "away (or remove it) and extend again"
        )
    return out


def _refuse_known_ids(base: Pool, added: Pool, where: str | os.PathLike) -> None:
    known = set(base.ids)
    clash = [i for i in added.ids if i in known]
    if clash:
        shown = ", ".join(map(repr, clash[:5])) + (" ..." if len(clash) > 5 else "")
        raise S2LError(
            f"{where}: {len(clash)} of its {len(added)} ids are already in the pool ({shown}); "
            "an extension adds new examples only: drop them or give them new ids"
        )


def _history(run: RunDir, base: Pool) -> dict[str, Any]:
    """``extensions.json`` if it describes the current pool, else a fresh record (a pool
    prepared again since the last extension has none of them)."""
    path = run.extensions_meta
    if path.is_file():
        history = read_json(path)
        if history.get("pool_fingerprint") == base.fingerprint:
            return history
    meta = read_json(run.pool_meta)
    return {
        "pool_fingerprint": base.fingerprint,
        "base": {k: meta.get(k) for k in ("source_path", "format", "fingerprint", "n")},
        "extensions": [],
    }


def _plan(previous: dict, budget, seed, n_pool: int, n_selectable: int) -> dict[str, Any]:
    """The budget and seed of the redone selection, checked before anything is scored."""
    summary = previous["summary"]
    budget = summary["budget"] if budget is None else budget
    seed = summary["seed"] if seed is None else seed
    count = resolve_budget(budget, n_pool, n_selectable=n_selectable)
    kept = len(previous["ids"])
    if count < kept:
        raise S2LError(
            f"budget {budget!r} is {count} examples of the grown pool, fewer than the {kept} of "
            f"selection {previous['name']}, which would all be kept; give a budget of at least "
            f"{kept}, or run `s2l select` on the grown run for a fresh selection"
        )
    return {**previous, "budget": budget, "seed": seed, "count": count}


def _same_label_columns(
    old: datasets.Dataset, new: datasets.Dataset
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """``old`` and ``new`` tokenised rows with the same columns: where only one side has
    multi-turn chats (a ``label_spans`` column), the other gets empty spans (it labels its
    responses only, as it was scored)."""
    from datasets import List, Value

    from smalltolarge.formatting import LABEL_SPANS

    def with_spans(ds: datasets.Dataset) -> datasets.Dataset:
        if LABEL_SPANS in ds.column_names:
            return ds
        return ds.add_column(LABEL_SPANS, [[] for _ in range(len(ds))]).cast_column(
            LABEL_SPANS, List(Value("int32"))
        )

    if (LABEL_SPANS in old.column_names) == (LABEL_SPANS in new.column_names):
        return old, new
    return with_spans(old), with_spans(new)


def _grow(run, base, added, tokenised, new_tok, traj, proxy_meta, losses, embeddings, name):
    """Write the grown pool, tokenised pool and trajectories; returns the grown pool.

    Old rows come first and unchanged; each artifact is written atomically, its metadata last.
    """
    offset = len(base)
    source = run.extensions_dir / f"pool-{name}.jsonl"
    _write_records(source, base, added)
    rows_before = len(base) + len(base.skipped)
    new_rows = added.dataset.map(
        lambda b: {"row": [r + rows_before for r in b["row"]]}, batched=True
    )
    grown = Pool(
        dataset=datasets.concatenate_datasets([base.dataset, new_rows]),
        source_path=str(source),
        format="jsonl",
        schema=base.schema,
        fingerprint=fingerprint(base.fingerprint, added.fingerprint, "extended"),
        skipped=[*base.skipped, *({**s, "extension": name} for s in added.skipped)],
        input_columns=list(dict.fromkeys([*base.input_columns, *added.input_columns])),
    )
    old_source = base.source_path
    save_pool(grown, run)
    if Path(old_source).parent == source.parent and Path(old_source) != source:
        Path(old_source).unlink(missing_ok=True)  # the previous extension's records file

    shifted = new_tok.dataset.map(
        lambda b: {"pool_index": [i + offset for i in b["pool_index"]]}, batched=True
    )
    old_part, new_part = _same_label_columns(tokenised.dataset, shifted)
    grown_tok = TokenisedPool(
        dataset=datasets.concatenate_datasets([old_part, new_part]),
        template=tokenised.template,
        max_length=tokenised.max_length,
        pool_fingerprint=grown.fingerprint,
        tokenizer_fingerprint=tokenised.tokenizer_fingerprint,
        excluded=[*tokenised.excluded, *new_tok.excluded],
        n_truncated=tokenised.n_truncated + new_tok.n_truncated,
        assistant_turns=tokenised.assistant_turns,
        n_multi_turn=tokenised.n_multi_turn + new_tok.n_multi_turn,
    )
    old_meta = read_json(run.tokenised_meta)
    save_tokenised(grown_tok, run)
    meta = read_json(run.tokenised_meta)
    atomic_write_json(run.tokenised_meta, {**old_meta, **meta})  # keeps "proxy"

    precision, old_emb = traj.meta.get("precision", "fp32"), traj.embeddings
    # what `s2l score` would record for the grown pool: the same proxy gives the same losses
    traj_fp = trajectory_fingerprint(grown_tok.fingerprint, proxy_meta["fingerprint"], precision)
    meta = {
        **traj.meta,
        "fingerprint": traj_fp,
        "pool_fingerprint": grown.fingerprint,
        "tokenised_fingerprint": grown_tok.fingerprint,
        "extensions": [*traj.meta.get("extensions", []), name],
    }
    Trajectories(
        losses=np.concatenate([np.asarray(traj.losses, dtype=np.float32), losses]),
        ids=np.concatenate([traj.ids, np.asarray(new_tok.dataset["id"], dtype=object)]),
        steps=list(traj.steps),
        embeddings=None if old_emb is None else np.concatenate([np.asarray(old_emb), embeddings]),
        meta=meta,
    ).save(run.trajectories_dir)
    return grown


def _write_records(path: Path, base: Pool, added: Pool) -> None:
    """Write every record of the pool's input then of the new input, one JSON line each (a
    JSONL input's lines byte for byte), so that row ``r`` of the grown pool is line ``r``."""
    with atomic_open(path) as out:
        for pool in (base, added):
            n = 0
            for line in _record_lines(pool):
                out.write(line if line.endswith(b"\n") else line + b"\n")
                n += 1
            if n != len(pool) + len(pool.skipped):
                raise S2LError(
                    f"{pool.source_path}: holds {n} records, but the pool was loaded from "
                    f"{len(pool) + len(pool.skipped)}; it changed since (run `s2l prepare`)"
                )


def _record_lines(pool: Pool):
    """The input records of ``pool`` as JSON lines (bytes), in input order."""
    if pool.format == "jsonl":
        for _, _, line in iter_jsonl_lines(pool.source_path):
            yield line
        return
    raw = read_input(pool.source_path, pool.schema.get("split") or "train")
    columns = {name: raw.column(name) for name in raw.columns}
    for r in range(raw.n):
        record = {k: v[r] for k, v in columns.items() if v[r] is not MISSING}
        yield (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")


class _GrownClustering(Selector):
    """The clustering of an extended selection, fitted by hand (``labels_``, ``taken_``, and
    the previous summary ``previous_``), for :func:`~smalltolarge.subset.write_selection`."""

    name = "s2l"

    def summary_(self) -> dict[str, Any]:
        sizes = np.bincount(self.labels_, minlength=len(self.taken_))
        keys = ("n_clusters_effective", "n_clusters_requested", "source_quotas")
        kept = {key: self.previous_[key] for key in keys if key in self.previous_}
        clusters = cluster_summary(sizes, self.taken_)
        return {"clusters": clusters, **kept, "warnings": list(self.warnings_)}


def _reselect(run: RunDir, plan: dict, extension: str, record: dict) -> SelectionResult:
    """Assign the new trajectories to the selection's clusters and redo it at the budget,
    keeping every previous pick; written as ``selections/<name>-<extension>``."""
    inputs = run_inputs(run)
    signals, summary = inputs.signals, plan["summary"]
    n_old = len(plan["labels"])
    settings = summary.get("settings") or {}
    groups = np.zeros(signals.n, dtype=np.int64)  # stratified: one group per source
    if settings.get("stratified") and signals.sources is not None:
        groups = np.unique(signals.sources.astype(str), return_inverse=True)[1].reshape(-1)
    labels = _assign(np.asarray(signals.losses), plan["labels"], groups, n_old)
    position = {str(i): p for p, i in enumerate(signals.ids)}
    old = np.zeros(signals.n, dtype=bool)
    old[[position[i] for i in plan["ids"]]] = True
    rng = np.random.default_rng(np.random.SeedSequence(plan["seed"]))
    picked = _keep_and_fill(groups, labels, old, plan["count"], rng)

    notes = []
    if int(settings.get("outlier_max_size") or 0) > 0:
        notes.append("outlier_max_size: small clusters were not set aside when extending")
    selector = _GrownClustering()
    selector.labels_, selector.previous_, selector.warnings_ = labels, summary, []
    selector.taken_ = np.bincount(labels[picked], minlength=labels.max() + 1)
    budget, seed = plan["budget"], plan["seed"]
    recorded = {**(summary.get("selection_settings") or {}), "budget": budget_label(budget)}
    recorded.pop("nested", None)  # one selection now, not one of a nested set
    return write_selection(
        plan["out"],
        inputs,
        selector,
        picked,
        budget=budget,
        seed=seed,
        record={
            "fingerprint": fingerprint(
                inputs.fingerprint, summary.get("fingerprint"), plan["count"], seed, "extend"
            ),
            "selection_settings": {**recorded, "seed": seed},
            "method": "s2l",
            "preset": summary.get("preset", "default"),
            "settings": settings,
            "extended_from": {
                "selection": plan["name"],
                "fingerprint": summary.get("fingerprint"),
                "extension": extension,
                "kept": int(old.sum()),
                "new_examples_selected": int((picked >= n_old).sum()),
                "source_path": record["source_path"],
            },
        },
        warnings=notes,
    )


def _assign(
    losses: np.ndarray, old_labels: np.ndarray, groups: np.ndarray, n_old: int
) -> np.ndarray:
    """Cluster labels of every row: the old rows keep theirs, a new row joins the cluster of
    its group whose mean trajectory is nearest (Euclidean, on the raw losses, as S2L clusters);
    a group no old row belongs to (a new source) becomes one new cluster."""
    n_labels = int(old_labels.max()) + 1
    counts = np.bincount(old_labels, minlength=n_labels).astype(np.float64)
    columns = range(losses.shape[1])
    sums = np.column_stack([np.bincount(old_labels, losses[:n_old, t], n_labels) for t in columns])
    centroids = sums / np.maximum(counts, 1)[:, None]
    cluster_group = np.full(n_labels, -1, dtype=np.int64)
    cluster_group[old_labels] = groups[:n_old]
    labels = np.concatenate([old_labels, np.empty(len(losses) - n_old, dtype=np.int64)])
    next_label = n_labels
    for group in np.unique(groups[n_old:]):
        rows = n_old + np.flatnonzero(groups[n_old:] == group)
        candidates = np.flatnonzero((cluster_group == group) & (counts > 0))
        if len(candidates) == 0:
            labels[rows] = next_label
            next_label += 1
            continue
        for lo in range(0, len(rows), 65536):
            chunk = rows[lo : lo + 65536]
            x = losses[chunk].astype(np.float64)
            c = centroids[candidates]
            dist = (c**2).sum(axis=1)[None, :] - 2 * x @ c.T
            labels[chunk] = candidates[np.argmin(dist, axis=1)]
    return labels


def _keep_and_fill(
    groups: np.ndarray, labels: np.ndarray, old: np.ndarray, budget: int, rng: np.random.Generator
) -> np.ndarray:
    """``budget`` rows that include every ``old`` row: the budget is water-filled over the
    groups (sources) and, inside each, over its clusters, no quota below what was already
    picked there; the rest of each cluster's quota is drawn uniformly from its unpicked rows."""
    picked = [np.flatnonzero(old)]
    group_ids = np.unique(groups)
    group_quota = water_fill_above(
        np.bincount(groups)[group_ids],
        np.bincount(groups[old], minlength=groups.max() + 1)[group_ids],
        budget,
        rng,
    )
    for group, quota in zip(group_ids, group_quota, strict=True):
        members = np.flatnonzero(groups == group)
        cluster_ids = np.unique(labels[members])
        sizes = np.bincount(labels[members])[cluster_ids]
        floors = np.bincount(labels[members][old[members]], minlength=labels.max() + 1)[cluster_ids]
        quotas = water_fill_above(sizes, floors, int(quota), rng)
        for cluster, extra in zip(cluster_ids, quotas - floors, strict=True):
            if extra:
                free = members[(labels[members] == cluster) & ~old[members]]
                picked.append(free[rng.choice(len(free), int(extra), replace=False)])
    return np.sort(np.concatenate(picked)).astype(np.int64)
