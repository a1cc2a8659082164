"""Image specs: the JSON file that nixlayer's Nix library (``nix/default.nix``) builds.

A spec describes one or more images and holds the closure graph of all their store paths, as
Nix computed it, so nixlayer builds from it without asking Nix anything. Format version 1 is a
JSON object with these keys (any others, such as the ``name``, ``builder`` and ``outputs`` Nix
writes beside them, are ignored):

- ``nixlayer_spec``: the format version, the integer 1;
- ``store_dir``: the Nix store directory, e.g. ``/nix/store``;
- ``images``: a non-empty list of objects, one per image, with the fields of
  :data:`IMAGE_FIELDS` (the ``BuildImage`` parameters of the same names); ``key`` (which image
  of the spec, a file name: letters, digits and ``. _ + -``) and ``name`` are required, every other field left out takes ``BuildImage``'s
  default; ``index`` (a file name too) makes the image one platform's image of the
  multi-platform index of that name (``BuildImages --spec`` writes the images of one index, each
  of its own ``platform``, to one output, see ``pipelines.index``);
- ``closure``: the closure graph of every image's contents and of the store paths its config
  mentions, as nixpkgs ``exportReferencesGraph`` writes it: a list of ``{path, narSize,
  narHash, closureSize, references}``.

This module only reads and checks specs: it never imports Luigi.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nixlayer.closure import ClosureGraph, graph_from_json
from nixlayer.errors import NixlayerError
from nixlayer.image import config_store_paths
from nixlayer.index import parse_platform
from nixlayer.perms import parse_perms
from nixlayer.plan import DEFAULT_LAYERING, check_layering
from nixlayer.storepath import normalize_store_dir, on_disk

SPEC_VERSION = 1
"""The spec format version this nixlayer reads and ``nix/default.nix`` writes."""

# An image's key names its output file in a batch: no directory, nothing hidden.
_KEY = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$")
_STRING = ((str,), "a string")
_INTEGER = ((int,), "an integer")
IMAGE_FIELDS: Mapping[str, tuple[tuple[type, ...], str]] = {
    "key": _STRING,
    "name": _STRING,
    "tag": _STRING,
    "contents": ((list,), "a list of store paths"),
    "config": ((dict,), "an object (the image config)"),
    "created": _STRING,
    "mtime": _STRING,
    "max_layers": _INTEGER,
    "layering": _STRING,
    "layering_pipeline": ((list,), "a list of steps (nixpkgs' layeringPipeline)"),
    "uid": _INTEGER,
    "gid": _INTEGER,
    "uname": _STRING,
    "gname": _STRING,
    "include_store_paths": ((bool,), "true or false"),
    "copy_to_root": ((list,), "a list of store paths"),
    "extra_commands": _STRING,
    "fake_root_commands": _STRING,
    "perms": ((list,), "a list of permission rules"),
    "include_nix_db": ((bool,), "true or false"),
    "architecture": _STRING,
    "from_image": _STRING,
    "platform": ((str, dict), 'a platform such as "linux/arm64" or {"architecture": "arm", "variant": "v7"}'),
    "index": _STRING,
    "format": _STRING,
    "compression": _STRING,
    "compression_level": _INTEGER,
    "source": _STRING,
    "revision": _STRING,
    "version": _STRING,
}
"""The fields of an image in a spec: field -> (JSON types, what the value must be). The values
themselves (a name's grammar, a layer budget's range, ...) are checked where every build
checks them, when the image is planned."""


@dataclass(frozen=True)
class SpecImage:
    """One image of a spec: its ``key``, its ``parameters`` (every field but ``key`` and
    ``index``, ``config`` as a dict, ``contents`` and ``copy_to_root`` as lists of store paths,
    ``perms`` as a list of rules, ``platform`` as its text ``os/architecture[/variant]``) and
    the ``index`` it is an image of (None: none)."""

    key: str
    parameters: Mapping[str, Any]
    index: str | None = None


@dataclass(frozen=True)
class Override:
    """A parameter given beside a spec (``field``, the value ``given``) that overrides the
    value the spec sets (``spec``); ``str()`` is how the warning names it:
    ``--tag 2 (spec: latest)``."""

    field: str
    given: Any
    spec: Any

    def __str__(self) -> str:
        return f"--{self.field.replace('_', '-')} {_shown(self.given)} (spec: {_shown(self.spec)})"


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=list)
    return text if len(text) <= 60 else text[:57] + "..."


def override_warning(source: str, overrides: Iterable[Override]) -> str:
    """The warning (without ``nixlayer: warning:``) that parameters given beside the spec read
    from ``source`` override it: ``spec SOURCE: overridden by what is given beside it: ...``."""
    return f"spec {source}: overridden by what is given beside it: {', '.join(map(str, overrides))}"


SPEC_SUFFIX = ".nixlayer.json"
"""How the store paths of specs end (``nix/default.nix`` names them ``KEY.nixlayer.json``)."""


@dataclass(frozen=True)
class ImageSpec:
    """A checked spec: where it was read from, its store directory, its images (in the
    spec's order, at least one) and the closure graph of all of them."""

    source: str
    store_dir: str
    images: tuple[SpecImage, ...]
    graph: ClosureGraph

    def image(self, key: str | None = None) -> SpecImage:
        """The image called ``key``; without a key, the spec's only image.

        Raises NixlayerError for an unknown key, or no key in a spec of several images (the
        message lists the keys).
        """
        keys = [image.key for image in self.images]
        if key is None and len(self.images) == 1:
            return self.images[0]
        if key is None:
            raise NixlayerError(f"spec {self.source} holds {len(keys)} images ({', '.join(keys)}): name one with"
                                " --spec-image KEY, or build them all with BuildImages --spec")
        for image in self.images:
            if image.key == key:
                return image
        raise NixlayerError(f"spec {self.source} has no image {key!r}; it has: {', '.join(keys)}")

    def parameters(self, key: str | None, given: Mapping[str, Any]) -> tuple[dict[str, Any], list[Override]]:
        """The parameters of the image ``key`` (as :meth:`image` finds it) with those ``given``
        beside the spec over them: what every consumer of a spec (BuildImage, PushImage,
        BuildImages, the plan command) builds or plans.

        ``given``: field -> value of each parameter given beside the spec, as the spec holds
        such values (``config`` a dict, ``contents`` a list; a value the spec could not hold,
        such as a config that is not JSON, is simply another value). Returns the fields the
        image sets, ``store_dir`` (the spec's) and ``given``, a given value winning; and the
        overrides, in the spec's order: each field the spec sets that ``given`` sets to another
        value. A field the spec leaves out is not overridden, whatever its default.

        Raises NixlayerError as :meth:`image`.
        """
        spec_values = {**self.image(key).parameters, "store_dir": self.store_dir}
        overrides = [Override(field, given[field], value) for field, value in spec_values.items()
                     if field in given and given[field] != value]
        return {**spec_values, **given}, overrides

    def closure(self, roots: Iterable[str], store_root: str = "/") -> ClosureGraph:
        """The closure graph of ``roots``, taken from the spec, after checking that each of its
        store paths is still on disk under ``store_root`` (an lstat each: Nix is not asked).

        Raises NixlayerError for a root the spec does not hold (contents or a config given
        beside the spec that name other store paths) or a store path gone from the store.
        """
        roots = list(roots)
        for root in roots:
            if root not in self.graph:
                raise NixlayerError(f"{root} is not in the closure of spec {self.source}: contents and config"
                                    " given beside a spec can only name store paths the spec holds")
        graph = self.graph.closure(roots)
        for path in graph.paths:
            if not os.path.lexists(on_disk(store_root, path)):
                raise NixlayerError(f"spec {self.source}: store path {path} is gone from the store: build the spec"
                                    " again with nix-build and keep its result link (it keeps the spec's store paths)")
        return graph


def read_spec(path: str) -> ImageSpec:
    """Read and check the spec in the file ``path`` (``./result`` of a ``nix-build``).

    Raises NixlayerError naming ``path``: unreadable, a ``.drv`` file, or anything
    :func:`parse_spec` refuses.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise NixlayerError(f"cannot read spec {path}: {error.strerror}") from None
    if path.endswith(".drv") or data.startswith(b"Derive("):
        raise NixlayerError(f"spec {path} is a derivation: build it with nix-build and give its output (./result)")
    return parse_spec(data, path)


def parse_spec(data: bytes | str, source: str) -> ImageSpec:
    """Check a spec's JSON text (``source`` names it in messages) and return it.

    Checks the format version, every image's fields and their JSON types, unique keys, the
    closure graph, and that the graph holds every image's contents and the store paths its
    config mentions.

    Raises:
        NixlayerError: ``spec SOURCE: ...``: not JSON, not a spec, a version other than
            :data:`SPEC_VERSION`, a missing, unknown or mistyped field, or a bad graph.
    """
    try:
        return _parse(data, source)
    except NixlayerError as error:
        raise NixlayerError(f"spec {source}: {error}") from None


def _parse(data: bytes | str, source: str) -> ImageSpec:
    try:
        spec = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise NixlayerError(f"not valid JSON: {error}") from None
    if not isinstance(spec, dict) or "nixlayer_spec" not in spec:
        raise NixlayerError('not a nixlayer image spec (it has no "nixlayer_spec" version): make one with'
                            " nix-build of nixlayer's buildLayeredImage (nix/default.nix)")
    version = spec["nixlayer_spec"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise NixlayerError(f"format version {json.dumps(version)} is not an integer")
    if version != SPEC_VERSION:
        newer = " (made by a newer nixlayer: update this one)" if version > SPEC_VERSION else ""
        raise NixlayerError(f"format version {version} is not supported: this nixlayer reads version {SPEC_VERSION}{newer}")
    store_dir = spec.get("store_dir")
    if not isinstance(store_dir, str):
        raise NixlayerError('no "store_dir" string')
    store_dir = normalize_store_dir(store_dir)
    images = spec.get("images")
    if not isinstance(images, list) or not images:
        raise NixlayerError('no "images": a non-empty list of images')
    closure = spec.get("closure")
    if not isinstance(closure, list):
        raise NixlayerError('no "closure": a list of store paths and their references')
    try:
        graph = graph_from_json(closure, store_dir)
    except NixlayerError as error:
        raise NixlayerError(f"closure: {error}") from None
    checked: list[SpecImage] = []
    for number, image in enumerate(images, 1):
        try:
            checked.append(_image(image, graph, store_dir, {i.key for i in checked}))
        except NixlayerError as error:
            named = f" ({image['key']})" if isinstance(image, dict) and isinstance(image.get("key"), str) else ""
            raise NixlayerError(f"image {number}{named}: {error}") from None
    return ImageSpec(source, store_dir, tuple(checked), graph)


def _image(image: Any, graph: ClosureGraph, store_dir: str, keys: set[str]) -> SpecImage:
    if not isinstance(image, dict):
        raise NixlayerError(f"expected an object, not {json.dumps(image)[:80]}")
    for field, value in image.items():
        if field not in IMAGE_FIELDS:
            raise NixlayerError(f"unknown field {field!r}")
        types, kind = IMAGE_FIELDS[field]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise NixlayerError(f"{field} must be {kind}, not {json.dumps(value)[:80]}")
    for field in ("key", "name"):
        if field not in image:
            raise NixlayerError(f"no {field}")
    if not _KEY.match(image["key"]):
        raise NixlayerError(f"key {image['key']!r} is not a file name of letters, digits and . _ + - (not starting with .)")
    if image["key"] in keys:
        raise NixlayerError(f"another image has the key {image['key']!r}")
    if "index" in image and not _KEY.match(image["index"]):
        raise NixlayerError(f"index {image['index']!r} is not a file name of letters, digits and . _ + - (not starting with .)")
    parameters = {field: value for field, value in image.items() if field not in ("key", "index")}
    if "platform" in image:
        parameters["platform"] = str(parse_platform(image["platform"]))
    contents = image.get("contents", [])
    copy_to_root = image.get("copy_to_root", [])
    for field, paths in (("contents", contents), ("copy_to_root", copy_to_root)):
        if not all(isinstance(path, str) for path in paths):
            raise NixlayerError(f"{field} must be {IMAGE_FIELDS[field][1]}")
    if "perms" in image:
        parse_perms(image["perms"], store_dir)
    if "layering" in image or "layering_pipeline" in image:  # a bad pipeline: now, before any work
        check_layering(image.get("layering", DEFAULT_LAYERING), image.get("layering_pipeline"))
    for path in [*contents, *copy_to_root, *config_store_paths(image.get("config", {}), store_dir)]:
        if path not in graph:
            raise NixlayerError(f"{path} is not in the spec's closure")
    return SpecImage(image["key"], parameters, image.get("index"))
