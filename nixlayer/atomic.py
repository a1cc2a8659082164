"""Atomic outputs: write to a temporary path beside the destination, then rename.

A killed or failed writer leaves no file at the destination that a later run could take as
complete; the temporary path is removed on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import BinaryIO, Iterator

from nixlayer.errors import NixlayerError


def _temp_name(destination: str, suffix: str = "") -> str:
    directory = os.path.dirname(os.path.abspath(destination)) or "."
    if not os.path.isdir(directory):
        raise NixlayerError(f"cannot write {destination}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise NixlayerError(f"cannot write {destination}: directory {directory} is not writable")
    prefix = f".{os.path.basename(destination)}.tmp-"
    try:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    except OSError as e:
        raise NixlayerError(f"cannot write {destination}: {e.strerror}") from None
    os.close(fd)
    return path


@contextlib.contextmanager
def atomic_file(destination: str) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``destination``; rename it there when the block succeeds.

    Raises NixlayerError when the directory does not exist or is not writable.
    """
    temp = _temp_name(destination)
    try:
        with open(temp, "wb") as f:
            yield f
        os.chmod(temp, 0o644)
        os.replace(temp, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def atomic_directory(destination: str) -> Iterator[str]:
    """Yield a fresh temporary directory; it replaces ``destination`` when the block succeeds.

    An existing ``destination`` is moved aside first and removed after the rename, so readers
    see either the old or the new directory, never a mixture.
    """
    temp = _temp_name(destination)
    os.unlink(temp)
    os.mkdir(temp)
    try:
        yield temp
        os.chmod(temp, 0o755)
        if os.path.lexists(destination):
            old = _temp_name(destination, ".old")
            os.unlink(old)
            os.rename(destination, old)
            os.rename(temp, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temp, destination)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
