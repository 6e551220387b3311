"""Growing a run: old trajectories untouched, the old selection kept, one pass per checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from smalltolarge.data import load_saved_pool
from smalltolarge.demo_data import DEMO_POOL
from smalltolarge.errors import S2LError
from smalltolarge.extend import extend_run
from smalltolarge.formatting import TokenArrays, load_tokenised
from smalltolarge.losses import score_model
from smalltolarge.models import load_causal_lm
from smalltolarge.proxy import train_proxy
from smalltolarge.runs import RunDir, list_checkpoints, read_json
from smalltolarge.subset import select_subset
from smalltolarge.trajectories import Trajectories

from .conftest import N_CHECKPOINTS, N_POOL

N_NEW = 30


@pytest.fixture(scope="module")
def new_file(tmp_path_factory) -> Path:
    """``N_NEW`` bundled examples that are not in the fixture pool."""
    path = tmp_path_factory.mktemp("new") / "new.jsonl"
    with open(DEMO_POOL, encoding="utf-8") as f:
        lines = f.readlines()[N_POOL : N_POOL + N_NEW]
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def selected_run(tmp_path_factory, scored_run) -> RunDir:
    """The scored run with an S2L selection of 30% in 5 clusters."""
    run = RunDir(tmp_path_factory.mktemp("runs") / "selected")
    shutil.copytree(scored_run.root, run.root)
    select_subset(run, budget=0.3, seed=0, n_clusters=5, name="s2l")
    return run


@pytest.fixture
def run(tmp_path, selected_run) -> RunDir:
    copy = RunDir(tmp_path / "run")
    shutil.copytree(selected_run.root, copy.root)
    return copy


class BackboneRows:
    """Counts the examples that go through the proxy's backbone (every forward pass)."""

    def __enter__(self):
        self.rows = 0

        def hook(module, args, kwargs, output):
            if type(module).__name__ == "LlamaModel":
                self.rows += int(output.last_hidden_state.shape[0])

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_extend_appends_scores_once_and_keeps_the_old_selection(run, new_file):
    before = Trajectories.load(run.trajectories_dir, mmap=False)
    old_ids = (run.selection_dir("s2l") / "ids.txt").read_text().splitlines()
    with BackboneRows() as counted:
        result = extend_run(run, new_file, progress=False)

    after = Trajectories.load(run.trajectories_dir, mmap=False)
    n_old = len(before.ids)
    # old rows bit for bit; the new ones appended in order
    assert after.losses[:n_old].tobytes() == before.losses.tobytes()
    assert after.embeddings[:n_old].tobytes() == before.embeddings.tobytes()
    assert list(after.ids[:n_old]) == list(before.ids)
    new_scored = list(load_tokenised(run).dataset["id"])[n_old:]
    assert list(after.ids[n_old:]) == new_scored and len(new_scored) == result.n_scored
    assert after.steps == before.steps and len(after.steps) == N_CHECKPOINTS

    # one pass per checkpoint over the new examples only
    assert counted.rows == result.forward_rows == result.n_scored * N_CHECKPOINTS
    new_tok = load_tokenised(run).dataset.select(range(n_old, len(after.ids)))
    arrays = TokenArrays.from_dataset(new_tok)
    for t, (_, path) in enumerate(list_checkpoints(run.proxy_dir)):
        expected = score_model(load_causal_lm(path), arrays)
        np.testing.assert_allclose(after.losses[n_old:, t], expected, rtol=1e-5, atol=1e-6)

    # the selection is redone at 30% of the grown pool and keeps every old pick
    selection = result.selection
    assert selection.directory.name == "s2l-ext1"
    assert set(old_ids) <= set(selection.ids)
    assert len(selection.ids) == round(0.3 * (N_POOL + N_NEW))
    assert selection.summary["extended_from"]["kept"] == len(old_ids)
    assert sum(selection.summary["clusters"]["sizes"]) == len(after.ids)
    # the subset is the users' own lines, old and new, byte for byte
    lines = set(Path(DEMO_POOL).read_bytes().splitlines(keepends=True)[: N_POOL + N_NEW])
    subset = selection.subset_path.read_bytes().splitlines(keepends=True)
    assert set(subset) <= lines
    assert [json.loads(line)["id"] for line in subset] == selection.ids

    record = read_json(run.extensions_meta)["extensions"]
    assert [e["name"] for e in record] == ["ext1"]
    assert record[0]["source_path"] == str(new_file)
    assert (run.root / record[0]["ids_file"]).read_text().splitlines() == result.new_ids
    assert record[0]["forward_rows"] == result.forward_rows
    # the grown run is a run like any other
    again = select_subset(run, budget=40, seed=0, n_clusters=5, name="fresh")
    assert len(again.ids) == 40


def test_same_seed_same_selection(run, tmp_path, new_file):
    other = RunDir(tmp_path / "other")
    shutil.copytree(run.root, other.root)
    a = extend_run(run, new_file, budget=60, seed=3, progress=False)
    b = extend_run(other, new_file, budget=60, seed=3, progress=False)
    assert a.selection.ids == b.selection.ids and len(a.selection.ids) == 60


def test_a_second_extension_keeps_the_first(run, new_file, tmp_path):
    first = extend_run(run, new_file, progress=False)
    more = tmp_path / "more.jsonl"
    with open(DEMO_POOL, encoding="utf-8") as f:
        more.write_text("".join(f.readlines()[N_POOL + N_NEW : N_POOL + N_NEW + 10]))
    second = extend_run(run, more, progress=False)
    assert second.name == "ext2" and second.selection.directory.name == "s2l-ext2"
    assert set(first.selection.ids) <= set(second.selection.ids)
    names = [e["name"] for e in read_json(run.extensions_meta)["extensions"]]
    assert names == ["ext1", "ext2"]


def test_known_ids_are_refused_before_anything_changes(run, pool_file, tmp_path):
    stamp = (run.trajectories_dir / "losses.npy").read_bytes()
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(pool_file.read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(S2LError, match="3 of its 3 ids are already in the pool"):
        extend_run(run, mixed, progress=False)
    assert (run.trajectories_dir / "losses.npy").read_bytes() == stamp
    assert not (run.extensions_meta).exists()


def test_a_run_without_kept_checkpoints_is_refused(run, new_file):
    # a short real training that records its trajectories and keeps no weights
    train_proxy(run, epochs=0.5, batch_size=16, n_checkpoints=2, save_checkpoints=False,
                precision="fp32", force=True, progress=False)  # fmt: skip
    assert not list(run.proxy_dir.glob("step-*"))
    with pytest.raises(S2LError, match="--save-checkpoints"):
        extend_run(run, new_file, progress=False)


def test_missing_checkpoints_are_refused(run, new_file):
    shutil.rmtree(list_checkpoints(run.proxy_dir)[-1][1])
    with pytest.raises(S2LError, match="no checkpoint for steps"):
        extend_run(run, new_file, progress=False)


def test_a_budget_that_drops_old_picks_is_refused(run, new_file):
    with pytest.raises(S2LError, match="fewer than the 36"):
        extend_run(run, new_file, budget=10, progress=False)


def test_only_s2l_selections_are_extended(run, new_file):
    select_subset(run, method="random", budget=20, seed=0, name="rand")
    with pytest.raises(S2LError, match="only S2L selections"):
        extend_run(run, new_file, selection="rand", progress=False)


def test_a_targeted_selection_is_refused(run, new_file):
    # its quotas follow a target set that an extension does not re-score
    select_subset(run, budget=20, seed=0, n_clusters=5, name="aimed", target_set=new_file)
    with pytest.raises(S2LError, match="targeted selection"):
        extend_run(run, new_file, selection="aimed", progress=False)


def test_a_stratified_selection_grows_within_each_source(run, new_file):
    old = select_subset(run, budget=0.3, seed=0, n_clusters=3, stratify_by="source", name="st")
    result = extend_run(run, new_file, selection="st", progress=False)
    assert set(old.ids) <= set(result.selection.ids)
    assert len(result.selection.ids) == round(0.3 * (N_POOL + N_NEW))
    assert result.selection.summary["settings"]["stratified"] is True
    # every new example joined a cluster of its own source
    labels = pq.read_table(result.selection.directory / "clusters.parquet").to_pydict()
    pool = load_saved_pool(run)
    source = dict(zip(pool.dataset["id"], pool.dataset["source"], strict=True))
    sources_of = {}
    for i, label in zip(labels["id"], labels["cluster"], strict=True):
        sources_of.setdefault(label, set()).add(source[i])
    assert all(len(s) == 1 for s in sources_of.values())
