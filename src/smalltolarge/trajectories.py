"""The trajectory artifact: every example's response loss at every proxy checkpoint.

On disk (``RUN/trajectories/``):

- ``losses.npy``: float32, shape (n_examples, n_checkpoints), columns in training-step order;
- ``ids.parquet``: one column ``id`` (string), row i names the example of ``losses[i]``;
- ``embeddings.npy`` (optional): float32, shape (n_examples, hidden), the proxy's last hidden
  state mean-pooled over each example's tokens at the final checkpoint (embedding baselines);
- ``meta.json``: ``steps`` (the checkpoint steps, increasing), ``fingerprint`` (of everything
  the losses depend on), ``pool_fingerprint``, ``tokenised_fingerprint``, and how they were
  computed.

The ids travel with the matrix, so a pool that was re-ordered or edited is detected (by its
fingerprint) or re-aligned (by id), never silently misaligned: :func:`load_run_trajectories`
loads a run's trajectories only when they match its tokenised pool and proxy, and
:func:`import_trajectories` reads trajectories computed elsewhere, matched to a pool by id
(:func:`align_to_pool`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smalltolarge.errors import S2LError
from smalltolarge.runs import (
    RunDir,
    atomic_save_npy,
    atomic_write_json,
    read_json,
    read_proxy_meta,
)


@dataclass
class Trajectories:
    """Loss trajectories of ``n`` examples at ``T`` checkpoints.

    losses: float32 array, shape (n, T); ids: (n,) example ids; steps: T increasing
    checkpoint steps; meta: fingerprints and settings.
    """

    losses: np.ndarray
    ids: np.ndarray
    steps: list[int]
    meta: dict[str, Any] = field(default_factory=dict)
    embeddings: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=object)
        if self.losses.ndim != 2:
            raise S2LError(f"trajectories must be a 2-D matrix, got shape {self.losses.shape}")
        n, t = self.losses.shape
        if len(self.ids) != n:
            raise S2LError(f"trajectories have {n} rows but {len(self.ids)} ids")
        if len(self.steps) != t:
            raise S2LError(f"trajectories have {t} columns but {len(self.steps)} steps")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise S2LError(f"checkpoint steps must increase, got {self.steps}")
        if self.embeddings is not None and len(self.embeddings) != n:
            raise S2LError(f"trajectories have {n} rows but {len(self.embeddings)} embeddings")

    @property
    def fingerprint(self) -> str | None:
        return self.meta.get("fingerprint")

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``losses.npy``, ``ids.parquet`` and ``meta.json`` atomically, meta last (it
        marks the artifact complete)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "meta.json").unlink(missing_ok=True)
        atomic_save_npy(directory / "losses.npy", np.ascontiguousarray(self.losses, np.float32))
        (directory / "embeddings.npy").unlink(missing_ok=True)
        if self.embeddings is not None:
            atomic_save_npy(directory / "embeddings.npy", np.asarray(self.embeddings, np.float32))
        tmp = directory / ".ids.parquet.tmp"
        pq.write_table(pa.table({"id": pa.array([str(i) for i in self.ids])}), tmp)
        os.replace(tmp, directory / "ids.parquet")
        atomic_write_json(directory / "meta.json", {**self.meta, "steps": list(self.steps)})

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> Trajectories:
        """Load from ``directory``; the loss matrix is memory-mapped unless ``mmap=False``."""
        directory = Path(directory)
        if not (directory / "meta.json").is_file():
            raise S2LError(f"{directory}: no trajectories (run `s2l score` first)")
        meta = read_json(directory / "meta.json")
        losses = np.load(directory / "losses.npy", mmap_mode="r" if mmap else None)
        ids = pq.read_table(directory / "ids.parquet").column("id").to_numpy(zero_copy_only=False)
        steps = meta.pop("steps")
        emb_path = directory / "embeddings.npy"
        embeddings = (
            np.load(emb_path, mmap_mode="r" if mmap else None) if emb_path.is_file() else None
        )
        return cls(losses=losses, ids=ids, steps=steps, meta=meta, embeddings=embeddings)

    def check_matches(
        self,
        pool_fingerprint: str,
        tokenised_fingerprint: str | None = None,
        where: str = "trajectories",
        next_step: str | None = None,
    ) -> None:
        """Refuse trajectories computed on another pool (or another tokenisation of it); the
        message ends with ``next_step`` (default: re-run `s2l score`)."""
        theirs = self.meta.get("pool_fingerprint")
        if theirs != pool_fingerprint:
            raise S2LError(
                f"{where} were computed on a different pool (fingerprint {theirs}, this pool "
                f"has {pool_fingerprint}); " + (next_step or "re-run `s2l score` on this pool")
            )
        theirs = self.meta.get("tokenised_fingerprint")
        if tokenised_fingerprint is not None and theirs != tokenised_fingerprint:
            raise S2LError(
                f"{where} were computed on a different tokenisation of this pool (template, "
                f"max_length or tokenizer changed); " + (next_step or "re-run `s2l score`")
            )


def load_run_trajectories(run_dir: str | os.PathLike | RunDir) -> Trajectories:
    """Load ``RUN/trajectories`` and check it against the run's tokenised pool and proxy.

    A missing or stale artifact is refused with the stage that has to run next: ``s2l
    train-proxy`` when the proxy is missing or was trained on another tokenisation (a new
    ``s2l prepare`` since), ``s2l score`` otherwise."""
    run_dir = RunDir.of(run_dir)
    meta = _tokenised_meta(run_dir)
    proxy_meta = read_proxy_meta(run_dir) if run_dir.proxy_meta.is_file() else None
    recorded = proxy_meta and proxy_meta.get("recorded_trajectories")
    scored = run_dir.trajectories_meta.is_file()
    if proxy_meta is None and not scored:
        raise S2LError(f"{run_dir.root}: the proxy is not trained (run `s2l train-proxy` first)")
    stale_proxy = proxy_meta is not None and proxy_meta.get("tokenised_fingerprint") not in (
        None,
        meta["fingerprint"],
    )
    if stale_proxy and not scored:
        check_proxy_matches(run_dir, proxy_meta, meta["fingerprint"])
    traj = Trajectories.load(run_dir.trajectories_dir)
    traj.check_matches(
        meta["pool_fingerprint"],
        meta["fingerprint"],
        where=str(run_dir.trajectories_dir),
        next_step="run `s2l train-proxy` first (the proxy was trained on the old one), then "
        "`s2l score`"
        if stale_proxy
        else None,
    )
    scored_by = traj.meta.get("proxy_fingerprint")
    if proxy_meta is not None and scored_by not in (None, proxy_meta["fingerprint"]):
        raise S2LError(
            f"{run_dir.trajectories_dir} were scored with an earlier proxy (the proxy was "
            "re-trained since); "
            + ("re-run `s2l train-proxy --force`" if recorded else "run `s2l score`")
        )
    return traj


def _tokenised_meta(run_dir: RunDir) -> dict[str, Any]:
    """``tokenised.json`` of a prepared run (refused, naming `s2l prepare`, when missing)."""
    if not run_dir.tokenised_meta.is_file():
        raise S2LError(f"{run_dir.root}: no tokenised pool (run `s2l prepare POOL` first)")
    return read_json(run_dir.tokenised_meta)


def check_proxy_matches(run_dir: RunDir, proxy_meta: dict[str, Any], tokenised_fp: str) -> None:
    """Refuse a proxy trained on another tokenisation: its vocabulary and the token ids of
    the pool no longer agree, so scoring with it would be wrong (or fail half-way)."""
    theirs = proxy_meta.get("tokenised_fingerprint")
    if theirs is not None and theirs != tokenised_fp and run_dir.extensions_meta.is_file():
        raise S2LError(
            f"{run_dir.root}: the pool was grown by `s2l extend` after the proxy trained, and "
            f"its new examples are already scored ({run_dir.trajectories_dir}); to train the "
            "proxy on the grown pool, run `s2l train-proxy --force`, then `s2l score`"
        )
    if theirs is not None and theirs != tokenised_fp:
        raise S2LError(
            f"{run_dir.proxy_dir} was trained on a different pool or tokenisation (fingerprint "
            f"{theirs}; {run_dir.tokenised_meta} has {tokenised_fp}: `s2l prepare` ran since); "
            "run `s2l train-proxy` first, then `s2l score`"
        )


def import_trajectories(
    path: str | os.PathLike,
    *,
    ids: str | os.PathLike | Sequence[str] | None = None,
    id_column: str = "id",
    loss_columns: Sequence[str] | None = None,
) -> Trajectories:
    """Read trajectories produced elsewhere.

    Either an N x T ``.npy`` matrix with ``ids`` (a list, or a file: ``.txt`` one id per line,
    ``.json`` list, ``.parquet``/``.csv``/``.jsonl`` with ``id_column``), or a table
    (``.jsonl``, ``.json``, ``.parquet``, ``.csv``) with ``id_column`` and one loss column per
    checkpoint (cartography-style): ``loss_columns`` in checkpoint order, or by default every
    other numeric column. Columns named with a trailing step number (``loss_500``,
    ``step-1000``) are ordered by that step; otherwise steps are 1..T in the given order.
    """
    path = Path(path)
    if not path.exists():
        raise S2LError(f"{path}: no such file")
    if path.suffix == ".npy":
        if ids is None:
            raise S2LError(f"{path}: a .npy matrix needs its ids (--trajectory-ids FILE)")
        losses = np.load(path)
        if losses.ndim != 2:
            raise S2LError(f"{path}: expected an N x T matrix, got shape {losses.shape}")
        id_list = _read_ids(ids, id_column)
        names = [f"checkpoint {i + 1}" for i in range(losses.shape[1])]
    else:
        table = _read_table(path)
        if id_column not in table.column_names:
            raise S2LError(f"{path}: no id column '{id_column}' (columns: {table.column_names})")
        if loss_columns is None:
            numeric = (pa.types.is_floating, pa.types.is_integer)
            loss_columns = [
                c
                for c in table.column_names
                if c != id_column
                and (
                    any(is_(table.schema.field(c).type) for is_ in numeric)
                    or _mostly_numbers(table.column(c).to_pylist())
                )
            ]
        missing = [c for c in loss_columns if c not in table.column_names]
        if missing or not loss_columns:
            raise S2LError(
                f"{path}: loss columns {missing or '(none found)'} not in {table.column_names}"
            )
        names = list(loss_columns)
        losses = np.column_stack([_loss_column(table, c, path) for c in names])
        id_list = [str(i) for i in table.column(id_column).to_pylist()]
    if len(id_list) != losses.shape[0]:
        raise S2LError(f"{path}: {losses.shape[0]} rows of losses but {len(id_list)} ids")
    steps, order = _steps_from_names(names)
    seen: dict[str, int] = {}
    for row, i in enumerate(id_list):
        if i in seen:
            raise S2LError(f"{path}: id {i!r} appears twice (rows {seen[i] + 1} and {row + 1})")
        seen[i] = row
    return Trajectories(
        losses=np.asarray(losses[:, order], dtype=np.float32),
        ids=np.asarray(id_list, dtype=object),
        steps=steps,
        meta={
            "fingerprint": _file_fingerprint(path, id_list),
            "imported_from": str(path),
            "columns": [names[i] for i in order],
        },
    )


def _mostly_numbers(values: list[Any]) -> bool:
    """A text column whose cells are mostly numbers is a loss column with a few bad cells
    (a CSV reader falls back to text for the whole column): it must be refused, not dropped."""
    given = [v for v in values if v not in (None, "")]
    return bool(given) and sum(_is_number(v) for v in given) > len(given) / 2


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _loss_column(table: pa.Table, column: str, path: Path) -> np.ndarray:
    """One loss column as float64; a cell that is not a number is refused by row and column."""
    kind = table.schema.field(column).type
    if pa.types.is_floating(kind) or pa.types.is_integer(kind):
        return table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    values = table.column(column).to_pylist()
    for row, value in enumerate(values):
        if value is not None and not _is_number(value):
            raise S2LError(
                f"{path}: row {row + 1}, column '{column}': {value!r} is not a number "
                "(loss columns must be numeric; fix or remove that row)"
            )
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def align_to_pool(
    traj: Trajectories, pool_ids: Sequence[str], where: str = "trajectories"
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Match imported trajectories to a pool by id.

    Returns ``(rows, pool_positions, report)``: ``traj.losses[rows]`` belong to the pool
    examples at ``pool_positions`` (in pool order). Ids that are not in the pool are refused;
    pool examples without a trajectory, and rows with a non-finite loss, are left out and
    counted in ``report`` (with their first ids).
    """
    position = {str(i): p for p, i in enumerate(pool_ids)}
    unknown = [str(i) for i in traj.ids if str(i) not in position]
    if unknown:
        raise S2LError(
            f"{where}: {len(unknown)} ids are not in the pool (first: "
            f"{', '.join(map(repr, unknown[:3]))}); were they computed on this pool?"
        )
    pos = np.fromiter((position[str(i)] for i in traj.ids), dtype=np.int64, count=len(traj.ids))
    finite = np.isfinite(np.asarray(traj.losses)).all(axis=1)
    order = np.argsort(pos[finite], kind="stable")
    rows = np.flatnonzero(finite)[order]
    covered = np.zeros(len(position), dtype=bool)
    covered[pos] = True
    report = {
        "non_finite": int((~finite).sum()),
        "non_finite_ids": [str(i) for i in traj.ids[~finite][:5]],
        "without_trajectory": int((~covered).sum()),
        "without_trajectory_ids": [str(pool_ids[p]) for p in np.flatnonzero(~covered)[:5]],
    }
    return rows, pos[rows], report


def _read_ids(ids: str | os.PathLike | Sequence[str], id_column: str) -> list[str]:
    if not isinstance(ids, (str, os.PathLike)):
        return [str(i) for i in ids]
    path = Path(ids)
    if not path.is_file():
        raise S2LError(f"{path}: no such ids file")
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".json":
        return [str(i) for i in json.loads(path.read_text(encoding="utf-8"))]
    table = _read_table(path)
    if id_column not in table.column_names:
        raise S2LError(f"{path}: no id column '{id_column}' (columns: {table.column_names})")
    return [str(i) for i in table.column(id_column).to_pylist()]


def _read_table(path: Path) -> pa.Table:
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path)
        if path.suffix == ".csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(path)
        if path.suffix in (".jsonl", ".json"):
            text = path.read_text(encoding="utf-8").strip()
            if text.startswith("["):
                return pa.Table.from_pylist(json.loads(text))
            records = []
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise S2LError(f"{path} line {n}: not valid JSON ({e.msg})") from None
            return pa.Table.from_pylist(records)
    except (pa.ArrowInvalid, OSError) as e:
        raise S2LError(f"{path}: cannot read ({str(e).splitlines()[0]})") from None
    raise S2LError(f"{path}: trajectories must be .npy, .jsonl, .json, .parquet or .csv")


def _steps_from_names(names: Sequence[str]) -> tuple[list[int], list[int]]:
    numbers = [re.search(r"(\d+)\s*$", n) for n in names]
    if all(numbers):
        steps = [int(m.group(1)) for m in numbers]  # type: ignore[union-attr]
        if len(set(steps)) == len(steps):
            order = sorted(range(len(steps)), key=steps.__getitem__)
            return [steps[i] for i in order], order
    return list(range(1, len(names) + 1)), list(range(len(names)))


def _file_fingerprint(path: Path, ids: Sequence[str]) -> str:
    digest = hashlib.sha256(path.read_bytes() if path.stat().st_size < (1 << 30) else b"")
    digest.update(str(path.stat().st_size).encode())
    digest.update("\n".join(ids).encode())
    return digest.hexdigest()[:16]
