"""Shared fixtures: a small real pool and a tiny proxy trained and scored on it once per session.

The pool is the first examples of the bundled demo pool (real reasoning-gym items from several
sources); the proxy is the ``tiny`` preset (a Llama-style model built from a config, with a BPE
tokenizer trained on the pool). Tests that change a run work on a copy (``run_copy``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads
# made the suite ten times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from smalltolarge.demo_data import DEMO_POOL  # noqa: E402
from smalltolarge.prepare import prepare  # noqa: E402
from smalltolarge.proxy import train_proxy  # noqa: E402
from smalltolarge.runs import RunDir  # noqa: E402
from smalltolarge.scoring import score_trajectories  # noqa: E402

N_POOL = 120
MAX_LENGTH = 128
N_CHECKPOINTS = 4


@pytest.fixture(scope="session")
def pool_file(tmp_path_factory) -> Path:
    """A JSONL pool of the first ``N_POOL`` bundled examples (Alpaca schema, with sources)."""
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    with open(DEMO_POOL, encoding="utf-8") as f:
        lines = [next(f) for _ in range(N_POOL)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, pool_file) -> RunDir:
    """A run directory with the pool prepared and the tiny proxy trained (fp32, 4 ckpts)."""
    run = RunDir(tmp_path_factory.mktemp("runs") / "trained")
    prepare(pool_file, run, proxy="tiny", max_length=MAX_LENGTH, progress=False)
    train_proxy(
        run,
        epochs=2,
        batch_size=8,
        n_checkpoints=N_CHECKPOINTS,
        precision="fp32",
        seed=0,
        progress=False,
    )
    return run


@pytest.fixture(scope="session")
def scored_run(tmp_path_factory, trained_run) -> RunDir:
    """A copy of ``trained_run`` with trajectories scored in fp32."""
    run = RunDir(tmp_path_factory.mktemp("runs") / "scored")
    shutil.copytree(trained_run.root, run.root)
    score_trajectories(run, precision="fp32", progress=False)
    return run


@pytest.fixture
def run_copy(tmp_path, scored_run) -> RunDir:
    """A private, writable copy of the scored run."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(scored_run.root, run.root)
    return run


def pytest_configure(config):
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def tiny_llama(tokenizer, *, tie_word_embeddings: bool = False, seed: int = 0):
    """A randomly initialised 2-layer Llama (hidden 64) sized for ``tokenizer``, fp32,
    deterministic for ``seed``: the presets' builder at a test size."""
    from smalltolarge.models import build_llama

    return build_llama(
        tokenizer,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        tie_word_embeddings=tie_word_embeddings,
        seed=seed,
    )


@pytest.fixture(scope="module")
def one_thread():
    """Torch single-threaded for a module (``pytestmark = pytest.mark.usefixtures(...)``):
    these models are tiny, and on a shared machine torch's worker threads mostly wait on each
    other (seconds instead of milliseconds per call)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_records() -> list[dict]:
    """The bundled demo eval set's records."""
    import json

    from smalltolarge.demo_data import DEMO_EVAL

    return [json.loads(line) for line in DEMO_EVAL.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tokenizer(demo_records):
    """A 512-token BPE trained on the demo eval set's prompts and responses (a module that
    needs another tokenizer defines its own ``tokenizer`` fixture)."""
    from smalltolarge.formatting import format_prompt
    from smalltolarge.models import train_bpe_tokenizer

    texts = [format_prompt(r["instruction"]) + r["output"] for r in demo_records]
    return train_bpe_tokenizer(texts, 512)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    """:func:`tiny_llama` (tied embeddings) for the ``tokenizer`` fixture, in eval mode."""
    return tiny_llama(tokenizer, tie_word_embeddings=True).eval()


def assert_valid_selection(rows, n: int, budget: int) -> None:
    """``rows`` is a selection of ``budget`` of ``n`` rows: int64, sorted, unique, in range."""
    import numpy as np

    assert rows.dtype == np.int64
    assert rows.shape == (budget,)
    assert np.all(np.diff(rows) > 0), "rows must be sorted and unique"
    if budget:
        assert rows[0] >= 0 and rows[-1] < n
