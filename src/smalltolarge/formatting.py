"""Format examples with a prompt template and tokenise them with the response mask.

Every example becomes ``prompt_ids + response_ids + [eos]``. The prompt and the response are
tokenised separately and concatenated, so the boundary between them is exact: the loss of S2L
(and of fine-tuning) counts the response tokens and the end-of-sequence token, never a prompt
token. An example whose prompt leaves no room for a single response token within
``max_length`` is excluded and reported, never scored as 0 or NaN; one whose response is cut by
``max_length`` is kept and counted as truncated.

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
TOKENISED_COLUMNS = ("id", "pool_index", "input_ids", "response_start", "length")
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
    kept examples whose response was cut at ``max_length``.
    """

    dataset: Dataset
    template: str
    max_length: int
    pool_fingerprint: str
    tokenizer_fingerprint: str
    excluded: list[dict] = field(default_factory=list)
    n_truncated: int = 0

    @property
    def fingerprint(self) -> str:
        """Changes whenever the pool, the tokenizer, the template or max_length changes."""
        return fingerprint(
            self.pool_fingerprint, self.tokenizer_fingerprint, self.template, self.max_length
        )

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def lengths(self) -> np.ndarray:
        """int64 (n,) total tokens per example."""
        return np.asarray(self.dataset["length"], dtype=np.int64)

    @property
    def response_lengths(self) -> np.ndarray:
        """int64 (n,) loss-bearing tokens per example (response + eos)."""
        return self.lengths - np.asarray(self.dataset["response_start"], dtype=np.int64)


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


def tokenise_pool(
    pool: Pool,
    tokenizer: PreTrainedTokenizerBase,
    *,
    template: str = PrepareSettings.template,
    max_length: int = PrepareSettings.max_length,
    batch_size: int = 1000,
) -> TokenisedPool:
    """Format and tokenise every example of ``pool`` with the response mask.

    Returns the scorable examples; the excluded ones (prompt too long) are listed with reasons.
    """
    check_choice("template", template, TEMPLATES)
    check_max_length(max_length)
    check_tokenizer(tokenizer, getattr(tokenizer, "name_or_path", "the proxy"))
    if template == "chat":
        format_prompt("check", template="chat", tokenizer=tokenizer)  # fails early if no template
    # With a chat template the rendered text already carries the BOS token.
    add_special = template != "chat"
    eos = tokenizer.eos_token_id

    def encode(batch: dict, indices: list[int]) -> dict:
        prompts = [
            format_prompt(i, x, m, template=template, tokenizer=tokenizer, system=s)
            for i, x, m, s in zip(*(batch[c] for c in _PROMPT_COLUMNS), strict=True)
        ]
        p_ids = tokenizer(prompts, add_special_tokens=add_special)["input_ids"]
        r_ids = tokenizer(batch["response"], add_special_tokens=False)["input_ids"]
        out: dict[str, list] = {c: [] for c in (*TOKENISED_COLUMNS, "status")}
        for idx, ex_id, p, r in zip(indices, batch["id"], p_ids, r_ids, strict=True):
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

    mapped = pool.dataset.map(
        encode,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        remove_columns=pool.dataset.column_names,
        features=_FEATURES,
        new_fingerprint=fingerprint(
            pool.fingerprint, tokenizer_fingerprint(tokenizer), template, max_length, "tokenise"
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
    prompt and padding positions) and ``attention_mask``. Right padding leaves every real
    token's attention (and so its loss) exactly as in an unpadded forward pass.
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
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


@dataclass
class TokenArrays:
    """The tokenised examples as flat numpy arrays, for batching without per-example Python.

    values: int32 (total_tokens,) all token ids back to back; offsets: int64 (n + 1,) where
    example i is ``values[offsets[i]:offsets[i + 1]]``; response_start: int64 (n,).
    Built zero-copy from the Arrow column when the dataset is memory-mapped.
    """

    values: np.ndarray
    offsets: np.ndarray
    response_start: np.ndarray

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> TokenArrays:
        table = dataset.with_format("arrow")[:]
        ids = table.column("input_ids").combine_chunks()
        # .offsets index into .values (the whole child array), even for a sliced array
        return cls(
            values=ids.values.to_numpy(),
            offsets=ids.offsets.to_numpy().astype(np.int64),
            response_start=table.column("response_start").to_numpy().astype(np.int64),
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
        labels = np.where(in_response, ids, -100)
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(real.astype(np.int64)),
            "labels": torch.from_numpy(labels),
        }
