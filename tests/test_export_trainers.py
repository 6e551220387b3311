"""Each export loaded the way its trainer loads it, and the tokens it labels compared with what
S2L scored (issue 21, part 2).

LLaMA-Factory, axolotl and TRL are not dependencies; their data loaders are emulated here with
``datasets`` and a real tokenizer with a chat template (a byte-level BPE trained on the fly,
plus a Jinja template with ``{% generation %}`` markers), after their sources:

- LLaMA-Factory 0.9.5: ``dataset_info.json`` gives ``file_name`` (in ``dataset_dir``),
  ``formatting`` and ``columns``/``tags``; the file is read with ``load_dataset("json")``;
  ``data/converter.py``: the alpaca converter takes ``_system`` from ``columns.system`` (no
  mapping: ""), the sharegpt converter takes a first turn tagged ``system_tag`` as the system
  prompt, then needs ``user_tag``/``observation_tag`` and ``assistant_tag``/``function_tag``
  turns in alternation and an even count, and turns any other chat into an empty example with
  a log line ("Skipping this abnormal example"); training labels every assistant turn
  (``mask_history: false``, the default) or the last one only (``true``).
- axolotl 0.19: the stanza's ``path`` is opened as given (relative paths against the working
  directory) with ``load_dataset(ds_type, data_files=path, split="train")``;
  ``chat_template`` reads ``field_messages`` through ``message_property_mappings`` and labels
  the turns whose role is in ``roles_to_train`` unless a message's ``message_field_training``
  key says otherwise; ``alpaca_w_system.load_instruct`` renders
  ``"{system}\\n\\n" + "### Instruction:\\n{instruction}\\n\\n### Response:\\n"`` (``### Input:``
  with an input) and labels the output and eos.
- TRL 1.x ``SFTTrainer``: ``load_dataset("json", data_files=..., split="train")``; with
  ``assistant_only_loss=True`` the labels are the chat template's ``{% generation %}`` spans
  (``apply_chat_template(return_assistant_tokens_mask=True)``); a prompt/completion dataset
  labels the completion only.

S2L's side is :func:`~smalltolarge.formatting.tokenise_pool` on the same examples. The last
turn ends differently on the two sides (S2L: response + eos; a rendered chat: the template's
end of turn), so labelled stretches are compared as text, without their end markers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from datasets import load_dataset

from smalltolarge.data import load_pool
from smalltolarge.export import export_selection
from smalltolarge.formatting import collate, format_prompt, tokenise_pool
from smalltolarge.models import train_bpe_tokenizer

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|>\n"
    "{% generation %}{{ m['content'] }}\n{% endgeneration %}"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHATS = [
    {"id": "c1", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."}]},
    {"id": "c2", "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."}]},
    {"id": "c3", "messages": [
        {"role": "user", "content": "Weather in Lima?"},
        {"role": "assistant", "content": "Let me look it up."},
        {"role": "tool", "content": "22 C, sunny"},
        {"role": "assistant", "content": "Sunny, 22 C."}]},
]  # fmt: skip
ALPACA = [
    {"id": "a1", "instruction": "Add 2 and 3.", "input": "", "output": "5",
     "system": "You are a terse calculator."},
    {"id": "a2", "instruction": "Translate", "input": "chat", "output": "cat",
     "system": "Answer in English."},
    {"id": "a3", "instruction": "Name a colour.", "input": "", "output": "Red.", "system": None},
]  # fmt: skip
END = ("</s>", "\n")


@pytest.fixture(scope="module")
def tok():
    texts = [json.dumps(r) for r in CHATS + ALPACA] * 4 + [TEMPLATE, format_prompt("x", "y")]
    tokenizer = train_bpe_tokenizer(texts, 400)
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def selection(tmp_path: Path, records: list[dict], turns: str = "all") -> Path:
    """A finished selection inside a run whose tokenised.json records ``turns``."""
    run = tmp_path / "run"
    sel = run / "selections" / "sel"
    sel.mkdir(parents=True)
    write_jsonl(sel / "subset.jsonl", records)
    (sel / "summary.json").write_text(json.dumps({"name": "sel", "subset_file": "subset.jsonl"}))
    (run / "tokenised.json").write_text(json.dumps({"assistant_turns": turns}))
    return sel


def stretches(tokenizer, ids: list[int], labelled: list[bool]) -> list[str]:
    """The labelled stretches of ``ids``, decoded, without their end-of-turn markers."""
    runs, current = [], []
    for token, on in zip(ids, labelled, strict=True):
        if on:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    out = []
    for run in runs:
        text = tokenizer.decode(run)
        while text.endswith(END):
            text = text.removesuffix("</s>").removesuffix("\n")
        out.append(text)
    return out


def s2l_labels(tmp_path, tok, records, turns) -> dict[str, list[str]]:
    """What S2L scored: each example's labelled stretches (chat template)."""
    pool = load_pool(write_jsonl(tmp_path / "pool.jsonl", records))
    tokenised = tokenise_pool(pool, tok, template="chat", max_length=512, assistant_turns=turns)
    out = {}
    for example in tokenised.dataset:
        labels = collate([example])["labels"][0].tolist()
        out[example["id"]] = stretches(tok, example["input_ids"], [x != -100 for x in labels])
    return out


def chat_labels(tok, messages: list[dict], train: list[bool] | None = None) -> list[str]:
    """The assistant turns a trainer labels with the chat template's generation spans
    (``train``: per assistant turn, whether it is learned)."""
    rendered = tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    turns = stretches(tok, rendered["input_ids"], [bool(m) for m in rendered["assistant_masks"]])
    assert len(turns) == sum(m["role"] == "assistant" for m in messages)
    return [t for k, t in enumerate(turns) if train is None or train[k]]


# --------------------------------------------------------------------------------------------
# LLaMA-Factory
# --------------------------------------------------------------------------------------------


def llama_factory_read(dataset_dir: Path, name: str) -> list[dict | None]:
    """LLaMA-Factory 0.9.5's reading of dataset ``name``: per row ``{"system", "messages"}``
    with its roles, or None for a row its converter skips."""
    entry = json.loads((dataset_dir / "dataset_info.json").read_text())[name]
    rows = load_dataset("json", data_files=str(dataset_dir / entry["file_name"]), split="train")
    columns = entry.get("columns", {})
    out: list[dict | None] = []
    if entry.get("formatting", "alpaca") == "alpaca":
        for r in rows:
            query = [r[columns[k]] for k in ("prompt", "query") if k in columns and r[columns[k]]]
            out.append({
                "system": r[columns["system"]] if "system" in columns else "",
                "messages": [{"role": "user", "content": "\n".join(query)},
                             {"role": "assistant", "content": r[columns["response"]]}],
            })  # fmt: skip
        return out
    tags = {"role_tag": "from", "content_tag": "value", "user_tag": "human",
            "assistant_tag": "gpt", "observation_tag": "observation",
            "function_tag": "function_call", "system_tag": "system",
            **entry.get("tags", {})}  # fmt: skip
    role, content = tags["role_tag"], tags["content_tag"]
    mapping = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant",
               tags["observation_tag"]: "observation", tags["function_tag"]: "function",
               tags["system_tag"]: "system"}  # fmt: skip
    accept = ((tags["user_tag"], tags["observation_tag"]),
              (tags["assistant_tag"], tags["function_tag"]))  # fmt: skip
    for r in rows:
        messages = r[columns.get("messages", "conversations")]
        system = ""
        if messages and messages[0][role] == tags["system_tag"]:
            system, messages = messages[0][content], messages[1:]
        broken = len(messages) % 2 != 0 or any(
            m[role] not in accept[k % 2] for k, m in enumerate(messages)
        )
        if broken:
            out.append(None)
            continue
        aligned = [{"role": mapping[m[role]], "content": m[content]} for m in messages]
        out.append({"system": system, "messages": aligned})
    return out


def llama_factory_labels(tok, row: dict, mask_history: bool) -> list[str]:
    """The assistant turns LLaMA-Factory learns of a converted row."""
    messages = [{"role": "system", "content": row["system"]}] if row["system"] else []
    messages += [
        {"role": "tool" if m["role"] == "observation" else m["role"], "content": m["content"]}
        for m in row["messages"]
    ]
    n = sum(m["role"] == "assistant" for m in messages)
    return chat_labels(tok, messages, [not mask_history or k == n - 1 for k in range(n)])


@pytest.mark.parametrize("turns", ["all", "last"])
def test_llama_factory_sharegpt_learns_what_s2l_scored(tmp_path, tok, turns):
    done = export_selection(selection(tmp_path, CHATS, turns), "llama-factory")
    rows = llama_factory_read(done.files[1].parent, "sel")
    assert None not in rows  # the tool chat included: no row skipped
    assert [r["system"] for r in rows] == ["Be brief.", "", ""]
    assert [m["role"] for m in rows[2]["messages"]] == [
        "user", "assistant", "observation", "assistant"
    ]  # fmt: skip
    mask_history = turns == "last"
    assert any(f"mask_history: {str(mask_history).lower()}" in n for n in done.notes)
    scored = s2l_labels(tmp_path, tok, CHATS, turns)
    learned = {
        c["id"]: llama_factory_labels(tok, r, mask_history)
        for c, r in zip(CHATS, rows, strict=True)
    }
    assert learned == scored
    assert scored["c2"] == (
        ["Hello, how can I help?", "It is 4."] if turns == "all" else ["It is 4."]
    )


def test_llama_factory_without_the_tool_mapping_skipped_the_tool_chat(tmp_path, tok):
    """The dataset_info before this fix (no observation_tag) lost the tool chat silently."""
    done = export_selection(selection(tmp_path, CHATS), "llama-factory")
    info = json.loads(done.files[1].read_text())
    del info["sel"]["tags"]["observation_tag"]
    done.files[1].write_text(json.dumps(info))
    rows = llama_factory_read(done.files[1].parent, "sel")
    assert rows[2] is None and rows[0] is not None


def test_llama_factory_alpaca_reaches_the_system_slot(tmp_path, tok):
    done = export_selection(selection(tmp_path, ALPACA), "llama-factory")
    rows = llama_factory_read(done.files[1].parent, "sel")
    assert [r["system"] for r in rows] == ["You are a terse calculator.", "Answer in English.", ""]
    # the dataset_info of before (no system column) put no system text anywhere
    info = json.loads(done.files[1].read_text())
    del info["sel"]["columns"]["system"]
    done.files[1].write_text(json.dumps(info))
    assert [r["system"] for r in llama_factory_read(done.files[1].parent, "sel")] == ["", "", ""]


# --------------------------------------------------------------------------------------------
# axolotl
# --------------------------------------------------------------------------------------------


def axolotl_read(yaml_path: Path, monkeypatch) -> tuple[dict, list[dict]]:
    """The stanza and its rows, opened as axolotl opens ``path``: from the working directory
    (here the export folder, as the yaml's header says)."""
    stanza = yaml.safe_load(yaml_path.read_text())["datasets"][0]
    monkeypatch.chdir(yaml_path.parent)
    assert not Path(stanza["path"]).is_absolute() and Path(stanza["path"]).is_file()
    rows = load_dataset(stanza["ds_type"], data_files=stanza["path"], split="train")
    return stanza, rows.to_list()


@pytest.mark.parametrize("turns", ["all", "last"])
def test_axolotl_chat_template_learns_what_s2l_scored(tmp_path, tok, monkeypatch, turns):
    done = export_selection(selection(tmp_path, CHATS, turns), "axolotl")
    stanza, rows = axolotl_read(done.files[1], monkeypatch)
    assert stanza["type"] == "chat_template"
    mappings, field = stanza["message_property_mappings"], stanza.get("message_field_training")
    learned = {}
    for row in rows:
        raw = row[stanza["field_messages"]]
        messages = [{k: m[v] for k, v in mappings.items()} for m in raw]
        train = [
            m.get(field)
            if field and m.get(field) is not None
            else m["role"] in stanza["roles_to_train"]
            for m in raw
            if m["role"] == "assistant"
        ]
        learned[row["id"]] = chat_labels(tok, messages, train)
    assert learned == s2l_labels(tmp_path, tok, CHATS, turns)
    assert done.notes and all(n in done.files[1].read_text() for n in done.notes)


def test_axolotl_alpaca_w_system_prompt_is_the_scored_prompt(tmp_path, tok, monkeypatch):
    done = export_selection(selection(tmp_path, ALPACA), "axolotl")
    stanza, rows = axolotl_read(done.files[1], monkeypatch)
    assert stanza["type"] == "alpaca_w_system.load_instruct"
    pool = load_pool(write_jsonl(tmp_path / "pool.jsonl", ALPACA))
    scored = tokenise_pool(pool, tok, max_length=512)
    for row, example in zip(rows, scored.dataset, strict=True):
        # SystemDataPrompter(INSTRUCT): system_format "{system}\n\n" when system, then the turn
        turn = (
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
            if row["input"]
            else "### Instruction:\n{instruction}\n\n### Response:\n"
        )
        system = f"{row['system']}\n\n" if row["system"] else ""
        prompt = system + turn.format(instruction=row["instruction"], input=row["input"])
        ids = tok(prompt)["input_ids"] + tok(row["output"])["input_ids"] + [tok.eos_token_id]
        assert ids == example["input_ids"]  # the prompt S2L scored, token for token
        assert len(tok(prompt)["input_ids"]) == example["response_start"]


# --------------------------------------------------------------------------------------------
# TRL and the messages export
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("turns", ["all", "last"])
def test_trl_learns_what_s2l_scored(tmp_path, tok, turns):
    done = export_selection(selection(tmp_path, CHATS, turns), "messages")
    rows = load_dataset("json", data_files=str(done.files[0]), split="train").to_list()
    assert [m["role"] for m in rows[2]["messages"]] == ["user", "assistant", "tool", "assistant"]
    learned = {}
    for row in rows:
        messages = row["messages"]
        if turns == "all":  # SFTConfig(assistant_only_loss=True)
            assert any("assistant_only_loss=True" in n for n in done.notes)
            learned[row["id"]] = chat_labels(tok, messages)
        else:  # the note's prompt/completion mapping: TRL learns the completion only
            assert any("prompt/completion" in n for n in done.notes)
            prompt = tok.apply_chat_template(
                messages[:-1], tokenize=False, add_generation_prompt=True
            )
            full = tok.apply_chat_template(messages, tokenize=False)
            learned[row["id"]] = [full[len(prompt) :].removesuffix("\n")]
    assert learned == s2l_labels(tmp_path, tok, CHATS, turns)


def test_messages_export_of_an_alpaca_pool_with_system(tmp_path, tok):
    done = export_selection(selection(tmp_path, ALPACA), "messages")
    rows = load_dataset("json", data_files=str(done.files[0]), split="train").to_list()
    assert rows[0]["messages"][0] == {"role": "system", "content": "You are a terse calculator."}
    assert [m["role"] for m in rows[2]["messages"]] == ["user", "assistant"]
    pool = load_pool(write_jsonl(tmp_path / "pool.jsonl", ALPACA))
    scored = tokenise_pool(pool, tok, template="chat", max_length=512)
    for row, example in zip(rows, scored.dataset, strict=True):
        prompt = tok.apply_chat_template(
            row["messages"][:-1], tokenize=False, add_generation_prompt=True
        )
        assert tok.decode(example["input_ids"][: example["response_start"]]) == prompt
    assert not done.notes  # single-turn: nothing to say about turns
