"""Atomic outputs: write to a temporary path beside the destination, then rename.

A killed or failed writer leaves no file at the destination that a later run could take as
complete; the temporary path is removed on failure.

A writer killed outright (``kill -9``, a crash, a power cut) cannot remove its temporary, so
every writer first removes the abandoned temporaries of its kind in the directory it writes
to (:func:`remove_stale_temporaries`): those untouched for ``STALE_TEMP_SECONDS`` (10 minutes).
A live writer writes continuously, so its temporary is never that old. Age is judged by
modification time against the writer's own new temporary, never by process id, so it holds
when several machines write to one directory over NFS, whatever their clocks say.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import BinaryIO, Iterator

from nixlayer.errors import NixlayerError

# A temporary whose newest modification (of anything in it, for a directory) is this many
# seconds older than a new temporary in the same directory is abandoned and removed.
STALE_TEMP_SECONDS = 10 * 60

# The temporary files this process is writing now (see :func:`writing`).
_writing: set[str] = set()


@contextlib.contextmanager
def writing(temp: str) -> Iterator[None]:
    """Count ``temp`` among the temporary files this process is writing while the block runs,
    for :func:`remove_own_temporaries`."""
    _writing.add(temp)
    try:
        yield
    finally:
        _writing.discard(temp)


def remove_own_temporaries() -> None:
    """Remove the temporary files this process is writing: for a process about to end at a
    signal it may catch (``tasks.runtime``: Luigi terminates the processes it forked for tasks
    when its run is interrupted), which would otherwise leave them until they are stale."""
    for temp in list(_writing):
        with contextlib.suppress(OSError):
            os.unlink(temp)


def remove_stale_temporaries(directory: str, prefix: str, reference: str) -> list[str]:
    """Remove the entries of ``directory`` named ``prefix*`` untouched for STALE_TEMP_SECONDS.

    ``reference`` is the caller's own temporary, just created in ``directory``: its mtime is
    "now" as the directory's file system sees it (on NFS, the server's clock), and it is never
    removed. A directory counts as touched when anything in it was. Entries another process
    removes meanwhile, or that cannot be removed, are skipped. Returns the paths removed.
    """
    cutoff = os.stat(reference).st_mtime - STALE_TEMP_SECONDS
    removed = []
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(prefix) and e.path != reference]
    except OSError:
        return removed
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if _touched_since(entry.path, cutoff):
                    continue
                shutil.rmtree(entry.path)
            elif entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
            else:
                continue
        except OSError:
            continue
        removed.append(entry.path)
    return removed


def _touched_since(directory: str, cutoff: float) -> bool:
    """True if ``directory`` or anything under it was modified at or after ``cutoff``."""
    if os.lstat(directory).st_mtime >= cutoff:
        return True
    for parent, dirs, files in os.walk(directory):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(os.path.join(parent, name)).st_mtime >= cutoff:
                    return True
    return False


def _temp_file(destination: str, temp_dir: str | None = None) -> tuple[int, str]:
    """A new temporary file for ``destination`` (in ``temp_dir``, else beside it): its open
    descriptor and path."""
    directory = os.path.dirname(os.path.abspath(destination)) or "."
    if not os.path.isdir(directory):
        raise NixlayerError(f"cannot write {destination}: directory {directory} does not exist")
    prefix = f".{os.path.basename(destination)}.tmp-"
    try:
        return tempfile.mkstemp(prefix=prefix, dir=temp_dir or directory)
    except OSError as e:
        raise NixlayerError(f"cannot write {destination}: {e.strerror}") from None


def check_writable(destination: str) -> None:
    """Raise NixlayerError unless a file can be created beside ``destination`` (in its
    directory): a probe file is made and removed, so a bad output fails before any work."""
    fd, probe = _temp_file(destination)
    os.close(fd)
    os.unlink(probe)


def _sweep(destination: str, temp: str) -> None:
    """Remove abandoned temporaries of ``destination`` (``.NAME.tmp-*`` beside it)."""
    remove_stale_temporaries(os.path.dirname(temp), f".{os.path.basename(destination)}.tmp-", temp)


@contextlib.contextmanager
def atomic_file(destination: str, sweep: bool = True, temp_dir: str | None = None) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``destination``; rename it there when the block succeeds.

    With ``sweep``, first remove abandoned temporaries of ``destination``
    (:func:`remove_stale_temporaries`); callers writing many small files into one large
    directory may skip that, and make the temporary in a small directory of their own on the
    same file system instead (``temp_dir``, which they sweep): creating a file under a random
    name costs ~4x more in a directory of thousands (ext4, measured here). Raises NixlayerError
    when the directory does not exist or is not writable.
    """
    fd, temp = _temp_file(destination, temp_dir)
    try:
        with writing(temp), open(fd, "wb") as f:
            if sweep and temp_dir is None:
                _sweep(destination, temp)
            yield f
            os.fchmod(fd, 0o644)
        os.replace(temp, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
