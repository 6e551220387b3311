"""Where each option of a command takes effect, checked before the command does any work.

Some commands work in several modes, and not every option means something in each: ``s2l
select --budget 0.1,0.3`` (nested budgets) has no use for a target set, and a
``--target-weight`` without ``--target-set`` weighs nothing. An option given where it means
nothing used to be dropped without a word. Each such command has a :class:`Table` here: its
modes (what turns each on, in words) and, for every one of its options (typer's parameter
name), the :class:`Use` that says where it applies. The command works out its active modes
from its arguments and calls :func:`check_options` first, so an option the user gave is either
used or refused with a message that names it and says why.

``tests/test_bad_inputs_options.py`` checks that every option of these commands has a row and
that every refusal the table implies happens, so a new option cannot be added without deciding
where it applies: add its row to the command's table (most options apply everywhere:
``use(EVERYWHERE)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import typer

from smalltolarge.errors import S2LError
from smalltolarge.presets import PRESETS
from smalltolarge.settings import DEDUP_ON

#: ``use(EVERYWHERE)``: an option that applies in every mode of its command.
EVERYWHERE = "*"


@dataclass(frozen=True)
class Use:
    """Where one option takes effect.

    ``modes``: the command's modes in which it does; given while another mode is active, it is
    refused. ``needs``: another option (parameter name) without which it means nothing.
    ``excludes``: another option that, given too, would make this one ignored. ``why``: the
    reason, said when it is refused.
    """

    modes: frozenset[str]
    needs: str | None = None
    excludes: str | None = None
    why: str = ""


def use(*modes: str, needs: str | None = None, excludes: str | None = None, why: str = "") -> Use:
    """A :class:`Use`; ``use(EVERYWHERE)`` applies in every mode of the table it goes in."""
    return Use(frozenset(modes), needs=needs, excludes=excludes, why=why)


@dataclass(frozen=True)
class Table:
    """A command's modes (name -> how the user turns it on, for messages) and where each of
    its options applies (parameter name -> :class:`Use`)."""

    command: str
    modes: dict[str, str]
    options: dict[str, Use] = field(default_factory=dict)

    def applies(self, option: str) -> frozenset[str]:
        """The modes in which ``option`` takes effect."""
        modes = self.options[option].modes
        return frozenset(self.modes) if EVERYWHERE in modes else modes


def _table(command: str, modes: dict[str, str], options: dict[str, Use]) -> Table:
    known = set(modes) | {EVERYWHERE}
    for name, u in options.items():  # a typo here would silently widen or narrow a row
        assert u.modes and u.modes <= known, (command, name, u.modes)
        assert u.needs in (None, *options) and u.excludes in (None, *options), (command, name)
    return Table(command, modes, options)


PER_SOURCE = "per-source"
_DEDUP_WHY = f"it is the near-duplicate cut of --dedup {', '.join(DEDUP_ON[:-1])} or {DEDUP_ON[-1]}"

SELECT = _table(
    "select",
    {
        "single": "one budget",
        "nested": "nested budgets (a comma-separated --budget)",
        PER_SOURCE: "per-source selection (--stratify-by, or --preset reference)",
        "imported": "imported trajectories (--trajectories)",
    },
    {
        "run_dir": use(EVERYWHERE),
        "method": use(EVERYWHERE),  # nested budgets: s2l only, checked by value
        "budget": use(EVERYWHERE),
        "clusters": use(EVERYWHERE),
        "stratify_by": use(EVERYWHERE),
        "seed": use(EVERYWHERE),
        "name": use(EVERYWHERE),
        "trajectories": use(
            "single",
            PER_SOURCE,
            "imported",
            why="nested budgets rank the run's own trajectories",
        ),
        "trajectory_ids": use(
            "single", PER_SOURCE, "imported", needs="trajectories", why="it names their rows"
        ),
        "pool": use(
            "single",
            PER_SOURCE,
            "imported",
            needs="trajectories",
            why="the run's own trajectories go with the run's own pool",
        ),
        "outlier_max_size": use(EVERYWHERE),
        "target_set": use(
            "single",
            why="a target set steers plain S2L's cluster quotas at one budget over the whole "
            "pool, scored by the run's own proxy",
        ),
        "target_weight": use(
            "single", needs="target_set", why="it weighs the target set's pull on the quotas"
        ),
        "method_setting": use(
            "single",
            PER_SOURCE,
            "imported",
            why="nested budgets rank with plain S2L's settings (--clusters, --outlier-max-size)",
        ),
        "force": use(EVERYWHERE),
        "preset": use(EVERYWHERE),
        "report": use(EVERYWHERE),
    },
)

RUN = _table(
    "run",
    {
        "global": "selection over the whole pool",
        PER_SOURCE: "per-source selection (--stratify-by, or --preset reference)",
    },
    {
        "pool": use(EVERYWHERE),
        "run_dir": use(EVERYWHERE),
        "proxy": use(EVERYWHERE),
        "template": use(EVERYWHERE),
        "max_length": use(EVERYWHERE),
        "prompt_column": use(EVERYWHERE),
        "input_column": use(EVERYWHERE),
        "response_column": use(EVERYWHERE),
        "source_column": use(EVERYWHERE),
        "id_column": use(EVERYWHERE),
        "split": use(EVERYWHERE),
        "skip_invalid": use(EVERYWHERE),
        "dedup": use(EVERYWHERE),
        "dedup_threshold": use(EVERYWHERE, needs="dedup", why=_DEDUP_WHY),
        "assistant_turns": use(EVERYWHERE),
        "epochs": use(EVERYWHERE),
        "lr": use(EVERYWHERE),
        "batch_size": use(EVERYWHERE),
        "grad_accum": use(EVERYWHERE),
        "warmup_ratio": use(EVERYWHERE),
        "checkpoints": use(
            EVERYWHERE,
            excludes="checkpoint_every",
            why="an interval sets the checkpoints itself; give one of the two",
        ),
        "checkpoint_every": use(EVERYWHERE),
        "precision": use(EVERYWHERE),
        "score_precision": use(EVERYWHERE),
        "max_tokens": use(EVERYWHERE),
        "method": use(EVERYWHERE),
        "budget": use(EVERYWHERE),
        "clusters": use(EVERYWHERE),
        "stratify_by": use(EVERYWHERE),
        "target_set": use(
            "global",
            why="a target set steers plain S2L's cluster quotas over the whole pool",
        ),
        "target_weight": use(
            "global", needs="target_set", why="it weighs the target set's pull on the quotas"
        ),
        "seed": use(EVERYWHERE),
        "proxy_seed": use(EVERYWHERE),
        "preset": use(EVERYWHERE),
        "force": use(EVERYWHERE),
    },
)

PREPARE = _table(
    "prepare",
    {"prepare": "preparing the pool"},
    {
        "pool": use(EVERYWHERE),
        "run_dir": use(EVERYWHERE),
        "proxy": use(EVERYWHERE),
        "template": use(EVERYWHERE),
        "max_length": use(EVERYWHERE),
        "prompt_column": use(EVERYWHERE),
        "input_column": use(EVERYWHERE),
        "response_column": use(EVERYWHERE),
        "source_column": use(EVERYWHERE),
        "id_column": use(EVERYWHERE),
        "split": use(EVERYWHERE),
        "skip_invalid": use(EVERYWHERE),
        "preset": use(EVERYWHERE),
        "dedup": use(EVERYWHERE),
        "dedup_threshold": use(EVERYWHERE, needs="dedup", why=_DEDUP_WHY),
        "assistant_turns": use(EVERYWHERE),
    },
)

TRAIN_PROXY = _table(
    "train-proxy",
    {
        "recording": "recording the trajectories during training",
        "not-recording": "training without recording (--no-record)",
    },
    {
        "run_dir": use(EVERYWHERE),
        "epochs": use(EVERYWHERE),
        "lr": use(EVERYWHERE),
        "batch_size": use(EVERYWHERE),
        "grad_accum": use(EVERYWHERE),
        "warmup_ratio": use(EVERYWHERE),
        "checkpoints": use(
            EVERYWHERE,
            excludes="checkpoint_every",
            why="an interval sets the checkpoints itself; give one of the two",
        ),
        "checkpoint_every": use(EVERYWHERE),
        "seed": use(EVERYWHERE),
        "precision": use(EVERYWHERE),
        "save_checkpoints": use(EVERYWHERE),
        "record": use(EVERYWHERE),
        "score_precision": use(
            "recording",
            why="it is the precision of the scoring during training; give it to "
            "`s2l score` instead",
        ),
        "max_tokens": use(
            "recording", why="it sizes the scoring batches; give it to `s2l score` instead"
        ),
        "force": use(EVERYWHERE),
        "preset": use(
            "recording",
            why="a preset sets only the scoring precision here; give it to `s2l score` instead",
        ),
    },
)

#: Every command with a table, by name.
TABLES: dict[str, Table] = {t.command: t for t in (SELECT, RUN, PREPARE, TRAIN_PROXY)}


def selects_per_source(stratify_by: str | None, preset: str | None) -> bool:
    """True when the selection goes per source: ``--stratify-by``, or a preset that sets it."""
    return bool(stratify_by) or bool(PRESETS.get(preset or "default", {}).get("stratify_by"))


def select_modes(
    budget: str, stratify_by: str | None, preset: str | None, trajectories: object
) -> set[str]:
    """The active modes of ``s2l select``."""
    modes = {"nested" if "," in budget else "single"}
    if selects_per_source(stratify_by, preset):
        modes.add(PER_SOURCE)
    if trajectories is not None:
        modes.add("imported")
    return modes


def given_options(ctx: typer.Context) -> list[str]:
    """The parameter names of the options and arguments the user gave (command line or
    environment), in the command's order."""
    given = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)  # typer's own click: compare by name
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.append(param.name)
    return given


def check_options(ctx: typer.Context, table: Table, active: Iterable[str]) -> None:
    """Refuse the first option the user gave that means nothing in the ``active`` modes, or
    whose ``needs`` is missing, or whose ``excludes`` is given too; the message names it, the
    mode or option, and the row's reason. An option with no row is not checked (the tests
    make sure there is none)."""
    active = [m for m in table.modes if m in set(active)]
    given = given_options(ctx)
    flags = {p.name: _flag(p) for p in ctx.command.params}
    for name in given:
        u = table.options.get(name)
        if u is None:
            continue
        why = f": {u.why}" if u.why else ""
        if u.needs is not None and u.needs not in given:
            raise S2LError(f"{flags[name]} needs {flags[u.needs]}{why}")
        if u.excludes is not None and u.excludes in given:
            raise S2LError(f"{flags[name]} and {flags[u.excludes]} together{why}")
        off = [m for m in active if m not in table.applies(name)]
        if off:
            raise S2LError(f"{flags[name]} does not apply to {table.modes[off[0]]}{why}")


def _flag(param) -> str:
    """How the user writes a parameter: its long option, or an argument's name in capitals."""
    long = [o for o in param.opts if o.startswith("--")]
    return long[0] if long else param.name.upper()
