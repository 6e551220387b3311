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
fingerprint) or re-aligned (by id), never silently misaligned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smalltolarge.errors import S2LError
from smalltolarge.runs import atomic_save_npy, atomic_write_json, read_json


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
    ) -> None:
        """Refuse trajectories computed on another pool (or another tokenisation of it)."""
        theirs = self.meta.get("pool_fingerprint")
        if theirs != pool_fingerprint:
            raise S2LError(
                f"{where} were computed on a different pool (fingerprint {theirs}, this pool "
                f"has {pool_fingerprint}); re-run `s2l score` on this pool"
            )
        theirs = self.meta.get("tokenised_fingerprint")
        if tokenised_fingerprint is not None and theirs != tokenised_fingerprint:
            raise S2LError(
                f"{where} were computed on a different tokenisation of this pool (template, "
                f"max_length or tokenizer changed); re-run `s2l score`"
            )
