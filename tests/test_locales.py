"""File names in every locale (issue 18, class 3): a layer names each file by its bytes on disk,
so the same store path gives the same layer, bit for bit, whatever the builder's locale and
Python's UTF-8 mode. Locales are made with ``localedef`` into a directory of the test's own
(``LOCPATH``); Python's UTF-8 mode is off (``PYTHONUTF8=0``), so each locale's encoding is the
file system encoding Python decodes names with, but in one run, where it is on (UTF-8 whatever
the locale: the shortcut ``nixlayer.layer.read_directory`` takes)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import REPO
from nixlayer.layer import write_store_layer

# (locale name, localedef input, charmap): names in these encodings decode differently.
LOCALES = [("en_US.UTF-8", "en_US", "UTF-8"), ("en_US.ISO-8859-1", "en_US", "ISO-8859-1"),
           ("ja_JP.EUC-JP", "ja_JP", "EUC-JP"), ("ru_RU.KOI8-R", "ru_RU", "KOI8-R")]

# Written under each locale: each store path's layer and the customisation layer of the
# contents given, their diff_ids as JSON, and the file system encoding Python used.
SCRIPT = """
import io, json, sys
from nixlayer.customisation import write_customisation_layer
from nixlayer.layer import write_store_layer
root, paths, contents = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
layers = {path: write_store_layer([path], io.BytesIO(), store_root=root).diff_id for path in paths}
layers["customisation"] = write_customisation_layer(contents, io.BytesIO(), store_root=root).diff_id
print(json.dumps({"encoding": sys.getfilesystemencoding(), "layers": layers}))
"""


@pytest.fixture(scope="module")
def locales(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("locales")
    for name, source, charmap in LOCALES:
        subprocess.run(["localedef", "-i", source, "-f", charmap, str(directory / name)], capture_output=True)
        assert (directory / name).is_dir(), f"localedef could not make {name}"
    return directory


def names_store(root: Path) -> str:
    """A store path under ``root`` whose names are UTF-8, not UTF-8 (Latin-1, EUC-JP bytes)
    and plain ASCII, in files, directories and a symlink's target."""
    disk = root / "nix" / "store" / ("n" * 32 + "-names")
    os.makedirs(disk)
    for name in ["café".encode(), b"caf\xe9", "日本".encode(), "日本".encode("euc_jp"), b"plain", b"\xff\xfe"]:
        with open(os.fsencode(disk) + b"/" + name + b".txt", "wb") as f:
            f.write(name)
        os.mkdir(os.fsencode(disk) + b"/" + name)
        os.symlink(b"../" + name + b".txt", os.fsencode(disk) + b"/" + name + b"/link")
    return f"/nix/store/{disk.name}"


def layers_in(locale: str, locales: Path, root: str, paths: list[str], contents: list[str],
              utf8_mode: bool = False) -> dict:
    env = dict(os.environ, LOCPATH=str(locales), LC_ALL=locale, PYTHONUTF8="1" if utf8_mode else "0",
               PYTHONCOERCECLOCALE="0")
    run = subprocess.run([sys.executable, "-c", SCRIPT, root, json.dumps(paths), json.dumps(contents)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_a_layer_is_the_same_in_every_locale(tmp_path, locales, vectors, vectors_app):
    """Names in several encodings give one layer under UTF-8, ISO-8859-1, EUC-JP, KOI8-R and
    C, and in Python's UTF-8 mode under ISO-8859-1; the fixture's store paths (``café`` among
    their names) give nixpkgs' layers in each."""
    paths = [names_store(tmp_path), *vectors["store_paths"].values()]
    results = {locale: layers_in(locale, locales, str(tmp_path), paths[:1], paths[:1])
               for locale in [name for name, _, _ in LOCALES] + ["C"]}
    encodings = {result["encoding"] for result in results.values()}
    assert encodings == {"utf-8", "iso8859-1", "euc_jp", "koi8-r", "ascii"}  # each locale took effect
    # Python's UTF-8 mode in a locale that is not: names are decoded as UTF-8 whatever the locale.
    results["utf8-mode"] = layers_in("en_US.ISO-8859-1", locales, str(tmp_path), paths[:1], paths[:1], utf8_mode=True)
    assert results["utf8-mode"]["encoding"] == "utf-8"
    layers = {json.dumps(result["layers"], sort_keys=True) for result in results.values()}
    assert len(layers) == 1, results
    for locale in ("en_US.ISO-8859-1", "C"):
        real = layers_in(locale, locales, "/", paths[1:], [])["layers"]
        expected = {vectors["store_paths"][name]: layer["diff_id"]
                    for name, layer in vectors["single_path_layers"].items()}
        assert {path: real[path] for path in expected} == expected, locale


def test_names_are_their_bytes_on_disk(tmp_path):
    """In the layer, each name is the bytes it has on disk (tar reads them back the same)."""
    path = names_store(tmp_path)
    out = io.BytesIO()
    write_store_layer([path], out, store_root=str(tmp_path))
    out.seek(0)
    with tarfile.open(fileobj=out, encoding="utf-8", errors="surrogateescape") as tar:
        names = {m.name.encode("utf-8", "surrogateescape") for m in tar.getmembers()}
        links = {m.linkname.encode("utf-8", "surrogateescape") for m in tar.getmembers() if m.issym()}
    disk = {os.fsencode(p).replace(os.fsencode(tmp_path), b"", 1) for p in tmp_path.joinpath("nix").rglob("*")}
    assert names - {b"/nix", b"/nix/store"} == {n for n in disk if n.startswith(path.encode())}
    assert b"../caf\xe9.txt" in links and "../日本".encode("euc_jp") + b".txt" in links
