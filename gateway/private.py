"""Directories and files only this user may read: the data directory holds API key hashes
and usage by subject, llama-server's logs hold prompts. Modes are set explicitly, so a
permissive umask (022 is common) does not open them to other users."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

log = logging.getLogger("gateway.private")


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) readable by this user alone, whatever the umask; an
    existing directory of this user's that others can enter is tightened to 0700, except a
    shared one (sticky, like /tmp), which is only warned about. A directory that cannot be
    made or changed is left to fail where it is used, with that use's own message."""
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        info = path.stat()
    except OSError:
        return path
    if not stat.S_IMODE(info.st_mode) & 0o077:
        return path
    if info.st_uid != os.geteuid() or info.st_mode & stat.S_ISVTX:
        log.warning(
            "the directory %s is open to other users (mode %o) and shared, so left as it is; "
            "give the gateway a directory of its own (storage.data_dir)",
            path,
            stat.S_IMODE(info.st_mode),
        )
        return path
    try:
        path.chmod(PRIVATE_DIR_MODE)
    except OSError as exc:
        log.warning("cannot make the directory %s private: %s", path, exc)
    return path


def private_file(path: Path, flags: int) -> int:
    """Open `path` with `flags`, creating it 0600 whatever the umask; an existing one open
    to others (left by an earlier run) is tightened. Returns the file descriptor."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(path: Path, *, append: bool = False) -> BinaryIO:
    """`path` opened for writing from its start (or its end), created 0600 or tightened to it."""
    fd = private_file(path, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
    return os.fdopen(fd, "ab" if append else "wb")
