"""The one atomic write: every file a later stage reads is written here.

:func:`write_atomic` writes to ``.<name>.<host>-<pid>.partial`` beside the target (hidden, never
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
import functools
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from worldmodels.errors import OS_REFUSALS, InputError

#: the temporary name of ``<dir>/<name>`` while process ``pid`` of ``host`` writes it:
#: ``<dir>/.<name>.<host>-<pid>.partial``
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


@functools.lru_cache(maxsize=1)
def _host() -> str:
    """This host's name as it stands in temporary names (letters, digits and dashes)."""
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())
    return host or "host"


def _writer() -> str:
    """This process's tag in temporary names: host and pid (``--shard K/N`` runs on
    several machines that share a directory; a pid alone means something on one)."""
    return f"{_host()}-{os.getpid()}"


def temp_path(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it into place."""
    return path.with_name(f".{path.name}.{_writer()}{TMP_SUFFIX}")


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
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in OS_REFUSALS:
            raise refusal(path, err) from None
        raise
    _fsync_dir(path.parent)
    _remove_dead_writers_temps(path.parent)


#: directories this process has cleaned of dead writers' temporary files
_CLEANED: set[tuple[int, Path]] = set()


def _remove_dead_writers_temps(directory: Path) -> None:
    """Once per process and directory (a scan per write would make a directory of N
    shards cost N^2), :func:`remove_stale_temps`. Best effort: the write itself is done."""
    key = (os.getpid(), directory)
    if key in _CLEANED:
        return
    _CLEANED.add(key)
    remove_stale_temps(directory)


def remove_stale_temps(directory: Path | str) -> int:
    """Remove the temporary files that killed processes of this host left in
    ``directory`` (no later write reuses them: each process has its own name), and any
    without a writer's tag; returns how many. Another host's, and a live writer's, are
    left alone, so a second command starting on a directory that another still writes
    does not pull a file from under it."""
    directory = Path(directory)
    mine, host = f"-{os.getpid()}{TMP_SUFFIX}", _host()
    removed = 0
    try:
        with os.scandir(directory) as entries:
            names = [e.name for e in entries
                     if e.name.startswith(".") and e.name.endswith(TMP_SUFFIX)]
    except OSError:
        return 0
    for name in names:
        stem = name[1: -len(TMP_SUFFIX)]
        writer = stem.rsplit(".", 1)[-1]
        who, _, pid = writer.rpartition("-")
        untagged = not (who and pid.isdigit())
        try:
            dead = untagged or (who == host and not name.endswith(mine)
                                and not _alive(int(pid)))
            if dead:
                (directory / name).unlink(missing_ok=True)
                removed += 1
        except (OSError, OverflowError, ValueError):
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process, or no such pid at all
        return pid <= 2**22  # (Linux's largest pid)
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


def check_output_file(path: Path | str) -> Path:
    """``path`` for a file an entry point writes at its end (``--out rows.json``), checked
    before its work: not a directory, and its directory writable (:func:`check_writable`)."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path}: a directory; give the path of a file")
    check_writable(path.parent)
    return path


def check_writable(directory: Path | str) -> None:
    """Make ``directory`` and write (then remove) a probe file there: a read-only place
    or a full disk is refused before any work, naming the directory."""
    directory = Path(directory)
    # tagged like any temp file, so another process's remove_stale_temps spares it
    probe = temp_path(directory / "write_probe")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"\0")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink(missing_ok=True)
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
