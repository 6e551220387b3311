"""Data selection: S2L, baselines, the stratified wrapper and a registry by name.

Typical use::

    selector = make_selector("s2l", n_clusters=100)
    rows = selector.select(signals, resolve_budget("30%", signals.n), seed=0)
"""

from __future__ import annotations

from typing import Any

from smalltolarge.errors import S2LError
from smalltolarge.selection.base import (
    Selector,
    Signals,
    balanced_sample,
    resolve_budget,
    water_fill,
)
from smalltolarge.selection.baselines import (
    BalancedRandomSelector,
    HighLearnabilitySelector,
    HighVariabilitySelector,
    KMeansEmbeddingsSelector,
    LeastConfidenceSelector,
    LengthSelector,
    MiddlePerplexitySelector,
    RandomSelector,
)
from smalltolarge.selection.checked import (
    KMQSelector,
    TailCutS2LSelector,
    TargetCheckedS2LSelector,
)
from smalltolarge.selection.diagnostics import trajectory_diagnostics
from smalltolarge.selection.facility import FacilityLocationSelector
from smalltolarge.selection.s2l import S2LSelector, kmeans_labels
from smalltolarge.selection.shape import (
    CartographyS2LSelector,
    ShapeS2LSelector,
    WhitenedS2LSelector,
)
from smalltolarge.selection.stratified import Stratified

__all__ = [
    "BASELINES",
    "SELECTORS",
    "BalancedRandomSelector",
    "CartographyS2LSelector",
    "FacilityLocationSelector",
    "HighLearnabilitySelector",
    "HighVariabilitySelector",
    "KMQSelector",
    "KMeansEmbeddingsSelector",
    "LeastConfidenceSelector",
    "LengthSelector",
    "MiddlePerplexitySelector",
    "RandomSelector",
    "S2LSelector",
    "Selector",
    "ShapeS2LSelector",
    "Signals",
    "Stratified",
    "TailCutS2LSelector",
    "TargetCheckedS2LSelector",
    "WhitenedS2LSelector",
    "accepts",
    "balanced_sample",
    "kmeans_labels",
    "make_selector",
    "resolve_budget",
    "trajectory_diagnostics",
    "water_fill",
]

SELECTORS: dict[str, type[Selector]] = {
    "s2l": S2LSelector,
    "random": RandomSelector,
    "random-balanced": BalancedRandomSelector,
    "length": LengthSelector,
    "least-confidence": LeastConfidenceSelector,
    "middle-perplexity": MiddlePerplexitySelector,
    "high-learnability": HighLearnabilitySelector,
    "high-variability": HighVariabilitySelector,
    "facility-location": FacilityLocationSelector,
    "kmeans-embeddings": KMeansEmbeddingsSelector,
    "s2l-whitened": WhitenedS2LSelector,
    "s2l-shape": ShapeS2LSelector,
    "s2l-cartography": CartographyS2LSelector,
    "s2l-checked": TargetCheckedS2LSelector,
    "s2l-cut": TailCutS2LSelector,
    "kmq": KMQSelector,
}

# The methods S2L is compared against (every registered method but S2L itself).
BASELINES: list[str] = [key for key in SELECTORS if key != "s2l"]


def make_selector(method: str, *, stratify: bool = False, **settings: Any) -> Selector:
    """Build the selector registered as ``method`` from its settings.

    A setting whose value is None means "not given": it is dropped, so the selector's default
    applies, and it is not an error for a selector that has no such setting. This lets a CLI
    pass all its options to every method.

    Args:
        method: a key of :data:`SELECTORS`.
        stratify: wrap the selector in :class:`Stratified` (per-source selection).
        **settings: constructor arguments of the selector.

    Raises:
        S2LError: for an unknown method, or a non-None setting the method does not take.
    """
    if method not in SELECTORS:
        raise S2LError(
            f"unknown selection method {method!r}; known: {', '.join(sorted(SELECTORS))}"
        )
    cls = SELECTORS[method]
    accepted = cls.param_names()
    given = {key: value for key, value in settings.items() if value is not None}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no settings"
        raise S2LError(
            f"selection method {method!r} does not take {', '.join(unknown)} (it takes: {takes})"
        )
    selector = cls(**given)
    selector.check_settings()  # refuse a bad setting now, not after the stages before selection
    return Stratified(selector) if stratify else selector


def accepts(method: str, setting: str) -> bool:
    """True when the selector registered as ``method`` takes ``setting`` in its constructor."""
    return method in SELECTORS and setting in SELECTORS[method].param_names()
