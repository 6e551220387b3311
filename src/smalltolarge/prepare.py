"""Stages 1 and 2: load the pool, get the proxy's tokenizer, tokenise with the response mask.

Writes ``pool/`` + ``pool.json`` (the normalised pool), ``tokenizer/`` (the proxy's tokenizer;
for a preset, a byte-level BPE trained on this pool) and ``tokenised/`` + ``tokenised.json``.
With ``dedup``, duplicate examples are dropped from the pool first (one kept per group, see
:mod:`smalltolarge.dedup`) and the groups written to ``duplicates.json``. Each part is reused
when its fingerprint matches what is on disk.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from smalltolarge.data import Pool, load_pool, load_saved_pool, save_pool
from smalltolarge.dedup import DedupSettings, dedup_pool, duplicates_report
from smalltolarge.errors import S2LError
from smalltolarge.formatting import (
    TokenisedPool,
    count_multi_turn,
    load_tokenised,
    save_tokenised,
    tokenise_pool,
    tokenised_fingerprint,
)
from smalltolarge.models import (
    PRESETS,
    check_model_name,
    is_preset,
    load_tokenizer,
    tokenizer_fingerprint,
    train_pool_tokenizer,
)
from smalltolarge.presets import apply_preset
from smalltolarge.progress import messages, quiet_libraries_unless_progress
from smalltolarge.runs import RunDir, atomic_dir, atomic_write_json, fingerprint, read_json
from smalltolarge.settings import PrepareSettings


@dataclass
class Prepared:
    """What :func:`prepare` produced."""

    pool: Pool
    tokenised: TokenisedPool
    reused: bool


@quiet_libraries_unless_progress
def prepare(
    pool_path: str | os.PathLike,
    run_dir: str | Path | RunDir,
    *,
    proxy: str = PrepareSettings.proxy,
    template: str = PrepareSettings.template,
    max_length: int = PrepareSettings.max_length,
    prompt_column: str | None = PrepareSettings.prompt_column,
    input_column: str | None = PrepareSettings.input_column,
    response_column: str | None = PrepareSettings.response_column,
    source_column: str | None = PrepareSettings.source_column,
    id_column: str | None = PrepareSettings.id_column,
    split: str = PrepareSettings.split,
    on_invalid: str = PrepareSettings.on_invalid,
    preset: str | None = None,
    dedup: str | None = PrepareSettings.dedup,
    dedup_threshold: float = PrepareSettings.dedup_threshold,
    assistant_turns: str = PrepareSettings.assistant_turns,
    progress: bool = True,
) -> Prepared:
    """Load ``pool_path`` into ``run_dir`` and tokenise it for ``proxy``.

    ``proxy`` is a preset name (see :data:`smalltolarge.models.PRESETS`) or any HF causal LM
    name or path whose tokenizer is used. Input problems raise :class:`S2LError` before any
    tokenisation starts. Returns the pool, the tokenised pool, and whether everything was
    reused from disk. ``preset="reference"`` tokenises with the reference code's template
    (see :mod:`smalltolarge.presets`).

    ``dedup`` (``"prompt"``, ``"response"`` or ``"both"``; None: off) drops exact and near
    duplicates compared on that text, keeping the first of each group; ``dedup_threshold`` is
    the character-shingle Jaccard similarity from which two examples are near duplicates. The
    dropped examples join ``pool.json``'s ``skipped`` as ``"duplicate of <id> (<kind>)"`` and the
    groups are written to ``duplicates.json``; the settings enter the pool's fingerprint.

    ``assistant_turns`` (``"all"`` or ``"last"``): in a multi-turn chat, whether the loss covers
    every assistant turn, as trainers learn by default, or the last one only (see
    :mod:`smalltolarge.formatting`); a pool without multi-turn chats tokenises the same either
    way. What was chosen is printed, and recorded in ``tokenised.json`` for the export to say.
    """
    run_dir = RunDir.of(run_dir)
    template = apply_preset(preset, template=(template, PrepareSettings.template))["template"]
    PrepareSettings(  # every setting checked once, here, before the pool is read
        **{name: value for name, value in locals().items() if name in PrepareSettings.names()}
    )
    dedup_settings = None if dedup is None else DedupSettings(on=dedup, threshold=dedup_threshold)
    if template == "chat" and is_preset(proxy):
        raise S2LError(f"the '{proxy}' preset has no chat template; use --template alpaca")
    check_model_name(proxy)
    with warnings.catch_warnings():
        if progress:  # the "pool: skipped ..." line below says it; the warning would repeat it
            warnings.filterwarnings("ignore", r".*skipped \d+ invalid", UserWarning)
        pool = load_pool(
            pool_path,
            prompt_column=prompt_column,
            input_column=input_column,
            response_column=response_column,
            source_column=source_column,
            id_column=id_column,
            split=split,
            on_invalid=on_invalid,
        )
    say = messages(progress)
    say(
        f"pool: {len(pool)} examples from {pool_path} (schema {pool.schema['kind']}, "
        f"fingerprint {pool.fingerprint})"
    )
    if pool.skipped:
        say(
            f"pool: skipped {len(pool.skipped)} invalid examples "
            f"(first: {pool.skipped[0]['where']}: {pool.skipped[0]['problem']})"
        )

    saved = read_json(run_dir.pool_meta) if run_dir.pool_meta.is_file() else {}
    pool_fp = pool.fingerprint
    if dedup_settings is not None:  # known before deduplicating: a saved result can be reused
        pool_fp = dedup_settings.pool_fingerprint(pool_fp)
    # Same content from another file (moved, converted) is re-saved: the subset is written
    # from the file the pool was loaded from.
    pool_current = (saved.get("fingerprint"), saved.get("source_path"), saved.get("format")) == (
        pool_fp,
        pool.source_path,
        pool.format,
    )
    if dedup_settings is not None:
        pool, pool_current = _dedup(pool, run_dir, dedup_settings, pool_current, say)
    elif not pool_current:
        run_dir.duplicates.unlink(missing_ok=True)
    if not pool_current:
        save_pool(pool, run_dir)

    tokenizer = _proxy_tokenizer(pool, run_dir, proxy, template)
    n_multi_turn = count_multi_turn(pool)
    tok_fp = tokenised_fingerprint(
        pool.fingerprint,
        tokenizer_fingerprint(tokenizer),
        template,
        max_length,
        assistant_turns == "all" and n_multi_turn > 0,
    )
    reused = pool_current and _meta_fingerprint(run_dir.tokenised_meta) == tok_fp
    if reused:
        tokenised = load_tokenised(run_dir)
        say(f"tokenised: {run_dir.tokenised_dir} is up to date, skipped")
    else:
        tokenised = tokenise_pool(
            pool,
            tokenizer,
            template=template,
            max_length=max_length,
            assistant_turns=assistant_turns,
        )
        save_tokenised(tokenised, run_dir)
    meta = read_json(run_dir.tokenised_meta)
    if meta.get("assistant_turns") != assistant_turns:  # reused from a "last" run: the same
        meta = {**meta, "assistant_turns": assistant_turns, "n_multi_turn": n_multi_turn}
        atomic_write_json(run_dir.tokenised_meta, meta)
        tokenised.assistant_turns = assistant_turns
    if meta.get("proxy") != proxy:
        atomic_write_json(run_dir.tokenised_meta, {**meta, "proxy": proxy})
    lengths = tokenised.lengths
    say(
        f"tokenised: {len(tokenised)} scorable examples, {int(lengths.sum())} tokens "
        f"(mean {lengths.mean():.0f}, max {lengths.max()}), {tokenised.n_truncated} truncated "
        f"at max_length={max_length}"
    )
    if tokenised.excluded:
        ids = ", ".join(e["id"] for e in tokenised.excluded[:5])
        more = " ..." if len(tokenised.excluded) > 5 else ""
        say(
            f"tokenised: EXCLUDED {len(tokenised.excluded)} examples whose prompt leaves no "
            f"room for a response (ids {ids}{more}); listed in {run_dir.tokenised_meta}"
        )
    if n_multi_turn:
        which = (
            "every assistant turn (as trainers learn by default)"
            if assistant_turns == "all"
            else "the last assistant turn only (the others are prompt)"
        )
        say(f"tokenised: {n_multi_turn} multi-turn chats; the loss covers {which}")
    return Prepared(pool=pool, tokenised=tokenised, reused=reused)


def _dedup(
    pool: Pool, run_dir: RunDir, settings: DedupSettings, pool_current: bool, say
) -> tuple[Pool, bool]:
    """The deduplicated pool, and whether the saved one (with its ``duplicates.json``) is it."""
    path = run_dir.duplicates
    expected = settings.pool_fingerprint(pool.fingerprint)
    if pool_current and path.is_file() and read_json(path).get("fingerprint") == expected:
        report, how = read_json(path), "up to date, reused"
        pool = load_saved_pool(run_dir)
    else:
        pool_current = False
        # Written before the pool it describes: a pool.json never vouches for a stale one.
        deduped, groups = dedup_pool(pool, settings)
        report, how = duplicates_report(pool, groups, settings), "written"
        atomic_write_json(path, report)
        pool = deduped
    say(
        f"dedup: dropped {report['n_dropped']} of {report['n_examples']} examples in "
        f"{report['n_groups']} groups ({report['n_dropped_exact']} exact, "
        f"{report['n_dropped_near']} near duplicates; on {settings.on}, threshold "
        f"{settings.threshold}); {path} {how}"
    )
    return pool, pool_current


def _proxy_tokenizer(pool: Pool, run_dir: RunDir, proxy: str, template: str):
    """The proxy's tokenizer, saved in ``tokenizer/``; a preset's is trained on this pool."""
    marker = run_dir.tokenizer_dir / "s2l_tokenizer.json"
    if is_preset(proxy):
        vocab = PRESETS[proxy].vocab_size
        fp = fingerprint(pool.fingerprint, proxy, vocab, template)
    else:
        fp = fingerprint(proxy)
    if _meta_fingerprint(marker) == fp:
        return load_tokenizer(run_dir.tokenizer_dir)
    if is_preset(proxy):
        tokenizer = train_pool_tokenizer(pool, PRESETS[proxy].vocab_size, template=template)
    else:
        tokenizer = load_tokenizer(proxy)
    with atomic_dir(run_dir.tokenizer_dir) as tmp:
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(Path(tmp) / "s2l_tokenizer.json", {"fingerprint": fp, "proxy": proxy})
    return load_tokenizer(run_dir.tokenizer_dir)


def _meta_fingerprint(path: Path) -> str | None:
    return read_json(path).get("fingerprint") if path.is_file() else None
