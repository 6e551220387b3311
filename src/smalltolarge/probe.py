"""Probe the target: the TARGET model's loss on a sample of the pool, before any fine-tuning.

S2L assumes that the small proxy sees the data as the large target does. That premise can be
checked for the price of one forward pass of the target over a few hundred examples: the
target's mean response loss on a sample of the pool (its "probe"), set against the proxy's
final loss on the same examples. ``s2l probe RUN --target MODEL`` writes it into the run:

- ``probe/losses.npy``: float32, one loss per probed example (NaN where the example's prompt
  does not fit the target's ``max_length``), aligned with ``probe/ids.txt``;
- ``probe/probe.json`` (written last: the probe is complete when it exists): the target, the
  settings, the fingerprint of the inputs, and the cost (examples, tokens, seconds).

What reads it:

- every selection of the run reports, in its summary, how well the proxy's final loss agrees
  with the target's probe loss (``proxy_fit``: Spearman and Pearson over the probed examples,
  and Spearman within each source), and warns when it does not (a negative correlation means
  the examples the proxy finds hard are not the ones the target finds hard);
- target-checked methods (``s2l-checked``, :mod:`smalltolarge.selection.checked`) give each
  trajectory cluster a share of the budget that grows with the target's loss there relative
  to the proxy's.

Probed examples are only scored, never trained on: they do not count against the budget. The
sample is drawn per source (the same fraction of every source; seeded), so that every source
and most trajectory clusters hold probed examples.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.runs import (
    RunDir,
    atomic_save_npy,
    atomic_write_json,
    atomic_write_text,
    fingerprint,
    read_json,
)
from smalltolarge.settings import ProbeSettings

PROBE_DIR = "probe"
#: A source or pool needs this many probed examples for a correlation to be reported.
MIN_FOR_CORRELATION = 5


@dataclass
class Probe:
    """A run's probe: the probed example ids, the target's loss of each (NaN: not scorable by
    the target) and ``meta`` (``probe.json``)."""

    ids: list[str]
    losses: np.ndarray
    meta: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("fingerprint", ""))

    def aligned(self, ids: np.ndarray) -> np.ndarray:
        """``(len(ids),)`` float32 losses for ``ids`` in their order, NaN where not probed."""
        where = {i: k for k, i in enumerate(self.ids)}
        out = np.full(len(ids), np.nan, dtype=np.float32)
        for row, example in enumerate(ids):
            k = where.get(str(example))
            if k is not None:
                out[row] = self.losses[k]
        return out


def probe_dir(run_dir: RunDir):
    return run_dir.root / PROBE_DIR


def probe_target(
    run_dir: str | os.PathLike | RunDir,
    target: str,
    *,
    fraction: float = ProbeSettings.fraction,
    max_examples: int = ProbeSettings.max_examples,
    seed: int = ProbeSettings.seed,
    template: str = ProbeSettings.template,
    max_length: int = ProbeSettings.max_length,
    precision: str = ProbeSettings.precision,
    max_tokens: int = ProbeSettings.max_tokens,
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Probe:
    """Score a per-source sample of the run's pool with the untrained ``target`` and save it.

    Args:
        run_dir: a prepared run (its saved pool and tokenised pool are read: only examples the
            proxy could score are probed).
        target: the target model, a HF name, local directory or offline short name.
        fraction: share of every source to probe, in (0, 1].
        max_examples: at most this many examples in all (the fraction is lowered to fit).
        seed: the sample's seed.
        template, max_length: how the target will be fine-tuned (the probe uses the same).
        precision, max_tokens: the forward pass's precision and real tokens per batch.
        device: default: CUDA when available.
        force: probe again even when ``probe/`` holds the same probe.
        progress: print what is probed and what it cost.

    Returns:
        The :class:`Probe`; reused from disk when ``probe.json`` records the same inputs.

    Raises:
        S2LError: a bad setting, a run that is not prepared, or a target that cannot be loaded.
    """
    from smalltolarge.settings import check_name

    check_name("target", target)
    settings = ProbeSettings(
        fraction=fraction,
        max_examples=max_examples,
        seed=seed,
        template=template,
        max_length=max_length,
        precision=precision,
        max_tokens=max_tokens,
    )
    from smalltolarge.data import load_saved_pool
    from smalltolarge.formatting import load_tokenised

    run = RunDir.of(run_dir)
    pool = load_saved_pool(run)
    tokenised = load_tokenised(run)
    pool_index = np.asarray(tokenised.dataset["pool_index"], dtype=np.int64)
    sources = np.asarray(pool.dataset["source"], dtype=object)[pool_index]
    rows = sample_rows(sources, fraction, max_examples, seed)
    chosen = np.sort(pool_index[rows])
    fp = fingerprint(
        pool.fingerprint,
        tokenised.fingerprint,
        _target_identity(target),
        settings.as_dict(),
    )
    out = probe_dir(run)
    if not force and (out / "probe.json").is_file():
        existing = load_probe(run)
        if existing is not None and existing.fingerprint == fp:
            if progress:
                print(f"probe: reused ({len(existing.ids)} examples, {out})")
            return existing

    started = time.perf_counter()
    import torch

    from smalltolarge.formatting import TokenArrays, tokenise_pool
    from smalltolarge.losses import score_model
    from smalltolarge.models import (
        autocast_dtype,
        check_tokenizer,
        default_device,
        load_causal_lm,
        load_tokenizer,
        pad_token_id,
        resolve_precision,
    )

    sub = dataclasses.replace(
        pool,
        dataset=pool.dataset.select(chosen.tolist()),
        fingerprint=fingerprint(pool.fingerprint, "probe", fp),
    )
    ids = [str(i) for i in sub.dataset["id"]]
    tokenizer = load_tokenizer(target)  # refused before anything is announced
    check_tokenizer(tokenizer, target)
    if progress:
        print(
            f"probe: scoring {len(ids)} of {len(pool_index)} examples ({fraction:g} of each "
            f"source{', capped' if len(ids) < round(fraction * len(pool_index)) else ''}) with "
            f"the untrained target {target}"
        )
    tok = tokenise_pool(
        sub,
        tokenizer,
        template=template,
        max_length=max_length,
        assistant_turns=tokenised.assistant_turns,
    )
    device = device or default_device()
    resolved = resolve_precision(precision, device)
    model = load_causal_lm(target, dtype=autocast_dtype(resolved) or torch.float32).to(device)
    arrays = TokenArrays.from_dataset(tok.dataset)
    scored = score_model(
        model,
        arrays,
        precision=resolved,
        device=device,
        pad_id=pad_token_id(tokenizer),
        max_tokens=max_tokens,
    )
    del model
    losses = np.full(len(ids), np.nan, dtype=np.float32)
    losses[np.asarray(tok.dataset["pool_index"], dtype=np.int64)] = scored
    seconds = time.perf_counter() - started
    meta = {
        "fingerprint": fp,
        "target": target,
        "settings": settings.as_dict(),
        "precision": resolved,
        "device": str(device),
        "n_probed": len(ids),
        "n_pool_scorable": int(len(pool_index)),
        "n_not_scorable": len(tok.excluded),
        "tokens": int(arrays.lengths.sum()),
        "seconds": round(seconds, 2),
        "counts_against_budget": False,
        "note": "probed examples are scored by the untrained target, never trained on",
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").unlink(missing_ok=True)  # incomplete until it is written again
    atomic_save_npy(out / "losses.npy", losses)
    atomic_write_text(out / "ids.txt", "".join(f"{i}\n" for i in ids))
    atomic_write_json(out / "probe.json", meta)
    if progress:
        print(
            f"probe: {len(ids)} examples, {meta['tokens']:,} tokens in {seconds:.1f} s "
            f"(mean target loss {np.nanmean(losses):.3f} nats/token); not counted against the "
            f"budget; {out}"
        )
    return Probe(ids, losses, meta)


def load_probe(run_dir: str | os.PathLike | RunDir) -> Probe | None:
    """The run's complete probe, or None when it has none."""
    out = probe_dir(RunDir.of(run_dir))
    if not (out / "probe.json").is_file():
        return None
    meta = read_json(out / "probe.json")
    ids = (out / "ids.txt").read_text(encoding="utf-8").splitlines()
    losses = np.load(out / "losses.npy")
    if len(ids) != len(losses):
        raise S2LError(f"{out}: {len(ids)} ids but {len(losses)} losses; run `s2l probe` again")
    return Probe(ids, losses.astype(np.float32), meta)


def sample_rows(sources: np.ndarray, fraction: float, max_examples: int, seed: int) -> np.ndarray:
    """Sorted rows of a per-source sample: ``fraction`` of every source (at least one row of a
    non-empty source), the fraction lowered so that at most ``max_examples`` are drawn."""
    n = len(sources)
    if n == 0:
        raise S2LError("the run has no scorable example to probe")
    fraction = min(float(fraction), max_examples / n)
    names, of_row = np.unique(np.asarray([str(s) for s in sources]), return_inverse=True)
    streams = np.random.SeedSequence(seed).spawn(len(names))
    picked = []
    for rank in range(len(names)):
        rows = np.flatnonzero(of_row == rank)
        k = min(len(rows), max(1, round(fraction * len(rows))))
        rng = np.random.default_rng(streams[rank])
        picked.append(rows[rng.choice(len(rows), k, replace=False)])
    return np.sort(np.concatenate(picked))


def proxy_fit(
    final_losses: np.ndarray, probe: np.ndarray, sources: np.ndarray | None = None
) -> dict[str, Any] | None:
    """How well the proxy's final loss ranks examples as the target's probe loss does.

    Args:
        final_losses: ``(n,)`` the proxy's loss at its last checkpoint.
        probe: ``(n,)`` the target's probe loss, NaN where not probed.
        sources: ``(n,)`` source names, or None.

    Returns:
        ``n_probed``, ``spearman`` and ``pearson`` over the probed examples, ``per_source``
        (Spearman within each source with at least :data:`MIN_FOR_CORRELATION` probed
        examples), ``within_source_mean`` (their mean) and ``sources_negative`` (how many are
        below 0); None when fewer than :data:`MIN_FOR_CORRELATION` examples are probed.
    """
    from scipy.stats import pearsonr, spearmanr

    final_losses = np.asarray(final_losses, dtype=np.float64)
    probe = np.asarray(probe, dtype=np.float64)
    probed = np.isfinite(probe)
    if probed.sum() < MIN_FOR_CORRELATION:
        return None

    def corr(fn, a: np.ndarray, b: np.ndarray) -> float | None:
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            return None
        return round(float(fn(a, b)[0]), 4)

    x, y = final_losses[probed], probe[probed]
    out: dict[str, Any] = {
        "n_probed": int(probed.sum()),
        "spearman": corr(spearmanr, x, y),
        "pearson": corr(pearsonr, x, y),
    }
    if sources is not None:
        names = np.asarray([str(s) for s in sources])
        per_source = {}
        for name in sorted(set(names[probed])):
            rows = probed & (names == name)
            if rows.sum() >= MIN_FOR_CORRELATION:
                value = corr(spearmanr, final_losses[rows], probe[rows])
                if value is not None:
                    per_source[name] = value
        out["per_source"] = per_source
        if per_source:
            values = list(per_source.values())
            out["within_source_mean"] = round(float(np.mean(values)), 4)
            out["sources_negative"] = int(sum(v < 0 for v in values))
    return out


def proxy_fit_warnings(fit: dict[str, Any] | None) -> list[str]:
    """Plain-words warnings on a proxy that does not see the data as the target does."""
    if not fit:
        return []
    notes = []
    if fit.get("spearman") is not None and fit["spearman"] <= 0:
        notes.append(
            f"the proxy's final loss does not rank examples as the target's probe does "
            f"(Spearman {fit['spearman']:+.2f} over {fit['n_probed']} probed examples): S2L's "
            "premise fails for this proxy; a pretrained proxy of the target's family "
            "(`s2l truncate-model TARGET --layers 4`) usually fits better"
        )
    negative, per_source = fit.get("sources_negative", 0), fit.get("per_source", {})
    if per_source and negative > len(per_source) / 2:
        notes.append(
            f"within {negative} of {len(per_source)} sources the proxy's final loss and the "
            "target's probe loss are negatively correlated: per source, the proxy finds hard "
            "what the target finds easy"
        )
    return notes


def _target_identity(target: str) -> str:
    """What changes when the target's weights change: for a local directory, its config and
    weight files' sizes and modification times; else the name itself."""
    path = os.path.expanduser(target)
    if not os.path.isdir(path):
        return target
    parts = [os.path.abspath(path)]
    for name in sorted(os.listdir(path)):
        if name.endswith((".json", ".safetensors", ".bin")):
            stat = os.stat(os.path.join(path, name))
            parts.append(f"{name}:{stat.st_size}:{int(stat.st_mtime)}")
    return "|".join(parts)
