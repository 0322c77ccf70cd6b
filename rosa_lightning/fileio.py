"""Atomic file and directory writes, and the cleanup of temporaries a killed writer left behind.

Every file the project writes atomically goes first to ``.<name>.tmp-<host>-<pid>`` beside its final
name and is then renamed onto it, so a reader sees either the old file or the complete new one. The
host and pid in the name let a later run tell a temporary of a dead writer (safe to delete) from one
that is still being written. Every written file gets the permissions an ordinary ``open`` would give under
the process's umask, whatever the writer used (``tempfile.mkstemp`` and safetensors create files 0600).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path
from typing import Callable, Optional, Union

PathLike = Union[str, os.PathLike]
# ``.last.ckpt.tmp-PID`` (older writers) and ``.last.ckpt.tmp-HOST-PID``
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)$")


def temp_path(path: PathLike) -> Path:
    """The temporary name of ``path`` for this process: ``.<name>.tmp-<host>-<pid>`` in the same directory."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def file_mode() -> int:
    """The mode ``open(..., "w")`` gives a new file: 0o666 without the umask's bits."""
    try:  # Linux shows the umask without changing it; os.umask can only be read by setting it
        for line in open("/proc/self/status"):
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to create the temporary file, fsync it, then rename it onto ``path``.

    On any failure the temporary is removed and an existing ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_dir(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` to fill a fresh temporary directory, then put it in place of ``path``.

    An existing ``path`` is moved aside first and deleted only once the new directory is in place, so
    a failure at any point leaves either the old directory or the new one under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    old = tmp.with_name(tmp.name.replace(".tmp-", ".old.tmp-", 1))
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        mode = file_mode()
        for file in tmp.rglob("*"):
            if file.is_file():
                os.chmod(file, mode)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def stale_temp(path: Path, host: Optional[str] = None) -> bool:
    """Whether ``path`` is one of this project's temporaries whose writer (on this host) has died."""
    m = _TEMP_NAME.match(path.name)
    if m is None:
        return False
    if m["host"] is not None and m["host"] != (host or socket.gethostname()):
        return False  # written on another machine: its pid means nothing here
    return not _pid_alive(int(m["pid"]))


def remove_stale_temps(directory: Optional[PathLike], targets: Optional[set[str]] = None) -> list[Path]:
    """Delete the temporaries of dead writers directly inside ``directory``; returns what was deleted.

    ``targets``: only temporaries of these final names (e.g. ``{"model"}`` in a run directory);
    None = any name. A missing directory is fine (nothing to clean).
    """
    if directory is None or not Path(directory).is_dir():
        return []
    removed = []
    for entry in Path(directory).iterdir():
        m = _TEMP_NAME.match(entry.name)
        if m is None or (targets is not None and m["target"].removesuffix(".old") not in targets):
            continue
        if stale_temp(entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
