"""Which input columns hold the prompt and the response, and the normalised columns of a pool.

:func:`resolve_schema` decides, from the input's column names and the user's overrides, which
columns hold the prompt, the extra input, the response, the source label and the id (or that
the input is a chat in a ``messages`` column). :func:`normalise` turns every record into the
columns of :data:`NORMALISED_COLUMNS`, or into a problem naming the record; and
:func:`fingerprint_columns` hashes the result, so that later stages can tell whether they are
looking at the same pool.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import datasets
import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.readers import MISSING, RawInput, json_type

#: The columns of every normalised pool (see :class:`~smalltolarge.data.Pool`).
NORMALISED_COLUMNS = (
    "id",
    "row",
    "instruction",
    "input",
    "response",
    "source",
    "messages",
    "system",
)

#: Their types, as the Arrow schema of ``Pool.dataset``.
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "row": datasets.Value("int64"),
        "instruction": datasets.Value("string"),
        "input": datasets.Value("string"),
        "response": datasets.Value("string"),
        "source": datasets.Value("string"),
        "messages": datasets.Value("string"),
        "system": datasets.Value("string"),
    }
)


class UnknownColumns(S2LError):
    """The prompt and response columns cannot be told from the names; ``label`` names the
    input and ``columns`` are its columns, for a caller whose advice differs (a target set
    has no column options)."""

    def __init__(self, message: str, *, label: str, columns: list[str]):
        super().__init__(message)
        self.label = label
        self.columns = columns


#: The column names detected without options, as ``prompt/response`` pairs, for messages.
DETECTED_PAIRS = (
    "instruction/output (with an optional input), question/answer, prompt/completion or "
    "prompt/response"
)

# Column-name pairs tried in order when no --prompt-column/--response-column is given.
_TEXT_SCHEMAS = (
    ("alpaca", "instruction", "output"),
    ("qa", "question", "answer"),
    ("prompt_completion", "prompt", "completion"),
    ("prompt_completion", "prompt", "response"),
)

_FINGERPRINT_VERSION = b"smalltolarge-pool-v1"


def resolve_schema(
    raw: RawInput,
    *,
    prompt_column: str | None,
    input_column: str | None,
    response_column: str | None,
    source_column: str | None,
    id_column: str | None,
) -> dict:
    """The schema of ``raw``: which of its columns is the prompt, input, response, source, id.

    A ``messages`` column makes a chat pool; else the first pair of
    ``instruction``/``output``, ``question``/``answer``, ``prompt``/``completion``,
    ``prompt``/``response`` found is used. The ``*_column`` arguments (None: detect) override
    the detection. A ``system`` column holds each example's system prompt (LLaMA-Factory's and
    axolotl's name for it); it is found by name only.

    Returns:
        ``{"kind", "prompt", "input", "response", "source", "id", "split", "system"}``:
        ``kind`` is ``messages``, ``alpaca``, ``qa``, ``prompt_completion`` or ``explicit``; the
        others are column names, or None where the input has no such column (``split``: the
        split taken).

    Raises:
        S2LError: a named column does not exist, or the prompt and response columns cannot
            be told.
    """
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
        raise UnknownColumns(
            f"{raw.label}: cannot tell which columns hold the prompt and the response "
            f"(columns: {available}); pass --prompt-column and --response-column "
            "(prompt_column= and response_column= in Python)",
            label=raw.label,
            columns=list(columns),
        )

    if input_column is not None:
        input_name = input_column
    elif kind != "messages" and prompt == "instruction" and "input" in columns:
        input_name = "input"
    else:
        input_name = None
    schema = {
        "kind": kind,
        "prompt": prompt,
        "input": input_name,
        "response": response,
        "source": source_column or ("source" if "source" in columns else None),
        "id": id_column or ("id" if "id" in columns else None),
        "split": raw.split,
    }
    # a column named system that an option made something else is not also the system prompt
    taken = {schema[k] for k in ("prompt", "input", "response", "source", "id")}
    schema["system"] = "system" if "system" in columns and "system" not in taken else None
    return schema


def normalise(raw: RawInput, schema: dict) -> tuple[dict[str, list], list[dict]]:
    """Normalised column lists of the valid examples, and the problems of the invalid ones.

    Returns:
        ``(columns, problems)``: ``columns`` maps each of :data:`NORMALISED_COLUMNS` to a list
        with one value per valid example, in input order; ``problems`` has one
        ``{"where", "id", "problem"}`` per invalid example.

    Raises:
        S2LError: two examples share an id.
    """
    n = raw.n
    id_name, source_name = schema["id"], schema["source"]
    ids = raw.column(id_name) if id_name is not None else None
    sources = raw.column(source_name) if source_name is not None else None
    chat = schema["kind"] == "messages"
    system_name = schema.get("system")
    systems = raw.column(system_name) if system_name is not None else None
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

        system, system_problem = "", None
        if systems is not None and systems[i] is not MISSING and systems[i] is not None:
            system, system_problem = _text(systems[i], system_name)
        problem = problem or system_problem
        if chat:
            instruction, response, messages, chat_problem = _parse_chat(chats[i], system or "")
            text_input, system = "", ""  # a chat's system prompt is its first turn
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
            if inputs is not None and inputs[i] is not MISSING and inputs[i] is not None:
                text_input, input_problem = _text(inputs[i], schema["input"])
            problem = problem or prompt_problem or input_problem or response_problem

        source, source_problem = "", None
        if sources is not None and sources[i] is not MISSING and sources[i] is not None:
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
        out["system"].append(system)
    return out, problems


def fingerprint_columns(columns: dict[str, list]) -> str:
    """sha256 (16 hex chars) over the normalised columns, column by column.

    Each text column contributes its name, the UTF-8 byte lengths of its values and their
    concatenation; the lengths make the encoding unambiguous without escaping anything. ``row``
    is hashed too: it is the same whatever the format, but a pool that skipped a record must
    not share a fingerprint with one that never had it, because selections are stored as rows.
    ``system`` is hashed only when an example has a system prompt, so that a pool without one
    keeps the fingerprint it had before the column existed (and its run stays reusable).
    """
    h = hashlib.sha256(_FINGERPRINT_VERSION)
    h.update(np.asarray(columns["row"], dtype="<i8").tobytes())
    names = ["id", "instruction", "input", "response", "source", "messages"]
    if any(columns.get("system") or ()):
        names.append("system")
    for name in names:
        encoded = [value.encode("utf-8", "surrogatepass") for value in columns[name]]
        h.update(b"\x00" + name.encode() + b"\x00")
        h.update(np.fromiter(map(len, encoded), dtype="<i8", count=len(encoded)).tobytes())
        h.update(b"".join(encoded))
    return h.hexdigest()[:16]


def _text(value: Any, name: str) -> tuple[str | None, str | None]:
    """``(text, None)`` for a usable scalar, ``(None, problem)`` otherwise."""
    if isinstance(value, str):
        return value, None
    if value is MISSING:
        return None, f"missing field {name!r}"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, f"field {name!r} is empty (null)"
    if isinstance(value, (list, tuple, dict)):
        return None, f"field {name!r} is not text (got {json_type(value)})"
    return str(value), None


#: The roles a chat turn may have: a system turn (first, at most one), then user turns and
#: assistant turns in alternation, a ``tool`` turn (a tool's result) taking a user turn's place
#: after an assistant turn that called the tool.
CHAT_ROLES = ("system", "user", "assistant", "tool")


def check_roles(turns: list[dict[str, str]]) -> str | None:
    """What is wrong with the order of the roles of ``turns`` (a chat up to its last assistant
    turn), or None.

    The rule is the strictest of the trainers a chat is exported to: LLaMA-Factory's sharegpt
    reader (0.9.x) skips a chat, with a log line only, whose turns after an optional leading
    system turn do not go user (or tool), assistant, user (or tool), assistant, ...; most chat
    templates raise on the same chats. Refusing them when the pool is read names the example,
    and ``--skip-invalid`` counts them, instead of a trainer dropping them unseen.
    """
    for k, turn in enumerate(turns):
        if turn["role"] not in CHAT_ROLES:
            return (
                f"turn {k + 1} has the role {turn['role']!r}; the roles are "
                f"{', '.join(CHAT_ROLES[:-1])} and {CHAT_ROLES[-1]}"
            )
    start = 1 if turns and turns[0]["role"] == "system" else 0
    for k in range(start, len(turns)):
        role = turns[k]["role"]
        if role == "system":
            return f"turn {k + 1} is a system turn; a system turn can only be the first"
        if k == start and role != "user":
            where = "after the system turn" if start else "first"
            article = "an" if role == "assistant" else "a"
            return f"turn {k + 1} is {article} {role} turn {where}; a chat starts with a user turn"
        expected = "assistant" if (k - start) % 2 else "user"
        if expected == "assistant" and role != "assistant":
            previous = turns[k - 1]["role"]
            return (
                f"turns {k} and {k + 1} are {previous} then {role}; user (or tool) and "
                "assistant turns must alternate"
            )
        if expected == "user" and role == "assistant":
            return (
                f"turns {k} and {k + 1} are both assistant turns; user (or tool) and "
                "assistant turns must alternate"
            )
    return None


def _parse_chat(value: Any, system: str = "") -> tuple[str | None, str | None, str, str | None]:
    """``(instruction, response, prompt-messages JSON, problem)`` of one chat example.

    The response is the last assistant turn, the prompt is every turn before it; turns after
    it carry no target and are dropped. ``system`` (the example's value in a ``system``
    column, as axolotl's ``field_system`` reads it) becomes the chat's first turn when it has
    no system turn; a chat whose system turn says something else is refused rather than one of
    the two dropped.
    """
    if value is MISSING:
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
        return None, None, "", f"malformed messages (expected a list, got {json_type(value)})"
    turns: list[dict[str, str]] = []
    for k, turn in enumerate(value):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("role"), str)
            or not isinstance(turn.get("content"), str)
        ):
            return None, None, "", f"malformed messages (turn {k + 1} is not a {{role, content}})"
        turns.append({"role": turn["role"], "content": turn["content"]})
    added = 0  # turns numbered as in the file, without the system turn added here
    if system:
        if turns and turns[0]["role"] == "system":
            if turns[0]["content"] != system:
                return None, None, "", "a system turn and a different 'system' value"
        else:
            turns.insert(0, {"role": "system", "content": system})
            added = 1
    last = next((k for k in range(len(turns) - 1, -1, -1) if turns[k]["role"] == "assistant"), -1)
    if last < 0:
        return None, None, "", "malformed messages (no assistant turn)"
    response = turns[last]["content"]
    prompt_turns = turns[:last]
    if not response.strip():
        return None, None, "", "empty response"
    if not prompt_turns:
        return None, None, "", "empty prompt"
    role_problem = check_roles(turns[added : last + 1])
    if role_problem is not None:
        return None, None, "", f"malformed messages ({role_problem})"
    non_system = [t for t in prompt_turns if t["role"] != "system"]
    if len(non_system) == 1 and non_system[0]["role"] == "user":
        instruction = non_system[0]["content"]
    else:
        instruction = "\n\n".join(f"{t['role']}: {t['content']}" for t in prompt_turns)
    if not instruction.strip():
        return None, None, "", "empty prompt"
    return instruction, response, json.dumps(prompt_turns, ensure_ascii=False), None
