"""The customisation layer when it holds more than the contents' symlinks: files copied to the
root, commands run on its tree, a Nix database, permission rules.

:class:`RootTree` says what; :func:`root_entries` makes the layer's entries (written by
``nixlayer.layer.write_entries``), in this order, as nixpkgs and nix2container do:

1. the contents' entries (``nixlayer.customisation``: directories, symlinks into the store);
2. each ``copy_to_root`` directory's tree as it is, at ``/`` (nix2container's ``copyToRoot``):
   its files, directories (their modes kept) and symlinks. A directory several of them (or a
   content) hold is merged; anything else held twice is an error naming both;
3. the Nix database (``nixlayer.nixdb``), if asked for;
4. ``extra_commands``, then ``fake_root_commands``, as nixpkgs' ``buildLayeredImage`` runs
   them: ``sh -e`` in a copy of that tree (its current directory), the second under
   Debian's ``fakeroot``; owners and modes ``fake_root_commands`` set (``chown``, ``chmod``)
   are read from fakeroot's saved state, so they go into the layer though nothing ran as root.
   The tree is then read again, without ``/proc``, ``/sys`` and the store directory (nixpkgs
   leaves them out too). The commands run with the host's ``PATH``, ``umask 022``,
   ``SOURCE_DATE_EPOCH`` the layer's mtime, ``TZ=UTC``, ``LC_ALL=C`` and, as in a Nix build,
   ``HOME=/homeless-shelter``;
5. permission rules (``nixlayer.perms``), a rule with a ``path`` applying to the entries that
   store path gave (a content's directories and symlinks, a copy_to_root path's tree; what
   the commands made comes from none).

Reproducible as every layer: the entries' mtimes are the layer's, owners the layer's unless
fakeroot or a rule set them (fakeroot's are numeric: no user or group name, as nixpkgs writes
them, unless the id is the layer's), the commands' text is part of the layer's key. What the
commands make is theirs to keep reproducible (no dates, no random names).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Mapping, Sequence

from nixlayer.compression import Compression
from nixlayer.customisation import content_entries
from nixlayer.errors import NixlayerError
from nixlayer.layer import Entry, LayerBlob, LayerSettings, tree_entries, with_perms, write_entries
from nixlayer.nixdb import nix_version, write_nix_db
from nixlayer.perms import Matcher, PermRule, perms_json, rules_for
from nixlayer.storepath import DEFAULT_STORE_DIR, normalize_store_dir, on_disk

LEFT_OUT = ("/proc", "/sys")
"""Names left out of the tree read back after commands (with the store directory)."""


@dataclass(frozen=True)
class RootTree:
    """What the customisation layer holds beyond the contents' symlinks (empty: nothing).

    ``copy_to_root``: store paths (directories) whose trees go to ``/``; ``extra_commands``,
    ``fake_root_commands``: shell commands; ``perms``: the rules that can touch the layer;
    ``nix_db``: the store paths a Nix database registers (none: no database).
    """

    copy_to_root: tuple[str, ...] = ()
    extra_commands: str = ""
    fake_root_commands: str = ""
    perms: tuple[PermRule, ...] = ()
    nix_db: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.copy_to_root or self.extra_commands or self.fake_root_commands or self.perms or self.nix_db)

    def key(self) -> dict:
        """Everything of it that changes the layer's bytes, for the layer's key (``{}`` for an
        empty one; a field left empty is left out, so adding fields keeps old keys): the Nix
        and SQLite versions too when there is a database (its bytes are Nix's, and the SQLite
        library that fixes its registration times writes its version into the file's header)."""
        key: dict = {}
        if self.copy_to_root:
            key["copy_to_root"] = list(self.copy_to_root)
        if self.extra_commands:
            key["extra_commands"] = self.extra_commands
        if self.fake_root_commands:
            key["fake_root_commands"] = self.fake_root_commands
        if self.perms:
            key["perms"] = perms_json(self.perms)
        if self.nix_db:
            key["nix_db"] = sorted(self.nix_db)
            key["nix"] = nix_version()
            key["sqlite"] = sqlite3.sqlite_version
        return key


def _copy_dir(path: str, store_root: str) -> str:
    """Where the copy_to_root store path ``path`` is on disk; raises NixlayerError unless it is
    a directory there."""
    disk = on_disk(store_root, path)
    try:
        mode = os.lstat(disk).st_mode
    except OSError:
        raise NixlayerError(f"copy_to_root path {path} does not exist") from None
    if not stat.S_ISDIR(mode):
        raise NixlayerError(f"copy_to_root path {path} is not a directory: give a store path whose tree goes to /"
                            " (such as one made with runCommand or buildEnv)")
    return disk


def _sources(contents: Sequence[str], tree: RootTree, store_root: str,
             nar_sizes: Mapping[str, int] | None = None) -> list[tuple[str, str, list[Entry]]]:
    """(what, store path, entries) of each contents and copy_to_root path, in that order; the
    contents checked against their NAR sizes in ``nar_sizes`` (``content_entries``)."""
    sources = [(f"contents {c}", c, content_entries(c, store_root, (nar_sizes or {}).get(c))) for c in contents]
    for path in tree.copy_to_root:
        sources.append((f"copy_to_root {path}", path, list(tree_entries("", _copy_dir(path, store_root)))[1:]))
    return sources


def _merge(sources: list[tuple[str, str | None, list[Entry]]]) -> dict[str, tuple[Entry, str | None]]:
    """Name -> (entry, the store path it comes from) of all ``sources``. A directory several
    hold is one (the last one's mode: a copied tree's over a content's 0755); raises
    NixlayerError when two hold a name that is not a directory in both."""
    merged: dict[str, tuple[Entry, str | None, str]] = {}
    for what, path, entries in sources:
        for entry in entries:
            held = merged.get(entry.name)
            if held is not None and (held[0].kind, entry.kind) != ("dir", "dir"):
                raise NixlayerError(f"{held[2]} and {what} both provide {entry.name}: remove it from one")
            merged[entry.name] = (entry, path, what)
    return {name: (entry, path) for name, (entry, path, _) in merged.items()}


def check_root_tree(contents: Sequence[str], tree: RootTree, store_root: str = "/", nix_db: bool = False) -> None:
    """Check, before any layer is written, that ``tree`` can be made: copy_to_root paths are
    directories, nothing is provided twice, fakeroot is there for ``fake_root_commands``, Nix
    for a Nix database (``nix_db``, or ``tree.nix_db``). Raises NixlayerError."""
    _merge(_sources(contents, tree, store_root))
    if tree.fake_root_commands and shutil.which("fakeroot") is None:
        raise NixlayerError("fake_root_commands need fakeroot, which is not on the PATH: apt-get install fakeroot")
    if nix_db or tree.nix_db:
        nix_version()


def _materialise(entries: list[Entry], root: str) -> None:
    """Make ``entries`` (sorted, parents first) as files under ``root``; directories get their
    modes once all is made (a read-only store directory would refuse its children)."""
    dirs = []
    for entry in entries:
        disk = root + entry.name
        if entry.kind == "dir":
            os.mkdir(disk)
            dirs.append((disk, entry.mode))
        elif entry.kind == "symlink":
            os.symlink(entry.target, disk)
        else:
            assert entry.source is not None
            shutil.copyfile(entry.source, disk, follow_symlinks=False)
            os.chmod(disk, entry.mode)
    for disk, mode in reversed(dirs):
        os.chmod(disk, mode)


def _run(what: str, argv: list[str], root: str, mtime: int) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/homeless-shelter", "SOURCE_DATE_EPOCH": str(mtime),
           "TZ": "UTC", "LC_ALL": "C"}
    try:
        done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, errors="replace")
    except OSError as e:
        raise NixlayerError(f"cannot run {what}: {argv[0]}: {e.strerror}") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise NixlayerError(f"{what} failed (exit {done.returncode})" + (f": {lines[-1].strip()}" if lines else ""))


def _fakeroot_state(path: str) -> dict[tuple[int, int], tuple[int, int, int]]:
    """(device, inode) -> (mode, uid, gid) of what fakeroot saved in the file ``path`` (its
    ``-s`` format: ``dev=HEX,ino=N,mode=OCTAL,uid=N,gid=N,...`` a line)."""
    state = {}
    try:
        with open(path) as f:
            for line in f:
                fields = dict(part.split("=", 1) for part in line.strip().split(",") if "=" in part)
                state[(int(fields["dev"], 16), int(fields["ino"]))] = (
                    int(fields["mode"], 8), int(fields["uid"]), int(fields["gid"]))
    except FileNotFoundError:
        pass
    except (OSError, KeyError, ValueError) as e:
        raise NixlayerError(f"cannot read fakeroot's state {path}: {e}") from None
    return state


def _read_back(root: str, store_dir: str, state: dict, settings: LayerSettings, made_by: str) -> list[Entry]:
    """The tree at ``root`` as entries (``LEFT_OUT`` and the store directory left out), with the
    owners and modes fakeroot's ``state`` holds. Raises NixlayerError for a FIFO, socket or
    device file, naming it as the image would and ``made_by`` (the commands run)."""
    left_out = (*LEFT_OUT, store_dir)
    entries = []
    for entry in tree_entries("", root):  # the root first, named ""
        if any(entry.name == name or entry.name.startswith(name + "/") for name in left_out):
            continue
        if entry.kind == "dir":  # before tree_entries meets one, naming it in the temporary directory
            with os.scandir(root + entry.name) as children:
                for child in children:
                    if not (child.is_file(follow_symlinks=False) or child.is_dir(follow_symlinks=False)
                            or child.is_symlink()):
                        raise NixlayerError(f"{made_by} made {entry.name}/{child.name} a FIFO, socket or device file;"
                                            " a layer cannot hold one: remove it in the commands")
        if not entry.name:
            continue
        st = os.lstat(root + entry.name)
        faked = state.get((st.st_dev, st.st_ino))
        if faked is not None:
            mode, uid, gid = faked
            if stat.S_IFMT(mode) != stat.S_IFMT(st.st_mode):
                raise NixlayerError(f"fake_root_commands made {entry.name} a device file; a layer cannot hold one")
            entry = dataclasses.replace(
                entry, mode=entry.mode if entry.kind == "symlink" else stat.S_IMODE(mode), uid=uid, gid=gid,
                uname=settings.uname if uid == settings.uid else "", gname=settings.gname if gid == settings.gid else "")
        entries.append(entry)
    return entries


def _order(name: str) -> list[str]:
    return name.split("/")


def root_entries(contents: Sequence[str], tree: RootTree, work: str, settings: LayerSettings,
                 store_root: str = "/", store_dir: str = DEFAULT_STORE_DIR,
                 nar_sizes: Mapping[str, int] | None = None) -> list[Entry]:
    """The customisation layer's entries (see the module doc), in layer order. ``work`` is an
    empty directory for the tree, the database and the commands; files are read from it when
    the entries are written, so it must outlive them.

    Raises NixlayerError as :func:`check_root_tree`, or when a command fails (its exit status
    and last line of output) or makes a FIFO, socket or device file.
    """
    store_dir = normalize_store_dir(store_dir)
    sources: list[tuple[str, str | None, list[Entry]]] = list(_sources(contents, tree, store_root, nar_sizes))
    if tree.nix_db:
        db = os.path.join(work, "nix-db")
        os.mkdir(db)
        write_nix_db(db, tree.nix_db, contents, settings.mtime, store_dir, store_root)
        sources.append(("the Nix database", None, list(tree_entries("", db))[1:]))
    merged = _merge(sources)
    names = sorted(merged, key=_order)
    if tree.extra_commands or tree.fake_root_commands:
        root = os.path.join(work, "root")
        os.mkdir(root)
        _materialise([merged[name][0] for name in names], root)
        if tree.extra_commands:
            _run("extra_commands", ["sh", "-e", "-c", "umask 022\n" + tree.extra_commands], root, settings.mtime)
        state_file = os.path.join(work, "fakeroot-state")
        if tree.fake_root_commands:
            _run("fake_root_commands", ["fakeroot", "-s", state_file, "--", "sh", "-e", "-c",
                                        "umask 022\n" + tree.fake_root_commands], root, settings.mtime)
        sourced = {name: path for name, (_, path) in merged.items()}
        made_by = " or ".join(name for name, given in (("extra_commands", tree.extra_commands),
                                                       ("fake_root_commands", tree.fake_root_commands)) if given)
        listed = [(entry, sourced.get(entry.name)) for entry in
                  _read_back(root, store_dir, _fakeroot_state(state_file), settings, made_by)]
    else:
        listed = [merged[name] for name in names]
    matcher = Matcher(tree.perms)
    return [with_perms(entry, matcher, source) for entry, source in listed]


def write_root_layer(contents: Sequence[str], tree: RootTree, out: BinaryIO, settings: LayerSettings = LayerSettings(),
                     compression: Compression = Compression(), store_root: str = "/",
                     store_dir: str = DEFAULT_STORE_DIR, nar_sizes: Mapping[str, int] | None = None) -> LayerBlob:
    """Write the customisation layer of ``contents`` and ``tree`` to ``out``; its digests.
    ``nar_sizes``: the closure's NAR sizes the contents are checked against. Raises
    NixlayerError as :func:`root_entries`, before a byte is written."""
    with tempfile.TemporaryDirectory(prefix="nixlayer-root-") as work:
        entries = root_entries(contents, tree, work, settings, store_root, store_dir, nar_sizes)
        return write_entries(entries, out, settings, compression)


def layer_tree(tree: RootTree, contents: Sequence[str]) -> RootTree:
    """``tree`` with only the permission rules that can touch the customisation layer of
    ``contents`` (those of its contents and copy_to_root paths, and those without a path)."""
    return RootTree(tree.copy_to_root, tree.extra_commands, tree.fake_root_commands,
                    rules_for(tree.perms, [*contents, *tree.copy_to_root]), tree.nix_db)
