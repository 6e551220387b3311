"""Run directories, atomic writes and fingerprints.

A run directory holds one artifact per stage (see the README for the layout). Every file is
written to a temporary name in the same directory and renamed into place, so an interrupted
write never leaves a half-written artifact behind. Each stage records the fingerprint of its
inputs and settings in a small JSON file; a stage whose recorded fingerprint matches is
skipped, one whose fingerprint differs is redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from smalltolarge.errors import S2LError


def fingerprint(*parts: Any) -> str:
    """A short, deterministic hex digest of JSON-serialisable ``parts``."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """A file handle (``mode`` "wb" or "w") whose content replaces ``path`` only when the
    block succeeds: written to a temporary name in the same directory, synced, renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the artifact gets open()'s mode
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file + rename)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` at ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        np.save(f, array)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to ``path`` when the block succeeds.

    An existing ``path`` is replaced only after the new one is complete; if the block raises,
    the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the artifact gets mkdir()'s mode
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def stage_is_current(meta_path: str | os.PathLike, fp: str) -> bool:
    """True when the stage metadata at ``meta_path`` exists and records fingerprint ``fp``."""
    meta_path = Path(meta_path)
    if not meta_path.is_file():
        return False
    try:
        return read_json(meta_path).get("fingerprint") == fp
    except (OSError, json.JSONDecodeError):
        return False


def output_dir(path: str | os.PathLike, option: str = "-o") -> Path:
    """``path`` as a Path, refused when it exists and is not a directory: every command writes
    its outputs into a directory, and ``mkdir`` on a file fails with a traceback, not a message.
    ``option`` is how the user gave the path (``-o``, ``--run-dir``)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise S2LError(f"{option} {out}: is a file, not a directory; name a directory")
    return out


class RunDir:
    """Paths of one run directory. Creating the object creates nothing on disk."""

    def __init__(self, root: str | os.PathLike):
        self.root = output_dir(root, "--run-dir")

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @classmethod
    def of(cls, run_dir: str | os.PathLike | RunDir) -> RunDir:
        """``run_dir`` itself if it is a :class:`RunDir`, else the run directory at that path."""
        return run_dir if isinstance(run_dir, RunDir) else cls(run_dir)

    @classmethod
    def of_selection(cls, selection_dir: str | os.PathLike) -> RunDir:
        """The run directory that a selection directory (``RUN/selections/NAME``) belongs to."""
        return cls(Path(selection_dir).parent.parent)

    # stage 1: the normalised pool
    @property
    def pool_dir(self) -> Path:
        return self.root / "pool"

    @property
    def pool_meta(self) -> Path:
        return self.root / "pool.json"

    @property
    def extensions_meta(self) -> Path:
        """What ``s2l extend`` added to the pool, extension by extension."""
        return self.root / "extensions.json"

    @property
    def extensions_dir(self) -> Path:
        """Each extension's ids and the grown pool's record file."""
        return self.root / "extensions"

    @property
    def duplicates(self) -> Path:
        """The duplicate groups dropped from the pool (``prepare(dedup=...)``); beside
        ``pool/``, which is replaced as a whole when the pool is saved."""
        return self.root / "duplicates.json"

    # stage 2: tokenizer + tokenised pool
    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenised_dir(self) -> Path:
        return self.root / "tokenised"

    @property
    def tokenised_meta(self) -> Path:
        return self.root / "tokenised.json"

    # stage 3: proxy checkpoints
    @property
    def proxy_dir(self) -> Path:
        return self.root / "proxy"

    @property
    def proxy_meta(self) -> Path:
        return self.root / "proxy" / "proxy.json"

    @property
    def proxy_resume_dir(self) -> Path:
        """The proxy's resumable trainer state while it trains (removed when it finishes)."""
        return self.root / "proxy" / "resume"

    # stage 4: trajectories
    @property
    def trajectories_dir(self) -> Path:
        return self.root / "trajectories"

    @property
    def trajectories_meta(self) -> Path:
        """Written last: the trajectories are complete when it exists."""
        return self.root / "trajectories" / "meta.json"

    @property
    def trajectories_losses(self) -> Path:
        return self.root / "trajectories" / "losses.npy"

    @property
    def trajectory_parts_dir(self) -> Path:
        """Finished (checkpoint, chunk) scoring units while scoring runs."""
        return self.root / "trajectories" / "parts"

    # stage 5: selections
    @property
    def selections_dir(self) -> Path:
        return self.root / "selections"

    def selection_dir(self, name: str) -> Path:
        return self.selections_dir / name


def list_checkpoints(proxy_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of the saved proxy checkpoints, in training-step order."""
    found = step_dirs(proxy_dir, "step-")
    if not found:
        raise S2LError(f"{proxy_dir}: no proxy checkpoints (run `s2l train-proxy` first)")
    return found


def recorded_checkpoints(run_dir: RunDir, proxy_meta: dict[str, Any]) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of every checkpoint ``proxy.json`` records (``checkpoint_steps``),
    in step order, each checked to be on disk: scoring only the ones left would write
    trajectories with a column fewer, and nothing downstream could tell.

    Raises:
        S2LError: a recorded checkpoint is missing (its step and path are named).
    """
    steps = proxy_meta.get("checkpoint_steps")
    if steps is None:  # a proxy.json from before the steps were recorded: what is on disk
        return list_checkpoints(run_dir.proxy_dir)
    kept = dict(step_dirs(run_dir.proxy_dir, "step-"))
    missing = [int(s) for s in steps if int(s) not in kept]
    if missing:
        named = ", ".join(f"step {s} ({run_dir.proxy_dir / f'step-{s:08d}'})" for s in missing)
        raise S2LError(
            f"{run_dir.proxy_meta} records {len(steps)} checkpoints, but {len(missing)} of them "
            f"are missing: {named}; scoring the others would leave the trajectories a column "
            "short. Restore it, or re-train the proxy (`s2l train-proxy --force`), then "
            "`s2l score`"
        )
    return [(int(s), kept[int(s)]) for s in sorted(steps)]


def step_dirs(parent: str | Path, prefix: str) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of the subdirectories of ``parent`` named ``PREFIX<step>``
    (``step-00000500``, ``checkpoint-500``), in step order; none when ``parent`` is missing."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    found = []
    for child in parent.iterdir():
        match = pattern.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def read_proxy_meta(run_dir: RunDir) -> dict[str, Any]:
    """The ``proxy.json`` of a finished proxy run."""
    if not run_dir.proxy_meta.is_file():
        raise S2LError(f"{run_dir.root}: the proxy is not trained (run `s2l train-proxy` first)")
    return read_json(run_dir.proxy_meta)


def distributed_state():
    """The process group of this run: one process, or those of ``accelerate launch``/torchrun.

    On a machine without CUDA the processes talk over gloo (accelerate's MULTI_CPU); creating
    the state with ``cpu=True`` there matters, since accelerate keeps the first state made.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
