"""Fail fast on a Hugging Face hub name that cannot be had.

Loading a name that is neither a local path nor in the local cache makes the hub libraries
retry for about a minute when the hub cannot be reached, printing a line per retry. Checked
here first, such a name is refused at once, in one line: a path that does not exist (also
``owner/name`` where ``owner`` is a local directory: ``models/typo``), a name while
``HF_HUB_OFFLINE`` is set, or a hub that does not answer within a few seconds.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from smalltolarge.errors import S2LError

#: Seconds to wait for the hub to accept a connection.
CONNECT_TIMEOUT = 3.0


def check_hub_name(name: str, *, kind: str = "model") -> None:
    """Refuse ``name`` (a ``kind``: "model" or "dataset") unless it is an existing local path,
    already in the local hub cache, or the hub can be reached to fetch it."""
    if os.path.exists(name):
        return
    if _looks_like_path(name):
        raise S2LError(f"'{name}': no such directory (a hub {kind} is named owner/name)")
    if _in_cache(name, kind):
        return
    owner = name.split("/")[0]
    if "/" in name and os.path.isdir(owner):  # models/typo, next to a models/ directory
        raise S2LError(
            f"'{name}': no such directory ({owner}/ is a directory here, so this is read as "
            f"a path, not a hub {kind} owner/name)"
        )
    if _offline(kind):
        raise S2LError(
            f"'{name}': not a local path and not in the local Hugging Face cache, and "
            f"HF_HUB_OFFLINE is set; check the spelling, or download it once online"
        )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if not _reachable(endpoint):
        raise S2LError(
            f"'{name}': not a local path and not in the local Hugging Face cache, and the hub "
            f"({endpoint}) cannot be reached; check the spelling and the network"
        )


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else that does not exist is a path."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or name.endswith("/")
        or os.sep != "/"
        and os.sep in name
    )


def _in_cache(name: str, kind: str) -> bool:
    from huggingface_hub.constants import HF_HUB_CACHE

    if (Path(HF_HUB_CACHE) / f"{kind}s--{name.replace('/', '--')}").is_dir():
        return True
    if kind == "dataset":  # datasets keeps what it prepared in a cache of its own
        from datasets import config

        return (Path(config.HF_DATASETS_CACHE) / name.replace("/", "___")).is_dir()
    return False


def _offline(kind: str) -> bool:
    names = ["HF_HUB_OFFLINE"] + (["HF_DATASETS_OFFLINE"] if kind == "dataset" else [])
    return any(os.environ.get(n, "").strip().lower() in ("1", "true", "yes", "on") for n in names)


@functools.cache
def _reachable(endpoint: str) -> bool:
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=CONNECT_TIMEOUT):
            return True
    except OSError:
        return False
