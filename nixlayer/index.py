"""Multi-platform images: platforms, and the OCI image index that names one image per platform.

Sources: OCI image-spec v1.1 ``image-index.md`` (an index's ``manifests``, each descriptor with a
``platform`` object of ``architecture``, ``os`` and optional ``variant``) and ``config.md`` (the
same three fields in each image's config, Go's GOOS / GOARCH names). A platform is written as
docker buildx ``--platform`` and containerd write it: ``os/architecture[/variant]``, such as
``linux/arm64`` or ``linux/arm/v7``. A client pulling the index (``podman pull --arch arm64``,
``skopeo copy --override-arch arm64``) picks the manifest whose platform matches its own.

Nix builds Linux images: ``os`` is ``linux``. An index never holds two images of one platform
(a client could not tell them apart); ``arm64`` and ``arm64/v8`` are one platform, as containerd
normalises them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from nixlayer.errors import NixlayerError
from nixlayer.image import Artifact, ImageLayer, canonical_json, check_architecture, descriptor, host_architecture
from nixlayer.mediatypes import MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST

OS = "linux"
# The variants each architecture has (image-spec config.md "variant"; containerd's platforms).
VARIANTS = {
    "arm": ("v5", "v6", "v7", "v8"),
    "arm64": ("v8", "v9"),
    "amd64": ("v1", "v2", "v3", "v4"),
}
# A variant a client takes as no variant (containerd: arm64 is arm64/v8, amd64 is amd64/v1).
_DEFAULT_VARIANTS = {"arm64": "v8", "amd64": "v1"}
PLATFORM_FORMS = "os/architecture[/variant] such as linux/arm64 or linux/arm/v7"


@dataclass(frozen=True)
class Platform:
    """Where an image runs: ``os``, ``architecture`` (GOARCH) and ``variant`` ('' for none)."""

    architecture: str
    variant: str = ""
    os: str = OS

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)

    @property
    def key(self) -> tuple[str, str, str]:
        """What tells two platforms apart for a client (a default variant is no variant)."""
        variant = "" if _DEFAULT_VARIANTS.get(self.architecture) == self.variant else self.variant
        return (self.os, self.architecture, variant)

    def as_json(self) -> dict[str, str]:
        """The descriptor's ``platform`` object (image-index.md)."""
        return {"architecture": self.architecture, "os": self.os, **({"variant": self.variant} if self.variant else {})}


def parse_platform(value: str | dict[str, Any]) -> Platform:
    """A platform from its text ``os/architecture[/variant]`` or an object of ``os``,
    ``architecture`` and ``variant`` (all but ``architecture`` optional).

    Raises NixlayerError for another os than ``linux``, an architecture Go does not name (as
    ``check_architecture``), or a variant the architecture has not.
    """
    if isinstance(value, str):
        parts = value.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise NixlayerError(f"platform {value!r} is not {PLATFORM_FORMS}")
        fields = dict(zip(("os", "architecture", "variant"), parts))
    elif isinstance(value, dict):
        unknown = sorted(set(value) - {"os", "architecture", "variant"})
        if unknown or "architecture" not in value or not all(isinstance(v, str) for v in value.values()):
            raise NixlayerError(f"platform {value} must name a string architecture, and may name os and variant, nothing else")
        fields = value
    else:
        raise NixlayerError(f"platform must be {PLATFORM_FORMS}, not {value!r}")
    os_name, architecture, variant = fields.get("os", OS), fields["architecture"], fields.get("variant", "")
    if os_name != OS:
        raise NixlayerError(f"platform {value}: os {os_name!r} is not supported: Nix store paths make {OS} images")
    check_architecture(architecture)
    if variant and variant not in VARIANTS.get(architecture, ()):
        allowed = VARIANTS.get(architecture)
        raise NixlayerError(f"platform {value}: {architecture} has no variant {variant!r}"
                            + (f"; use one of {', '.join(allowed)}" if allowed else ": leave it out"))
    return Platform(architecture, variant, os_name)


def image_platform(platform: str, architecture: str) -> Platform:
    """The platform of an image given ``platform`` (text, '' for none) and ``architecture`` (a
    Go architecture name, '' for this machine's): ``platform``, else linux/``architecture``.

    Raises NixlayerError for a bad platform (``parse_platform``) or architecture, or an
    architecture that is not the platform's.
    """
    if not platform:
        return Platform(check_architecture(architecture) if architecture else host_architecture())
    parsed = parse_platform(platform)
    if architecture and architecture != parsed.architecture:
        raise NixlayerError(f"architecture {architecture} is not the architecture of platform {parsed}: give one of them")
    return parsed


def check_platforms(platforms: Sequence[Platform]) -> None:
    """Raise NixlayerError if two of ``platforms`` (the images of one index) are one platform."""
    seen: dict[tuple, Platform] = {}
    for platform in platforms:
        if platform.key in seen:
            raise NixlayerError(f"two images of platform {platform} in one index: give each image its own platform")
        seen[platform.key] = platform


@dataclass(frozen=True)
class PlatformImage:
    """An image of a platform (one of an index): its layers, image config JSON, OCI image
    manifest (the image's own, annotations and all: an image has one digest, in an index or
    alone), platform, and the artifacts attached to it (its SBOM)."""

    layers: Sequence[ImageLayer]
    config: bytes
    manifest: bytes
    platform: Platform
    artifacts: Sequence[Artifact] = ()


def oci_index(images: Sequence[PlatformImage]) -> bytes:
    """The OCI image index (image-index.md) of ``images``, in their order, canonical JSON.

    Raises NixlayerError for two images of one platform (``check_platforms``).
    """
    check_platforms([image.platform for image in images])
    return canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [{**descriptor(MEDIA_TYPE_OCI_MANIFEST, image.manifest), "platform": image.platform.as_json()}
                      for image in images],
    })
