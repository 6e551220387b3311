"""Named bundles of settings that span stages: ``--preset reference``.

The public reference code of S2L, which produced the paper's numbers, differs from this
package's defaults in four settings. ``preset="reference"`` applies all four at once, at every
stage that has one of them:

=====================  ==============================  =======================================
setting                stage                            reference value
=====================  ==============================  =======================================
``template``           prepare (tokenisation)          ``alpaca-reference``: the prompt ends
                                                        with ``### Response:`` and the response
                                                        follows with no newline
``score_precision``    train-proxy / score              ``fp32`` scoring (training keeps its
                                                        own precision)
``stratify_by``        select                           ``source``: select per source
``outlier_max_size``   select (S2L)                     ``2``: clusters of at most 2 rows only
                                                        fill budget left over at the end
=====================  ==============================  =======================================

A preset value replaces a setting left at its default; a setting given another value
contradicts the preset and is refused, so a run never silently mixes the two modes.
"""

from __future__ import annotations

from typing import Any

from smalltolarge.errors import S2LError

#: preset name -> {setting: value}; ``default`` is the package's own behaviour.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "reference": {
        "template": "alpaca-reference",
        "score_precision": "fp32",
        "stratify_by": "source",
        "outlier_max_size": 2,
    },
}


def apply_preset(preset: str | None, **settings: tuple[Any, Any]) -> dict[str, Any]:
    """The values of ``settings`` under ``preset``.

    Args:
        preset: a key of :data:`PRESETS`, or None (same as ``"default"``).
        **settings: ``name=(value, default)`` for each setting of the calling stage.

    Returns:
        ``{name: value}``: the preset's value where the preset has one and ``value`` is the
        default, else ``value``.

    Raises:
        S2LError: an unknown preset, or a value that is neither the default nor the preset's.
    """
    if preset is None:
        preset = "default"
    if preset not in PRESETS:
        raise S2LError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    out = {}
    for name, (value, default) in settings.items():
        if name not in chosen or value == chosen[name]:
            out[name] = value
        elif value == default:
            out[name] = chosen[name]
        else:
            raise S2LError(
                f"preset {preset!r} sets {name} to {chosen[name]!r}; {name}={value!r} "
                "contradicts it (leave it out, or drop the preset)"
            )
    return out
