"""The one atomic write: every file a later stage reads is written here.

:func:`write_atomic` writes to ``.<name>.<pid>.partial`` beside the target (hidden, never
listed as a shard, and one per process, so that two processes writing the same file,
such as the processes of one population experiment writing its results, never share
one), flushes and fsyncs it, renames it over the target and fsyncs the
directory: a kill leaves the old file or the new one, never half of one, and a failed
write removes its temporary file. When the OS refuses the write (disk full, quota,
read-only file system, no permission) the error is a :class:`WriteError`: one line
naming the file and the reason; the files already written are untouched.

This module needs only the standard library, so the config and shard code use it too.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from worldmodels.errors import OS_REFUSALS, InputError

#: the temporary name of ``<dir>/<name>`` while process ``pid`` writes it:
#: ``<dir>/.<name>.<pid>.partial``
TMP_SUFFIX = ".partial"

_WHAT_TO_DO = {
    errno.ENOSPC: "free some space and rerun; the files already written are kept",
    errno.EDQUOT: "free some space and rerun; the files already written are kept",
    errno.EROFS: "give a writable place (root=..., --run or --out)",
    errno.EACCES: "give a writable place (root=..., --run or --out)",
    errno.EPERM: "give a writable place (root=..., --run or --out)",
}


class WriteError(InputError):
    """The OS refused a write (disk full, read-only, no permission): names the file."""


def refusal(path: Path | str, err: OSError) -> WriteError:
    """``<path>: no space left on device (free some space ...)`` for a refused write."""
    reason = (err.strerror or os.strerror(err.errno or 0) or str(err)).lower()
    todo = _WHAT_TO_DO.get(err.errno or 0, "")
    return WriteError(f"{path}: {reason}" + (f" ({todo})" if todo else ""))


def temp_path(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it into place."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def write_atomic(path: Path | str, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary file, which is flushed,
    fsynced and renamed into place; the directory is made if missing."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _remove_dead_writers_temps(path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in OS_REFUSALS:
            raise refusal(path, err) from None
        raise
    _fsync_dir(path.parent)


def _remove_dead_writers_temps(path: Path) -> None:
    """Remove the temporary files of ``path`` that killed processes left (a live
    writer's is its own business): with a name per process, no later write reuses them."""
    prefix = f".{path.name}."
    with os.scandir(path.parent) as entries:
        stale = [e.name for e in entries
                 if e.name.startswith(prefix) and e.name.endswith(TMP_SUFFIX)]
    for name in stale:
        pid = name[len(prefix): -len(TMP_SUFFIX)]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                (path.parent / name).unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every OS opens directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    write_atomic(path, lambda fh: fh.write(data))


def write_text_atomic(path: Path | str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def check_writable(directory: Path | str) -> None:
    """Make ``directory`` and write (then remove) a probe file there: a read-only place
    or a full disk is refused before any work, naming the directory."""
    directory = Path(directory)
    probe = directory / f".write_probe_{os.getpid()}{TMP_SUFFIX}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"\0")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as err:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        if isinstance(err, (NotADirectoryError, FileExistsError)):
            raise WriteError(f"{directory}: cannot be a directory: a file is in the way "
                             f"({err.filename})") from None
        if err.errno in OS_REFUSALS:
            raise WriteError(f"{directory}: cannot write there: "
                             f"{(err.strerror or str(err)).lower()} "
                             f"({_WHAT_TO_DO[err.errno]})") from None
        raise
