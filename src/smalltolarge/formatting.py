"""Format examples with a prompt template and tokenise them with the response mask.

Every example becomes ``prompt_ids + response_ids + [eos]``. The prompt and the response are
tokenised separately and concatenated, so the boundary between them is exact: the loss of S2L
(and of fine-tuning) counts the response tokens and the end-of-sequence token, never a prompt
token. An example whose prompt leaves no room for a single response token within
``max_length`` is excluded and reported, never scored as 0 or NaN; one whose response is cut by
``max_length`` is kept and counted as truncated.

Multi-turn chats: trainers learn every assistant turn by default (LLaMA-Factory
``mask_history: false``, axolotl ``roles_to_train: ["assistant"]``, TRL
``assistant_only_loss=True``), so with ``assistant_turns="all"`` (the default) the earlier
assistant turns of a chat are labelled too: their tokens (content and the template's
end-of-turn text) are listed in a ``label_spans`` column, and every loss (training, scoring,
fine-tuning) counts them with the response's. Their place in the prompt is found by rendering
the chat turn by turn: the template's rendering of the turns before an assistant turn (with
the generation prompt) and of the turns up to it (without) are prefixes of the whole prompt,
and the text between the two is that turn. This works with any chat template whose rendering
of a conversation's first turns is a prefix of its rendering of the whole, generation markers
or not (``apply_chat_template(return_assistant_tokens_mask=True)`` needs ``{% generation %}``
markers, which most templates lack; it then marks nothing); a template that is not (one that
drops earlier turns' reasoning, say) is refused with ``assistant_turns="last"`` as the way out.
In the Alpaca template an earlier assistant turn is the text after ``assistant: `` in the
instruction (``role: content`` turns, see :mod:`smalltolarge.schema`). The prompt of such an
example is tokenised piece by piece at those boundaries (as prompt and response already are);
every other example, and every example with ``assistant_turns="last"``, is tokenised exactly as
without multi-turn labels, and the column exists only when a chat has an earlier assistant
turn to label.

The batching helpers (:func:`length_batches`, :func:`collate`) live here too, because training,
scoring and evaluation all batch the same tokenised examples.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset, Features, List, Value, load_from_disk
from transformers import PreTrainedTokenizerBase

from smalltolarge.data import Pool
from smalltolarge.errors import S2LError
from smalltolarge.models import check_tokenizer, tokenizer_fingerprint
from smalltolarge.runs import RunDir, atomic_dir, atomic_write_json, fingerprint, read_json
from smalltolarge.settings import (
    ASSISTANT_TURNS,
    TEMPLATES,
    PrepareSettings,
    check_choice,
    check_max_length,
)

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
# The public reference code's Alpaca prompt ends with "### Response:" and the response follows
# at once; ours puts the response on its own line, which tokenises the boundary the same way
# whatever the response's first character.
ALPACA_REFERENCE_PROMPT = ALPACA_PROMPT.removesuffix("\n")
ALPACA_REFERENCE_PROMPT_WITH_INPUT = ALPACA_PROMPT_WITH_INPUT.removesuffix("\n")


def alpaca_turn(template: str) -> str:
    """An Alpaca prompt template without its preamble: from ``### Instruction:`` on."""
    return template[template.index("### Instruction:") :]


#: The pool's columns a prompt is made of, in :func:`format_prompt`'s order.
_PROMPT_COLUMNS = ("instruction", "input", "messages", "system")

#: Columns of the tokenised dataset.
#: input_ids: int32 token ids, prompt then response then eos (possibly truncated);
#: response_start: index of the first response token; length: len(input_ids);
#: pool_index: position of the example in the saved pool; id: the example id.
#: With earlier assistant turns labelled (see the module docstring), a ``label_spans`` column
#: too: int32 ``[start, end, start, end, ...]`` token positions (end excluded) in the prompt.
TOKENISED_COLUMNS = ("id", "pool_index", "input_ids", "response_start", "length")
LABEL_SPANS = "label_spans"
_FEATURES = Features(
    {
        "id": Value("string"),
        "pool_index": Value("int64"),
        "input_ids": List(Value("int32")),
        "response_start": Value("int32"),
        "length": Value("int32"),
        "status": Value("string"),
    }
)


@dataclass
class TokenisedPool:
    """The tokenised, scorable part of a pool.

    ``dataset`` holds one row per scorable example (columns :data:`TOKENISED_COLUMNS`);
    ``excluded`` lists the examples left out, each ``{"id", "reason"}``; ``n_truncated`` counts
    kept examples whose response was cut at ``max_length``. ``assistant_turns`` is the setting
    it was tokenised with and ``n_multi_turn`` the number of the pool's chats with an assistant
    turn before the response: the labels cover every assistant turn when the setting is
    ``all`` and there is such a chat (:attr:`labels_all_turns`).
    """

    dataset: Dataset
    template: str
    max_length: int
    pool_fingerprint: str
    tokenizer_fingerprint: str
    excluded: list[dict] = field(default_factory=list)
    n_truncated: int = 0
    assistant_turns: str = PrepareSettings.assistant_turns
    n_multi_turn: int = 0

    @property
    def labels_all_turns(self) -> bool:
        """Whether earlier assistant turns are labelled (the dataset has ``label_spans``)."""
        return self.assistant_turns == "all" and self.n_multi_turn > 0

    @property
    def fingerprint(self) -> str:
        """Changes whenever the pool, the tokenizer, the template, max_length or the labelled
        turns change."""
        return tokenised_fingerprint(
            self.pool_fingerprint,
            self.tokenizer_fingerprint,
            self.template,
            self.max_length,
            self.labels_all_turns,
        )

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def lengths(self) -> np.ndarray:
        """int64 (n,) total tokens per example."""
        return np.asarray(self.dataset["length"], dtype=np.int64)

    @property
    def response_lengths(self) -> np.ndarray:
        """int64 (n,) loss-bearing tokens per example (response + eos, and the earlier
        assistant turns where they are labelled)."""
        n = self.lengths - np.asarray(self.dataset["response_start"], dtype=np.int64)
        if LABEL_SPANS in self.dataset.column_names:
            n += np.asarray([_span_tokens(s) for s in self.dataset[LABEL_SPANS]], dtype=np.int64)
        return n


def tokenised_fingerprint(
    pool_fingerprint: str,
    tokenizer_fingerprint: str,
    template: str,
    max_length: int,
    labels_all_turns: bool,
) -> str:
    """The fingerprint of a tokenisation (:attr:`TokenisedPool.fingerprint`), computable before
    tokenising. Labelled earlier turns add a term; without them it is what it always was."""
    parts: list = [pool_fingerprint, tokenizer_fingerprint, template, max_length]
    if labels_all_turns:
        parts.append("labels: every assistant turn")
    return fingerprint(*parts)


def count_multi_turn(pool: Pool) -> int:
    """How many of ``pool``'s chats have an assistant turn before the response."""
    column = pool.dataset.with_format("arrow")["messages"].to_pylist()
    return sum(_has_assistant_turn(m) for m in column)


def _has_assistant_turn(messages: str) -> bool:
    # the pool writes its turns with json.dumps' separators: the text test spares parsing the
    # many chats without an earlier assistant turn; the parse rules out one quoted in a content
    return '"role": "assistant"' in messages and any(
        t["role"] == "assistant" for t in json.loads(messages)
    )


def _span_tokens(spans: Sequence[int]) -> int:
    return int(sum(spans[1::2]) - sum(spans[0::2]))


def format_prompt(
    instruction: str,
    input_text: str = "",
    messages: str = "",
    *,
    template: str = "alpaca",
    tokenizer: PreTrainedTokenizerBase | None = None,
    system: str = "",
) -> str:
    """The prompt text of one example under ``template`` (one of :data:`TEMPLATES`).

    ``messages`` is the pool's JSON list of prompt turns for chat pools ("" otherwise). The
    chat template is the tokenizer's own; the Alpaca template is S2L's reference format.

    ``system`` is a text example's system prompt (the pool's ``system`` column). The chat
    template gets it as a system message before the user's. In the Alpaca template it takes
    the place of the preamble ("Below is an instruction that describes a task. ..."), followed
    by a blank line: that preamble is the Alpaca format's own system prompt, and this is how
    LLaMA-Factory's ``alpaca`` template and axolotl's ``alpaca_w_system.load_instruct`` render
    a system text (axolotl's exactly; LLaMA-Factory's without the blank line). An empty
    ``system`` keeps the preamble: the prompt is then exactly what it was without a system
    column.
    """
    if template in ("alpaca", "alpaca-reference"):
        reference = template == "alpaca-reference"
        if input_text:
            text = ALPACA_REFERENCE_PROMPT_WITH_INPUT if reference else ALPACA_PROMPT_WITH_INPUT
        else:
            text = ALPACA_REFERENCE_PROMPT if reference else ALPACA_PROMPT
        if system:
            text = system.replace("{", "{{").replace("}", "}}") + "\n\n" + alpaca_turn(text)
        return text.format(instruction=instruction, input=input_text)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise S2LError("template 'chat' needs a tokenizer with a chat template")
        if messages:
            turns = json.loads(messages)
        else:
            content = f"{instruction}\n\n{input_text}" if input_text else instruction
            turns = [{"role": "user", "content": content}]
            if system:
                turns.insert(0, {"role": "system", "content": system})
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    check_choice("template", template, TEMPLATES)
    raise AssertionError(template)  # every template is handled above


def assistant_turn_spans(
    prompt: str,
    messages: str,
    *,
    template: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> list[tuple[int, int]]:
    """The character spans of the earlier assistant turns in ``prompt`` (the
    :func:`format_prompt` text of a chat whose prompt turns are ``messages``), in order.

    Chat template: the text between the rendering of the turns before the assistant turn (with
    the generation prompt) and of the turns up to it (without): its content and end-of-turn
    text. Alpaca: its content after ``assistant: `` in the instruction. See the module
    docstring.

    Raises:
        S2LError: the chat template renders the first turns otherwise than as a prefix of the
            whole, so the turns cannot be told apart.
    """
    turns = json.loads(messages) if messages else []
    if not any(t["role"] == "assistant" for t in turns):
        return []
    spans = []
    if template == "chat":
        assert tokenizer is not None
        for k, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            before = tokenizer.apply_chat_template(
                turns[:k], tokenize=False, add_generation_prompt=True
            )
            through = tokenizer.apply_chat_template(turns[: k + 1], tokenize=False)
            if not (prompt.startswith(through) and through.startswith(before)):
                raise S2LError(
                    f"the chat template does not render the turns before assistant turn {k + 1} "
                    "as the start of the whole chat, so the assistant turns cannot be found; "
                    "label the last turn only: --assistant-turns last (assistant_turns='last')"
                )
            spans.append((len(before), len(through)))
        return spans
    # Alpaca: the instruction is "role: content" turns joined by blank lines (schema._parse_chat)
    head = prompt.index("### Instruction:\n") + len("### Instruction:\n")
    position = head
    for k, turn in enumerate(turns):
        position += (2 if k else 0) + len(turn["role"]) + 2
        if turn["role"] == "assistant":
            spans.append((position, position + len(turn["content"])))
        position += len(turn["content"])
    assert prompt[head:position] == "\n\n".join(f"{t['role']}: {t['content']}" for t in turns)
    return spans


def tokenise_pool(
    pool: Pool,
    tokenizer: PreTrainedTokenizerBase,
    *,
    template: str = PrepareSettings.template,
    max_length: int = PrepareSettings.max_length,
    assistant_turns: str = PrepareSettings.assistant_turns,
    batch_size: int = 1000,
) -> TokenisedPool:
    """Format and tokenise every example of ``pool`` with the response mask.

    ``assistant_turns="all"`` labels the earlier assistant turns of multi-turn chats too (see
    the module docstring). Returns the scorable examples; the excluded ones (prompt too long)
    are listed with reasons.

    Raises:
        S2LError: no example fits ``max_length``, or (``assistant_turns="all"``) the chat
            template does not let a chat's turns be told apart (naming the example).
    """
    check_choice("template", template, TEMPLATES)
    check_max_length(max_length)
    check_choice("assistant_turns", assistant_turns, ASSISTANT_TURNS)
    check_tokenizer(tokenizer, getattr(tokenizer, "name_or_path", "the proxy"))
    if template == "chat":
        format_prompt("check", template="chat", tokenizer=tokenizer)  # fails early if no template
    # With a chat template the rendered text already carries the BOS token.
    add_special = template != "chat"
    eos = tokenizer.eos_token_id
    n_multi_turn = count_multi_turn(pool)
    all_turns = assistant_turns == "all" and n_multi_turn > 0
    columns = (*TOKENISED_COLUMNS, "status", *([LABEL_SPANS] if all_turns else []))
    features = Features({**_FEATURES, **({LABEL_SPANS: List(Value("int32"))} if all_turns else {})})

    def encode(batch: dict, indices: list[int]) -> dict:
        prompts = [
            format_prompt(i, x, m, template=template, tokenizer=tokenizer, system=s)
            for i, x, m, s in zip(*(batch[c] for c in _PROMPT_COLUMNS), strict=True)
        ]
        p_ids = tokenizer(prompts, add_special_tokens=add_special)["input_ids"]
        r_ids = tokenizer(batch["response"], add_special_tokens=False)["input_ids"]
        out: dict[str, list] = {c: [] for c in columns}
        for k, (idx, ex_id, p, r) in enumerate(
            zip(indices, batch["id"], p_ids, r_ids, strict=True)
        ):
            if all_turns:
                spans: list[int] = []
                if _has_assistant_turn(batch["messages"][k]):
                    p, spans = _encode_turns(prompts[k], batch["messages"][k], ex_id)
                out[LABEL_SPANS].append([min(x, max_length) for x in spans])
            ids = (p + r + [eos])[:max_length]
            if len(p) >= max_length:
                status = f"prompt has {len(p)} tokens, max_length is {max_length}"
            elif len(p) + len(r) + 1 > max_length:
                status = "truncated"
            else:
                status = "ok"
            out["id"].append(ex_id)
            out["pool_index"].append(idx)
            out["input_ids"].append(ids)
            out["response_start"].append(len(p))
            out["length"].append(len(ids))
            out["status"].append(status)
        return out

    def _encode_turns(prompt: str, messages: str, ex_id: str) -> tuple[list[int], list[int]]:
        """The prompt's ids, tokenised piece by piece at the earlier assistant turns'
        boundaries, and those turns' token spans (flat)."""
        try:
            spans = assistant_turn_spans(prompt, messages, template=template, tokenizer=tokenizer)
        except S2LError as e:
            raise S2LError(f"id={ex_id}: {e}") from None
        cuts = [0, *(c for span in spans for c in span), len(prompt)]
        ids: list[int] = []
        token_spans: list[int] = []
        for j in range(len(cuts) - 1):
            piece = prompt[cuts[j] : cuts[j + 1]]
            if j % 2:  # an assistant turn: the odd pieces
                token_spans.append(len(ids))
            if piece:
                ids += tokenizer(piece, add_special_tokens=add_special and j == 0)["input_ids"]
            if j % 2:
                token_spans.append(len(ids))
        return ids, token_spans

    mark = ("every assistant turn",) if all_turns else ()
    mapped = pool.dataset.map(
        encode,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        remove_columns=pool.dataset.column_names,
        features=features,
        new_fingerprint=fingerprint(
            pool.fingerprint,
            tokenizer_fingerprint(tokenizer),
            template,
            max_length,
            "tokenise",
            *mark,
        ),
        desc="tokenising",
    )
    status = np.asarray(mapped["status"])
    excluded_rows = np.flatnonzero((status != "ok") & (status != "truncated"))
    excluded = [{"id": mapped[int(i)]["id"], "reason": str(status[i])} for i in excluded_rows]
    keep = np.flatnonzero((status == "ok") | (status == "truncated"))
    if len(keep) == 0:
        raise S2LError(
            f"no example fits max_length={max_length}: every prompt fills the context "
            f"(first: id={excluded[0]['id']}, {excluded[0]['reason']})"
        )
    dataset = mapped.select(keep) if len(keep) < len(mapped) else mapped
    dataset = dataset.remove_columns("status")
    return TokenisedPool(
        dataset=dataset,
        template=template,
        max_length=max_length,
        pool_fingerprint=pool.fingerprint,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        excluded=excluded,
        n_truncated=int((status == "truncated").sum()),
        assistant_turns=assistant_turns,
        n_multi_turn=n_multi_turn,
    )


def save_tokenised(tok_pool: TokenisedPool, run_dir: RunDir) -> None:
    """Write ``tokenised/`` (Arrow) and ``tokenised.json`` atomically."""
    with atomic_dir(run_dir.tokenised_dir) as tmp:
        tok_pool.dataset.save_to_disk(str(tmp))
    atomic_write_json(
        run_dir.tokenised_meta,
        {
            "fingerprint": tok_pool.fingerprint,
            "pool_fingerprint": tok_pool.pool_fingerprint,
            "tokenizer_fingerprint": tok_pool.tokenizer_fingerprint,
            "template": tok_pool.template,
            "max_length": tok_pool.max_length,
            "n_scorable": len(tok_pool),
            "n_truncated": tok_pool.n_truncated,
            "n_excluded": len(tok_pool.excluded),
            "excluded": tok_pool.excluded,
            "assistant_turns": tok_pool.assistant_turns,
            "n_multi_turn": tok_pool.n_multi_turn,
            "labels": "every assistant turn + eos"
            if tok_pool.labels_all_turns
            else "the response (last assistant turn) + eos",
        },
    )


def load_tokenised(run_dir: RunDir) -> TokenisedPool:
    """Load the tokenised pool of ``run_dir`` (memory-mapped)."""
    if not run_dir.tokenised_meta.is_file():
        raise S2LError(f"{run_dir.root}: no tokenised pool; run `s2l prepare` first")
    meta = read_json(run_dir.tokenised_meta)
    return TokenisedPool(
        dataset=load_from_disk(str(run_dir.tokenised_dir)),
        template=meta["template"],
        max_length=meta["max_length"],
        pool_fingerprint=meta["pool_fingerprint"],
        tokenizer_fingerprint=meta["tokenizer_fingerprint"],
        excluded=meta["excluded"],
        n_truncated=meta["n_truncated"],
        # a run tokenised before these keys labelled the last turn only
        assistant_turns=meta.get("assistant_turns", "last"),
        n_multi_turn=meta.get("n_multi_turn", 0),
    )


def length_batches(
    lengths: Sequence[int] | np.ndarray,
    max_tokens: int,
    max_batch_size: int | None = None,
    max_padding: float | None = 0.1,
) -> list[np.ndarray]:
    """Group example indices into batches of similar length under a token budget.

    Examples are sorted by length, longest first (so a batch too large for memory fails at
    once, not at the end), and a batch grows while ``batch_size * longest`` stays within
    ``max_tokens`` and, with ``max_padding``, while the next example is at least
    ``(1 - max_padding)`` times the batch's longest, so that padding stays under that fraction
    of every batch even where lengths are sparse. An example longer than ``max_tokens`` gets a
    batch of its own. Deterministic: ties keep index order.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_tokens < 1:
        raise S2LError(f"max_tokens must be positive, not {max_tokens}")
    order = np.argsort(-lengths, kind="stable")
    descending = lengths[order]
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = int(descending[start])
        end = start + max(1, max_tokens // max(longest, 1))
        if max_batch_size:
            end = min(end, start + max_batch_size)
        if max_padding is not None:
            # first position whose length falls below the padding threshold
            cut = np.searchsorted(-descending, -longest * (1 - max_padding), side="right")
            end = min(end, max(int(cut), start + 1))
        batches.append(order[start:end])
        start = end
    return batches


def collate(
    examples: Sequence[dict], pad_id: int = 0, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad tokenised examples into a batch with a response-only ``labels`` tensor.

    Returns ``input_ids`` and ``labels`` (int64, shape (batch, length); labels are -100 on
    prompt and padding positions, except an example's ``label_spans``) and ``attention_mask``.
    Right padding leaves every real token's attention (and so its loss) exactly as in an
    unpadded forward pass.
    """
    longest = max(len(e["input_ids"]) for e in examples)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    batch = len(examples)
    input_ids = torch.full((batch, longest), pad_id, dtype=torch.long)
    labels = torch.full((batch, longest), -100, dtype=torch.long)
    attention_mask = torch.zeros((batch, longest), dtype=torch.long)
    for row, e in enumerate(examples):
        ids = torch.as_tensor(e["input_ids"], dtype=torch.long)
        n, start = len(ids), int(e["response_start"])
        input_ids[row, :n] = ids
        labels[row, start:n] = ids[start:]
        spans = e.get(LABEL_SPANS) or ()
        for a, b in zip(spans[0::2], spans[1::2], strict=True):
            labels[row, a:b] = ids[a:b]
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


@dataclass
class TokenArrays:
    """The tokenised examples as flat numpy arrays, for batching without per-example Python.

    values: int32 (total_tokens,) all token ids back to back; offsets: int64 (n + 1,) where
    example i is ``values[offsets[i]:offsets[i + 1]]``; response_start: int64 (n,).
    ``spans``: where earlier assistant turns are labelled, the ``label_spans`` column as a
    list of int64 arrays ``[start, end, ...]`` (None without it). Built zero-copy from the
    Arrow column when the dataset is memory-mapped.
    """

    values: np.ndarray
    offsets: np.ndarray
    response_start: np.ndarray
    spans: list[np.ndarray] | None = None

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> TokenArrays:
        table = dataset.with_format("arrow")[:]
        ids = table.column("input_ids").combine_chunks()
        spans = None
        if LABEL_SPANS in table.column_names:
            spans = [np.asarray(x, dtype=np.int64) for x in table.column(LABEL_SPANS).to_pylist()]
        # .offsets index into .values (the whole child array), even for a sliced array
        return cls(
            values=ids.values.to_numpy(),
            offsets=ids.offsets.to_numpy().astype(np.int64),
            response_start=table.column("response_start").to_numpy().astype(np.int64),
            spans=spans,
        )

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, rows: np.ndarray, pad_id: int = 0) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and response-only ``labels`` (-100
        elsewhere) for example indices ``rows``; int64 tensors of shape (len(rows), longest)."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        longest = int(lengths.max())
        pos = np.arange(longest)
        real = pos[None, :] < lengths[:, None]
        flat = np.where(real, starts[:, None] + pos[None, :], 0)
        ids = np.where(real, self.values[flat], pad_id).astype(np.int64)
        in_response = real & (pos[None, :] >= self.response_start[rows][:, None])
        if self.spans is not None:
            for r, row in enumerate(rows):
                spans = self.spans[row]
                for a, b in zip(spans[0::2], spans[1::2], strict=True):
                    in_response[r, a:b] = True
        labels = np.where(in_response, ids, -100)
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(real.astype(np.int64)),
            "labels": torch.from_numpy(labels),
        }
