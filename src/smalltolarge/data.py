"""Loading a pool of SFT examples, normalising it, and writing selected subsets back out.

A pool can be a JSONL, JSON, Parquet or CSV file, a directory written by ``datasets``'
``save_to_disk``, or anything ``datasets.load_dataset`` understands (a hub name or a local
directory of data files). Whatever the input, :func:`load_pool` produces a :class:`Pool` whose
``dataset`` has the same columns (:data:`NORMALISED_COLUMNS`), so the later stages never look
at the user's column names again. :func:`write_subset` goes the other way: it writes the
selected examples in the input's own format with the user's original columns, so a selection
can be fed to any training script that already reads the original pool.

Every problem a user can fix raises :class:`~smalltolarge.errors.S2LError` with a one-line
message that names the file and the line, record or row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smalltolarge.errors import S2LError
from smalltolarge.hub import check_hub_name
from smalltolarge.runs import RunDir, atomic_dir, atomic_open, atomic_write_json, read_json

NORMALISED_COLUMNS = ("id", "row", "instruction", "input", "response", "source", "messages")

FORMATS = ("jsonl", "json", "parquet", "csv", "hf_disk", "hub")

_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "row": datasets.Value("int64"),
        "instruction": datasets.Value("string"),
        "input": datasets.Value("string"),
        "response": datasets.Value("string"),
        "source": datasets.Value("string"),
        "messages": datasets.Value("string"),
    }
)

# Column-name pairs tried in order when no --prompt-column/--response-column is given.
_TEXT_SCHEMAS = (
    ("alpaca", "instruction", "output"),
    ("qa", "question", "answer"),
    ("prompt_completion", "prompt", "completion"),
    ("prompt_completion", "prompt", "response"),
)

_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

# A string that names no existing path is sent to the hub only if it could be a hub id; a
# missing "data/pool.jsonl" should say "no such file", not fail somewhere inside the hub client.
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_DATA_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zst"}

_FINGERPRINT_VERSION = b"smalltolarge-pool-v1"


class _Missing:
    """Marks a key absent from a JSONL/JSON record or a cell absent from a short CSV row."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


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
      ``[{"role": ..., "content": ...}, ...]`` (everything before the response); else ``""``.
    """

    dataset: datasets.Dataset
    source_path: str
    format: str
    schema: dict
    fingerprint: str
    skipped: list[dict] = field(default_factory=list)

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
    on_invalid: str = "error",
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
            ``"skip"`` drops invalid examples, lists them in ``Pool.skipped`` and warns once.

    Raises:
        S2LError: the input cannot be read, its schema cannot be determined, an example is
            invalid (with ``on_invalid="error"``), two examples share an id, or nothing is left.
        ValueError: ``on_invalid`` is neither ``"error"`` nor ``"skip"``.
    """
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    source_path = os.fspath(path_or_name)
    raw = _read_raw(source_path, split)
    if raw.n == 0:
        raise S2LError(f"{raw.label}: no examples")
    schema = _resolve_schema(
        raw,
        prompt_column=prompt_column,
        input_column=input_column,
        response_column=response_column,
        source_column=source_column,
        id_column=id_column,
    )
    columns, problems = _normalise(raw, schema)

    if problems and on_invalid == "error":
        first = problems[0]
        id_part = f" (id={first['id']})" if schema["id"] is not None and first["id"] else ""
        count = len(problems)
        plural = "example" if count == 1 else "examples"
        raise S2LError(
            f"{first['where']}{id_part}: {first['problem']} ({count} invalid {plural} in total; "
            "fix them, or pass on_invalid='skip' / --skip-invalid to drop them)"
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

    fingerprint = _fingerprint_columns(columns)
    # Dataset.from_dict encodes every value through `features` one by one (seconds for a large
    # pool); the columns are already plain strings and ints, so the Arrow table is built directly
    # and the content fingerprint spares datasets from hashing the whole table again.
    table = pa.Table.from_pydict(columns, schema=_FEATURES.arrow_schema)
    dataset = datasets.Dataset(
        table, info=datasets.DatasetInfo(features=_FEATURES), fingerprint=fingerprint
    )
    return Pool(
        dataset=dataset,
        source_path=source_path,
        format=raw.format,
        schema=schema,
        fingerprint=fingerprint,
        skipped=problems,
    )


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
            for index, _lineno, line in _iter_jsonl_lines(src):
                if index in wanted:
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                n = index + 1
        _check_unchanged(src, n, expected_records)
        return target

    if fmt == "json":
        records = _read_json_list(src, src)
        _check_unchanged(src, len(records), expected_records)
        target = out_dir / "subset.json"
        text = json.dumps([records[i] for i in selected], ensure_ascii=False, indent=2) + "\n"
        with atomic_open(target) as out:
            out.write(text.encode("utf-8"))
        return target

    if fmt == "parquet":
        table = _read_parquet(src, src)
        _check_unchanged(src, table.num_rows, expected_records)
        target = out_dir / "subset.parquet"
        with atomic_open(target) as out:
            pq.write_table(table.take(pa.array(selected, type=pa.int64())), out)
        return target

    if fmt == "csv":
        header, csv_rows = _read_csv(src, src)
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
        dataset, _ = _load_disk(src, split)
        _check_unchanged(src, len(dataset), expected_records)
        target = out_dir / "subset"
        with atomic_dir(target) as tmp:
            dataset.select(selected.tolist()).save_to_disk(str(tmp))
        return target

    if fmt == "hub":
        dataset = _load_hub(src, split or "train")
        _check_unchanged(src, len(dataset), expected_records)
        target = out_dir / "subset.jsonl"
        with atomic_open(target) as out:
            for record in dataset.select(selected.tolist()):
                line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
                out.write(line.encode("utf-8"))
        return target

    raise S2LError(f"{src}: unknown pool format {fmt!r} (expected one of {', '.join(FORMATS)})")


# --------------------------------------------------------------------------------------------
# Reading the input into a column-addressable form
# --------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """The input's records, before normalisation."""

    format: str
    label: str  # how messages name the input: the path as given, plus the split where relevant
    columns: list[str]
    n: int
    column: Callable[[str], list]  # values of one column, one per record (None/_MISSING if absent)
    where: Callable[[int], str]  # location of record i for messages, e.g. "pool.jsonl line 7"
    split: str | None = None  # the split taken, for inputs that have splits


def _read_raw(source: str, split: str) -> _Raw:
    path = Path(source)
    if path.is_file():
        suffix = path.suffix.lower()
        fmt = _SUFFIX_FORMATS.get(suffix)
        if fmt is None:
            raise S2LError(
                f"{source}: unsupported file type {suffix or '(no extension)'!r} (expected "
                ".jsonl, .json, .parquet or .csv, a save_to_disk directory or a dataset name)"
            )
        if fmt == "json" and not _starts_with_bracket(path):
            _refuse_json_object(path)
            fmt = "jsonl"
        return {
            "jsonl": _raw_jsonl,
            "json": _raw_json,
            "parquet": _raw_parquet,
            "csv": _raw_csv,
        }[fmt](source)
    if path.is_dir():
        if _is_saved_dataset(path):
            dataset, used_split = _load_disk(source, split)
            label = f"{source}[{used_split}]" if used_split is not None else source
            return _raw_dataset(dataset, "hf_disk", label, used_split)
        return _raw_dataset(_load_hub(source, split), "hub", source, split)
    if not _looks_like_hub_name(source):
        raise S2LError(f"{source}: no such file or directory")
    return _raw_dataset(_load_hub(source, split), "hub", f"{source}[{split}]", split)


def _raw_jsonl(source: str) -> _Raw:
    records: list[dict] = []
    linenos: list[int] = []
    for _index, lineno, line in _iter_jsonl_lines(source):
        try:
            obj = json.loads(line)
        except UnicodeDecodeError as e:
            raise S2LError(f"{source} line {lineno}: not valid UTF-8 ({e.reason})") from None
        except json.JSONDecodeError as e:
            raise S2LError(
                f"{source} line {lineno}: not valid JSON ({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise S2LError(f"{source} line {lineno}: not a JSON object (got {_json_type(obj)})")
        records.append(obj)
        linenos.append(lineno)
    return _Raw(
        format="jsonl",
        label=source,
        columns=_union_keys(records),
        n=len(records),
        column=lambda name: [r.get(name, _MISSING) for r in records],
        where=lambda i: f"{source} line {linenos[i]}",
    )


def _raw_json(source: str) -> _Raw:
    records = _read_json_list(source, source)
    return _Raw(
        format="json",
        label=source,
        columns=_union_keys(records),
        n=len(records),
        column=lambda name: [r.get(name, _MISSING) for r in records],
        where=lambda i: f"{source} record {i + 1}",
    )


def _raw_parquet(source: str) -> _Raw:
    return _raw_table(_read_parquet(source, source), "parquet", source)


def _raw_csv(source: str) -> _Raw:
    header, rows = _read_csv(source, source)
    index = {name: j for j, name in enumerate(header)}

    def column(name: str) -> list:
        j = index[name]
        return [row[j] if j < len(row) else _MISSING for row in rows]

    return _Raw(
        format="csv",
        label=source,
        columns=list(header),
        n=len(rows),
        column=column,
        where=lambda i: f"{source} row {i + 1}",
    )


def _raw_dataset(dataset: datasets.Dataset, fmt: str, label: str, split: str | None) -> _Raw:
    # The arrow view honours an indices mapping (a saved .select()) and avoids per-row decoding.
    return _raw_table(dataset.with_format("arrow")[:], fmt, label, split)


def _raw_table(table: pa.Table, fmt: str, label: str, split: str | None = None) -> _Raw:
    return _Raw(
        format=fmt,
        label=label,
        columns=list(table.column_names),
        n=table.num_rows,
        column=lambda name: table.column(name).to_pylist(),
        where=lambda i: f"{label} row {i + 1}",
        split=split,
    )


def _iter_jsonl_lines(source: str) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(record index, 1-based line number, raw line bytes)`` for non-blank lines.

    Loading and :func:`write_subset` both count records with this, so a row index always
    maps back to the same raw line.
    """
    index = 0
    try:
        with open(source, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
                if not line.strip():
                    continue
                yield index, lineno, line
                index += 1
    except FileNotFoundError:
        raise S2LError(f"{source}: no such file") from None


def _read_json_list(source: str, label: str) -> list[dict]:
    try:
        with open(source, encoding="utf-8-sig") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise S2LError(f"{label}: no such file") from None
    except UnicodeDecodeError as e:
        raise S2LError(f"{label}: not valid UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise S2LError(
            f"{label}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    if not isinstance(data, list):
        raise S2LError(f"{label}: expected a JSON list of objects, got {_json_type(data)}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise S2LError(f"{label} record {i + 1}: not a JSON object (got {_json_type(record)})")
    return data


def _read_parquet(source: str, label: str) -> pa.Table:
    try:
        return pq.read_table(source)
    except FileNotFoundError:
        raise S2LError(f"{label}: no such file") from None
    except (pa.ArrowException, OSError) as e:
        raise S2LError(f"{label}: not a readable Parquet file ({_first_line(e)})") from None


def _read_csv(source: str, label: str) -> tuple[list[str], list[list[str]]]:
    """The header and the data rows of a CSV file, every cell as the text in the file."""
    # Long responses exceed the csv module's default 128 KiB field limit; the limit is
    # process-global, so it is raised only while reading and restored afterwards.
    old_limit = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = None
    try:
        with open(source, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            # csv yields [] for a blank line; such lines are not records.
            rows = [row for row in reader if row]
    except FileNotFoundError:
        raise S2LError(f"{label}: no such file") from None
    except UnicodeDecodeError as e:
        raise S2LError(f"{label}: not valid UTF-8 ({e.reason})") from None
    except csv.Error as e:
        line = f" line {reader.line_num}" if reader is not None else ""
        raise S2LError(f"{label}{line}: not valid CSV ({e})") from None
    finally:
        csv.field_size_limit(old_limit)
    if header is None:
        return [], []
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise S2LError(f"{label}: the header repeats column(s) {', '.join(duplicated)}")
    return header, rows


def _load_disk(source: str, split: str | None) -> tuple[datasets.Dataset, str | None]:
    """A ``save_to_disk`` directory as a Dataset, and the split taken (None for a Dataset)."""
    try:
        loaded = datasets.load_from_disk(source)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise S2LError(f"{source}: cannot load the saved dataset ({_first_line(e)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise S2LError(
                f"{source}: no split {split!r} (available splits: {', '.join(loaded)}); "
                "pass split= / --split"
            )
        return loaded[split], split
    return loaded, None


def _load_hub(source: str, split: str) -> datasets.Dataset:
    # load_dataset raises a wide variety of exception types (missing repo, no network, unknown
    # split, unreadable files); all of them mean "this input cannot be used" to the user.
    check_hub_name(source, kind="dataset")
    try:
        dataset = datasets.load_dataset(source, split=split)
    except Exception as e:
        raise S2LError(
            f"{source}: datasets.load_dataset(split={split!r}) failed: {_first_line(e)}"
        ) from None
    if not isinstance(dataset, datasets.Dataset):
        raise S2LError(f"{source}: load_dataset returned {type(dataset).__name__}, not a Dataset")
    return dataset


# --------------------------------------------------------------------------------------------
# Schema detection and normalisation
# --------------------------------------------------------------------------------------------


def _resolve_schema(
    raw: _Raw,
    *,
    prompt_column: str | None,
    input_column: str | None,
    response_column: str | None,
    source_column: str | None,
    id_column: str | None,
) -> dict:
    columns = raw.columns
    available = ", ".join(columns)
    flags = (
        ("--prompt-column", prompt_column),
        ("--input-column", input_column),
        ("--response-column", response_column),
        ("--source-column", source_column),
        ("--id-column", id_column),
    )
    for flag, name in flags:
        if name is not None and name not in columns:
            raise S2LError(f"{raw.label}: no column {name!r} (from {flag}); columns: {available}")

    kind: str | None = None
    prompt = response = None
    if "messages" in columns:
        kind, prompt, response = "messages", "messages", "messages"
    else:
        for candidate, p, r in _TEXT_SCHEMAS:
            if p in columns and r in columns:
                kind, prompt, response = candidate, p, r
                break

    if prompt_column is not None or response_column is not None:
        if kind == "messages":
            # A chat column cannot stand in for one half of a text prompt/response pair.
            prompt = response = None
        kind = "explicit"
        prompt = prompt_column or prompt
        response = response_column or response
    if kind is None or prompt is None or response is None:
        raise S2LError(
            f"{raw.label}: cannot tell which columns hold the prompt and the response "
            f"(columns: {available}); pass --prompt-column and --response-column "
            "(prompt_column= and response_column= in Python)"
        )

    if input_column is not None:
        input_name = input_column
    elif kind != "messages" and prompt == "instruction" and "input" in columns:
        input_name = "input"
    else:
        input_name = None
    return {
        "kind": kind,
        "prompt": prompt,
        "input": input_name,
        "response": response,
        "source": source_column or ("source" if "source" in columns else None),
        "id": id_column or ("id" if "id" in columns else None),
        "split": raw.split,
    }


def _normalise(raw: _Raw, schema: dict) -> tuple[dict[str, list], list[dict]]:
    """Normalised column lists of the valid examples, and the problems of the invalid ones."""
    n = raw.n
    id_name, source_name = schema["id"], schema["source"]
    ids = raw.column(id_name) if id_name is not None else None
    sources = raw.column(source_name) if source_name is not None else None
    chat = schema["kind"] == "messages"
    if chat:
        chats = raw.column(schema["prompt"])
    else:
        prompts = raw.column(schema["prompt"])
        responses = raw.column(schema["response"])
        inputs = raw.column(schema["input"]) if schema["input"] is not None else None

    out: dict[str, list] = {name: [] for name in NORMALISED_COLUMNS}
    problems: list[dict] = []
    first_seen: dict[str, int] = {}
    for i in range(n):
        problem = None
        if ids is None:
            example_id: str | None = str(i)
        else:
            example_id, problem = _text(ids[i], id_name)
            if example_id is not None:
                j = first_seen.setdefault(example_id, i)
                if j != i:
                    raise S2LError(
                        f"duplicate id {example_id!r}: {raw.where(j)} and {raw.where(i)}"
                    )
                if not example_id.strip():
                    problem = problem or "empty id"

        if chat:
            instruction, response, messages, chat_problem = _parse_chat(chats[i])
            text_input = ""
            problem = problem or chat_problem
        else:
            messages = ""
            instruction, prompt_problem = _text(prompts[i], schema["prompt"])
            if instruction is not None and not instruction.strip():
                prompt_problem = "empty prompt"
            response, response_problem = _text(responses[i], schema["response"])
            if response is not None and not response.strip():
                response_problem = "empty response"
            text_input, input_problem = "", None
            if inputs is not None and inputs[i] is not _MISSING and inputs[i] is not None:
                text_input, input_problem = _text(inputs[i], schema["input"])
            problem = problem or prompt_problem or input_problem or response_problem

        source, source_problem = "", None
        if sources is not None and sources[i] is not _MISSING and sources[i] is not None:
            source, source_problem = _text(sources[i], source_name)
        problem = problem or source_problem

        if problem is not None:
            problems.append({"where": raw.where(i), "id": example_id, "problem": problem})
            continue
        out["id"].append(example_id)
        out["row"].append(i)
        out["instruction"].append(instruction)
        out["input"].append(text_input)
        out["response"].append(response)
        out["source"].append(source)
        out["messages"].append(messages)
    return out, problems


def _text(value: Any, name: str) -> tuple[str | None, str | None]:
    """``(text, None)`` for a usable scalar, ``(None, problem)`` otherwise."""
    if isinstance(value, str):
        return value, None
    if value is _MISSING:
        return None, f"missing field {name!r}"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, f"field {name!r} is empty (null)"
    if isinstance(value, (list, tuple, dict)):
        return None, f"field {name!r} is not text (got {_json_type(value)})"
    return str(value), None


def _parse_chat(value: Any) -> tuple[str | None, str | None, str, str | None]:
    """``(instruction, response, prompt-messages JSON, problem)`` of one chat example.

    The response is the last assistant turn, the prompt is every turn before it; turns after
    it carry no target and are dropped.
    """
    if value is _MISSING:
        return None, None, "", "missing field 'messages'"
    if value is None:
        return None, None, "", "field 'messages' is empty (null)"
    if isinstance(value, str):
        # CSV (and some exports) store the chat as a JSON string.
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None, None, "", "malformed messages (a string that is not a JSON list)"
    if not isinstance(value, (list, tuple)):
        return None, None, "", f"malformed messages (expected a list, got {_json_type(value)})"
    turns: list[dict[str, str]] = []
    for k, turn in enumerate(value):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("role"), str)
            or not isinstance(turn.get("content"), str)
        ):
            return None, None, "", f"malformed messages (turn {k + 1} is not a {{role, content}})"
        turns.append({"role": turn["role"], "content": turn["content"]})
    last = next((k for k in range(len(turns) - 1, -1, -1) if turns[k]["role"] == "assistant"), -1)
    if last < 0:
        return None, None, "", "malformed messages (no assistant turn)"
    response = turns[last]["content"]
    prompt_turns = turns[:last]
    if not response.strip():
        return None, None, "", "empty response"
    if not prompt_turns:
        return None, None, "", "empty prompt"
    non_system = [t for t in prompt_turns if t["role"] != "system"]
    if len(non_system) == 1 and non_system[0]["role"] == "user":
        instruction = non_system[0]["content"]
    else:
        instruction = "\n\n".join(f"{t['role']}: {t['content']}" for t in prompt_turns)
    if not instruction.strip():
        return None, None, "", "empty prompt"
    return instruction, response, json.dumps(prompt_turns, ensure_ascii=False), None


def _fingerprint_columns(columns: dict[str, list]) -> str:
    """sha256 (16 hex chars) over the normalised columns, column by column.

    Each text column contributes its name, the UTF-8 byte lengths of its values and their
    concatenation; the lengths make the encoding unambiguous without escaping anything. ``row``
    is hashed too: it is the same whatever the format, but a pool that skipped a record must
    not share a fingerprint with one that never had it, because selections are stored as rows.
    """
    h = hashlib.sha256(_FINGERPRINT_VERSION)
    h.update(np.asarray(columns["row"], dtype="<i8").tobytes())
    for name in ("id", "instruction", "input", "response", "source", "messages"):
        encoded = [value.encode("utf-8", "surrogatepass") for value in columns[name]]
        h.update(b"\x00" + name.encode() + b"\x00")
        h.update(np.fromiter(map(len, encoded), dtype="<i8", count=len(encoded)).tobytes())
        h.update(b"".join(encoded))
    return h.hexdigest()[:16]


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


def _refuse_json_object(path: Path) -> None:
    """A ``.json`` file holding one JSON object (records keyed by id, or under a key) is not a
    pool; read as JSON Lines it would be one example whose fields are its keys."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # JSON Lines (several values), or broken: the JSONL reader says which line
    if isinstance(data, dict):
        keys = list(data)
        shown = ", ".join(map(str, keys[:5])) + (", ..." if len(keys) > 5 else "")
        raise S2LError(
            f"{path}: one JSON object with {len(keys)} keys ({shown}), not a list of records; "
            "give a JSON list of objects ([{...}, ...]) or JSON Lines (one object per line)"
        )


def _starts_with_bracket(path: Path) -> bool:
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()
            if stripped:
                return stripped.startswith(b"[")
    return False


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _looks_like_hub_name(name: str) -> bool:
    return bool(_HUB_NAME.fullmatch(name)) and Path(name).suffix.lower() not in _DATA_SUFFIXES


def _union_keys(records: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    last_keys: Any = None
    for record in records:
        keys = record.keys()
        # Most files repeat one key set; comparing to the previous one skips the inner loop.
        if keys != last_keys:
            for key in keys:
                seen.setdefault(key, None)
            last_keys = keys
    return list(seen)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _first_line(error: BaseException) -> str:
    """The first line of the error's message; one that ends in ':' goes on with the lines
    below it (a list), joined into one line of at most 300 characters."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    text = " ".join(" ".join(lines).split()) if lines[0].rstrip().endswith(":") else lines[0]
    return (text[:297] + "...") if len(text) > 300 else text
