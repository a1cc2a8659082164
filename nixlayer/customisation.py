"""The customisation layer: symlinks at the image root into each ``contents`` store path.

Follows nixpkgs ``buildLayeredImage``, whose customisation layer is a ``symlinkJoin`` of the
contents: every directory found in a contents store path becomes a real directory at the same
place under ``/`` (directories present in several contents are merged), and everything else
(a file or a symlink) becomes a symlink to its place in the store, for example
``/bin/git -> /nix/store/...-git/bin/git``. Unlike ``symlinkJoin``, which silently keeps the
first of two contents that provide the same file, that is an error naming both.

The layer is reproducible: entries sorted by name, the settings' owner and mtime on each.
"""

from __future__ import annotations

import functools
import os
import stat
from typing import BinaryIO, Iterable

from nixlayer.compression import Compression
from nixlayer.errors import NixlayerError
from nixlayer.layer import Entry, LayerBlob, LayerSettings, write_entries
from nixlayer.storepath import on_disk


def customisation_entries(contents: Iterable[str], store_root: str = "/") -> tuple[Entry, ...]:
    """The tar entries of the customisation layer for ``contents`` (store paths, image order).

    Directories get mode 0755, symlinks mode 0777. Raises NixlayerError when a contents path
    is missing or not a directory, or when two contents provide the same non-directory path.
    The last result is kept (store paths never change): a build asks twice, to check the
    contents before any layer is written, then to write the layer.
    """
    return _entries(tuple(contents), store_root)


@functools.lru_cache(maxsize=1)
def _entries(contents: tuple[str, ...], store_root: str) -> tuple[Entry, ...]:
    tree: dict[str, tuple[str, str]] = {}  # image path -> ("dir", provider) / ("link", provider)
    for content in contents:
        disk = on_disk(store_root, content)
        try:
            is_dir = stat.S_ISDIR(os.lstat(disk).st_mode)
        except OSError:
            raise NixlayerError(f"contents path {content} does not exist") from None
        if not is_dir:
            raise NixlayerError(f"contents path {content} is not a directory; it cannot be joined at /")
        _merge(tree, content, disk, "")
    entries = []
    for name in sorted(tree, key=lambda n: n.split("/")):
        kind, provider = tree[name]
        if kind == "dir":
            entries.append(Entry(name, "dir", 0o755))
        else:
            entries.append(Entry(name, "symlink", 0o777, target=provider + name))
    return tuple(entries)


def _merge(tree: dict[str, tuple[str, str]], content: str, disk: str, rel: str) -> None:
    try:
        children = sorted(os.listdir(disk))
    except OSError as e:
        raise NixlayerError(f"cannot read contents directory {disk}: {e.strerror}") from None
    for child in children:
        name = f"{rel}/{child}"
        child_disk = os.path.join(disk, child)
        kind = "dir" if stat.S_ISDIR(os.lstat(child_disk).st_mode) else "link"
        seen = tree.get(name)
        if seen is not None and (kind, seen[0]) != ("dir", "dir"):
            raise NixlayerError(
                f"contents {seen[1]} and {content} both provide {name}; remove one from contents"
            )
        tree.setdefault(name, (kind, content))
        if kind == "dir":
            _merge(tree, content, child_disk, name)


def write_customisation_layer(
    contents: Iterable[str],
    out: BinaryIO,
    settings: LayerSettings = LayerSettings(),
    compression: Compression = Compression(),
    store_root: str = "/",
) -> LayerBlob:
    """Write the customisation layer of ``contents`` to ``out``; return its digests.

    Raises NixlayerError as ``customisation_entries`` does, before any byte is written.
    """
    return write_entries(customisation_entries(contents, store_root), out, settings, compression)
