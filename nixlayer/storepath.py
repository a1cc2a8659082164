"""Store path names: checking them, their hash part, and the nixpkgs sort key.

A store path is ``STORE_DIR/HASH-NAME`` where HASH is 32 characters of Nix's base-32 alphabet
(``0-9a-z`` without ``e o t u``) and NAME is the package name (Nix manual, "Store path").
"""

from __future__ import annotations

import os
import posixpath
import re

from nixlayer.errors import NixlayerError

DEFAULT_STORE_DIR = "/nix/store"
HASH_LENGTH = 32
NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"
_BASENAME = re.compile(r"^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+$")


def normalize_store_dir(store_dir: str) -> str:
    """Return ``store_dir`` as an absolute path without a trailing slash.

    Raises NixlayerError if it is not absolute.
    """
    if not store_dir.startswith("/"):
        raise NixlayerError(f"store directory {store_dir!r} is not an absolute path")
    return posixpath.normpath(store_dir)


def check_store_path(path: str, store_dir: str = DEFAULT_STORE_DIR) -> str:
    """Return ``path`` if it names a top-level store path directly inside ``store_dir``.

    Accepts ``/nix/store/HASH-NAME`` (a trailing slash is dropped). Raises NixlayerError with a
    one-line message for anything else: a path outside the store directory, a path inside a
    store path (``/nix/store/HASH-NAME/bin``), or a malformed base name.
    """
    store_dir = normalize_store_dir(store_dir)
    if not isinstance(path, str) or not path:
        raise NixlayerError(f"store path {path!r} is empty or not a string")
    norm = posixpath.normpath(path)
    parent, base = posixpath.split(norm)
    if parent != store_dir:
        raise NixlayerError(f"{path} is not a store path directly in the store directory {store_dir}")
    if not _BASENAME.match(base):
        raise NixlayerError(f"{path} is not a valid store path name (expected {store_dir}/HASH-NAME)")
    return norm


def on_disk(store_root: str, path: str) -> str:
    """Where ``path`` (a store path, or the store directory) is on disk when the store lives
    under ``store_root``: ``on_disk("/srv/chroot", "/nix/store/x")`` is
    ``/srv/chroot/nix/store/x``; with ``store_root="/"`` it is ``path`` itself."""
    return os.path.join(store_root, path.lstrip("/"))


def hash_part(path: str) -> str:
    """The 32-character hash part of a store path (``/nix/store/HASH-NAME`` -> ``HASH``)."""
    return posixpath.basename(path)[:HASH_LENGTH]


def package_name(path: str) -> str:
    """The sort key nixpkgs ``closure-graph.py`` uses to break popularity ties.

    The path is split on ``-``; the first piece (store dir and hash) moves to the end, so paths
    sort by name first and hash last: ``/nix/store/abc-zlib-1.3`` -> ``zlib-1.3-/nix/store/abc``.
    """
    first, _, rest = path.partition("-")
    return f"{rest}-{first}" if rest else first
