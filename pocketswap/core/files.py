"""Output files: checked before work starts (:func:`check_output`), written atomically (a crash,
Ctrl-C or a full disk never leaves a half-written file under the final name, nor a temp file behind)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pocketswap.core.errors import OutputError

NAME_MAX = 255  # bytes of one file or folder name on Linux and macOS file systems


def check_output(
    path: str | Path, suffixes: tuple[str, ...] | None = None, what: str = "output", create: bool = True
) -> Path:
    """Fail early, in one line, when ``path`` cannot be written as a file: an existing folder, a
    parent that is a file, a folder that cannot be created or written, or (with ``suffixes``) an
    extension the writer does not know. Creates the missing parent folders (``create``)."""
    path = Path(path)
    if too_long := [part for part in path.parts if len(os.fsencode(part)) > NAME_MAX]:
        raise OutputError(f"{what} {str(path)[:80]}...: the name {too_long[0][:24]!r}... is over {NAME_MAX} bytes")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise OutputError(
            f"{what} {path}: unknown extension {path.suffix or '(none)'!r}; use one of {', '.join(suffixes)}"
        )
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder; give a file name")
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputError(f"{what} {path}: {ancestor} is a file, not a folder")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise OutputError(f"{what} {path}: cannot write in {ancestor} (permission denied)")
            break
    if not create:
        return path
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot create {parent} ({exc.strerror or exc})") from exc
    return path


def refuse_overwriting_input(output: str | Path, source: str | Path, what: str = "output") -> None:
    """One clear error when ``output`` is the input file ``source`` itself (writing it would destroy it)."""
    output, source = Path(output), Path(source)
    try:
        same = output.exists() and source.exists() and os.path.samefile(output, source)
    except OSError:
        same = False
    if same or output.resolve() == source.resolve():
        raise OutputError(f"{what} {output} is the input file; give another name (the original is kept)")


def check_output_dir(path: str | Path, what: str = "output folder", create: bool = True) -> Path:
    """Like :func:`check_output` for a folder: refuses a file or an unwritable place; creates it (``create``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path}: is a file, not a folder")
    check_output(path / ".probe", what=what, create=create)
    if create and not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: cannot write here (permission denied)")
    return path


def temp_path(path: Path) -> Path:
    """The temp name a file is written under before it replaces ``path``: hidden, unique, same folder
    and same suffix (writers such as PyAV and cv2 choose the format by suffix)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def temp_glob(name: str) -> str:
    """Glob of the temp files :func:`temp_path` makes for the file ``name`` (to sweep leftovers of a killed run)."""
    stem, suffix = os.path.splitext(name)
    return f".{stem}.*.tmp{suffix}"


class PendingFile:
    """A file that a streaming writer fills under :func:`temp_path` and then :meth:`commit`\\ s into place
    (or :meth:`discard`\\ s): the final name never holds a half-written file."""

    def __init__(self, path: str | Path, suffixes: tuple[str, ...] | None = None, what: str = "output") -> None:
        self.path = check_output(path, suffixes, what)
        self.tmp = temp_path(self.path)

    def commit(self) -> Path:
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.discard()
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` for a writer that wants a file name (safetensors, cv2, …);
    it replaces ``path`` when the block ends normally and is removed on any failure."""
    pending = PendingFile(path)
    try:
        yield pending.tmp
        pending.commit()
    except OSError as exc:
        raise OutputError(f"cannot write {pending.path}: {exc.strerror or exc}") from exc
    finally:
        pending.discard()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder (removed on any failure)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def exclusive_folder(folder: str | Path, what: str = "run") -> Iterator[Path]:
    """Hold ``folder``'s lock file (``.lock``, an OS lock that a crash releases) while one process writes
    it; a second writer gets one clear error instead of mixing its files into the first one's."""
    import fcntl

    folder = Path(folder)
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"{folder}: another {what} is writing here now; wait for it or choose another --out"
            ) from None
        try:
            yield folder
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder ``tmp`` into place as ``final``, replacing an existing one (the old one is
    renamed aside first, so ``final`` is never half-written)."""
    trash = None
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
    os.replace(tmp, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True) if trash.is_dir() else trash.unlink(missing_ok=True)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (relative path + bytes, sorted) for ``.mlpackage``."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
