"""Model directories made for the pipeline: a pretrained model cut to its first k layers
(smalltolarge.truncate) and an untrained preset target (smalltolarge.models.init_model).

Models are tiny and built from configs; nothing is downloaded.
"""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from smalltolarge.cli import main
from smalltolarge.errors import S2LError
from smalltolarge.evaluate import evaluate
from smalltolarge.finetune import finetune
from smalltolarge.models import (
    INIT_MARKER,
    PRESETS,
    count_parameters,
    init_model,
    load_causal_lm,
    load_tokenizer,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)
from smalltolarge.prepare import prepare
from smalltolarge.runs import read_json
from smalltolarge.truncate import MARKER, truncate_layers, truncate_model

N_LAYERS = 3
TEXTS = ["The sum of 3 and 4 is 7.", "Sort these words: pear, apple.", "12 / 4 = 3"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, 512)


def _config(arch: str, tok):
    """A 3-layer config of ``arch`` (width 32) sized for ``tok``."""
    common = dict(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=N_LAYERS, n_head=2, n_positions=64, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=32,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            **common,
        )
    llama_like = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **common,
    )
    if arch == "qwen2":  # its config carries a per-layer list, layer_types
        return Qwen2Config(**llama_like)
    return LlamaConfig(**llama_like)


MODEL_CLASSES = {
    "llama": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "gpt2": GPT2LMHeadModel,
    "gpt_neox": GPTNeoXForCausalLM,
}


def _model(arch: str, tok, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODEL_CLASSES[arch](_config(arch, tok))
    return model.eval()


def _layers(model) -> torch.nn.ModuleList:
    for owner, name in (("model", "layers"), ("transformer", "h"), ("gpt_neox", "layers")):
        if hasattr(model, owner):
            return getattr(getattr(model, owner), name)
    raise AssertionError(type(model))


def _norm_and_head(model):
    """The final norm and the LM head of ``model``."""
    if isinstance(model, GPT2LMHeadModel):
        norm = model.transformer.ln_f
    elif isinstance(model, GPTNeoXForCausalLM):
        norm = model.gpt_neox.final_layer_norm
    else:
        norm = model.model.norm
    return norm, model.get_output_embeddings()


def _first_layers_logits(model, ids: torch.Tensor, k: int) -> torch.Tensor:
    """Logits of ``model``'s first ``k`` layers + its final norm + its head: the output of
    layer k-1, caught by a hook during a forward pass of the whole model."""
    caught = {}

    def hook(_module, _inputs, output):
        caught["h"] = output[0] if isinstance(output, tuple) else output

    handle = _layers(model)[k - 1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    norm, head = _norm_and_head(model)
    with torch.no_grad():
        return head(norm(caught["h"]))


@pytest.fixture
def saved(tmp_path, tokenizer):
    """``save(arch)``: a random 3-layer model of ``arch`` + tokenizer in a directory."""

    def save(arch: str):
        model = _model(arch, tokenizer)
        path = tmp_path / f"{arch}-full"
        model.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
        return model, path

    return save


# --------------------------------------------------------------------------------------------
# truncate_model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("k", [1, 2])
def test_truncated_model_equals_the_first_layers_of_the_original(saved, tmp_path, arch, k):
    original, path = saved(arch)
    out = truncate_model(path, k, tmp_path / "cut")

    cut = load_causal_lm(out).eval()
    assert cut.config.num_hidden_layers == k and len(_layers(cut)) == k
    for key, value in cut.config.to_dict().items():
        if "layer" in key and isinstance(value, list):
            assert len(value) == k, key  # e.g. qwen2's layer_types shrank with the layers
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7], [8, 8, 200, 1, 64, 2, 255]])
    with torch.no_grad():
        got = cut(ids).logits
    expected = _first_layers_logits(original, ids, k)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    assert tokenizer_fingerprint(load_tokenizer(out)) == tokenizer_fingerprint(load_tokenizer(path))
    meta = read_json(out / MARKER)
    assert (meta["layers_kept"], meta["layers_of_source"]) == (k, N_LAYERS)
    assert meta["parameters"] == count_parameters(cut) < meta["parameters_of_source"]


def test_keeping_every_layer_gives_the_same_model(saved, tmp_path):
    original, path = saved("llama")
    cut = load_causal_lm(truncate_model(path, N_LAYERS, tmp_path / "cut")).eval()
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        torch.testing.assert_close(cut(ids).logits, original(ids).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [0, -1, N_LAYERS + 1])
def test_layer_count_out_of_range_is_refused(saved, tmp_path, k):
    _, path = saved("gpt2")
    with pytest.raises(S2LError, match="layers|n_layers"):
        truncate_model(path, k, tmp_path / "cut")
    assert not (tmp_path / "cut").exists()


def test_unknown_architecture_is_refused(tokenizer):
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=2,
        word_embed_proj_dim=32,
    )
    with pytest.raises(S2LError, match="OPTForCausalLM.*decoder layers"):
        truncate_layers(OPTForCausalLM(config), 1)


def test_output_directory_that_is_not_ours_is_refused(saved, tmp_path):
    _, path = saved("llama")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(S2LError, match="exists"):
        truncate_model(path, 1, occupied)
    assert (occupied / "notes.txt").read_text() == "keep me"
    # An earlier output is replaced.
    out = truncate_model(path, 1, tmp_path / "cut")
    truncate_model(path, 2, out)
    assert load_causal_lm(out).config.num_hidden_layers == 2


def test_truncated_model_serves_as_a_proxy(saved, tmp_path, pool_file):
    """`prepare --proxy DIR` takes the cut model's own tokenizer, like any HF model."""
    _, path = saved("llama")
    out = truncate_model(path, 1, tmp_path / "cut")
    prepared = prepare(pool_file, tmp_path / "run", proxy=str(out), max_length=1024, progress=False)
    assert len(prepared.tokenised) > 0
    run_tok = load_tokenizer(tmp_path / "run" / "tokenizer")
    assert tokenizer_fingerprint(run_tok) == tokenizer_fingerprint(load_tokenizer(out))


def s2l(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["s2l", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_truncate_model_command(saved, tmp_path, monkeypatch, capsys):
    _, path = saved("gpt2")
    code, out, _ = s2l(
        monkeypatch, capsys, "truncate-model", path, "--layers", "2", "-o", tmp_path / "cut"
    )
    assert code == 0 and "2 of 3 layers" in out
    assert load_causal_lm(tmp_path / "cut").config.n_layer == 2

    code, _, err = s2l(
        monkeypatch, capsys, "truncate-model", path, "--layers", "9", "-o", tmp_path / "c2"
    )
    assert code == 2 and err.startswith("error: cannot keep 9 layers of a 3-layer model")


# --------------------------------------------------------------------------------------------
# init_model: an untrained preset target
# --------------------------------------------------------------------------------------------


def test_init_model_uses_the_tokenizer_prepare_trains_for_the_preset(tmp_path, pool_file):
    out = init_model("tiny", pool_file, tmp_path / "target", seed=3)
    prepare(pool_file, tmp_path / "run", proxy="tiny", max_length=256, progress=False)
    proxy_tok = load_tokenizer(tmp_path / "run" / "tokenizer")
    assert tokenizer_fingerprint(load_tokenizer(out)) == tokenizer_fingerprint(proxy_tok)

    model = load_causal_lm(out)
    p = PRESETS["tiny"]
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (
        p.num_layers,
        p.hidden_size,
    )
    meta = read_json(out / INIT_MARKER)
    assert meta["parameters"] == count_parameters(model)
    assert (meta["preset"], meta["seed"]) == ("tiny", 3)

    # Same pool and seed, same weights; another seed, other weights.
    again = load_causal_lm(init_model("tiny", pool_file, tmp_path / "again", seed=3))
    other = load_causal_lm(init_model("tiny", pool_file, tmp_path / "other", seed=4))
    w = model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w, again.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(w, other.model.layers[0].mlp.up_proj.weight)


def test_init_model_then_finetune_and_evaluate(tmp_path, pool_file):
    """The untrained target goes through `finetune` and `evaluate` unchanged."""
    target = init_model("tiny", pool_file, tmp_path / "target", vocab_size=512)
    assert len(load_tokenizer(target)) == 512
    train = tmp_path / "train.jsonl"
    train.write_text("".join(pool_file.read_text().splitlines(keepends=True)[:48]))
    result = finetune(
        target,
        train,
        tmp_path / "ft",
        epochs=1,
        learning_rate=3e-3,
        batch_size=8,
        max_length=256,
        precision="fp32",
        progress=False,
    )
    assert result.n_train + result.n_excluded == 48 and result.n_train > 40
    assert result.train_loss_last < result.train_loss_first  # it learns from scratch
    scores = evaluate(
        result.model_dir,
        pool_file,
        tmp_path / "eval",
        metric="exact_match",
        max_new_tokens=8,
        max_examples=6,
        precision="fp32",
        progress=False,
    )
    assert scores.overall["n"] == 6 and 0.0 <= scores.overall["mean"] <= 1.0


def test_init_model_refuses_bad_settings(tmp_path, pool_file):
    with pytest.raises(S2LError, match="unknown preset 'huge'"):
        init_model("huge", pool_file, tmp_path / "a")
    with pytest.raises(S2LError, match="vocab_size"):
        init_model("tiny", pool_file, tmp_path / "b", vocab_size=100)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_init_model_command(tmp_path, pool_file, monkeypatch, capsys):
    code, out, _ = s2l(
        monkeypatch,
        capsys,
        "init-model",
        "tiny",
        pool_file,
        "-o",
        tmp_path / "target",
        "--vocab-size",
        "512",
    )
    assert code == 0 and "512-token vocabulary" in out
    assert read_json(tmp_path / "target" / INIT_MARKER)["vocab_size"] == 512
