"""A pretrained proxy cut from a bigger model: its embeddings, first k decoder layers, final
norm and LM head.

The paper's proxy is a small *pretrained* LM fine-tuned on the pool; no package here ships one,
but one that ships a bigger model (SmolLM2-135M-Instruct) can be cut down. The first k layers
of a pretrained model keep its tokenizer, embeddings and early features and k / n of its layer
compute; the embeddings and output head stay whole, and with a large vocabulary the head costs
as much as several layers, so cutting below a few layers saves little more. With the model's
own final norm and head on top, the first layers are a far worse LM than the whole model until
fine-tuning on the pool adapts them, which a proxy gets anyway (``benchmarks/truncated_proxy.py``
measures the cost and the loss before and after a little fine-tuning).
:func:`truncate_model` writes such a model as a plain Hugging Face directory, so
``s2l prepare --proxy DIR`` and ``s2l finetune DIR ...`` use it like any other model.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import PreTrainedModel

from smalltolarge.errors import S2LError
from smalltolarge.models import (
    check_output_dir,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
)
from smalltolarge.runs import atomic_dir, atomic_write_json

#: Where each known architecture keeps its decoder layers (attribute path from the causal LM):
#: Llama/Mistral/Qwen/Gemma/SmolLM style, GPT-2, GPT-NeoX/Pythia.
LAYER_PATHS: tuple[str, ...] = ("model.layers", "transformer.h", "gpt_neox.layers")

#: Written into every truncated model directory: where it came from and what was kept.
MARKER = "s2l_truncated.json"


def truncate_model(
    model: str | os.PathLike,
    n_layers: int,
    out_dir: str | os.PathLike,
) -> Path:
    """Save ``model`` cut to its first ``n_layers`` decoder layers as a HF directory.

    Args:
        model: any HF causal LM name or path, or an offline short name (``smollm2-135m``).
        n_layers: decoder layers to keep, from the input side; 1 <= n_layers <= the model's.
        out_dir: the directory to write (weights in float32, config, generation config,
            tokenizer and ``s2l_truncated.json``). Written atomically; an existing directory is
            replaced only if it is empty or an earlier output of this function.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        S2LError: the model or its tokenizer cannot be loaded, its architecture is not one of
            :data:`LAYER_PATHS`, ``n_layers`` is out of range, or ``out_dir`` holds something
            else.
    """
    out = Path(out_dir)
    check_output_dir(out, MARKER)
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise S2LError(f"n_layers must be a positive integer, not {n_layers!r}")
    tokenizer = load_tokenizer(model)
    lm = load_causal_lm(model, dtype=torch.float32)
    n_before = count_parameters(lm)
    n_total = truncate_layers(lm, n_layers)
    with atomic_dir(out) as tmp:
        lm.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(
            tmp / MARKER,
            {
                "source": str(model),
                "architecture": lm.config.model_type,
                "layers_kept": n_layers,
                "layers_of_source": n_total,
                "parameters": count_parameters(lm),
                "parameters_of_source": n_before,
            },
        )
    return out


def truncate_layers(model: PreTrainedModel, n_layers: int) -> int:
    """Keep only the first ``n_layers`` decoder layers of ``model``, in place, and update its
    config to match (the layer count and every per-layer list such as ``layer_types``).

    Returns the number of layers the model had. Raises :class:`S2LError` for an unknown
    architecture or an ``n_layers`` outside 1..that number.
    """
    parent, name, layers = _decoder_layers(model)
    n_total = len(layers)
    if not 1 <= n_layers <= n_total:
        raise S2LError(
            f"cannot keep {n_layers} layers of a {n_total}-layer model; choose 1 to {n_total}"
        )
    setattr(parent, name, layers[:n_layers])
    config = model.config
    # Newer configs carry per-layer lists (layer_types: full or sliding attention per layer),
    # which must shrink with the layers or the saved config no longer validates.
    for key, value in config.to_dict().items():
        if "layer" in key and isinstance(value, list) and len(value) == n_total:
            setattr(config, key, value[:n_layers])
    # GPT-2's config maps num_hidden_layers to n_layer, so one assignment covers every family.
    config.num_hidden_layers = n_layers
    return n_total


def _decoder_layers(model: PreTrainedModel) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """``(parent module, attribute name, layer list)`` of the first of :data:`LAYER_PATHS`
    that ``model`` has."""
    for path in LAYER_PATHS:
        *parents, name = path.split(".")
        parent: object = model
        for attr in parents:
            parent = getattr(parent, attr, None)
        layers = getattr(parent, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return parent, name, layers  # type: ignore[return-value]
    raise S2LError(
        f"don't know where a {type(model).__name__} (model_type "
        f"'{model.config.model_type}') keeps its decoder layers; known layouts: "
        f"{', '.join(LAYER_PATHS)}"
    )
