"""Hand a selection to another trainer: write its subset in that trainer's dataset format.

``export_selection(SELECTION_DIR, "llama-factory")`` reads the selection's subset (the user's
own records, see :func:`~smalltolarge.data.write_subset`), normalises it as the run did, and
writes one of :data:`FORMATS` into ``SELECTION_DIR/export/FORMAT/`` (or ``out_dir``):

- ``alpaca``: ``NAME.json``, a JSON list of ``{"instruction", "input", "output", ...}``;
- ``messages``: ``NAME.jsonl``, one ``{"messages": [{"role", "content"}, ...], ...}`` per line,
  the last message being the assistant's response;
- ``llama-factory``: ``NAME.json`` plus a ``dataset_info.json`` entry named ``NAME``: the
  alpaca layout (columns prompt/query/response = instruction/input/output, and system when the
  pool has system prompts), or for a chat pool the sharegpt layout with OpenAI-style
  ``messages`` (role/content tags; a ``tool`` turn is its ``observation``);
- ``axolotl``: ``NAME.jsonl`` plus ``NAME.axolotl.yaml`` holding the ``datasets:`` stanza of
  an axolotl config (``type: alpaca``, ``alpaca_w_system.load_instruct`` with system prompts,
  or ``type: chat_template`` for a chat pool), whose ``path`` is the data file's name: relative
  to the export folder, so the folder can be copied to the training machine (axolotl resolves
  it against the directory it runs in).

The trainers' loaders were read for this (LLaMA-Factory 0.9.5 ``data/converter.py``, axolotl
0.19 ``prompt_strategies/chat_template.py`` and ``alpaca_w_system.py``) and are emulated with
``datasets`` in ``tests/test_export_trainers.py``; none of them is a dependency.

Multi-turn chats: S2L scored every assistant turn, or the last only (``s2l prepare
--assistant-turns``, recorded in ``tokenised.json``). An export of multi-turn chats says which
trainer settings learn the same turns (:attr:`Export.notes`, printed by ``s2l export`` and kept
in ``export.json``); for axolotl and ``last``, the earlier assistant messages carry
``"training": false`` (``message_field_training``), so that the stanza alone matches.

Every original column of the subset is kept on each record, except the columns the format's
own fields were built from (the prompt, input and response columns, or the chat column): an
``id``, a ``source`` or any metadata column travels with the example. An original column whose
name a format field takes is kept as ``original_NAME``.

``export.json`` beside the data file (:data:`EXPORT_META`) records, per data file, the
selection it came from and that selection's fingerprint; :func:`check_export` refuses a file
whose selection was replaced since (``s2l finetune`` calls it), rather than train on ids the
selection no longer has.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smalltolarge.errors import S2LError
from smalltolarge.runs import atomic_write_json, atomic_write_text, output_dir, read_json

FORMATS = ("llama-factory", "axolotl", "messages", "alpaca")

#: Beside the exported files: ``{data file name: {"selection", "selection_fingerprint",
#: "format", "n"}}``, one entry per export written to the directory; with multi-turn chats also
#: ``"assistant_turns"`` (the turns S2L scored) and ``"trainer_settings"`` (:attr:`Export.notes`).
EXPORT_META = "export.json"


@dataclass
class Export:
    """A written export: its format, the files written (data file first) and the row count;
    ``notes`` say how to train on it to match what S2L scored (multi-turn chats only)."""

    format: str
    files: list[Path]
    n: int
    notes: list[str] = field(default_factory=list)


def export_selection(
    selection_dir: str | os.PathLike,
    fmt: str,
    out_dir: str | os.PathLike | None = None,
    *,
    name: str | None = None,
) -> Export:
    """Write the subset of ``selection_dir`` (``RUN/selections/NAME``) in format ``fmt``.

    Args:
        selection_dir: a finished selection (with ``summary.json`` and its subset file).
        fmt: one of :data:`FORMATS`.
        out_dir: where to write [default: ``selection_dir/export/FMT``].
        name: the dataset's name in file names and ``dataset_info.json`` [default: the
            selection's name].

    Raises:
        S2LError: an unknown format, a directory that is not a finished selection, or an
            ``out_dir`` that is a file.
    """
    from smalltolarge.data import load_pool
    from smalltolarge.finetune import resolve_train_data

    if fmt not in FORMATS:
        raise S2LError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    selection_dir = Path(selection_dir)
    if not (selection_dir / "summary.json").is_file():
        raise S2LError(f"{selection_dir}: not a finished selection (no summary.json)")
    out = output_dir(out_dir if out_dir is not None else selection_dir / "export" / fmt)
    subset_path, options = resolve_train_data(selection_dir)
    pool = load_pool(subset_path, **options)
    records = _records(Path(subset_path))
    summary = read_json(selection_dir / "summary.json")
    name = _safe_name(name or summary.get("name", "subset"))

    chat = pool.schema["kind"] == "messages"
    keys = ("prompt", "input", "response", "system")
    consumed = {pool.schema[k] for k in keys if pool.schema.get(k)}
    # a text pool's system prompts get a field of their own (a chat's are its first turn)
    system = not chat and pool.schema.get("system") is not None
    columns = pool.dataset.select_columns(
        ["row", "instruction", "input", "response", "messages", "system"]
    ).to_dict()
    rows = []
    for k, row in enumerate(columns["row"]):
        original = {c: v for c, v in records[row].items() if c not in consumed}
        example = {
            "instruction": columns["instruction"][k],
            "input": columns["input"][k],
            "response": columns["response"][k],
            "prompt_turns": json.loads(columns["messages"][k]) if chat else None,
            "system": columns["system"][k] if system else None,
        }
        rows.append((example, original))

    multi_turn = any(t["role"] == "assistant" for ex, _ in rows for t in ex["prompt_turns"] or ())
    turns = _scored_turns(selection_dir) if multi_turn else None
    # axolotl learns every assistant turn; a message's own `training` key overrides that
    mark_earlier = fmt == "axolotl" and chat and turns == "last"
    if fmt == "alpaca" or (fmt in ("llama-factory", "axolotl") and not chat):
        # axolotl's alpaca_w_system renders no preamble for an empty system; S2L (and axolotl's
        # plain alpaca) render the Alpaca preamble: written out, the prompts are the same
        preamble = fmt == "axolotl" and system
        data = [_merge(_alpaca(ex, preamble), original) for ex, original in rows]
    else:
        data = [
            _merge({"messages": _messages(ex, mark_earlier)}, original) for ex, original in rows
        ]

    data_file = out / (f"{name}.json" if fmt in ("alpaca", "llama-factory") else f"{name}.jsonl")
    if data_file.suffix == ".json":
        atomic_write_text(data_file, json.dumps(data, ensure_ascii=False, indent=1, default=str))
    else:
        atomic_write_text(
            data_file,
            "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in data),
        )
    files = [data_file]
    if fmt == "llama-factory":
        tool = any(t["role"] == "tool" for ex, _ in rows for t in ex["prompt_turns"] or ())
        files.append(_write_dataset_info(out, name, data_file.name, chat, system, tool))
    notes = _masking_notes(fmt, chat, turns) if turns else []
    if fmt == "axolotl":
        files.append(_write_axolotl_yaml(out, name, data_file, chat, system, mark_earlier, notes))
    meta_path = out / EXPORT_META
    meta = read_json(meta_path) if meta_path.is_file() else {}
    meta[data_file.name] = {
        "selection": str(selection_dir.resolve()),
        "selection_fingerprint": summary.get("fingerprint"),
        "format": fmt,
        "n": len(data),
        **({"assistant_turns": turns, "trainer_settings": notes} if turns else {}),
    }
    atomic_write_json(meta_path, meta)
    return Export(format=fmt, files=files, n=len(data), notes=notes)


def check_export(path: str | os.PathLike) -> None:
    """Refuse an exported data file whose selection was replaced since it was exported.

    ``path`` is any file; one named in an :data:`EXPORT_META` beside it is checked against its
    selection's ``summary.json``: a selection that still exists with another fingerprint was
    replaced (``s2l select --force``), and the file holds ids it no longer has. Anything else
    (no record, a selection moved or deleted) passes: there is nothing to compare with.

    Raises:
        S2LError: naming the file, its selection, the fingerprints then and now, and the
            export command that writes it again.
    """
    path = Path(path)
    meta_path = path.parent / EXPORT_META
    if not path.is_file() or not meta_path.is_file():
        return
    entry = read_json(meta_path).get(path.name)
    if not entry:
        return
    selection = Path(entry["selection"])
    if not (selection / "summary.json").is_file():
        return
    now = read_json(selection / "summary.json").get("fingerprint")
    if now != entry.get("selection_fingerprint"):
        raise S2LError(
            f"{path}: exported from the selection {selection} (fingerprint "
            f"{entry.get('selection_fingerprint')}), which was replaced since (fingerprint {now}); "
            f"export it again: `s2l export {selection} --format {entry.get('format')} -o "
            f"{path.parent}`"
        )


def _alpaca(ex: dict[str, Any], preamble: bool = False) -> dict[str, Any]:
    """An alpaca record; a text pool's system prompt goes to ``system`` on every record ("" for
    none, or with ``preamble`` the Alpaca preamble the prompt then has, see
    :func:`~smalltolarge.formatting.format_prompt`)."""
    record = {"instruction": ex["instruction"], "input": ex["input"], "output": ex["response"]}
    if ex["system"] is not None:
        record["system"] = ex["system"] or (_alpaca_preamble(ex["input"]) if preamble else "")
    turns = ex["prompt_turns"]
    non_system = [t for t in turns or [] if t["role"] != "system"]
    if turns and turns[0]["role"] == "system" and len(non_system) == 1:
        # the instruction is then the user turn alone; the system prompt gets its own field
        record["system"] = turns[0]["content"]
    return record


def _messages(ex: dict[str, Any], mark_earlier: bool = False) -> list[dict[str, Any]]:
    """The chat: its turns, or a text example's system and user message, then the response.
    ``mark_earlier``: earlier assistant turns get ``"training": false`` (axolotl's per-message
    key), so that a trainer learns the last turn only, as S2L scored it."""
    if ex["prompt_turns"] is not None:
        turns = [
            {**t, "training": False} if mark_earlier and t["role"] == "assistant" else t
            for t in ex["prompt_turns"]
        ]
    else:
        user = ex["instruction"] + (f"\n\n{ex['input']}" if ex["input"] else "")
        turns = [{"role": "user", "content": user}]
        if ex["system"]:
            turns.insert(0, {"role": "system", "content": ex["system"]})
    return [*turns, {"role": "assistant", "content": ex["response"]}]


def _merge(fields: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:
    merged = dict(fields)
    for column, value in original.items():
        merged[f"original_{column}" if column in fields else column] = value
    return merged


def _alpaca_preamble(input_text: str) -> str:
    """The preamble of S2L's Alpaca prompt (with or without an input), without its blank line."""
    from smalltolarge.formatting import ALPACA_PROMPT, ALPACA_PROMPT_WITH_INPUT

    template = ALPACA_PROMPT_WITH_INPUT if input_text else ALPACA_PROMPT
    return template[: template.index("### Instruction:")].removesuffix("\n\n")


def _write_dataset_info(
    out: Path, name: str, file_name: str, chat: bool, system: bool = False, tool: bool = False
) -> Path:
    """``dataset_info.json`` with the entry ``name``; entries already there are kept. A text
    pool's system prompts are mapped (``columns.system``): without it LLaMA-Factory reads none;
    with ``tool`` turns, so is their role (``tags.observation_tag``), without which LLaMA-Factory
    skips their chats (its default tag is ``observation``)."""
    if chat:
        entry = {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }
        if tool:
            entry["tags"]["observation_tag"] = "tool"
    else:
        entry = {
            "file_name": file_name,
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
        if system:
            entry["columns"]["system"] = "system"
    path = out / "dataset_info.json"
    info = read_json(path) if path.is_file() else {}
    info[name] = entry
    atomic_write_json(path, info)
    return path


def _write_axolotl_yaml(
    out: Path,
    name: str,
    data_file: Path,
    chat: bool,
    system: bool = False,
    mark_earlier: bool = False,
    notes: list[str] | None = None,
) -> Path:
    """``NAME.axolotl.yaml``: the ``datasets:`` stanza, ``path`` relative to the export folder
    (the header says so); ``notes`` go into the header too."""
    import yaml

    stanza: dict[str, Any] = {"path": data_file.name, "ds_type": "json"}
    if chat:
        stanza.update(
            type="chat_template",
            field_messages="messages",
            message_property_mappings={"role": "role", "content": "content"},
            roles_to_train=["assistant"],
        )
        if mark_earlier:
            stanza["message_field_training"] = "training"
    elif system:
        # `alpaca` reads instruction/input/output only; this reads `system` too and renders
        # "{system}\n\n### Instruction:..." (its `load`, the default, is USER:/ASSISTANT:)
        stanza["type"] = "alpaca_w_system.load_instruct"
    else:
        stanza["type"] = "alpaca"
    path = out / f"{name}.axolotl.yaml"
    header = (
        f"# axolotl dataset stanza for the S2L selection '{name}'; "
        "paste under your config's `datasets:`\n"
        f"# `path` is relative to this folder ({data_file.name} lies beside this file), and\n"
        "# axolotl resolves it against the directory it runs in: run axolotl from this folder,\n"
        "# or put the folder's path (where it was copied to) in front of it.\n"
        + "".join(f"# {note}\n" for note in notes or ())
    )
    atomic_write_text(path, header + yaml.safe_dump({"datasets": [stanza]}, sort_keys=False))
    return path


def _scored_turns(selection_dir: Path) -> str:
    """The assistant turns S2L scored in the run of ``selection_dir`` (``all`` or ``last``), from
    its ``tokenised.json``: ``last`` for a run tokenised before the setting existed, S2L's
    default when the selection lies outside a run."""
    from smalltolarge.runs import RunDir
    from smalltolarge.settings import PrepareSettings

    meta = RunDir.of_selection(selection_dir).tokenised_meta
    if not meta.is_file():
        return PrepareSettings.assistant_turns
    return read_json(meta).get("assistant_turns", "last")


def _masking_notes(fmt: str, chat: bool, turns: str) -> list[str]:
    """What a trainer must be told to learn the assistant turns of multi-turn chats that S2L
    scored (``turns``: ``all`` or ``last``), for an export in ``fmt``."""
    if fmt == "alpaca" or not chat:
        if turns == "all":
            return [
                "S2L scored every assistant turn, but this format keeps the earlier turns in "
                "the instruction ('role: content'), where a trainer learns none of them: export "
                "messages or llama-factory instead, or prepare with --assistant-turns last"
            ]
        return ["S2L scored the last assistant turn only: `output`; the earlier turns are prompt"]
    if turns == "all":
        said = "S2L scored every assistant turn of each chat"
        return {
            "llama-factory": [
                f"{said}: train with `mask_history: false` (LLaMA-Factory's default)"
            ],
            "axolotl": [
                f"{said}: `roles_to_train: [assistant]` with `train_on_eos: turn` (axolotl's "
                "defaults) learns the same turns"
            ],
            "messages": [
                f"{said}: TRL `SFTConfig(assistant_only_loss=True)` (a chat template with "
                "{% generation %} markers), LLaMA-Factory `mask_history: false`, axolotl "
                "`roles_to_train: [assistant]` learn the same turns"
            ],
        }[fmt]
    said = "S2L scored the last assistant turn of each chat only"
    return {
        "llama-factory": [f"{said}: train with `mask_history: true` (the default is false)"],
        "axolotl": [
            f"{said}: the earlier assistant messages carry `training: false` "
            "(`message_field_training: training`)"
        ],
        "messages": [
            f"{said}: with TRL, map each row to prompt/completion (prompt = messages[:-1], "
            "completion = messages[-1:]; TRL then learns the completion only); LLaMA-Factory "
            "`mask_history: true`"
        ],
    }[fmt]


def _records(path: Path) -> list[dict[str, Any]]:
    """The subset file's records as written (original columns and values), in file order."""
    if path.is_dir():  # save_to_disk
        import datasets

        return datasets.load_from_disk(str(path)).to_list()
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    raise S2LError(f"{path}: cannot read a subset of this kind")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "subset"
