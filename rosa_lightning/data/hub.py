"""Resolve a model or dataset reference (local path or hub id) and fail fast when it cannot be used.

Loading from a hub without network normally ends in minutes of retries. Everything here decides up
front, within a few seconds, whether a reference is usable: a local path must exist, and a hub id must
either be in the local cache or the hub must answer a TCP connection. Otherwise a
``ResourceUnavailableError`` names the config key to point at a local directory instead.
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse


class ResourceUnavailableError(RuntimeError):
    """A model, tokenizer or dataset reference that cannot be loaded on this machine."""


def looks_like_path(ref: str) -> bool:
    """True for references that are clearly file-system paths rather than hub ids (``org/name``)."""
    return ref.startswith(("/", "./", "../", "~", ".")) or ref.count("/") > 1


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline(repo_type: str = "model") -> bool:
    """Whether the HF offline switches are set (for datasets, either switch)."""
    if repo_type == "dataset" and _env_flag("HF_DATASETS_OFFLINE"):
        return True
    return _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Open one TCP connection to the hub endpoint; DNS included, bounded by ``timeout_s``.

    ``getaddrinfo`` ignores socket timeouts, so the probe runs in a daemon thread that is abandoned
    when it takes too long.
    """
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="hub-probe")
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def _in_cache(repo_id: str, repo_type: str) -> bool:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir()
    except (CacheNotFound, OSError):
        return False
    return any(r.repo_id == repo_id and r.repo_type == repo_type for r in cache.repos)


def resolve_reference(ref: str, *, what: str, config_key: str, repo_type: str = "model",
                      timeout_s: float = 3.0) -> str:
    """Check that ``ref`` (local path or hub id) can be loaded; return it (paths expanded).

    ``what`` names the thing in messages ("backbone", "dataset"), ``config_key`` the Hydra key a user
    sets to a local directory instead. Raises ``ResourceUnavailableError`` within ``timeout_s`` + a
    little when the path is missing or the hub is unreachable and the id is not cached.
    """
    if not isinstance(ref, (str, os.PathLike)) or not str(ref):
        raise ResourceUnavailableError(f"{config_key}: expected a local path or hub id, got {ref!r}")
    ref = str(ref)
    local = Path(ref).expanduser()
    if local.exists():
        return str(local)
    hint = (f"Download it on a machine with network access (e.g. `hf download {ref}"
            f"{' --repo-type dataset' if repo_type == 'dataset' else ''} --local-dir DIR`) and set "
            f"`{config_key}=DIR` on the command line.")
    if looks_like_path(ref):
        raise ResourceUnavailableError(f"{what} path {str(local)!r} does not exist ({config_key}). {hint}")
    if _in_cache(ref, repo_type):
        return ref
    if hub_offline(repo_type):
        raise ResourceUnavailableError(
            f"{what} {ref!r} is not a local path and not in the HF cache, and the HF offline mode is on. {hint}")
    if not hub_reachable(timeout_s):
        raise ResourceUnavailableError(
            f"{what} {ref!r} is not a local path and the hub cannot be reached within {timeout_s:.0f}s. {hint}")
    return ref
