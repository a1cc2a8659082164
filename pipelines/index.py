"""Multi-platform images in a batch: images of one name and tag for several platforms, written to
one output or pushed to one target, form one OCI image index (``nixlayer.index``).

The rule, as ``docker buildx build --platform linux/amd64,linux/arm64 --push`` makes one tag of
several platforms: the images of a batch (or spec) that give the same ``output`` (and the same
``push``, if any), or the same ``push`` without an output, are one index. They share the name,
the tag (given, or left out by all: then the index's tag is a hash of its images' default tags)
and an OCI format (oci or oci-archive: a docker-archive holds no index), and each has its own
``platform``. Anything else sharing an output or a target is one error line naming both images.
"""

from __future__ import annotations

import hashlib
import json

from nixlayer.errors import NixlayerError
from nixlayer.index import Platform, image_platform
from nixlayer.registry import parse_push_target
from pipelines.build import PUSH_COMPRESSION, BuildImage, image_report
from tasks import runlog
from tasks.index import AssembleIndex, PushIndex


# The BuildImage parameters that decide which images form an index, and whether they can.
INDEX_FIELDS = ("name", "tag", "format", "output", "push", "platform", "architecture", "sbom")


def _target(push: str) -> str:
    try:
        return str(parse_push_target(push))
    except NixlayerError:
        return push  # BuildImage says what is wrong with it


def index_groups(entries: list[tuple[str, dict]]) -> list[list[int]]:
    """The images of ``entries`` ((entry, BuildImage parameters: those of INDEX_FIELDS it gives,
    outputs absolute)) that form an index, as lists of their positions, two or more each.

    Raises NixlayerError ``ENTRY: ...`` naming the later of two images that share an output or
    a push target but do not make an index (another name, tag or format, a docker-archive, one
    output but two targets, or one platform twice), an image whose platform is bad, or an
    image of an index given an ``sbom`` file (each image's SBOM is attached to it in the OCI
    layout and the registry; a file is written beside an image alone).
    """
    groups: dict[tuple[str, str], list[int]] = {}  # (output, push) -> positions
    by_output: dict[str, tuple[str, str]] = {}
    by_push: dict[str, tuple[str, str]] = {}
    platforms: dict[int, Platform] = {}  # position -> its image's platform
    for number, (entry, params) in enumerate(entries):
        output, push = params.get("output") or "", _target(params["push"]) if params.get("push") else ""
        try:
            platform = platforms[number] = image_platform(params.get("platform", ""), params.get("architecture", ""))
        except NixlayerError as e:
            raise NixlayerError(f"{entry}: {e}") from None
        key = (output, push)
        for kind, value, seen in (("output", output, by_output), ("push", push, by_push)):
            if value and seen.setdefault(value, key) != key:
                other = entries[groups[seen[value]][0]][0]
                raise NixlayerError(f"{entry}: {kind} {value} is also the {kind} of {other}, whose"
                                    f" {'push' if kind == 'output' else 'output'} is another: the images of one"
                                    " multi-platform index give the same output and push")
        if key in groups:
            first_entry, first = entries[groups[key][0]]
            where = f"output {output}" if output else f"push {push}"
            for field, default in (("name", ""), ("tag", ""), ("format", "docker-archive")):
                if params.get(field, default) != first.get(field, default):
                    raise NixlayerError(f"{entry}: {where} is also the {where.split()[0]} of {first_entry}, another"
                                        f" {field}: the images of one multi-platform index have one name and tag, and"
                                        " each its own platform")
            if output and params.get("format", "docker-archive") == "docker-archive":
                raise NixlayerError(f"{entry}: output {output} is also the output of {first_entry}: a docker-archive"
                                    " holds one image; images for several platforms share an oci or oci-archive output")
            for position in groups[key]:
                if platforms[position].key == platform.key:
                    raise NixlayerError(f"{entry}: platform {platform} is also the platform of {entries[position][0]},"
                                        f" in the index of {where}: give each image of an index its own platform")
        groups.setdefault(key, []).append(number)
    indexes = [positions for positions in groups.values() if len(positions) > 1]
    for entry, params in (entries[position] for positions in indexes for position in positions):
        if params.get("sbom"):
            raise NixlayerError(f"{entry}: sbom {params['sbom']}: an image of a multi-platform index has its SBOM"
                                " attached to it (in the OCI layout and the registry), not written to a file: leave"
                                " sbom out, or build the image alone to write one")
    return indexes


class ImageIndex:
    """The images (BuildImage tasks, each of its own platform) that make one index, and the
    tasks that write it (AssembleIndex) and push it (PushIndex); a batch schedules those in
    place of the images' own."""

    def __init__(self, images: list[BuildImage]) -> None:
        self.images = images
        first = images[0]
        self.name, self.output, self.format = first.name, first.output, first.format
        self.push = first.push_target(first.push) if first.push else ""

    @property
    def tag(self) -> str:
        """The images' tag, or without one, a hash of their default tags."""
        if self.images[0].tag:
            return self.images[0].tag
        tags = sorted(image.plan["tag"] for image in self.images)
        return hashlib.sha256(json.dumps(tags).encode()).hexdigest()[:32]

    def image_tasks(self) -> list:
        tasks: list = []
        if self.output:
            tasks.append(AssembleIndex(
                name=self.name, tag=self.tag, format=self.format, output=self.output,
                images=[image.image_parameters(image._output_compression()) for image in self.images]))
        if self.push:
            tasks.append(PushIndex(
                name=self.name, tag=self.tag, target=self.push, insecure_registry=self.images[0].insecure_registry,
                images=[image.image_parameters(PUSH_COMPRESSION) for image in self.images]))
        return tasks

    targets = image_tasks

    def nar_sizes(self) -> dict[str, int | None]:
        return {path: size for image in self.images for path, size in image.nar_sizes().items()}

    def report(self, results: runlog.Results, layers: dict[str, tuple[int, str]]) -> dict:
        """The index in a run's report (``pipelines.build.image_report``), with its platforms."""
        return {**image_report(self, results, layers),
                "platforms": [str(image.image_platform) for image in self.images]}
