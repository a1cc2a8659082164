"""Images as people ship them: files copied to the root, extra and fakeroot commands, permission
rules and a Nix database, run in podman; the README's recipes (``fixtures/root.nix``)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO, SLOW, first_fast, nix_build, run_pipelines
from nixlayer.errors import NixlayerError
from nixlayer.perms import PermRule, parse_perms, rules_for
from test_build import PODMAN_RUN
from test_user_errors import error_lines

ROOT_NIX = FIXTURES / "root.nix"
MTIME = "1970-01-01T00:00:01Z"


@pytest.fixture(scope="module")
def paths() -> dict[str, str]:
    return {attr: nix_build(ROOT_NIX, attr) for attr in ("busybox", "users", "cacert", "tzdata")}


def spec_build(attr: str, out: Path) -> str:
    subprocess.run(["nix-build", str(ROOT_NIX), "-A", attr, "-o", str(out)], check=True, capture_output=True)
    return str(out)


def image_digest(run: subprocess.CompletedProcess) -> str:
    """The image digest of a run's last line: ``nixlayer: wrote ...: NAME:TAG sha256:...; ...``."""
    assert run.returncode == 0, run.stderr
    return run.stderr.strip().splitlines()[-1].split(" sha256:")[1].split(";")[0]


def layers(archive: Path) -> list[dict[str, tarfile.TarInfo]]:
    """Each layer of a docker-archive: its entries by name."""
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))[0]
        result = []
        for name in manifest["Layers"]:
            with tarfile.open(fileobj=tar.extractfile(name)) as layer:
                result.append({member.name.lstrip("/"): member for member in layer.getmembers()})
    return result


def unpack(archive: Path, root: Path) -> Path:
    """The image's file tree under ``root``, its layers extracted in order."""
    root.mkdir()
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))[0]
        for name in manifest["Layers"]:
            # GNU tar, which strips the leading '/' of a layer's member names: Python's tarfile
            # without extraction filters (Debian 12's 3.11.2 has none) would write /nix/var/nix/db
            # and /etc/passwd of the image over the machine's own.
            subprocess.run(["tar", "-x", "-C", str(root)], input=tar.extractfile(name).read(),
                           check=True, capture_output=True)
    return root


def podman(image: str, script: str, user: str | None = None) -> str:
    argv = [*PODMAN_RUN, *(["--user", user] if user else []), image, "/bin/sh", "-c", script]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def podman_load(archive: Path) -> None:
    subprocess.run(["podman", "load", "-q", "-i", str(archive)], check=True, capture_output=True, timeout=120)


@SLOW
def test_recipes_from_nix_run_in_podman_and_build_the_same_bytes_twice(tmp_path, paths):
    """The README's recipes, in Nix: a non-root user writing to /tmp (1777), CA certificates,
    time zones, a fakeRootCommands chown, a perms rule on a store path's file, a Nix database
    of the closure; two builds (two layer stores) give the same image."""
    spec = spec_build("recipes", tmp_path / "spec")
    first = run_pipelines(["BuildImage", "--spec", spec, "--output", str(tmp_path / "a.tar")], tmp_path / "store-a")
    second = run_pipelines(["BuildImage", "--spec", spec, "--output", str(tmp_path / "b.tar")], tmp_path / "store-b")
    assert image_digest(first) == image_digest(second)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()

    podman_load(tmp_path / "a.tar")
    out = podman("localhost/recipes:1", "echo hi > /tmp/x && cat /tmp/x && id && stat -c '%a %u %g' /tmp"
                 f" {paths['busybox']}/bin/busybox && ls -ln / | grep ' data$'"
                 " && head -1 $SSL_CERT_FILE && TZ=Europe/Paris date -d @0 +%Z", user="1000").splitlines()
    assert out[0] == "hi"
    assert out[1] == "uid=1000(app) gid=1000(app) groups=1000(app)"
    assert out[2:4] == ["1777 0 0", "750 0 1000"]
    assert out[4].split()[2:4] == ["1000", "1000"]  # the fakeRootCommands chown, in ls -ln
    assert out[5:] == ["-----BEGIN CERTIFICATE-----", "CET"]

    # The Nix database lists the closure, as Debian's Nix reads it from the unpacked image,
    # and --verify --check-contents finds every store path whole.
    root = unpack(tmp_path / "a.tar", tmp_path / "root")
    store = f"local?root={root}"
    requisites = subprocess.run(["nix-store", "--store", store, "-q", "--requisites", paths["busybox"]],
                                check=True, capture_output=True, text=True).stdout.split()
    assert requisites == [paths["busybox"]]
    with sqlite3.connect(root / "nix/var/nix/db/db.sqlite") as db:
        registered = dict(db.execute("SELECT path, registrationTime FROM ValidPaths"))
    assert registered == {path: 1 for path in paths.values()}  # contents, copyToRoot, config's tzdata
    verify = subprocess.run(["nix-store", "--store", store, "--verify", "--check-contents"], capture_output=True, text=True)
    assert verify.returncode == 0 and "corrupt" not in verify.stderr and "modified" not in verify.stderr, verify.stderr
    assert (root / "nix/var/nix/gcroots/docker" / Path(paths["busybox"]).name).readlink() == Path(paths["busybox"])


def cli_build(tmp_path: Path, store: str, output: str, paths: dict, *extra: str) -> subprocess.CompletedProcess:
    return run_pipelines([
        "BuildImage", "--name", "root", "--tag", "1", "--output", str(tmp_path / output),
        "--contents", json.dumps([paths["busybox"]]), "--copy-to-root", json.dumps([paths["users"]]),
        "--config", json.dumps({"User": "app", "Env": ["PATH=/bin"]}), *extra], tmp_path / store)


COMMANDS = ["--extra-commands", "mkdir -m 1777 tmp && mkdir data",
            "--fake-root-commands", "chown 1000:1000 data && chmod 0700 data"]


def test_command_line_flags_build_reproducibly_and_run(tmp_path, paths):
    rules = json.dumps([{"path": paths["busybox"], "regex": "/bin/busybox$", "mode": "0755", "uid": 1000,
                         "uname": "app"}, {"regex": "^/etc/passwd$", "mode": "0644"}])
    extra = [*COMMANDS, "--perms", rules, "--include-nix-db", "true"]
    first, second = cli_build(tmp_path, "a", "a.tar", paths, *extra), cli_build(tmp_path, "b", "b.tar", paths, *extra)
    assert image_digest(first) == image_digest(second)
    custom = layers(tmp_path / "a.tar")[-1]
    data = custom["data"]
    assert (data.uid, data.gid, data.uname, data.gname, data.mode) == (1000, 1000, "", "", 0o700)
    assert custom["tmp"].mode == 0o1777 and custom["etc/passwd"].mode == 0o644  # a rule on a copied file
    assert custom["etc/group"].mode == 0o444 and custom["etc/passwd"].isfile()
    assert "nix/var/nix/db/db.sqlite" in custom and "nix/store" not in custom
    podman_load(tmp_path / "a.tar")
    out = podman("localhost/root:1", f"id -un && ls -ln / | grep ' data$' && stat -c '%a %U' {paths['busybox']}/bin/busybox")
    assert out.splitlines()[0] == "app"
    assert out.splitlines()[1].split()[:4] == ["drwx------", "2", "1000", "1000"]
    assert out.splitlines()[2] == "755 app"


@SLOW
def test_what_changes_which_layer(tmp_path, paths):
    """A rule with a path is in the key of that store path's layer only; the commands' text in
    the customisation layer's; a rule without a path in every layer's."""
    def built(*extra: str) -> tuple[list[str], int]:  # the image's layers (bottom first), and how many were written
        run = cli_build(tmp_path, "store", "x.tar", paths, *extra)
        with tarfile.open(tmp_path / "x.tar") as tar:
            diff_ids = json.load(tar.extractfile("manifest.json"))[0]["Layers"]
        return diff_ids, int(run.stderr.strip().splitlines()[-1].split("layers: ")[1].split(" built")[0])

    plain, written = built()
    assert written == len(plain) == 3
    busybox_rule = json.dumps([{"path": paths["busybox"], "regex": "busybox$", "mode": "0700"}])
    ruled, written = built("--perms", busybox_rule)
    busybox_layer = [i for i, layer in enumerate(layers(tmp_path / "x.tar"))
                     if any(name.endswith("busybox-1.0/bin/busybox") for name in layer)]
    assert [i for i, (a, b) in enumerate(zip(plain, ruled)) if a != b] == busybox_layer
    assert written == 2  # and the customisation layer, of busybox's symlinks (which keep their mode: same bytes)
    commands, written = built(*COMMANDS)
    assert [i for i, (a, b) in enumerate(zip(plain, commands)) if a != b] == [len(plain) - 1] and written == 1
    everywhere, written = built("--perms", json.dumps([{"regex": ".", "gid": 5}]))
    assert all(a != b for a, b in zip(plain, everywhere)) and written == 3
    assert built() == (plain, 0)  # back: every layer from the layer store


@pytest.mark.parametrize("extra, message", first_fast([
    (["--perms", '[{"regex": "(", "mode": "0644"}]'], "perms rule 1: regex '(' is not valid"),
    (["--perms", '[{"regex": "x", "mode": "999"}]'], 'perms rule 1: mode must be octal text such as "0644"'),
    (["--perms", '[{"regex": "x"}]'], "perms rule 1: sets nothing: give mode, uid, gid, uname or gname"),
    (["--extra-commands", "echo oops >&2; exit 3"], "extra_commands failed (exit 3): oops"),
]))
def test_bad_root_input_one_line_nothing_written(tmp_path, paths, extra, message):
    run = cli_build(tmp_path, "store", "x.tar", paths, *extra)
    lines = error_lines(run)
    assert run.returncode != 0 and len(lines) == 1 and lines[0].startswith(f"nixlayer: error: {message}"), run.stderr
    assert not (tmp_path / "x.tar").exists()


@SLOW
def test_copy_to_root_conflict_one_line_before_any_layer(tmp_path, paths):
    """Two trees holding /etc/passwd: refused before any layer is written."""
    other = subprocess.run(["nix-build", "-E", (
        f'derivation {{ name = "other-users"; system = builtins.currentSystem; builder = "/bin/sh";'
        f' args = [ "-c" "/bin/mkdir -p $out/etc && echo x > $out/etc/passwd" ]; }}'), "--no-out-link"],
        check=True, capture_output=True, text=True).stdout.strip()
    run = cli_build(tmp_path, "store", "x.tar", {**paths, "users": paths["users"]},
                    "--copy-to-root", json.dumps([paths["users"], other]))
    assert error_lines(run) == [f"nixlayer: error: copy_to_root {paths['users']} and copy_to_root {other} both provide"
                                " /etc/passwd: remove it from one"], run.stderr
    assert not (tmp_path / "x.tar").exists() and not (tmp_path / "store" / "blobs").exists()


@SLOW
def test_batch_file_takes_the_same_keys(tmp_path, paths):
    (tmp_path / "batch.toml").write_text(f"""
contents = ["{paths['busybox']}"]
[[image]]
name = "root"
output = "root.tar"
copy_to_root = ["{paths['users']}"]
extra_commands = "mkdir -m 1777 tmp"
fake_root_commands = "mkdir data && chown 1000:1000 data"
include_nix_db = true
perms = [{{ regex = "^/etc/passwd$", mode = "0600" }}]
""")
    run = run_pipelines(["BuildImages", "--batch-file", str(tmp_path / "batch.toml"), "--report", str(tmp_path / "r.json")],
                        tmp_path / "store")
    assert run.returncode == 0, run.stderr
    custom = layers(tmp_path / "root.tar")[-1]
    assert custom["tmp"].mode == 0o1777 and custom["etc/passwd"].mode == 0o600 and custom["data"].uid == 1000
    assert "nix/var/nix/db/db.sqlite" in custom


def test_parse_perms_and_the_layers_a_rule_can_touch():
    rules = parse_perms('[{"regex": "^/tmp$", "mode": "1777"}, {"path": "/nix/store/a-x", "regex": ".", "uid": 1}]',
                        "/nix/store")
    assert rules == (PermRule("^/tmp$", mode=0o1777), PermRule(".", path="/nix/store/a-x", uid=1))
    assert rules_for(rules, ["/nix/store/b-y"]) == rules[:1]
    assert rules_for(rules, ["/nix/store/a-x"]) == rules
    assert parse_perms("") == ()
    with pytest.raises(NixlayerError, match="perms rule 1: path must be a store path"):
        parse_perms([{"path": "/etc", "regex": ".", "mode": 0o644}], "/nix/store")
    with pytest.raises(NixlayerError, match="perms rule 1: unknown field 'mod'"):
        parse_perms([{"regex": ".", "mod": "0644"}])


def test_root_entries_merge_contents_and_copied_trees(tmp_path):
    """The core alone, on a store under tmp_path: a directory a content and a copied tree both
    hold is one, with the copied tree's mode; the content's files are symlinks, the copied ones
    files; a rule with a path touches that store path's entries only."""
    from nixlayer.layer import LayerSettings
    from nixlayer.rootfs import RootTree, root_entries

    content, copied = "/nix/store/" + "a" * 32 + "-app", "/nix/store/" + "b" * 32 + "-etc"
    (tmp_path / content.lstrip("/") / "bin").mkdir(parents=True)
    (tmp_path / content.lstrip("/") / "bin" / "app").write_text("app")
    (tmp_path / copied.lstrip("/") / "bin").mkdir(parents=True)
    (tmp_path / copied.lstrip("/") / "etc").mkdir()
    (tmp_path / copied.lstrip("/") / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\n")
    (tmp_path / copied.lstrip("/") / "bin").chmod(0o555)
    rules = parse_perms([{"path": copied, "regex": ".", "uid": 7}])
    work = tmp_path / "work"
    work.mkdir()
    entries = root_entries([content], RootTree((copied,), perms=rules), str(work), LayerSettings(), str(tmp_path))
    assert [(e.name, e.kind, oct(e.mode), e.uid) for e in entries] == [
        ("/bin", "dir", "0o555", 7), ("/bin/app", "symlink", "0o777", None),
        ("/etc", "dir", "0o755", 7), ("/etc/passwd", "file", "0o644", 7)]
    assert entries[1].target == content + "/bin/app"


@pytest.mark.parametrize("commands", [["--extra-commands", "mkdir -p srv && mkfifo srv/queue"],
                                      ["--extra-commands", "mkdir -p srv", "--fake-root-commands", "mkfifo srv/queue"]])
def test_a_fifo_the_commands_make_is_named_as_in_the_image(tmp_path, paths, commands):
    """A FIFO made by the commands: one line naming it as the image would hold it, and which
    commands run, never the temporary directory they ran in; nothing written."""
    run = cli_build(tmp_path, "store", "x.tar", paths, *commands)
    what = "extra_commands" if len(commands) == 2 else "extra_commands or fake_root_commands"
    assert (run.returncode, error_lines(run)) == (30, [
        f"nixlayer: error: {what} made /srv/queue a FIFO, socket or device file; a layer cannot hold one: remove it"
        " in the commands"]), run.stderr
    assert not (tmp_path / "x.tar").exists()
