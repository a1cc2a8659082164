"""The image model: layers on disk, the image config, and the OCI manifest.

Sources: OCI image-spec v1.1 ``config.md`` (image config), ``manifest.md`` (image manifest) and
``descriptor.md``; Docker image spec v1.2 for the fields docker-archive shares with it.
All JSON documents are serialised canonically (sorted keys, no spaces), so identical inputs give
identical digests.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from nixlayer.errors import NixlayerError
from nixlayer.layer import LayerBlob
from nixlayer.mediatypes import MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_EMPTY, MEDIA_TYPE_OCI_MANIFEST

CONFIG_FIELDS = (
    "User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
    "StopSignal", "ArgsEscaped", "Healthcheck", "OnBuild", "Shell",
)
# Python's platform.machine() -> GOARCH, as the OCI image-spec config "architecture" requires.
_GOARCH = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
    "i386": "386", "i686": "386", "armv7l": "arm", "armv6l": "arm", "ppc64le": "ppc64le",
    "s390x": "s390x", "riscv64": "riscv64", "mips64": "mips64", "loongarch64": "loong64",
}


@dataclass(frozen=True)
class ImageLayer:
    """A layer ready to assemble: its digests, the file holding its blob, and what it holds.

    ``file`` holds the blob bytes (compressed as ``blob.media_type`` says); ``comment`` goes
    into the image config's history (nixpkgs: ``store paths: [...]``). ``fetch``, if given,
    writes ``file``, which may be absent until then: a base image's layer left in its registry
    (``tasks.image.ImageTask.remote_base``), whose ``blob.size`` (its tar's) is unknown (0);
    only a push that must upload it calls it.
    """

    blob: LayerBlob
    file: str
    comment: str
    fetch: Callable[[], object] | None = field(default=None, compare=False)


CREATED_BY = "nixlayer"
"""Each history entry's ``created_by``: the tool that made the layer (``docker history`` and
``podman history`` show it); its ``comment`` names the layer's store paths, as nixpkgs'."""

ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_SOURCE = "org.opencontainers.image.source"
ANNOTATION_REVISION = "org.opencontainers.image.revision"
ANNOTATION_VERSION = "org.opencontainers.image.version"

def damaged_blob(path: str) -> str:
    """The message for a blob file whose bytes do not match its digest."""
    return (f"blob {path} does not match its digest (damaged on disk): remove it (rm -f '{path}') and"
            " build again to write its layer anew")


DEFAULT_CREATED = "1970-01-01T00:00:01Z"
"""nixpkgs' default ``created`` and ``mtime``: one second after the epoch."""

# The GOARCH values Go builds for GOOS linux (``go tool dist list``): the names the image
# config's "architecture" takes (OCI config.md says GOARCH), of a linux image (nixlayer's only
# os, see nixlayer.index). Go's wasm goes with GOOS js or wasip1 (Docker's wasi/wasm
# platform), never linux: a linux/wasm image is one no runtime runs.
ARCHITECTURES = frozenset({
    "386", "amd64", "arm", "arm64", "loong64", "mips", "mipsle", "mips64", "mips64le", "ppc64",
    "ppc64le", "riscv64", "s390x",
})
# containers/image (podman, skopeo, CRI-O) refuses image configs larger than this.
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def check_architecture(name: str) -> str:
    """Return ``name`` if it is a Go architecture name of linux (OCI config.md "architecture").

    Raises NixlayerError listing the names allowed (and Go's name for a machine name such as
    ``aarch64``).
    """
    if name not in ARCHITECTURES:
        hint = f" (Go calls it {_GOARCH[name]})" if _GOARCH.get(name, name) != name else ""
        raise NixlayerError(f"unknown architecture {name!r}{hint}: use a Go architecture name of linux, one of"
                            f" {', '.join(sorted(ARCHITECTURES))}")
    return name


def canonical_json(value: Any) -> bytes:
    """``value`` as UTF-8 JSON with sorted keys and no insignificant white space."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_architecture() -> str:
    """This machine's architecture in Go naming (amd64, arm64, ...), for the image config."""
    machine = platform.machine().lower()
    return check_architecture(_GOARCH.get(machine, machine))


def parse_time(text: str, now: datetime | None = None, what: str = "time") -> datetime:
    """Parse an ISO 8601 time (``1970-01-01T00:00:01Z``) or ``now`` into an aware UTC datetime.

    A time without an offset is taken as UTC. Raises NixlayerError for anything else, naming
    ``what`` (such as ``--created``).
    """
    if text == "now":
        return (now or datetime.now(timezone.utc)).replace(microsecond=0)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise NixlayerError(f"{what} must be ISO 8601 (1970-01-01T00:00:01Z) or 'now', not {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix, as the image config's ``created`` field."""
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# Each config field's JSON type: OCI image-spec config.md (config-schema.json: stringArray,
# mapStringObject, mapStringString), and Docker's image spec v1.2 for Healthcheck, OnBuild and
# Shell (moby's HealthConfig: durations in whole nanoseconds). (what it must be, the check)
_FIELD_TYPES: dict[str, tuple[str, Any]] = {
    "User": ("a string", lambda v: isinstance(v, str)),
    "WorkingDir": ("a string", lambda v: isinstance(v, str)),
    "StopSignal": ("a string", lambda v: isinstance(v, str)),
    "ArgsEscaped": ("true or false", lambda v: isinstance(v, bool)),
    **{key: ("a list of strings", _strings) for key in ("Env", "Entrypoint", "Cmd", "OnBuild", "Shell")},
    **{key: ("a JSON object", lambda v: isinstance(v, dict)) for key in ("ExposedPorts", "Volumes", "Labels", "Healthcheck")},
}
_MEMBER_TYPES: dict[str, tuple[str, Any]] = {  # the values inside the object fields
    "ExposedPorts": ("an empty JSON object", lambda v: v == {}),
    "Volumes": ("an empty JSON object", lambda v: v == {}),
    "Labels": ("a string", lambda v: isinstance(v, str)),
}
_HEALTHCHECK: dict[str, tuple[str, Any]] = {
    "Test": ("a list of strings", _strings),
    **{key: ("a whole number of nanoseconds", _whole) for key in ("Interval", "Timeout", "StartPeriod", "StartInterval")},
    "Retries": ("a whole number", _whole),
}
_PORT = re.compile(r"^[0-9]{1,5}(?:/(?:tcp|udp|sctp))?$")


def check_config(config: Any) -> dict[str, Any]:
    """Check an image ``config`` object (OCI config.md "config" field) and return it.

    Every value is checked against the spec's type, inside objects too (``_FIELD_TYPES``):
    ``Labels`` values are strings, ``ExposedPorts`` and ``Volumes`` values empty objects (and
    a port ``PORT``, ``PORT/tcp``, ``PORT/udp`` or ``PORT/sctp``), ``Healthcheck`` Docker's
    shape. Raises NixlayerError naming an unknown field, or the field or member of the wrong
    JSON type and what it must be, or for a config over 4 MiB (``MAX_CONFIG_BYTES``), which
    podman and skopeo refuse to load.
    """
    if not isinstance(config, dict):
        raise NixlayerError("image config must be a JSON object such as {\"Cmd\": [\"/bin/hello\"]}")
    try:
        size = len(canonical_json(config))
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800"): not text UTF-8 can hold
        raise NixlayerError("image config holds a string that is not valid Unicode (a lone surrogate such as"
                            " \"\\ud800\"): give its text as UTF-8") from None
    if size > MAX_CONFIG_BYTES:
        raise NixlayerError(f"image config is {size} bytes; podman and skopeo refuse configs over {MAX_CONFIG_BYTES} bytes")
    for key, value in config.items():
        if key not in CONFIG_FIELDS:
            raise NixlayerError(f"unknown image config field {key!r}: use {', '.join(CONFIG_FIELDS)}")
        expected, valid = _FIELD_TYPES[key]
        if not valid(value):
            raise NixlayerError(f"image config field {key} must be {expected}, not {_shown(value)}")
        if not isinstance(value, dict):
            continue
        members = _HEALTHCHECK if key == "Healthcheck" else dict.fromkeys(value, _MEMBER_TYPES[key])
        for name, member in value.items():
            if name not in members:
                raise NixlayerError(f"unknown field {name!r} in image config field {key}: use {', '.join(members)}")
            expected, valid = members[name]
            if not valid(member):
                raise NixlayerError(f"image config field {key}: {name!r} must be {expected}, not {_shown(member)}")
            if key == "ExposedPorts" and not _PORT.match(name):
                raise NixlayerError(f"image config field ExposedPorts: {name!r} is not a port: use PORT, PORT/tcp,"
                                    " PORT/udp or PORT/sctp, such as \"8080/tcp\"")
    return config


def _shown(value: Any) -> str:
    """A JSON value as a message shows it: itself if short, else its type."""
    text = json.dumps(value)
    return text if len(text) <= 40 else {dict: "an object", list: "a list", str: "a long string"}.get(type(value), text[:40])


def image_config(
    layers: Sequence[ImageLayer],
    config: dict[str, Any],
    created: datetime,
    architecture: str,
    os: str = "linux",
    base_history: Sequence[dict[str, Any]] = (),
    base_layers: int = 0,
    variant: str = "",
) -> bytes:
    """The image config JSON (OCI config.md; Docker image spec v1.2 "Image JSON").

    The first ``base_layers`` of ``layers`` are a base image's, whose ``base_history`` comes
    first (:func:`base_history_of`: one entry per base layer); then one ``history`` entry per layer
    of ours: ``created``, ``created_by``
    (:data:`CREATED_BY`) and the layer's comment (nixpkgs writes ``created`` and ``comment``
    alone; layers are the same bytes either way). ``variant`` ('' for none) is the CPU variant
    (``v7`` of ``linux/arm/v7``). Returns canonical JSON bytes.
    """
    when = format_time(created)
    return canonical_json({
        "architecture": architecture,
        "config": config,
        "created": when,
        "history": [*base_history_of(base_history, base_layers), *({"created": when, "created_by": CREATED_BY, "comment": layer.comment}
                                     for layer in layers[base_layers:])],
        "os": os,
        "rootfs": {"type": "layers", "diff_ids": [layer.blob.diff_id for layer in layers]},
        **({"variant": variant} if variant else {}),
    })


BASE_LAYER_CREATED_BY = "base image layer"
"""The ``created_by`` of a history entry added for a base layer its base's history lacks."""


def base_history_of(history: Sequence[dict[str, Any]], layers: int) -> list[dict[str, Any]]:
    """A base image's ``history`` in step with its ``layers``: as it is when its entries not
    marked ``empty_layer`` (config.md: each of them is one layer of ``rootfs.diff_ids``, in
    order) number ``layers``; else the entries beyond that dropped (its empty ones kept) or
    ``{"created_by": BASE_LAYER_CREATED_BY}`` entries appended, so that the new image's own
    entries describe its own layers (``docker history`` and ``podman history`` pair them so)."""
    kept, count = [], 0
    for entry in history:
        if not entry.get("empty_layer"):
            if count == layers:
                continue
            count += 1
        kept.append(entry)
    return [*kept, *({"created_by": BASE_LAYER_CREATED_BY} for _ in range(layers - count))]


def descriptor(media_type: str, data_or_digest: bytes | str, size: int | None = None) -> dict[str, Any]:
    """An OCI descriptor (descriptor.md): from bytes, or from a digest and a size in bytes."""
    if isinstance(data_or_digest, bytes):
        return {"mediaType": media_type, "digest": sha256_digest(data_or_digest), "size": len(data_or_digest)}
    return {"mediaType": media_type, "digest": data_or_digest, "size": size}


def image_annotations(
    created: datetime, source: str = "", revision: str = "", version: str = "",
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """The image manifest's ``org.opencontainers.image.*`` annotations (OCI annotations.md):
    ``created`` always (RFC 3339, the image config's time), ``source`` (the URL of the source
    the image is built from), ``revision`` (its version control revision) and ``version`` (of
    the packaged software) when given.

    ``base``: the annotations of the base image's manifest, kept unless this image sets the
    same key (``created`` always is).
    """
    ours = {ANNOTATION_CREATED: format_time(created), ANNOTATION_SOURCE: source,
            ANNOTATION_REVISION: revision, ANNOTATION_VERSION: version}
    return {**(base or {}), **{key: value for key, value in ours.items() if value}}


def oci_manifest(config: bytes, layers: Sequence[ImageLayer], annotations: dict[str, str] | None = None) -> bytes:
    """The OCI image manifest (manifest.md) for an image config and its layers, with
    ``annotations`` (none: no ``annotations`` field), canonical JSON."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": descriptor(MEDIA_TYPE_OCI_CONFIG, config),
        "layers": [
            descriptor(layer.blob.media_type, layer.blob.digest, layer.blob.blob_size)
            for layer in layers
        ],
    }
    if annotations:
        manifest["annotations"] = annotations
    return canonical_json(manifest)


EMPTY_JSON = b"{}"
"""The empty JSON blob (image-spec 1.1 manifest.md "Guidance for an Empty Descriptor"): an
artifact manifest's config."""


@dataclass(frozen=True)
class Artifact:
    """An artifact attached to an image: an image-spec 1.1 manifest whose ``subject`` is the
    image manifest and whose ``artifactType`` says what it is; ``blobs`` are the bytes of its
    config and layers."""

    manifest: bytes
    artifact_type: str
    blobs: tuple[bytes, ...]

    @property
    def media_types(self) -> list[str]:
        """The media types of ``blobs``, as its manifest's config and layers name them."""
        manifest = json.loads(self.manifest)
        return [entry["mediaType"] for entry in (manifest["config"], *manifest["layers"])]

    @property
    def descriptor(self) -> dict[str, Any]:
        """Its descriptor in an index (an OCI layout's ``index.json``, a referrers list):
        with ``artifactType`` and the manifest's annotations, as distribution-spec 1.1's
        referrers API lists it."""
        entry = descriptor(MEDIA_TYPE_OCI_MANIFEST, self.manifest)
        entry["artifactType"] = self.artifact_type
        annotations = json.loads(self.manifest).get("annotations")
        if annotations:
            entry["annotations"] = annotations
        return entry


def artifact(artifact_type: str, media_type: str, data: bytes, subject: bytes,
             annotations: dict[str, str] | None = None) -> Artifact:
    """An artifact of one blob ``data`` (of ``media_type``) attached to the image manifest
    ``subject``, as image-spec 1.1 manifest.md "Guidelines for Artifact Usage" says: the empty
    config, ``artifactType``, the blob as its one layer, ``subject``, and ``annotations``."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor(MEDIA_TYPE_OCI_EMPTY, EMPTY_JSON),
        "layers": [descriptor(media_type, data)],
        "subject": descriptor(MEDIA_TYPE_OCI_MANIFEST, subject),
    }
    if annotations:
        manifest["annotations"] = annotations
    return Artifact(canonical_json(manifest), artifact_type, (EMPTY_JSON, data))


def config_store_paths(config: dict[str, Any], store_dir: str) -> list[str]:
    """The store paths an image config mentions (``/nix/store/HASH-NAME``), sorted, unique.

    As in nixpkgs, whose base JSON refers to them, they join the image's closure.
    """
    pattern = re.escape(store_dir.rstrip("/")) + r"/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+"
    return sorted(set(re.findall(pattern, json.dumps(config))))
