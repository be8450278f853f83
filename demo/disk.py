"""The app on a full, read-only or otherwise unwritable disk: one line a client (and the person running
the server) can act on, naming the problem and where it happened.

A request that cannot write what it needs is refused with :class:`DiskError` (HTTP 507 Insufficient
Storage) after removing what it wrote. A file of the server's own temporary folder is never named (it is
gone by the time anyone reads the message, and its name means nothing to a client): the folder is.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path

from pocketswap.core.errors import PocketswapError

DISK_STATUS = 507  # HTTP Insufficient Storage

# What each errno means for the person who has to fix it.
_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "over the file-size limit this server runs under",
    errno.EROFS: "the disk is mounted read-only",
    errno.EACCES: "the server's user may not write there",
    errno.EPERM: "the server's user may not write there",
    errno.EIO: "an input/output error on the disk",
    errno.ENOTDIR: "a file stands where a folder should be",
    errno.EMLINK: "the folder holds too many entries",
}


# The hidden name an atomic write fills before renaming (pocketswap.core.files.temp_path): never shown.
_PENDING = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp(\.[^.]*)?$")


class DiskError(PocketswapError):
    """The server could not write what a request needs (full, read-only or unwritable disk)."""


def disk_cause(exc: BaseException) -> OSError | None:
    """The OSError of a disk problem behind ``exc`` (itself, or the cause of a wrapped one), else None."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        if isinstance(candidate, OSError) and candidate.errno in _REASONS:
            return candidate
    return None


def temp_folder() -> Path:
    """The server's temporary folder (``TMPDIR``; where uploads are spooled and videos swapped)."""
    return Path(tempfile.gettempdir())


def disk_error(exc: OSError, where: Path | str | None = None, refused: bool = True) -> DiskError:
    """One line for ``exc``: the problem and the folder or file (``where``, else the server's temporary
    folder); a file named by ``exc`` is shown only when it lies inside ``where``. ``refused``: the line
    answers a request whose writes were removed (and says so)."""
    reason = _REASONS.get(exc.errno or 0, "the disk refused the write")
    strerror = exc.strerror or type(exc).__name__
    if where is None:
        place = f"in its temporary folder {temp_folder()}"
    else:
        where = Path(where)
        place = f"under {where}"
        name = Path(os.fsdecode(exc.filename)) if exc.filename else None
        pending = name is not None and bool(_PENDING.match(name.name))
        if pending:
            name = name.parent  # a file being written atomically: its folder
        if name is not None and (name == where or where in name.parents):
            place = f"under {name}" if pending or name == where else str(name)
    kept = "; nothing of this request was kept" if refused else ""
    return DiskError(f"the server cannot write {place}: {strerror} ({reason}){kept}")


def unwritable(folder: Path) -> str | None:
    """Why nothing can be written under ``folder`` (its nearest existing ancestor is checked: a file,
    a read-only disk, no permission), else None. A full disk only shows when a write fails."""
    folder = Path(folder).absolute()
    for ancestor in (folder, *folder.parents):
        if not os.path.lexists(ancestor):
            continue
        if not ancestor.is_dir():
            return f"{ancestor} is a file, not a folder"
        try:
            if os.statvfs(ancestor).f_flag & os.ST_RDONLY:
                return f"{ancestor} is on a disk mounted read-only"
        except OSError:
            pass
        if not os.access(ancestor, os.W_OK | os.X_OK):
            return f"{ancestor} is not writable by this server (permission denied)"
        return None
    return None
