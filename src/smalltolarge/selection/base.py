"""What every selector shares: the signals it reads, its base class, budgets and water-filling.

A selector (a :class:`Selector`) reads :class:`Signals` (the loss trajectories of the selectable
examples and their side columns, rows aligned) and returns the sorted row indices of the
examples it keeps.
:func:`water_fill` is the balancing rule of S2L — visit groups from smallest to largest and give
each an equal share of what is left, small groups taken whole — and is reused both to spread a
budget over clusters (:func:`balanced_sample`) and over data sources (stratified mode).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.settings import parse_budget

# Rows checked per step when scanning a (possibly memory-mapped) loss matrix, so that the check
# never materialises a temporary the size of the whole matrix.
_CHUNK_ROWS = 1_000_000


@dataclass(eq=False)
class Signals:
    """What the scoring pass produced for the selectable examples (rows aligned).

    Attributes:
        losses: float32 ``(n, T)``; row ``i`` is example ``i``'s mean response loss at each of
            the ``T`` proxy checkpoints, in step order. May be a read-only memory map.
        ids: ``(n,)`` example ids (object/str, or ints).
        sources: ``(n,)`` source names, or None when the pool has no source column.
        lengths: ``(n,)`` int response-token counts, or None.
        embeddings: ``(n, d)`` float32 proxy embeddings, or None.
        target_losses: ``(m, T)`` float32 trajectories of a target set (examples of the task
            the user cares about, scored at the same checkpoints, never selected), or None;
            S2L shifts its cluster quotas toward the clusters they fall in, by
            ``target_weight`` in [0, 1] (0: plain S2L; 1: fully target-weighted).
        target_probe: ``(n,)`` float32: the TARGET model's mean response loss of each example
            before any fine-tuning (``s2l probe``), NaN for the examples not probed; or None.
            Target-checked methods (:mod:`smalltolarge.selection.checked`) read it.

    Raises:
        S2LError: on a field whose rows do not line up with ``losses``, a ``losses`` that is not
            2-D or has no checkpoints, or a non-finite loss (naming the first such example).
    """

    losses: np.ndarray
    ids: np.ndarray
    sources: np.ndarray | None = None
    lengths: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    target_losses: np.ndarray | None = None
    target_weight: float = 0.5
    target_probe: np.ndarray | None = None

    def __post_init__(self) -> None:
        losses = self.losses if isinstance(self.losses, np.ndarray) else np.asarray(self.losses)
        check_loss_shape(losses)
        if losses.dtype != np.float32:
            if not np.issubdtype(losses.dtype, np.number):
                raise S2LError(f"loss trajectories must be numeric, got dtype {losses.dtype}")
            losses = losses.astype(np.float32)
        self.losses = losses
        n = losses.shape[0]

        self.ids = _rows_aligned("ids", self.ids, n, ndim=1)
        if self.sources is not None:
            self.sources = _rows_aligned("sources", self.sources, n, ndim=1)
        if self.lengths is not None:
            self.lengths = _rows_aligned("lengths", self.lengths, n, ndim=1)
        if self.embeddings is not None:
            self.embeddings = _rows_aligned("embeddings", self.embeddings, n, ndim=2)
        if self.target_losses is not None:
            target = np.asarray(self.target_losses, dtype=np.float32)
            if target.ndim != 2 or target.shape[1] != losses.shape[1] or not len(target):
                raise S2LError(
                    f"target trajectories must have shape (m >= 1, {losses.shape[1]}) to match "
                    f"the pool's checkpoints, got {target.shape}"
                )
            if not np.isfinite(target).all():
                raise S2LError("a target trajectory is not finite")
            self.target_losses = target
        if self.target_probe is not None:
            probe = _rows_aligned("target_probe", self.target_probe, n, ndim=1)
            probe = probe.astype(np.float32, copy=False)
            if np.isinf(probe).any() or (np.isfinite(probe) & (probe < 0)).any():
                raise S2LError("target probe losses must be non-negative numbers or NaN")
            self.target_probe = probe
        if not 0 <= self.target_weight <= 1:
            raise S2LError(f"target_weight must be in [0, 1], not {self.target_weight!r}")

        bad = _first_non_finite_row(losses)
        if bad is not None:
            example = self.ids[bad]
            if isinstance(example, np.generic):  # print 'x1', not np.str_('x1')
                example = example.item()
            raise S2LError(
                f"loss trajectory of example {example!r} (row {bad}) is not finite: "
                f"{losses[bad].tolist()}"
            )

    @property
    def n(self) -> int:
        """Number of selectable examples (rows)."""
        return int(self.losses.shape[0])

    def subset(self, rows: np.ndarray) -> Signals:
        """The signals of ``rows`` only (int indices or a boolean mask of length ``n``).

        Every present field is sliced the same way, so the result stays rows-aligned; row ``j``
        of the result is row ``rows[j]`` of ``self``.
        """
        rows = np.asarray(rows)
        return Signals(
            losses=self.losses[rows],
            ids=self.ids[rows],
            sources=None if self.sources is None else self.sources[rows],
            lengths=None if self.lengths is None else self.lengths[rows],
            embeddings=None if self.embeddings is None else self.embeddings[rows],
            target_losses=self.target_losses,
            target_weight=self.target_weight,
            target_probe=None if self.target_probe is None else self.target_probe[rows],
        )


class Selector:
    """Base of every selection method: settings in the constructor, the work in :meth:`select`.

    As in scikit-learn, the constructor only stores its arguments, each under its own name, so
    the constructor's signature lists the settings: :meth:`get_params` reads them back by it
    and ``repr`` shows them (no memory address: the text is the same from run to run).
    :meth:`select` checks the settings, the budget and the seed once, then
    calls the subclass's :meth:`_select` with checked values. A new method is a subclass that
    sets ``name``, stores its settings in ``__init__``, implements :meth:`_select` and, if its
    settings have a range, :meth:`check_settings`.

    Attributes (set by :meth:`select`):
        warnings_: plain-words notes on a selection that carries little information.
        labels_: ``(n,)`` int64 cluster of each example, or None for a method that does not
            cluster.
    """

    name: str = ""

    @classmethod
    def param_names(cls) -> list[str]:
        """The constructor's arguments (the settings), in order."""
        return [
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]

    def get_params(self) -> dict[str, Any]:
        """Setting name -> value, in the constructor's order."""
        return {name: getattr(self, name) for name in self.param_names()}

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={value!r}" for name, value in self.get_params().items())
        return f"{type(self).__name__}({settings})"

    def settings(self) -> dict[str, Any]:
        """The settings as a selection records them (``summary.json``'s ``settings``)."""
        return self.get_params()

    def check_settings(self) -> None:
        """Raise S2LError for a setting out of its range (by default there is none to check)."""

    def _check_ints(self, *settings: str, minimum: int = 1) -> None:
        """Raise S2LError unless each of the named settings is an int ``>= minimum``."""
        for setting in settings:
            value = getattr(self, setting)
            is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            if not is_int or value < minimum:
                raise S2LError(
                    f"{self.name} setting {setting} must be an int >= {minimum}, got {value!r}"
                )

    def select(self, signals: Signals, budget: int, seed: int) -> np.ndarray:
        """Pick ``budget`` examples of ``signals``.

        Args:
            signals: the selectable examples.
            budget: number of examples to select, an int ``0 <= budget <= n``.
            seed: non-negative int; fixes every random choice of the method.

        Returns:
            ``(budget,)`` sorted, unique int64 row indices into ``signals``.

        Raises:
            S2LError: for a setting out of range, a bad budget or seed, or signals the method
                needs but were not given.
        """
        self.check_settings()
        check_budget(budget, signals.n)
        seed = check_seed(seed)
        self.warnings_: list[str] = []
        self.labels_: np.ndarray | None = None
        return self._select(signals, int(budget), seed)

    def _select(self, signals: Signals, budget: int, seed: int) -> np.ndarray:
        """The method itself, on checked settings, budget and seed (see :meth:`select`)."""
        raise NotImplementedError

    def summary_(self) -> dict[str, Any]:
        """What the fitted selection adds to ``summary.json``: at least ``warnings``; a
        clustering method adds ``clusters`` (:func:`cluster_summary`), ``n_clusters_effective``
        and ``n_clusters_requested``."""
        return {"warnings": list(self.warnings_)}


def needs_probe(selector: Selector) -> bool:
    """Whether ``selector`` (or the selector a wrapper runs per source) reads
    :attr:`Signals.target_probe`, the target's probe losses (``s2l probe``)."""
    inner = getattr(selector, "selector", selector)
    return bool(getattr(inner, "needs_probe", False))


def resolve_budget(budget: float | int | str, n_total: int, n_selectable: int | None = None) -> int:
    """Turn a user budget into a number of examples.

    Args:
        budget: a fraction of the pool — a float in ``(0, 1]``, a string with a decimal point
            (``"0.3"``, ``"1.0"``) or a percentage (``"30%"``) — or a count: an int, or a
            string of digits, ``>= 1``.
        n_total: size of the pool that fractions refer to.
        n_selectable: how many examples can actually be selected (default ``n_total``).

    Returns:
        The count, ``max(1, round(fraction * n_total))`` for fractions.

    Raises:
        S2LError: for a budget that is not a number, ``<= 0``, a fraction above 1, or a count
            above ``n_selectable``.
    """
    if n_selectable is None:
        n_selectable = n_total
    pool = f"the pool has {n_total} examples" + (
        f" ({n_selectable} selectable)" if n_selectable != n_total else ""
    )
    fraction, count = parse_budget(budget, pool)
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise S2LError(
                f"budget {budget!r} is not a valid fraction: it must lie in (0, 1]; {pool}"
            )
        count = max(1, round(fraction * n_total))
    assert count is not None
    if count <= 0:
        raise S2LError(f"budget {budget!r} must be at least 1 example; {pool}")
    if count > n_selectable:
        raise S2LError(f"budget {budget!r} asks for {count} examples but {pool}")
    return count


def water_fill(
    sizes: Sequence[int] | np.ndarray, budget: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Split ``budget`` over groups of the given sizes, smallest group first.

    Groups are visited from smallest to largest. Before visiting a group, its quota is
    ``(budget still to fill) // (groups not yet visited, this one included)``; a group no larger
    than its quota is taken whole, otherwise it gets exactly the quota. Leftovers of small groups
    and of the integer division thus flow to the larger groups.

    The order among groups of equal size decides which of them gets the remainder of the
    integer division (and, for groups of one row, which are taken at all), so with ``rng`` the
    ties are visited in a random order drawn from it; without it, in index order.

    Args:
        sizes: ``(G,)`` non-negative group sizes.
        budget: non-negative number of items to hand out.
        rng: source of the random order among equal-size groups (None: index order).

    Returns:
        ``(G,)`` int64 quotas aligned with ``sizes``; ``quotas <= sizes`` and
        ``quotas.sum() == min(budget, sum(sizes))``.
    """
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
    if (sizes < 0).any():
        raise S2LError(f"group sizes must be non-negative, got {sizes.tolist()}")
    if budget < 0:
        raise S2LError(f"budget must be non-negative, got {budget}")
    quotas = np.zeros(len(sizes), dtype=np.int64)
    remaining = int(budget)
    for visited, group in enumerate(_smallest_first(sizes, rng)):
        quota = remaining // (len(sizes) - visited)
        quotas[group] = min(int(sizes[group]), quota)
        remaining -= int(quotas[group])
    return quotas


def water_fill_above(
    sizes: np.ndarray, floors: np.ndarray, budget: int, rng: np.random.Generator
) -> np.ndarray:
    """:func:`~smalltolarge.selection.water_fill` with a lower bound: quotas ``>= floors``
    summing to ``budget`` (``sum(floors) <= budget <= sum(sizes)``). A group whose water-filled
    quota falls below its floor keeps its floor and leaves the filling; the others share what
    is left, until every quota reaches its floor."""
    quotas = floors.astype(np.int64).copy()
    free = np.ones(len(sizes), dtype=bool)
    while free.any():
        fill = water_fill(sizes[free], budget - int(quotas[~free].sum()), rng)
        below = fill < floors[free]
        if not below.any():
            quotas[free] = fill
            break
        free[np.flatnonzero(free)[below]] = False
    return quotas


def balanced_sample(
    labels: np.ndarray,
    budget: int,
    rng: np.random.Generator,
    *,
    outlier_max_size: int = 0,
    quotas: np.ndarray | None = None,
) -> np.ndarray:
    """Sample ``budget`` rows spread evenly over clusters by :func:`water_fill`.

    Clusters no larger than their quota are taken whole; from the others, exactly the quota is
    drawn uniformly at random without replacement. Clusters of equal size are visited in a
    random order drawn from ``rng``, so no cluster is favoured for its label.

    With ``outlier_max_size > 0`` (the public reference code uses 2), clusters of at most that
    many rows are set aside as outliers: the budget is water-filled over the other clusters,
    and only what they cannot supply is drawn, uniformly at random, from the outliers' rows.

    Args:
        labels: ``(n,)`` non-negative int cluster labels.
        budget: number of rows to pick, ``0 <= budget <= n``.
        rng: source of randomness (advanced by the draws).
        outlier_max_size: clusters of at most this many rows are outliers (0: none).
        quotas: ``(K,)`` rows to draw from each cluster instead of the water-filling quotas
            (each at most its cluster's size, summing to ``budget``; see
            :func:`smalltolarge.selection.targeted.targeted_quotas`).

    Returns:
        ``(budget,)`` sorted unique int64 row indices.
    """
    labels = np.asarray(labels).reshape(-1)
    n = labels.shape[0]
    check_budget(budget, n)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if labels.min() < 0:
        raise S2LError("cluster labels must be non-negative")
    sizes = np.bincount(labels)
    outlier = (sizes <= outlier_max_size) & (sizes > 0)
    if quotas is None:
        quotas = water_fill(np.where(outlier, 0, sizes), budget, rng)
    else:
        quotas = np.asarray(quotas, dtype=np.int64)
        sizes = np.bincount(labels, minlength=len(quotas))
        if len(quotas) != len(sizes) or (quotas > sizes).any() or quotas.sum() != budget:
            raise S2LError(
                f"quotas {quotas.tolist()} do not fit clusters of sizes {sizes.tolist()} "
                f"and a budget of {budget}"
            )
    members = _rows_by_label(labels, sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)])

    def rows_of(label: int) -> np.ndarray:
        return members[starts[label] : starts[label] + int(sizes[label])]

    picked = [np.zeros(0, dtype=np.int64)]
    for label in np.flatnonzero(quotas):
        quota, rows = int(quotas[label]), rows_of(label)
        picked.append(rows if quota == len(rows) else rows[rng.choice(len(rows), quota, False)])
    left = budget - int(quotas.sum())
    if left:  # only possible with outliers set aside: fill from them, as the reference does
        spare = np.concatenate([rows_of(label) for label in np.flatnonzero(outlier)])
        picked.append(spare[rng.choice(len(spare), left, replace=False)])
    return np.sort(np.concatenate(picked)).astype(np.int64, copy=False)


def cluster_summary(sizes: np.ndarray, taken: np.ndarray) -> dict[str, Any]:
    """The ``clusters`` entry of ``summary.json``: cluster sizes and what was taken from each.

    Args:
        sizes: ``(K,)`` int rows per cluster.
        taken: ``(K,)`` int rows selected per cluster.

    Returns:
        ``n_clusters``, ``sizes`` and ``taken`` (both lists ordered by ascending size, ties in
        the order given) and ``taken_whole`` (non-empty clusters selected entirely).
    """
    sizes, taken = np.asarray(sizes), np.asarray(taken)
    order = np.argsort(sizes, kind="stable")
    return {
        "n_clusters": int(len(sizes)),
        "sizes": [int(s) for s in sizes[order]],
        "taken": [int(t) for t in taken[order]],
        "taken_whole": int(((taken == sizes) & (sizes > 0)).sum()),
    }


def check_budget(budget: int, n: int) -> None:
    """Raise S2LError unless ``budget`` is an int in ``[0, n]`` (for :meth:`Selector.select`)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise S2LError(f"budget must be an int number of examples, got {budget!r}")
    if budget < 0:
        raise S2LError(f"budget {budget} is negative; give a number of examples")
    if budget > n:
        raise S2LError(f"budget {budget} asks for more examples than the {n} there are")


def check_loss_shape(losses: np.ndarray) -> None:
    """S2LError unless the array ``losses`` is a 2-D ``(n, T)`` matrix with ``T >= 1``."""
    if losses.ndim != 2:
        raise S2LError(
            f"loss trajectories must be a 2-D (examples, checkpoints) matrix, "
            f"got shape {losses.shape}"
        )
    if losses.shape[1] == 0:
        raise S2LError("loss trajectories have no checkpoints (shape (n, 0))")


def check_seed(seed: int) -> int:
    """``seed`` as a Python int; S2LError unless it is a non-negative int."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise S2LError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _smallest_first(sizes: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Group indices by ascending size; ties in a random order from ``rng`` (else by index)."""
    if rng is None:
        return np.argsort(sizes, kind="stable")
    return np.lexsort((rng.permutation(len(sizes)), sizes))


def _rows_by_label(labels: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``(n,)`` row indices grouped by label (ascending), rows ascending within a label.

    The rows of label ``c`` occupy ``[sum(sizes[:c]), sum(sizes[:c + 1]))`` of the result.
    """
    n = labels.shape[0]
    # A counting sort done chunk by chunk, into int32 when rows fit: a single argsort of 10^7
    # labels would hold an extra 80 MB int64 array at the peak of a memory-bounded selection.
    members = np.empty(n, dtype=np.int32 if n <= np.iinfo(np.int32).max else np.int64)
    next_slot = np.cumsum(sizes) - sizes
    narrow = len(sizes) <= np.iinfo(np.uint16).max + 1
    for lo in range(0, n, _CHUNK_ROWS):
        chunk = labels[lo : lo + _CHUNK_ROWS]
        # Stable, so rows stay ascending within a label; on a 16-bit key numpy uses radix sort.
        order = np.argsort(chunk.astype(np.uint16) if narrow else chunk, kind="stable")
        counts = np.bincount(chunk, minlength=len(sizes))
        sorted_labels = chunk[order]
        rank_in_label = np.arange(len(chunk)) - (np.cumsum(counts) - counts)[sorted_labels]
        members[next_slot[sorted_labels] + rank_in_label] = order + lo
        next_slot += counts
    return members


def _rows_aligned(name: str, values: object, n: int, *, ndim: int) -> np.ndarray:
    """``values`` as an array with ``ndim`` dimensions and ``n`` rows, else S2LError."""
    array = values if isinstance(values, np.ndarray) else np.asarray(values)
    if array.ndim != ndim or array.shape[0] != n:
        expected = f"({n},)" if ndim == 1 else f"({n}, ...)"
        raise S2LError(
            f"{name} must have shape {expected} to match {n} loss trajectories, "
            f"got shape {array.shape}"
        )
    return array


def _first_non_finite_row(losses: np.ndarray) -> int | None:
    """Index of the first row of ``losses`` holding a NaN or infinity, or None."""
    for start in range(0, losses.shape[0], _CHUNK_ROWS):
        block = losses[start : start + _CHUNK_ROWS]
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            return start + int(np.argmin(finite))
    return None
