"""A Nix database for an image's store paths (``--include-nix-db``, nixpkgs' ``includeNixDB``).

As nixpkgs' ``mkDbExtraCommand`` does it: the store paths' registration (``nix-store
--dump-db``: path, NAR hash, NAR size, deriver, references; what ``closureInfo`` writes) is
loaded with ``nix-store --load-db`` into an empty store whose root is a temporary directory,
every registration time is then set to the layer's mtime (as nixpkgs sets it to
``SOURCE_DATE_EPOCH``), so the database is the same bytes each time, and a GC root
``/nix/var/nix/gcroots/docker/NAME`` links each content, as nixpkgs adds them.

Kept in the image: ``/nix/var/nix/db/{db.sqlite,schema,big-lock}`` and the GC roots. Nix makes
the rest of ``/nix/var`` when it runs; the 8 MiB ``reserved`` file nixpkgs' images carry (space
kept for the garbage collector) is left out, Nix makes it again. Unlike nixpkgs, which registers
the closure of the contents, every store path of the image is registered (the closure of the
store paths the config names too), so ``nix-store --verify --check-contents`` checks them all.
Needs Nix (``nix-store``) where the layer is written.
"""

from __future__ import annotations

import functools
import os
import shutil
import sqlite3
import subprocess
import tempfile
from typing import Sequence

from nixlayer.closure import nix_error_line
from nixlayer.errors import NixlayerError
from nixlayer.storepath import DEFAULT_STORE_DIR

KEPT = {"db.sqlite": 0o644, "schema": 0o644, "big-lock": 0o600}
"""The files of ``/nix/var/nix/db`` the image gets, with their modes (Nix's, set here whatever
the umask)."""


def _nix_store(argv: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(["nix-store", *argv], input=stdin, capture_output=True, env=env)
    except OSError as e:
        raise NixlayerError(f"include_nix_db needs Nix: cannot run nix-store: {e.strerror}"
                            " (apt-get install nix-bin)") from None
    if done.returncode != 0:
        raise NixlayerError(f"nix-store {argv[0]} failed (exit {done.returncode}):"
                            f" {nix_error_line(done.stderr.decode(errors='replace'))}")
    return done.stdout


@functools.cache
def nix_version() -> str:
    """``nix-store --version``'s line: the database's bytes depend on it (its schema, its
    SQLite), so it is part of the key of a layer holding one. Raises NixlayerError without Nix."""
    return _nix_store(["--version"]).decode().strip()


def _store_uri(root: str, store_dir: str) -> str:
    return f"local?root={root}" + ("" if store_dir == DEFAULT_STORE_DIR else f"&store={store_dir}")


def _directories(root: str, *names: str) -> str:
    """``root/NAME/...`` made, each directory mode 0755; its path."""
    path = root
    for name in names:
        path = os.path.join(path, name)
        if not os.path.isdir(path):
            os.mkdir(path)
            os.chmod(path, 0o755)
    return path


def write_nix_db(root: str, store_paths: Sequence[str], gc_roots: Sequence[str], registration_time: int,
                 store_dir: str = DEFAULT_STORE_DIR, store_root: str = "/") -> None:
    """Write the database of ``store_paths`` under ``root`` (a directory: ``root/nix/var/nix/db``)
    and a GC root ``root/nix/var/nix/gcroots/docker/NAME`` for each of ``gc_roots``.

    The registration is read from the Nix store at ``store_root`` (the host's for ``/``).
    Raises NixlayerError when Nix cannot be run or a store path is not valid in that store.
    """
    env = {**os.environ}
    if store_root != "/":
        env["NIX_REMOTE"] = _store_uri(store_root, store_dir)
    registration = _nix_store(["--dump-db", *sorted(store_paths)], env) if store_paths else b""
    with tempfile.TemporaryDirectory(prefix="nixlayer-nixdb-") as work:
        # A user name is required by Nix (nixpkgs sets it too).
        load_env = {**os.environ, "NIX_REMOTE": _store_uri(work, store_dir), "USER": "nobody"}
        _nix_store(["--load-db"], load_env, registration)
        made = os.path.join(work, "nix", "var", "nix", "db")
        with sqlite3.connect(os.path.join(made, "db.sqlite")) as db:
            db.execute("UPDATE ValidPaths SET registrationTime = ?", (registration_time,))
        db.close()
        target = _directories(root, "nix", "var", "nix", "db")
        for name, mode in KEPT.items():
            shutil.copyfile(os.path.join(made, name), os.path.join(target, name))
            os.chmod(os.path.join(target, name), mode)
    gcroots = _directories(root, "nix", "var", "nix", "gcroots", "docker")
    for path in gc_roots:
        os.symlink(path, os.path.join(gcroots, os.path.basename(path)))
