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


# Links followed at most to resolve a path the user gave (Linux's own limit, MAXSYMLINKS).
_MAX_LINKS = 40


def resolve_store_path(path: str, store_dir: str = DEFAULT_STORE_DIR) -> str:
    """The top-level store path a user means by ``path``, a store path or a link to one.

    ``path`` is a store path (``/nix/store/HASH-NAME``, returned normalized without touching
    the disk, so it may live on another machine or under a chroot store), or a symbolic link
    to one, such as the ``./result`` link ``nix-build`` leaves: links are followed (relative
    ones from the working directory), one at a time, until the path names an entry directly
    in ``store_dir``, which is returned (a store path that is itself a symlink is kept).

    Raises NixlayerError, one line saying what to give instead, for: a derivation
    (``HASH-NAME.drv``: realise it), a path inside a store path (give the store path), a link
    to a path outside ``store_dir``, a path that does not exist, any other path outside
    ``store_dir``, a malformed store path name, more than 40 links.
    """
    store_dir = normalize_store_dir(store_dir)
    if not isinstance(path, str) or not path:
        raise NixlayerError(f"store path {path!r} is empty or not a string")
    current = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        if posixpath.dirname(current) == store_dir:
            break
        # Links in the directories above are followed first: ./result/bin is in the store.
        current = os.path.join(os.path.realpath(os.path.dirname(current)), os.path.basename(current))
        if posixpath.dirname(current) == store_dir or not os.path.islink(current):
            break
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    else:
        raise NixlayerError(f"{path}: more than {_MAX_LINKS} symbolic links to follow")
    resolved = current != os.path.abspath(path)
    shown = f"{path} (which resolves to {current})" if resolved else path
    if posixpath.dirname(current) == store_dir:
        if current.endswith(".drv"):
            raise NixlayerError(
                f"{shown} is a derivation, not a build output: run `nix-store --realise {current}` (or "
                f"`nix-build {current}`) and give the output path it prints")
        return check_store_path(current, store_dir)
    top = current
    while posixpath.dirname(top) not in (store_dir, top):
        top = posixpath.dirname(top)
    if posixpath.dirname(top) == store_dir:
        raise NixlayerError(f"{shown} is inside the store path {top}: give {top} itself (its whole contents are"
                            " linked into /)")
    if resolved:
        raise NixlayerError(f"{path} resolves to {current}, which is not in the store directory {store_dir}:"
                            " give a store path (nix-build prints one) or a link to one such as ./result")
    if not os.path.lexists(current):
        raise NixlayerError(f"{path} does not exist: give a store path (nix-build prints one) or a link to one"
                            " such as ./result")
    raise NixlayerError(f"{path} is not a store path: give a path in {store_dir} (nix-build prints one) or a link"
                        " to one such as ./result")


def on_disk(store_root: str, path: str) -> str:
    """Where ``path`` (a store path, or the store directory) is on disk when the store lives
    under ``store_root``: ``on_disk("/srv/chroot", "/nix/store/x")`` is
    ``/srv/chroot/nix/store/x``; with ``store_root="/"`` it is ``path`` itself."""
    return os.path.join(store_root, path.lstrip("/"))


def hash_part(path: str) -> str:
    """The 32-character hash part of a store path (``/nix/store/HASH-NAME`` -> ``HASH``)."""
    return posixpath.basename(path)[:HASH_LENGTH]


# Nix's parseDrvName: the version starts at the first dash followed by a character that is not
# a letter.
_VERSION_START = re.compile(r"-(?=[^A-Za-z])")


def parse_drv_name(name: str) -> tuple[str, str]:
    """A store path name split as Nix's ``builtins.parseDrvName`` splits it: the name, and the
    version from the first dash followed by a character that is not a letter (empty if none):
    ``openssl-3.0.13-bin`` -> ``("openssl", "3.0.13-bin")``, ``hello`` -> ``("hello", "")``."""
    match = _VERSION_START.search(name)
    if match is None:
        return name, ""
    return name[:match.start()], name[match.end():]


def store_path_name(path: str) -> str:
    """The name of a store path, after its hash part: ``/nix/store/HASH-zlib-1.3`` -> ``zlib-1.3``."""
    return posixpath.basename(path)[HASH_LENGTH + 1:]


def package_name(path: str) -> str:
    """The sort key nixpkgs ``closure-graph.py`` uses to break popularity ties.

    The path is split on ``-``; the first piece (store dir and hash) moves to the end, so paths
    sort by name first and hash last: ``/nix/store/abc-zlib-1.3`` -> ``zlib-1.3-/nix/store/abc``.
    """
    first, _, rest = path.partition("-")
    return f"{rest}-{first}" if rest else first
