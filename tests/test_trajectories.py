"""Tests for smalltolarge.trajectories: the artifact, and the run-level check of its loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from smalltolarge.errors import S2LError
from smalltolarge.prepare import prepare
from smalltolarge.runs import read_json
from smalltolarge.trajectories import Trajectories, load_run_trajectories

META = {"fingerprint": "f" * 16, "pool_fingerprint": "p" * 16, "tokenised_fingerprint": "t" * 16}


def make(n: int = 7, t: int = 3, **kwargs) -> Trajectories:
    rng = np.random.default_rng(0)
    args = dict(
        losses=rng.random((n, t), dtype=np.float32) * 5,
        ids=[f"ex-{i}" for i in range(n)],
        steps=[10 * (k + 1) for k in range(t)],
        meta=dict(META),
    )
    args.update(kwargs)
    return Trajectories(**args)


def test_save_load_round_trip(tmp_path):
    traj = make(ids=["a", "b ü", "c/d", "3", "", "x" * 50, "日本"])
    traj.save(tmp_path / "traj")
    assert sorted(p.name for p in (tmp_path / "traj").iterdir()) == [
        "ids.parquet",
        "losses.npy",
        "meta.json",
    ]
    loaded = Trajectories.load(tmp_path / "traj")
    assert isinstance(loaded.losses, np.memmap)
    assert loaded.losses.dtype == np.float32
    assert np.array_equal(loaded.losses, traj.losses)
    assert loaded.ids.tolist() == traj.ids.tolist()
    assert loaded.ids.dtype == object
    assert loaded.steps == traj.steps
    assert loaded.meta == META
    assert loaded.fingerprint == META["fingerprint"]
    assert json.loads((tmp_path / "traj" / "meta.json").read_text())["steps"] == traj.steps

    eager = Trajectories.load(tmp_path / "traj", mmap=False)
    assert not isinstance(eager.losses, np.memmap)
    assert np.array_equal(eager.losses, traj.losses)


def test_embeddings_round_trip(tmp_path):
    emb = np.random.default_rng(1).standard_normal((7, 5)).astype(np.float32)
    make(embeddings=emb).save(tmp_path)
    loaded = Trajectories.load(tmp_path)
    assert isinstance(loaded.embeddings, np.memmap)
    assert np.array_equal(loaded.embeddings, emb)
    assert np.array_equal(Trajectories.load(tmp_path, mmap=False).embeddings, emb)
    # saving trajectories without embeddings removes the stale file
    make().save(tmp_path)
    assert not (tmp_path / "embeddings.npy").exists()
    assert Trajectories.load(tmp_path).embeddings is None
    with pytest.raises(S2LError, match="7 rows but 3 embeddings"):
        make(embeddings=emb[:3])


def test_save_converts_to_float32_and_overwrites(tmp_path):
    traj = make(losses=np.arange(21, dtype=np.float64).reshape(7, 3))
    traj.save(tmp_path)
    make().save(tmp_path)  # replaces the previous artifact
    loaded = Trajectories.load(tmp_path, mmap=False)
    assert loaded.losses.dtype == np.float32
    assert np.array_equal(loaded.losses, make().losses)
    # a non-contiguous (transposed) matrix is written in the right order
    square = np.arange(9, dtype=np.float32).reshape(3, 3).T
    make(n=3, losses=square).save(tmp_path / "t")
    assert np.array_equal(Trajectories.load(tmp_path / "t").losses, square)


def test_fingerprint_absent():
    assert make(meta={}).fingerprint is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(ids=["a", "b"]), "7 rows but 2 ids"),
        (dict(steps=[1, 2]), "3 columns but 2 steps"),
        (dict(steps=[1, 2, 3, 4]), "3 columns but 4 steps"),
        (dict(steps=[10, 30, 20]), "steps must increase"),
        (dict(steps=[10, 10, 20]), "steps must increase"),
        (dict(losses=np.zeros(7, dtype=np.float32)), "2-D matrix"),
        (dict(losses=np.zeros((7, 3, 1), dtype=np.float32)), "2-D matrix"),
    ],
)
def test_validation(kwargs, message):
    with pytest.raises(S2LError, match=message):
        make(**kwargs)


def test_load_empty_dir(tmp_path):
    with pytest.raises(S2LError, match="no trajectories"):
        Trajectories.load(tmp_path)
    with pytest.raises(S2LError, match="no trajectories"):
        Trajectories.load(tmp_path / "missing")


def test_incomplete_artifact_is_not_loaded(tmp_path):
    """meta.json is written last: without it, the directory holds no trajectories."""
    make().save(tmp_path)
    (tmp_path / "meta.json").unlink()
    with pytest.raises(S2LError, match="no trajectories"):
        Trajectories.load(tmp_path)


def test_check_matches():
    traj = make()
    traj.check_matches(META["pool_fingerprint"], META["tokenised_fingerprint"])
    traj.check_matches(META["pool_fingerprint"])  # the tokenisation is optional
    with pytest.raises(S2LError, match=r"X were computed on a different pool .*pppp.*qqqq"):
        traj.check_matches("q" * 16, META["tokenised_fingerprint"], where="X")
    with pytest.raises(S2LError, match="different tokenisation of this pool"):
        traj.check_matches(META["pool_fingerprint"], "u" * 16)
    with pytest.raises(S2LError, match="different pool"):
        make(meta={}).check_matches(META["pool_fingerprint"])


# --------------------------------------------------------------------------------------------
# load_run_trajectories
# --------------------------------------------------------------------------------------------


def test_load_run_trajectories(scored_run):
    traj = load_run_trajectories(scored_run)
    meta = read_json(scored_run.tokenised_meta)
    assert traj.meta["pool_fingerprint"] == meta["pool_fingerprint"]
    assert traj.losses.shape == (meta["n_scorable"], 4)
    assert load_run_trajectories(str(scored_run.root)).steps == traj.steps


@pytest.mark.parametrize(
    ("field", "message"),
    [("pool_fingerprint", "different pool"), ("fingerprint", "different tokenisation")],
)
def test_load_run_trajectories_refuses_a_changed_run(run_copy, field, message):
    meta = read_json(run_copy.tokenised_meta)
    meta[field] = "0" * 16
    run_copy.tokenised_meta.write_text(json.dumps(meta))
    with pytest.raises(S2LError, match=message) as info:
        load_run_trajectories(run_copy)
    assert str(run_copy.trajectories_dir) in str(info.value)


def test_load_run_trajectories_after_the_pool_changed(tmp_path, run_copy, pool_file):
    lines = pool_file.read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(lines[5])
    record["output"] += " (edited)"
    lines[5] = json.dumps(record, ensure_ascii=False) + "\n"
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(lines), encoding="utf-8")
    prepare(edited, run_copy, proxy="tiny", max_length=128, progress=False)
    with pytest.raises(S2LError, match="computed on a different pool"):
        load_run_trajectories(run_copy)


def test_load_run_trajectories_without_scores(run_copy):
    (run_copy.trajectories_dir / "meta.json").unlink()
    with pytest.raises(S2LError, match="no trajectories"):
        load_run_trajectories(run_copy)
