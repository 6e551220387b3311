"""Loading a pool of SFT examples, normalising it, and writing selected subsets back out.

A pool can be a JSONL, JSON, Parquet or CSV file, a directory written by ``datasets``'
``save_to_disk``, or anything ``datasets.load_dataset`` understands (a hub name or a local
directory of data files). Whatever the input, :func:`load_pool` produces a :class:`Pool` whose
``dataset`` has the same columns (:data:`NORMALISED_COLUMNS`), so the later stages never look
at the user's column names again. :func:`write_subset` goes the other way: it writes the
selected examples in the input's own format with the user's original columns, so a selection
can be fed to any training script that already reads the original pool.

Reading each format lives in :mod:`smalltolarge.readers`, deciding which columns hold the
prompt and the response (and normalising every record) in :mod:`smalltolarge.schema`; this
module puts them together and saves the result.

Every problem a user can fix raises :class:`~smalltolarge.errors.S2LError` with a one-line
message that names the file and the line, record or row.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smalltolarge.errors import InvalidExamplesError, S2LError
from smalltolarge.readers import (
    FORMATS,
    MISSING,
    iter_jsonl_lines,
    load_disk,
    load_hub,
    read_csv,
    read_input,
    read_json_list,
    read_parquet,
)
from smalltolarge.runs import RunDir, atomic_dir, atomic_open, atomic_write_json, read_json
from smalltolarge.schema import (
    FEATURES,
    NORMALISED_COLUMNS,
    fingerprint_columns,
    normalise,
    resolve_schema,
)

__all__ = [
    "FORMATS",
    "NORMALISED_COLUMNS",
    "Pool",
    "iter_jsonl_lines",
    "load_pool",
    "load_saved_pool",
    "save_pool",
    "write_subset",
]


@dataclass
class Pool:
    """A normalised pool of examples.

    ``dataset`` is an Arrow-backed :class:`datasets.Dataset` with the columns
    :data:`NORMALISED_COLUMNS`, one row per valid example, in input order:

    - ``id`` (str): the user's id column as text, else ``str(row)``;
    - ``row`` (int64): 0-based index of the record in the input (records, not lines);
    - ``instruction`` (str): the prompt text; ``input`` (str): extra input, ``""`` when none;
    - ``response`` (str): the target text;
    - ``source`` (str): the example's source/task label, ``""`` when the pool has none;
    - ``messages`` (str): for chat pools, a JSON list of the prompt turns
      ``[{"role": ..., "content": ...}, ...]`` (everything before the response); else ``""``;
    - ``system`` (str): the system prompt of a text example (its ``system`` column), ``""``
      when it has none; a chat's system prompt is its first turn, in ``messages``.

    ``input_columns`` lists every column of the input, in its order. ``extra`` holds the input
    columns asked for with ``load_pool(extra_columns=...)`` that the input has, as they were
    read (``None`` for an absent or null value), one value per example in pool order; it is
    not saved by :func:`save_pool`.
    """

    dataset: datasets.Dataset
    source_path: str
    format: str
    schema: dict
    fingerprint: str
    skipped: list[dict] = field(default_factory=list)
    input_columns: list[str] = field(default_factory=list)
    extra: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def ids(self) -> list[str]:
        """The example ids, in pool order (length ``len(self)``)."""
        return _column(self.dataset, "id")

    @property
    def has_sources(self) -> bool:
        """Whether the input had a source column (so per-source statistics mean something)."""
        return self.schema.get("source") is not None

    def sources(self) -> list[str]:
        """The source label of every example, in pool order (``""`` when there is none)."""
        return _column(self.dataset, "source")


def load_pool(
    path_or_name: str | os.PathLike,
    *,
    prompt_column: str | None = None,
    input_column: str | None = None,
    response_column: str | None = None,
    source_column: str | None = None,
    id_column: str | None = None,
    split: str = "train",
    on_invalid: str | None = None,
    extra_columns: Sequence[str] = (),
    like: dict | None = None,
) -> Pool:
    """Load and normalise a pool of examples.

    Args:
        path_or_name: a ``.jsonl``/``.json``/``.parquet``/``.csv`` file, a ``save_to_disk``
            directory, or a name or directory for ``datasets.load_dataset``.
        prompt_column, input_column, response_column, source_column, id_column: column names
            that override the detection by name (``instruction``/``input``/``output``,
            ``question``/``answer``, ``prompt``/``completion``, ``messages``, ``source``, ``id``).
        split: the split to take from a ``DatasetDict`` directory or a ``load_dataset`` source.
        on_invalid: ``"error"`` raises on the first invalid example (after counting them all);
            ``"skip"`` drops invalid examples, lists them in ``Pool.skipped`` and warns once;
            None (the default) raises too, but tells the CLI that the caller offers no choice
            (see :class:`~smalltolarge.errors.InvalidExamplesError`).
        extra_columns: input columns to keep as they are in ``Pool.extra`` (an answer column
            for evaluation, say); those the input does not have are left out, so a caller
            that needs one checks ``Pool.extra`` (and ``Pool.input_columns`` for a message).
        like: the schema (``Pool.schema``) of a pool this input joins (``s2l extend``): the
            input is read with its column names, and refused when it lacks one of them or a
            ``*_column`` names another, so that the joined pool keeps one schema.

    Raises:
        S2LError: the input cannot be read, its schema cannot be determined, an example is
            invalid (with ``on_invalid="error"``), two examples share an id, or nothing is left.
        ValueError: ``on_invalid`` is neither ``"error"`` nor ``"skip"``.
    """
    if on_invalid not in (None, "error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    source_path = os.fspath(path_or_name)
    raw = read_input(source_path, split)
    if raw.n == 0:
        raise S2LError(f"{raw.label}: no examples")
    named = {
        "prompt_column": prompt_column,
        "input_column": input_column,
        "response_column": response_column,
        "source_column": source_column,
        "id_column": id_column,
    }
    if like is not None:
        named = _columns_like(raw, like, named)
    schema = resolve_schema(raw, **named)
    if like is not None:  # the columns were named after like's, which its kind describes
        schema["kind"] = like["kind"]
    columns, problems = normalise(raw, schema)

    if problems and on_invalid != "skip":
        first = problems[0]
        id_part = f" (id={first['id']})" if schema["id"] is not None and first["id"] else ""
        count = len(problems)
        plural = "example" if count == 1 else "examples"
        raise InvalidExamplesError(
            f"{first['where']}{id_part}: {first['problem']} ({count} invalid {plural} in total",
            skippable=on_invalid is not None,
        )
    if problems:
        first = problems[0]
        warnings.warn(
            f"{raw.label}: skipped {len(problems)} invalid example(s) of {raw.n} "
            f"(first: {first['where']}: {first['problem']}); see Pool.skipped",
            stacklevel=2,
        )
    if not columns["id"]:
        raise S2LError(f"{raw.label}: all {raw.n} examples are invalid, the pool is empty")

    extra = {}
    for name in dict.fromkeys(extra_columns):
        if name in raw.columns:
            values = raw.column(name)
            extra[name] = [None if values[r] is MISSING else values[r] for r in columns["row"]]

    fingerprint = fingerprint_columns(columns)
    # Dataset.from_dict encodes every value through `features` one by one (seconds for a large
    # pool); the columns are already plain strings and ints, so the Arrow table is built directly
    # and the content fingerprint spares datasets from hashing the whole table again.
    table = pa.Table.from_pydict(columns, schema=FEATURES.arrow_schema)
    dataset = datasets.Dataset(
        table, info=datasets.DatasetInfo(features=FEATURES), fingerprint=fingerprint
    )
    return Pool(
        dataset=dataset,
        source_path=source_path,
        format=raw.format,
        schema=schema,
        fingerprint=fingerprint,
        skipped=problems,
        input_columns=list(raw.columns),
        extra=extra,
    )


#: The schema's keys that name an input column, and the ``load_pool`` option naming each.
_COLUMN_OPTIONS = {
    "prompt": "prompt_column",
    "input": "input_column",
    "response": "response_column",
    "source": "source_column",
    "id": "id_column",
}


def _columns_like(raw, like: dict, named: dict[str, str | None]) -> dict[str, str | None]:
    """The ``*_column`` options that read ``raw`` with the columns of the schema ``like``.

    A chat schema is found again by its ``messages`` column; a text one is named column by
    column (an ``input`` column only where the input has it: it is optional per record).

    Raises:
        S2LError: an option names another column than ``like`` does, or ``raw`` lacks one of
            ``like``'s columns; the message names the input, ``like``'s schema and the columns
            found.
    """
    chat = like.get("kind") == "messages"
    columns = {key: like.get(key) for key in _COLUMN_OPTIONS}
    shown = [f"{key} {name!r}" for key, name in columns.items() if name]
    if chat:
        shown = [f"chat {columns['prompt']!r}"] + shown[2:]
    say = (
        f"is read with the columns of the pool it joins, {like.get('kind')} "
        f"({', '.join(shown)}), so that the pool keeps one schema"
    )
    for key, option in _COLUMN_OPTIONS.items():
        given = named.get(option)
        if given is not None and given != columns[key]:
            flag = "--" + option.replace("_", "-")
            instead = (
                f"rename the column {given!r} to {columns[key]!r} in the file instead"
                if columns[key]
                else f"that pool has no {key} column"
            )
            raise S2LError(f"{raw.label}: {flag} {given}: this input {say}; {instead}")
    needed = ["messages"] if chat else [columns["prompt"], columns["response"]]
    needed += [name for name in (columns["source"], columns["id"]) if name]
    missing = [name for name in dict.fromkeys(needed) if name not in raw.columns]
    if missing:
        raise S2LError(
            f"{raw.label}: has no column {', '.join(map(repr, missing))} (its columns: "
            f"{', '.join(raw.columns)}); this input {say}: rename its columns to those"
        )
    options = {option: None for option in _COLUMN_OPTIONS.values()}
    if not chat:  # naming the chat column as prompt/response would turn the chat schema off
        options.update(prompt_column=columns["prompt"], response_column=columns["response"])
        if columns["input"] in raw.columns:
            options["input_column"] = columns["input"]
    options.update(source_column=columns["source"], id_column=columns["id"])
    return options


def save_pool(pool: Pool, run_dir: RunDir) -> None:
    """Save ``pool`` to ``run_dir.pool_dir`` (Arrow) and its metadata to ``run_dir.pool_meta``.

    The metadata is written last, so a run directory with a ``pool.json`` always has a
    complete ``pool/`` beside it.
    """
    # An old pool.json next to a half-replaced pool/ would vouch for the wrong data.
    run_dir.pool_meta.unlink(missing_ok=True)
    with atomic_dir(run_dir.pool_dir) as tmp:
        pool.dataset.save_to_disk(str(tmp))
    atomic_write_json(
        run_dir.pool_meta,
        {
            "source_path": pool.source_path,
            "format": pool.format,
            "schema": pool.schema,
            "n": len(pool),
            "fingerprint": pool.fingerprint,
            "skipped": pool.skipped,
            "input_columns": pool.input_columns,
        },
    )


def load_saved_pool(run_dir: RunDir) -> Pool:
    """Load the pool written by :func:`save_pool` (memory-mapped, nothing is copied).

    Raises:
        S2LError: ``run_dir`` holds no saved pool, or the saved pool is incomplete.
    """
    if not run_dir.pool_meta.is_file() or not run_dir.pool_dir.is_dir():
        raise S2LError(
            f"{run_dir.root}: no saved pool (pool.json or pool/ is missing); run "
            "`s2l prepare POOL` first"
        )
    meta = read_json(run_dir.pool_meta)
    dataset = datasets.load_from_disk(str(run_dir.pool_dir))
    if (
        isinstance(dataset, datasets.Dataset)
        and tuple(dataset.column_names) == (NORMALISED_COLUMNS[:-1])
    ):  # saved before the system column existed: no example had one, and the fingerprint
        # of a pool without system prompts is what it was (schema.fingerprint_columns)
        dataset = dataset.add_column("system", [""] * len(dataset))
    if not isinstance(dataset, datasets.Dataset) or tuple(dataset.column_names) != (
        NORMALISED_COLUMNS
    ):
        raise S2LError(f"{run_dir.pool_dir}: not a saved pool (unexpected columns)")
    if len(dataset) != meta.get("n"):
        raise S2LError(
            f"{run_dir.pool_dir}: holds {len(dataset)} examples but pool.json says {meta.get('n')}"
        )
    return Pool(
        dataset=dataset,
        source_path=meta["source_path"],
        format=meta["format"],
        schema=meta["schema"],
        fingerprint=meta["fingerprint"],
        skipped=meta.get("skipped", []),
        input_columns=meta.get("input_columns", []),
    )


def write_subset(pool: Pool, rows: Sequence[int] | np.ndarray, out_dir: Path) -> Path:
    """Write the selected examples in the input's format, with its original columns.

    Args:
        pool: the pool the rows were selected from.
        rows: values of the pool's ``row`` column (original record indices), shape ``(k,)``;
            the order does not matter, the subset is written in pool order.
        out_dir: directory to write into (created if needed).

    Returns:
        The written path: ``subset.jsonl`` (the original raw lines, byte for byte, for JSONL
        input; the original records for hub input), ``subset.json``, ``subset.parquet``,
        ``subset.csv``, or the ``subset`` directory (``save_to_disk``) for ``hf_disk`` input.

    Raises:
        S2LError: a row is not in the pool or is repeated, or the input changed since loading.
    """
    selected = _check_rows(pool, rows)
    wanted = set(selected.tolist())
    expected_records = len(pool) + len(pool.skipped)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = pool.source_path
    fmt = pool.format

    if fmt == "jsonl":
        target = out_dir / "subset.jsonl"
        with atomic_open(target) as out:
            n = 0
            for index, _lineno, line in iter_jsonl_lines(src):
                if index in wanted:
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                n = index + 1
        _check_unchanged(src, n, expected_records)
        return target

    if fmt == "json":
        records = read_json_list(src, src)
        _check_unchanged(src, len(records), expected_records)
        target = out_dir / "subset.json"
        text = json.dumps([records[i] for i in selected], ensure_ascii=False, indent=2) + "\n"
        with atomic_open(target) as out:
            out.write(text.encode("utf-8"))
        return target

    if fmt == "parquet":
        table = read_parquet(src, src)
        _check_unchanged(src, table.num_rows, expected_records)
        target = out_dir / "subset.parquet"
        with atomic_open(target) as out:
            pq.write_table(table.take(pa.array(selected, type=pa.int64())), out)
        return target

    if fmt == "csv":
        header, csv_rows = read_csv(src, src)
        _check_unchanged(src, len(csv_rows), expected_records)
        target = out_dir / "subset.csv"
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(csv_rows[i] for i in selected)
        with atomic_open(target) as out:
            out.write(buffer.getvalue().encode("utf-8"))
        return target

    split = pool.schema.get("split")
    if fmt == "hf_disk":
        dataset, _ = load_disk(src, split)
        _check_unchanged(src, len(dataset), expected_records)
        target = out_dir / "subset"
        with atomic_dir(target) as tmp:
            dataset.select(selected.tolist()).save_to_disk(str(tmp))
        return target

    if fmt == "hub":
        dataset = load_hub(src, split or "train")
        _check_unchanged(src, len(dataset), expected_records)
        target = out_dir / "subset.jsonl"
        with atomic_open(target) as out:
            for record in dataset.select(selected.tolist()):
                line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
                out.write(line.encode("utf-8"))
        return target

    raise S2LError(f"{src}: unknown pool format {fmt!r} (expected one of {', '.join(FORMATS)})")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _column(dataset: datasets.Dataset, name: str) -> list:
    # Going through Arrow is ~100x faster than iterating a datasets Column.
    return dataset.with_format("arrow")[name].to_pylist()


def _check_rows(pool: Pool, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """``rows`` as a sorted int64 array, checked to be distinct rows of ``pool``."""
    array = np.asarray(rows)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise S2LError(f"rows must be a 1-D sequence of integers, got shape {array.shape}")
    selected = np.unique(array.astype(np.int64))
    if len(selected) != len(array):
        values, counts = np.unique(array, return_counts=True)
        raise S2LError(f"rows repeats row {int(values[counts > 1][0])}")
    pool_rows = pool.dataset.with_format("arrow")["row"].to_numpy()
    absent = selected[~np.isin(selected, pool_rows)]
    if len(absent):
        raise S2LError(f"row {int(absent[0])} is not in the pool loaded from {pool.source_path}")
    return selected


def _check_unchanged(source: str, found: int, expected: int) -> None:
    if found != expected:
        raise S2LError(
            f"{source}: has {found} records but had {expected} when the pool was loaded; "
            "it changed since, reload the pool"
        )
