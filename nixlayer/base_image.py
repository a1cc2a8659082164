"""Base images (nixpkgs' ``fromImage``): an image whose layers come first, unchanged, and
whose config the new image inherits.

A base image is named in skopeo's transport syntax (containers-transports(5)):

- ``docker-archive:FILE[:NAME:TAG]``: a ``docker save`` / ``podman save`` tarball (or
  nixlayer's, or nixpkgs' ``buildLayeredImage``; also gzip-, bzip2- or xz-compressed, as
  ``buildLayeredImage`` writes a ``.tar.gz``; not zstd);
- ``oci:DIR[:TAG]``: an OCI image layout directory (image-layout.md), the image whose
  ``org.opencontainers.image.ref.name`` is TAG (the only image if no TAG);
- ``oci-archive:FILE[:TAG]``: that directory as a tar;
- ``docker://HOST[:PORT]/REPO[:TAG]`` or ``docker://HOST[:PORT]/REPO@sha256:<hex>``: a registry,
  read with the credentials, transport and retries of a push (``nixlayer.registry``).

As in skopeo, the path ends at the first ``:`` after the transport. An index (OCI image index,
Docker manifest list) is resolved to the manifest of this image's platform (os, architecture
and variant). :func:`read_base_image` reads the manifest and the image config only (kept in
the layer store, content-addressed, so a rebuild on a registry base asks for the tag's digest
and downloads nothing); :func:`write_base_layer` copies one layer blob, streamed and verified
against its digest and diff_id, from the layer store if it is there, else from the source.

The new image (nixpkgs ``stream_layered_image.py``, extended): the base's layers first, same
digests and diff_ids (compressed blobs kept as they are, their Docker media types named by
their OCI equivalents; decompressed only for a docker-archive output, which holds tars); its
history first, ours appended; its ``Env`` merged as nixpkgs merges it and its other config
fields kept unless the new config sets them (:func:`inherit_config`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any, BinaryIO, Callable

import zstandard

from nixlayer.errors import NixlayerError
from nixlayer.image import CONFIG_FIELDS, check_config
from nixlayer.index import Platform
from nixlayer.layer import COPY_BUFFER, LayerBlob
from nixlayer.layerstore import LayerStore
from nixlayer.mediatypes import (
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_MANIFEST,
)
from nixlayer.registry import PushTarget, RegistrySource, parse_pull_reference

TRANSPORTS = ("docker-archive", "oci", "oci-archive", "docker")
_FORMS = ("use docker-archive:FILE, oci:DIR[:TAG], oci-archive:FILE[:TAG] or"
          " docker://HOST[:PORT]/REPOSITORY[:TAG] (or @sha256:DIGEST)")
_FILE_TRANSPORTS = ("docker-archive", "oci", "oci-archive")
_REF_NAME = "org.opencontainers.image.ref.name"
_INDEXES = (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST)
_MANIFESTS = (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST)
# Layer media types -> the OCI layer media type of the same bytes (OCI media-types.md,
# "Compatibility Matrix"). Foreign and non-distributable layers are refused.
_LAYER_TYPES = {
    MEDIA_TYPE_OCI_LAYER: MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_LAYER + "+gzip": MEDIA_TYPE_OCI_LAYER + "+gzip",
    MEDIA_TYPE_OCI_LAYER + "+zstd": MEDIA_TYPE_OCI_LAYER + "+zstd",
    "application/vnd.docker.image.rootfs.diff.tar": MEDIA_TYPE_OCI_LAYER,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": MEDIA_TYPE_OCI_LAYER + "+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": MEDIA_TYPE_OCI_LAYER + "+zstd",
}
_MAGIC = {b"\x1f\x8b": "+gzip", b"\x28\xb5\x2f\xfd": "+zstd"}
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class BaseLayer:
    """One layer of a base image: its blob as the source holds it (``digest``, ``blob_size``,
    ``media_type``, an OCI layer media type), its ``diff_id``, and ``path``, where the blob is
    in a file source (an archive member or a file of the layout; empty for a registry)."""

    digest: str
    media_type: str
    blob_size: int
    diff_id: str
    path: str = ""


@dataclass(frozen=True)
class BaseImage:
    """A base image, read: its ``source`` (transport syntax, paths absolute), the ``config``
    object of its image config, its ``history`` and its ``layers``, bottom first; ``insecure``:
    its registry is read over plain HTTP though not on loopback; ``annotations``: its image
    manifest's (none for a docker-archive), which the new image's manifest keeps
    (``nixlayer.image.image_annotations``)."""

    source: str
    config: dict[str, Any]
    history: tuple[dict[str, Any], ...]
    layers: tuple[BaseLayer, ...]
    insecure: bool = False
    annotations: dict[str, str] = field(default_factory=dict)

    def identity(self) -> list:
        """What of it determines the new image: its layers' blobs and diff_ids, its history and
        its manifest's annotations (not where it is read from)."""
        return [[[layer.digest, layer.media_type, layer.diff_id] for layer in self.layers], list(self.history),
                self.annotations]

    def registry(self) -> PushTarget | None:
        """Where it is read from when that is a registry (``docker://``): its host, repository
        and tag; None for a file source."""
        transport, reference, _ = parse_source(self.source)
        return parse_pull_reference(reference)[0] if transport == "docker" else None

    def to_json(self) -> str:
        """What an image task needs of it (not the config, which the new image's merges), as
        canonical JSON text: :meth:`from_json` reads it back."""
        return json.dumps({"source": self.source, "history": list(self.history), "insecure": self.insecure,
                           "layers": [asdict(layer) for layer in self.layers], "annotations": self.annotations},
                          sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "BaseImage":
        data = json.loads(text)
        return BaseImage(data["source"], {}, tuple(data["history"]),
                         tuple(BaseLayer(**layer) for layer in data["layers"]), data["insecure"], data["annotations"])


def parse_source(text: str) -> tuple[str, str, str]:
    """Split a base image name into (transport, path or registry reference, tag or name:tag;
    empty if none). Raises NixlayerError naming the forms allowed."""
    transport, colon, rest = text.partition(":")
    if transport == "docker" and rest.startswith("//"):
        parse_pull_reference(text)  # raises for a bad reference
        return "docker", text, ""
    if not colon or transport not in _FILE_TRANSPORTS or not rest:
        raise NixlayerError(f"base image {text!r} is not named in a transport nixlayer reads: {_FORMS}")
    path, _, reference = rest.partition(":")
    if not path:
        raise NixlayerError(f"base image {text!r} has no path: {_FORMS}")
    return transport, path, reference


def absolute_source(text: str, directory: str | None = None) -> str:
    """``text`` with the path of a file transport made absolute, relative to ``directory``
    (else the working directory); anything else unchanged (refused later, when read)."""
    transport, colon, rest = text.partition(":")
    if not colon or transport not in _FILE_TRANSPORTS or not rest or rest.startswith("/"):
        return text
    path = os.path.expanduser(rest)
    if path.startswith("/"):
        return f"{transport}:{path}"
    return f"{transport}:{os.path.normpath(os.path.join(directory or os.getcwd(), path))}"


def inherit_config(base: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The new image's config object on the base's (image config ``config`` objects).

    ``Env`` as nixpkgs' ``stream_layered_image.py`` merges it: the base's entries then the new
    ones, one per variable name, a variable set in both taking the new value at the base's
    place. The other fields of :data:`nixlayer.image.CONFIG_FIELDS` follow ``docker build`` on
    a ``FROM`` (nixpkgs keeps only ``Env``): the object fields (``Labels``, ``ExposedPorts``,
    ``Volumes``) are merged key by key, a key set in both taking the new value; any other field
    the base sets (not null) is kept unless ``config`` sets it, except that a new
    ``Entrypoint`` without a ``Cmd`` drops the base's ``Cmd`` (as a Dockerfile's
    ``ENTRYPOINT`` resets the inherited ``CMD``). Raises NixlayerError if the result is not a
    valid config.
    """
    merged = {key: value for key, value in base.items() if key in CONFIG_FIELDS and value is not None}
    if "Entrypoint" in config and "Cmd" not in config:
        merged.pop("Cmd", None)
    for key, value in config.items():
        if key in MERGED_OBJECT_FIELDS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    env = [*(base.get("Env") or []), *config.get("Env", [])]
    if env:
        by_name = {}
        for entry in env:
            by_name[entry.split("=", 1)[0]] = entry
        merged["Env"] = list(by_name.values())
    return check_config(merged)

# Config fields a base and a new image each add keys to, as Dockerfile instructions do.
MERGED_OBJECT_FIELDS = ("Labels", "ExposedPorts", "Volumes")


# --- Reading -----------------------------------------------------------------------------------


class _Files:
    """The files of a local source: a directory (an OCI layout) or a tar (an archive), by
    their paths in it. Raises NixlayerError naming the source for a file it lacks."""

    def __init__(self, where: str, path: str, archive: bool) -> None:
        self.where, self.path = where, path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        try:
            if archive:
                with open(path, "rb") as f:
                    if f.read(4) == b"\x28\xb5\x2f\xfd":
                        raise NixlayerError(f"base image {where} is a zstd-compressed archive, which nixlayer does"
                                            f" not read: decompress it (zstd -d) and name the tar")
                # Plain, gzip (nixpkgs' buildLayeredImage writes .tar.gz), bzip2 or xz: a member
                # of a compressed archive is found by decompressing up to it again (tarfile).
                self._tar = tarfile.open(path, "r:*")
                self._members = {os.path.normpath(m.name): m for m in self._tar.getmembers() if m.isfile()}
            elif not os.path.isdir(path):
                raise NotADirectoryError(20, "not a directory (an OCI layout is one)")
        except (OSError, tarfile.TarError) as e:
            raise NixlayerError(f"cannot read base image {where}: {getattr(e, 'strerror', None) or e}") from None

    def open(self, name: str) -> BinaryIO:
        name = os.path.normpath(name)
        try:
            if self._tar is None:
                if name.startswith(".."):
                    raise FileNotFoundError(2, "outside the layout")
                return open(os.path.join(self.path, name), "rb")
            member = self._members.get(name)
            f = self._tar.extractfile(member) if member is not None else None
            if f is None:
                raise FileNotFoundError(2, "no such member")
            return f  # type: ignore[return-value]
        except OSError as e:
            raise NixlayerError(f"cannot read base image {self.where}: {name}: {e.strerror or e}") from None

    def size(self, name: str) -> int:
        """The size of an archive member (the file must have been opened)."""
        return self._members[os.path.normpath(name)].size

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def _json(data: bytes, what: str, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise NixlayerError(f"base image {where}: {what} is not valid JSON") from None


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _verified(data: bytes, digest: str, where: str) -> bytes:
    if _digest(data) != digest:
        raise NixlayerError(f"base image {where}: blob {digest} does not match its digest (it is {_digest(data)})")
    return data


def read_base_image(
    text: str,
    platform: Platform,
    cache: LayerStore,
    *,
    insecure: bool = False,
    auth_file: str | None = None,
) -> BaseImage:
    """Read the base image ``text`` (see the module docstring) for an image of ``platform``:
    its manifest and image config, no layer blob.

    ``cache`` keeps manifests and configs by digest: a registry base named by
    a digest, or by a tag whose digest a ``HEAD`` gives, is not downloaded again.
    ``insecure`` and ``auth_file`` as for a push (``nixlayer.registry``).

    Raises NixlayerError, one line naming the base image: an unreadable file or directory, a
    missing tag or digest, content that does not match its digest, an index without an image of
    ``platform`` (os, architecture and variant, a default variant such as arm64's v8 being no
    variant, as containerd matches them), a base of another OS, architecture or variant (its
    image config's; one without a variant is taken for any), or a manifest or config nixlayer
    cannot read, such as a field of the wrong JSON type.
    """
    transport, path, reference = parse_source(text)
    if transport == "docker":
        target, pinned = parse_pull_reference(path)
        registry = RegistrySource(target, f"base image {text}", insecure=insecure, auth_file=auth_file)

        def fetch(digest: str) -> bytes:
            kept = _cached(cache, digest)
            if kept is None:
                kept = _verified(registry.manifest(digest)[0], digest, text)
                cache.put_bytes(kept)
            return kept

        def blob(digest: str) -> bytes:
            kept = _cached(cache, digest)
            if kept is None:
                chunks: list[bytes] = []
                registry.read_blob(digest, chunks.append)
                kept = _verified(b"".join(chunks), digest, text)
                cache.put_bytes(kept)
            return kept

        digest = pinned or registry.manifest_digest(target.tag)
        if digest is not None:
            top = fetch(digest)
        else:  # the registry said no digest: read the manifest by tag
            top, _ = registry.manifest(target.tag)
            cache.put_bytes(top)
        return replace(_from_manifest(text, top, platform, fetch, blob, lambda layer: ""), insecure=insecure)
    files = _Files(text, path, archive=transport != "oci")
    try:
        if transport == "docker-archive":
            return _from_docker_archive(text, files, reference, platform)
        index = _json(files.read("index.json"), "index.json", text)
        entries = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(entries, list):
            raise NixlayerError(f"base image {text}: index.json is not an OCI image index")
        tags = [_annotations(e, "an index.json entry", text).get(_REF_NAME) if isinstance(e, dict) else None
                for e in entries]
        if reference:
            chosen = [e for e, tag in zip(entries, tags) if tag == reference]
            if not chosen:
                raise NixlayerError(f"base image {text}: the layout has no image tagged {reference!r}"
                                    f" (it has: {', '.join(t for t in tags if t) or 'no tags'})")
        else:
            # Artifacts attached to an image (an SBOM: an entry with an artifactType) are not images.
            chosen = [e for e in entries if not (isinstance(e, dict) and "artifactType" in e)]
            if len(chosen) != 1:
                raise NixlayerError(f"base image {text}: the layout holds {len(chosen)} images: name one,"
                                    f" {transport}:{path}:TAG (tags: {', '.join(t for t in tags if t) or 'none'})")

        def blob(digest: str) -> bytes:
            return _verified(files.read(_blob_path(digest)), digest, text)

        return _from_manifest(text, _descriptor_bytes(chosen[0], blob, text), platform, blob, blob,
                              lambda layer: _blob_path(layer["digest"]))
    finally:
        files.close()


def _cached(cache: LayerStore, digest: str) -> bytes | None:
    try:
        with open(cache.blob_path(digest), "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data if _digest(data) == digest else None


def _blob_path(digest: str) -> str:
    algorithm, _, hex_digest = str(digest).partition(":")
    return f"blobs/{algorithm}/{hex_digest}"


def _checked_digest(digest: Any, where: str) -> str:
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise NixlayerError(f"base image {where}: digest {digest!r} is not sha256:<64 lowercase hex digits>")
    return digest


def _descriptor_bytes(descriptor: Any, blob: Callable[[str], bytes], where: str) -> bytes:
    if not isinstance(descriptor, dict):
        raise NixlayerError(f"base image {where}: a descriptor that is not a JSON object")
    return blob(_checked_digest(descriptor.get("digest"), where))


def _typed(value: Any, kind: type, default: Any, what: str, where: str) -> Any:
    """``value`` if it is a ``kind``, ``default`` if it is absent (None); else NixlayerError
    naming the base image and the field ``what``."""
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        expected = {dict: "a JSON object", list: "a list", str: "a string", int: "a whole number"}[kind]
        raise NixlayerError(f"base image {where}: {what} must be {expected}, not {json.dumps(value)[:40]}")
    return value


def _annotations(descriptor: dict, what: str, where: str) -> dict[str, str]:
    """The ``annotations`` of a descriptor or manifest (descriptor.md: a map of strings)."""
    annotations = _typed(descriptor.get("annotations"), dict, {}, f"the annotations of {what}", where)
    for key, value in annotations.items():
        _typed(value, str, "", f"annotation {key!r} of {what}", where)
    return annotations


def _platform(descriptor: dict, where: str) -> Platform:
    """The ``platform`` of an index entry (image-index.md), ``?`` for what it lacks."""
    platform = _typed(descriptor.get("platform"), dict, {}, "the platform of an index entry", where)
    fields = [_typed(platform.get(key), str, "?" if key != "variant" else "", f"platform field {key} of an index entry",
                     where) for key in ("architecture", "variant", "os")]
    return Platform(*fields)


def _from_manifest(
    where: str, data: bytes, platform: Platform, fetch: Callable[[str], bytes], blob: Callable[[str], bytes],
    layer_path: Callable[[dict], str],
) -> BaseImage:
    """The base image of a manifest or index (``data``): an index resolved to this platform's
    manifest (``fetch`` reads manifests, ``blob`` the config, both verified)."""
    manifest = _json(data, "its manifest", where)
    if not isinstance(manifest, dict):
        raise NixlayerError(f"base image {where}: its manifest is not a JSON object")
    media_type = manifest.get("mediaType")
    if media_type in _INDEXES or (media_type is None and "manifests" in manifest):
        entries = [e for e in _typed(manifest.get("manifests"), list, [], "the manifests of its index", where)
                   if isinstance(e, dict)]
        platforms = [_platform(e, where) for e in entries]
        chosen = [e for e, p in zip(entries, platforms) if p.key == platform.key]
        if not chosen:
            have = sorted({str(p) for p in platforms}) or ["none"]
            raise NixlayerError(f"base image {where} is an index without a {platform} image (it has: {', '.join(have)}):"
                                " give --architecture or --platform, or another base image")
        return _from_manifest(where, _descriptor_bytes(chosen[0], fetch, where), platform, fetch, blob, layer_path)
    if media_type not in _MANIFESTS and not (media_type is None and "layers" in manifest):
        raise NixlayerError(f"base image {where}: manifest media type {media_type!r} is not one nixlayer reads"
                            " (OCI image manifest, Docker manifest v2 schema 2)")
    config = _json(_descriptor_bytes(manifest.get("config"), blob, where), "its image config", where)
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise NixlayerError(f"base image {where}: its manifest has no list of layers")
    diff_ids = _check_image_config(config, len(layers), platform, where)
    result = []
    for layer, diff_id in zip(layers, diff_ids):
        kind = _LAYER_TYPES.get(_typed(layer.get("mediaType"), str, "", "the media type of a layer", where))
        if kind is None:
            raise NixlayerError(f"base image {where}: layer {layer.get('digest')} has media type"
                                f" {layer.get('mediaType')!r}, which nixlayer does not copy (foreign or unknown)")
        if not isinstance(layer.get("size"), int):
            raise NixlayerError(f"base image {where}: a layer descriptor without a size")
        digest = _checked_digest(layer.get("digest"), where)
        result.append(BaseLayer(digest, kind, layer["size"], diff_id, layer_path(layer)))
    return BaseImage(where, config.get("config") or {}, tuple(config.get("history") or ()), tuple(result),
                     annotations=_annotations(manifest, "its manifest", where))


def _check_image_config(config: Any, layers: int, platform: Platform, where: str) -> list[str]:
    """The diff_ids of a base's image config, once its platform and layers are checked."""
    if not isinstance(config, dict):
        raise NixlayerError(f"base image {where}: its image config is not a JSON object")
    os_name, arch = config.get("os"), config.get("architecture")
    variant = _typed(config.get("variant"), str, "", "the variant of its image config", where)
    theirs = Platform(str(arch), variant or platform.variant, str(os_name))
    if theirs.key != platform.key:
        option = f"--platform {theirs}" if theirs.variant else f"--architecture {arch}"
        raise NixlayerError(f"base image {where} is for {theirs}, not {platform}: give {option} to build for it,"
                            f" or a base image for {platform}")
    rootfs = _typed(config.get("rootfs"), dict, {}, "the rootfs field of its image config", where)
    diff_ids = _typed(rootfs.get("diff_ids"), list, [], "rootfs.diff_ids of its image config", where)
    if len(diff_ids) != layers:
        raise NixlayerError(f"base image {where}: its image config lists {len(diff_ids)} diff_ids for {layers} layers")
    for diff_id in diff_ids:
        _checked_digest(diff_id, where)
    for entry in _typed(config.get("history"), list, [], "the history field of its image config", where):
        _typed(entry, dict, {}, "an entry of the history of its image config", where)
    # The fields the new image inherits (inherit_config) are checked as the new image's are.
    inherited = _typed(config.get("config"), dict, {}, "the config field of its image config", where)
    try:
        check_config({key: value for key, value in inherited.items() if key in CONFIG_FIELDS and value is not None})
    except NixlayerError as e:
        raise NixlayerError(f"base image {where}: {e}") from None
    return diff_ids


def _from_docker_archive(where: str, files: _Files, reference: str, platform: Platform) -> BaseImage:
    """A docker-archive's image (Docker image spec v1.2 ``manifest.json``): the one named
    ``reference`` (``NAME:TAG`` among its RepoTags), or its only one."""
    entries = _json(files.read("manifest.json"), "manifest.json", where)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise NixlayerError(f"base image {where}: manifest.json is not a docker-archive manifest")
    for e in entries:
        for key in ("RepoTags", "Layers"):
            for value in _typed(e.get(key), list, [], f"the {key} of a manifest.json entry", where):
                _typed(value, str, "", f"an item of the {key} of a manifest.json entry", where)
        _typed(e.get("Config"), str, "", "the Config of a manifest.json entry", where)
    names = [tag for e in entries for tag in e.get("RepoTags") or []]
    if reference:
        chosen = [e for e in entries if reference in (e.get("RepoTags") or [])]
        if not chosen:
            raise NixlayerError(f"base image {where}: the archive has no image {reference!r}"
                                f" (it has: {', '.join(names) or 'no names'})")
    elif len(entries) != 1:
        raise NixlayerError(f"base image {where}: the archive holds {len(entries)} images: name one,"
                            f" docker-archive:FILE:NAME:TAG (names: {', '.join(names) or 'none'})")
    else:
        chosen = entries
    entry = chosen[0]
    config = _json(files.read(str(entry.get("Config"))), "its image config", where)
    paths = entry.get("Layers") or []
    diff_ids = _check_image_config(config, len(paths), platform, where)
    layers = []
    for path, diff_id in zip(paths, diff_ids):
        with files.open(path) as f:
            head = f.read(4)
        kind = next((suffix for magic, suffix in _MAGIC.items() if head.startswith(magic)), "")
        if kind:  # a compressed member (not what docker or podman write): its digest is read now
            digest, size = _hash_file(files, path)
        else:
            digest, size = diff_id, files.size(path)
        layers.append(BaseLayer(digest, MEDIA_TYPE_OCI_LAYER + kind, size, diff_id, os.path.normpath(path)))
    return BaseImage(where, config.get("config") or {}, tuple(config.get("history") or ()), tuple(layers))


def _hash_file(files: _Files, path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with files.open(path) as f:
        while chunk := f.read(COPY_BUFFER):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


# --- Copying a layer ---------------------------------------------------------------------------


def _decompressor(media_type: str) -> Callable[[bytes], bytes]:
    """A function that decompresses a blob of ``media_type`` chunk by chunk (gzip members and
    zstd frames one after another, as some tools write them)."""
    if media_type.endswith("+gzip"):
        state = [zlib.decompressobj(zlib.MAX_WBITS | 32)]

        def gunzip(data: bytes) -> bytes:
            out = []
            while data:
                d = state[0]
                out.append(d.decompress(data))
                data = d.unused_data if d.eof else b""
                if d.eof:
                    state[0] = zlib.decompressobj(zlib.MAX_WBITS | 32)
            return b"".join(out)
        return gunzip
    if media_type.endswith("+zstd"):
        return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress
    return lambda data: data


def write_base_layer(
    source: str,
    layer: BaseLayer,
    out: BinaryIO,
    *,
    uncompressed: bool,
    kept: str | None = None,
    insecure: bool = False,
    auth_file: str | None = None,
) -> LayerBlob:
    """Copy the blob of ``layer`` of the base image ``source`` to ``out``: as it is, or
    decompressed with ``uncompressed`` (a docker-archive holds tars). ``kept``: a file holding
    the blob already (in the layer store), read instead of the source.

    Everything read is checked: the blob against its digest and size, the tar in it against
    the diff_id. Returns the LayerBlob written (its media type an OCI one). Raises
    NixlayerError naming the base image and the blob when a check fails or the source cannot
    be read; what was written to ``out`` is then to be thrown away.
    """
    blob_hash, diff_hash = hashlib.sha256(), hashlib.sha256()
    sizes = [0, 0]  # blob, tar
    decompress = _decompressor(layer.media_type)
    broken: list[str] = []  # why the blob does not decompress: said if its digest is right

    def consume(chunk: bytes) -> None:
        blob_hash.update(chunk)
        sizes[0] += len(chunk)
        try:
            tar = b"" if broken else decompress(chunk)
        except (zlib.error, zstandard.ZstdError) as e:
            broken.append(str(e))
            tar = b""
        diff_hash.update(tar)
        sizes[1] += len(tar)
        try:
            out.write(tar if uncompressed else chunk)
        except OSError as e:
            raise NixlayerError(f"cannot write layer blob: {e.strerror or e}") from None

    if kept is not None:
        with open(kept, "rb") as f:
            while chunk := f.read(COPY_BUFFER):
                consume(chunk)
    else:
        transport, path, _ = parse_source(source)
        if transport == "docker":
            target, _ = parse_pull_reference(path)
            RegistrySource(target, f"base image {source}", insecure=insecure,
                           auth_file=auth_file).read_blob(layer.digest, consume)
        else:
            files = _Files(source, path, archive=transport != "oci")
            try:
                with files.open(layer.path) as f:
                    while chunk := f.read(COPY_BUFFER):
                        consume(chunk)
            finally:
                files.close()
    digest, diff_id = "sha256:" + blob_hash.hexdigest(), "sha256:" + diff_hash.hexdigest()
    if digest != layer.digest or sizes[0] != layer.blob_size:
        raise NixlayerError(f"base image {source}: layer blob {layer.digest} does not match its digest and size"
                            f" (read {digest}, {sizes[0]} bytes; expected {layer.blob_size})")
    if broken:
        raise NixlayerError(f"base image {source}: layer blob {layer.digest} is not valid {layer.media_type} ({broken[0]})")
    if diff_id != layer.diff_id:
        raise NixlayerError(f"base image {source}: layer {layer.digest} does not match its diff_id {layer.diff_id}"
                            f" (its tar is {diff_id})")
    if uncompressed:
        return LayerBlob(diff_id, sizes[1], diff_id, sizes[1], MEDIA_TYPE_OCI_LAYER)
    return LayerBlob(diff_id, sizes[1], digest, sizes[0], layer.media_type)
