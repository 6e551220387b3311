"""Load a causal LM and its tokenizer by name or path, or build a small preset from a config.

A proxy is either any Hugging Face causal LM (``EleutherAI/pythia-70m-deduped``, a local
directory, ...) or one of the :data:`PRESETS`: a Llama-style model built from a config and
trained from scratch, with a byte-level BPE tokenizer trained on the pool itself. The presets
exist so that the whole pipeline runs on a CPU; on a GPU, use a real pretrained proxy.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from smalltolarge.errors import S2LError
from smalltolarge.runs import fingerprint


@dataclass(frozen=True)
class Preset:
    """A small Llama-style architecture plus the training settings that suit it.

    A model trained from scratch needs a far larger learning rate and smaller batches than the
    reference settings (lr 2e-5, batch 128), which are for fine-tuning a pretrained proxy.
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    learning_rate: float
    batch_size: int


PRESETS: dict[str, Preset] = {
    # about 0.7M parameters; trains at about 15k tokens/s on 2 CPU cores (bf16)
    "tiny": Preset(128, 2, 4, 384, 2048, learning_rate=1e-3, batch_size=16),
    # about 5M parameters
    "small": Preset(256, 4, 4, 768, 8192, learning_rate=1e-3, batch_size=16),
}

#: Reference settings of S2L for a pretrained proxy (Pythia-70M in the paper).
REFERENCE_LEARNING_RATE = 2e-5
REFERENCE_BATCH_SIZE = 128

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def is_preset(name: str) -> bool:
    """True when ``name`` names a built-in preset rather than a HF model."""
    return name in PRESETS


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (deterministic for the same texts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a tokenizer by HF name or local path; a clear error when it cannot be had."""
    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as e:
        raise S2LError(f"could not load a tokenizer from '{name_or_path}': {_first_line(e)}") from e
    return tok


def check_tokenizer(tok: PreTrainedTokenizerBase, name: str) -> None:
    """Refuse a tokenizer that cannot mark the end of a response."""
    if tok.eos_token_id is None:
        raise S2LError(f"tokenizer of '{name}' has no end-of-sequence token; S2L scores it")


def tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> str:
    """A fingerprint of everything in a tokenizer that changes token ids."""
    backend = getattr(tok, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tok.get_vocab().items()))
    return fingerprint(body, tok.bos_token, tok.eos_token, getattr(tok, "chat_template", None))


def build_preset_model(name: str, tok: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A freshly initialised preset model sized for ``tok``, deterministic for ``seed``."""
    p = PRESETS[name]
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_heads,
        num_key_value_heads=p.num_heads,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def load_causal_lm(
    name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """Load any HF causal LM by name or path. Never resizes or re-initialises embeddings."""
    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
    except (OSError, ValueError) as e:
        raise S2LError(f"could not load a causal LM from '{name_or_path}': {_first_line(e)}") from e
    return model


def resolve_precision(precision: str, device: torch.device | str | None = None) -> str:
    """Turn ``"auto"`` into ``"bf16"`` where the device runs bf16 fast, else ``"fp32"``.

    ``precision`` is one of ``auto``, ``fp32``, ``bf16``, ``fp16``.
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise S2LError(f"precision must be auto, fp32, bf16 or fp16, not '{precision}'")
    if precision != "auto":
        return precision
    device = torch.device(device or default_device())
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for a resolved precision, or None for fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX); elsewhere bf16 is
    emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
