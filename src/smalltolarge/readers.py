"""Reading a pool's input into columns, whatever its format.

:func:`read_input` turns a JSONL, JSON, Parquet or CSV file, a ``save_to_disk`` directory or a
``datasets.load_dataset`` source into a :class:`RawInput`: the input's own column names and one
value per record, before any schema is applied. The per-format readers below it are also what
:func:`~smalltolarge.data.write_subset` reads the input back with, so a record index means the
same record when loading and when writing.

Every problem a user can fix raises :class:`~smalltolarge.errors.S2LError` naming the file and
the line, record or row.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from smalltolarge.errors import S2LError
from smalltolarge.hub import check_hub_name

#: The formats :func:`read_input` recognises (``RawInput.format``).
FORMATS = ("jsonl", "json", "parquet", "csv", "hf_disk", "hub")

_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

# A string that names no existing path is sent to the hub only if it could be a hub id; a
# missing "data/pool.jsonl" should say "no such file", not fail somewhere inside the hub client.
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_DATA_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zst"}


class _Missing:
    """Marks a key absent from a JSONL/JSON record or a cell absent from a short CSV row."""

    def __repr__(self) -> str:
        return "<missing>"


#: The value of a key absent from a JSONL/JSON record or of a cell absent from a short CSV row
#: (a present key whose value is null reads as None).
MISSING = _Missing()


@dataclass
class RawInput:
    """The input's records, before normalisation: its own column names, one value per record.

    Records are numbered from 0 in input order (records, not lines); that number is the pool's
    ``row``.
    """

    format: str
    label: str  # how messages name the input: the path as given, plus the split where relevant
    columns: list[str]
    n: int
    column: Callable[[str], list]  # values of one column, one per record (None/MISSING if absent)
    where: Callable[[int], str]  # location of record i for messages, e.g. "pool.jsonl line 7"
    split: str | None = None  # the split taken, for inputs that have splits


def read_input(source: str, split: str) -> RawInput:
    """Read ``source`` (a file, a ``save_to_disk`` directory or a ``load_dataset`` source).

    Args:
        source: the path or name as the user gave it; messages name the input by it.
        split: the split to take from a ``DatasetDict`` directory or a ``load_dataset`` source.

    Raises:
        S2LError: the input does not exist, has an unsupported type or cannot be parsed.
    """
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
            dataset, used_split = load_disk(source, split)
            label = f"{source}[{used_split}]" if used_split is not None else source
            return _raw_dataset(dataset, "hf_disk", label, used_split)
        return _raw_dataset(load_hub(source, split), "hub", source, split)
    if not _looks_like_hub_name(source):
        raise S2LError(f"{source}: no such file or directory")
    return _raw_dataset(load_hub(source, split), "hub", f"{source}[{split}]", split)


def _raw_jsonl(source: str) -> RawInput:
    records: list[dict] = []
    linenos: list[int] = []
    for _index, lineno, line in iter_jsonl_lines(source):
        try:
            obj = json.loads(line)
        except UnicodeDecodeError as e:
            raise S2LError(f"{source} line {lineno}: not valid UTF-8 ({e.reason})") from None
        except json.JSONDecodeError as e:
            raise S2LError(
                f"{source} line {lineno}: not valid JSON ({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise S2LError(f"{source} line {lineno}: not a JSON object (got {json_type(obj)})")
        records.append(obj)
        linenos.append(lineno)
    return _raw_records(records, "jsonl", source, lambda i: f"{source} line {linenos[i]}")


def _raw_json(source: str) -> RawInput:
    records = read_json_list(source, source)
    return _raw_records(records, "json", source, lambda i: f"{source} record {i + 1}")


def _raw_records(records: list[dict], format: str, source: str, where) -> RawInput:
    """A list of JSON objects as a :class:`RawInput`; ``where(i)`` names record ``i``."""
    return RawInput(
        format=format,
        label=source,
        columns=_union_keys(records),
        n=len(records),
        column=lambda name: [r.get(name, MISSING) for r in records],
        where=where,
    )


def _raw_parquet(source: str) -> RawInput:
    return _raw_table(read_parquet(source, source), "parquet", source)


def _raw_csv(source: str) -> RawInput:
    header, rows = read_csv(source, source)
    index = {name: j for j, name in enumerate(header)}

    def column(name: str) -> list:
        j = index[name]
        return [row[j] if j < len(row) else MISSING for row in rows]

    return RawInput(
        format="csv",
        label=source,
        columns=list(header),
        n=len(rows),
        column=column,
        where=lambda i: f"{source} row {i + 1}",
    )


def _raw_dataset(dataset: datasets.Dataset, fmt: str, label: str, split: str | None) -> RawInput:
    # The arrow view honours an indices mapping (a saved .select()) and avoids per-row decoding.
    return _raw_table(dataset.with_format("arrow")[:], fmt, label, split)


def _raw_table(table: pa.Table, fmt: str, label: str, split: str | None = None) -> RawInput:
    return RawInput(
        format=fmt,
        label=label,
        columns=list(table.column_names),
        n=table.num_rows,
        column=lambda name: table.column(name).to_pylist(),
        where=lambda i: f"{label} row {i + 1}",
        split=split,
    )


# --------------------------------------------------------------------------------------------
# One reader per format (loading and writing a subset both read through these)
# --------------------------------------------------------------------------------------------


def iter_jsonl_lines(source: str) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(record index, 1-based line number, raw line bytes)`` for non-blank lines.

    Loading and :func:`~smalltolarge.data.write_subset` both count records with this, so a
    row index always maps back to the same raw line.
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


def read_json_list(source: str, label: str) -> list[dict]:
    """The records of a ``.json`` file holding a list of objects; ``label`` names it in
    messages."""
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
        raise S2LError(f"{label}: expected a JSON list of objects, got {json_type(data)}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise S2LError(f"{label} record {i + 1}: not a JSON object (got {json_type(record)})")
    return data


def read_parquet(source: str, label: str) -> pa.Table:
    """A Parquet file as an Arrow table; ``label`` names it in messages."""
    try:
        return pq.read_table(source)
    except FileNotFoundError:
        raise S2LError(f"{label}: no such file") from None
    except (pa.ArrowException, OSError) as e:
        raise S2LError(f"{label}: not a readable Parquet file ({first_line(e)})") from None


def read_csv(source: str, label: str) -> tuple[list[str], list[list[str]]]:
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


def load_disk(source: str, split: str | None) -> tuple[datasets.Dataset, str | None]:
    """A ``save_to_disk`` directory as a Dataset, and the split taken (None for a Dataset)."""
    try:
        loaded = datasets.load_from_disk(source)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise S2LError(f"{source}: cannot load the saved dataset ({first_line(e)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise S2LError(
                f"{source}: no split {split!r} (available splits: {', '.join(loaded)}); "
                "pass split= / --split"
            )
        return loaded[split], split
    return loaded, None


def load_hub(source: str, split: str) -> datasets.Dataset:
    """Split ``split`` of ``datasets.load_dataset(source)`` (a hub name or a data directory)."""
    # load_dataset raises a wide variety of exception types (missing repo, no network, unknown
    # split, unreadable files); all of them mean "this input cannot be used" to the user.
    check_hub_name(source, kind="dataset")
    try:
        dataset = datasets.load_dataset(source, split=split)
    except Exception as e:
        raise S2LError(
            f"{source}: datasets.load_dataset(split={split!r}) failed: {first_line(e)}"
        ) from None
    if not isinstance(dataset, datasets.Dataset):
        raise S2LError(f"{source}: load_dataset returned {type(dataset).__name__}, not a Dataset")
    return dataset


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


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


def json_type(value: Any) -> str:
    """The JSON name of ``value``'s type (``"null"``, ``"array"``, ...), for messages."""
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


def first_line(error: BaseException) -> str:
    """The first line of a library error's message, for a one-line S2LError; a first line
    that ends in ':' ("from one of:") goes on with the lines below it (a list), joined into one
    line of at most 300 characters."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    text = " ".join(" ".join(lines).split()) if lines[0].rstrip().endswith(":") else lines[0]
    return (text[:297] + "...") if len(text) > 300 else text
