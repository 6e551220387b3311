"""Trajectories computed elsewhere: import, validation against the pool, selection."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smalltolarge.data import load_pool
from smalltolarge.errors import S2LError
from smalltolarge.runs import RunDir
from smalltolarge.subset import select_subset
from smalltolarge.trajectories import align_to_pool, import_trajectories


@pytest.fixture
def pool_ids(pool_file):
    return load_pool(pool_file).ids


def fake_losses(n: int, t: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    start = rng.uniform(3, 8, size=(n, 1))
    return (start * np.exp(-rng.uniform(0.1, 0.6, size=(n, 1)) * np.arange(t))).astype(np.float32)


def test_npy_with_ids_selects_from_the_pool(tmp_path, pool_file, pool_ids):
    losses = fake_losses(len(pool_ids))
    np.save(tmp_path / "l.npy", losses[::-1])
    (tmp_path / "ids.txt").write_text("\n".join(pool_ids[::-1]) + "\n")
    run = RunDir(tmp_path / "run")
    result = select_subset(
        run,
        pool=pool_file,
        trajectories=tmp_path / "l.npy",
        trajectory_ids=tmp_path / "ids.txt",
        budget=24,
        n_clusters=6,
    )
    assert len(result.ids) == 24 and set(result.ids) <= set(pool_ids)
    assert result.summary["n_scorable"] == len(pool_ids)
    # the same matrix given in pool order selects the same examples: alignment is by id
    np.save(tmp_path / "m.npy", losses)
    (tmp_path / "ids2.json").write_text(json.dumps(pool_ids))
    again = select_subset(
        run,
        pool=pool_file,
        trajectories=tmp_path / "m.npy",
        trajectory_ids=tmp_path / "ids2.json",
        budget=24,
        n_clusters=6,
        name="again",
    )
    assert again.ids == result.ids


def test_table_columns_are_ordered_by_step(tmp_path):
    table = [
        {"id": "a", "loss_200": 1.0, "loss_100": 2.0, "loss_50": 3.0},
        {"id": "b", "loss_200": 0.5, "loss_100": 0.7, "loss_50": 0.9},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in table))
    traj = import_trajectories(path)
    assert traj.steps == [50, 100, 200]
    np.testing.assert_array_equal(traj.losses, np.float32([[3.0, 2.0, 1.0], [0.9, 0.7, 0.5]]))
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "t.parquet")
    assert import_trajectories(tmp_path / "t.parquet").steps == [50, 100, 200]


def test_ids_not_in_pool_and_duplicates_are_refused(tmp_path, pool_ids):
    np.save(tmp_path / "l.npy", fake_losses(3))
    (tmp_path / "ids.txt").write_text(f"{pool_ids[0]}\nnot-an-id\n{pool_ids[1]}\n")
    traj = import_trajectories(tmp_path / "l.npy", ids=tmp_path / "ids.txt")
    with pytest.raises(S2LError, match="1 ids are not in the pool.*'not-an-id'"):
        align_to_pool(traj, pool_ids)
    (tmp_path / "dup.txt").write_text(f"{pool_ids[0]}\n{pool_ids[1]}\n{pool_ids[0]}\n")
    with pytest.raises(S2LError, match="appears twice"):
        import_trajectories(tmp_path / "l.npy", ids=tmp_path / "dup.txt")
    with pytest.raises(S2LError, match="needs its ids"):
        import_trajectories(tmp_path / "l.npy")
    with pytest.raises(S2LError, match="3 rows of losses but 2 ids"):
        import_trajectories(tmp_path / "l.npy", ids=pool_ids[:2])


def test_non_finite_rows_and_missing_examples_are_left_out_and_reported(pool_ids):
    n = len(pool_ids)
    losses = fake_losses(n - 10)
    losses[3, 2] = np.nan
    losses[7, 0] = np.inf
    from smalltolarge.trajectories import Trajectories

    traj = Trajectories(losses=losses, ids=pool_ids[10:], steps=[1, 2, 3, 4, 5])
    rows, positions, report = align_to_pool(traj, pool_ids)
    assert report["non_finite"] == 2
    assert report["non_finite_ids"] == [pool_ids[13], pool_ids[17]]
    assert report["without_trajectory"] == 10
    assert report["without_trajectory_ids"] == pool_ids[:5]
    assert len(rows) == n - 12 and np.all(np.diff(positions) > 0)
    assert np.isfinite(traj.losses[rows]).all()
