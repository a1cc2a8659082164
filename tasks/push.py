"""PushToRegistry: push an image's layers from the layer store, then its manifest.

Only the blobs the registry lacks are uploaded; blobs this layer store pushed before to another
repository of the same registry, or of a base image in another repository there, are mounted
from there instead. A stamp in the layer store
records the manifest digest pushed to each target, so a push with nothing changed is complete.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Iterable

import luigi

from nixlayer.atomic import atomic_file
from nixlayer.image import sha256_digest
from nixlayer.index import PlatformImage
from nixlayer.mediatypes import MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST
from nixlayer.errors import NixlayerError
from nixlayer.base_image import BaseImage
from nixlayer.layerstore import LayerStore, read_json
from nixlayer.registry import (
    Blob, ImagePush, PushOptions, PushResult, PushTarget, Referrer, parse_push_target, push_image,
    tagged_manifest_digest,
)
from nixlayer.reference import without_credentials
from tasks import runlog
from tasks.image import ImageTask

logger = logging.getLogger("nixlayer.push")


class PushTargetParameter(luigi.Parameter):
    """A push target (``docker://HOST[:PORT]/REPOSITORY:TAG``). One with credentials in it is
    refused as it is read, before a task holding it exists: a task's parameters go to the
    scheduler (luigid's dashboard and history) and into Luigi's log lines."""

    def normalize(self, x):
        if isinstance(x, str) and without_credentials(x)[1]:
            parse_push_target(x)  # raises, showing the target without them
        return x


class PushToRegistry(ImageTask):
    """Pushes the image to ``target`` (``docker://HOST[:PORT]/REPOSITORY:TAG``) as an OCI image."""

    target = PushTargetParameter()
    insecure_registry = luigi.BoolParameter(default=False, description="allow plain HTTP to a non-loopback registry")

    def _target(self) -> PushTarget:
        return parse_push_target(self.target)

    def _stamp(self) -> str:
        return self.stamp_path("pushes", str(self._target()))

    def complete(self) -> bool:
        """The layers are built and the registry holds this image's manifest under the tag
        (asked with a HEAD: another push may have moved the tag since this one), this layer
        store having pushed it with the same artifacts."""
        if not all(task.complete() for task in self.requires()):
            return False
        image = self.platform_image()
        return pushed(self, image.manifest, MEDIA_TYPE_OCI_MANIFEST, [image])

    def run(self) -> None:
        image = self.platform_image()
        push = image_push(self.layer_store(), image)
        result = push_image(self._target(), image.manifest, MEDIA_TYPE_OCI_MANIFEST, push.config, push.layers,
                            push_options(self, [self.base_image]), push.referrers)
        record_push(self, result, self._stamp(), self.layer_records(), referrer_digests([image]))


def push_options(task, base_images: Iterable[str]) -> PushOptions:
    """How ``task`` (PushToRegistry or PushIndex) pushes: over plain HTTP if it allows an
    insecure registry, its progress to the log, missing blobs mounted from the repositories
    ``mount_sources`` names (``base_images``: those of its images)."""
    return PushOptions(insecure=task.insecure_registry, log=logger.info,
                       mount_from=mount_sources(task.layer_store().root, task._target(), base_images))


def image_push(store: LayerStore, image: PlatformImage) -> ImagePush:
    """``image`` as a push takes it: its manifest, its config and artifacts' blobs (kept as
    blobs in the layer store ``store`` to be read from there), its layers' blobs (a base
    layer left in its registry fetched only if it must be uploaded), and its artifacts as the
    referrers of its manifest."""
    def blob(data: bytes, media_type: str) -> Blob:
        return Blob(sha256_digest(data), len(data), media_type, store.put_bytes(data))

    return ImagePush(
        image.manifest, blob(image.config, MEDIA_TYPE_OCI_CONFIG),
        [Blob(layer.blob.digest, layer.blob.blob_size, layer.blob.media_type, layer.file, layer.fetch)
         for layer in image.layers],
        [Referrer(a.manifest, a.descriptor, [blob(b, media_type) for b, media_type in zip(a.blobs, a.media_types)])
         for a in image.artifacts],
    )


def pushed(task, document: bytes, media_type: str, images: list[PlatformImage]) -> bool:
    """Whether ``task`` (PushToRegistry or PushIndex) pushed ``document`` (an image manifest or
    index of ``images``, of ``media_type``) with the same artifacts (its stamp says so), and its
    target's registry holds it under the tag now (a HEAD: another push may have moved the tag)."""
    expected = sha256_digest(document)
    stamp = task.read_stamp(task._stamp())
    if stamp.get("manifest_digest") != expected or stamp.get("referrers", []) != referrer_digests(images):
        return False
    try:
        held = tagged_manifest_digest(task._target(), media_type, insecure=task.insecure_registry)
    except NixlayerError:
        return False  # unreachable now: run() will say so, in one line
    return held == expected


def referrer_digests(images: list[PlatformImage]) -> list[str]:
    """The manifest digests of the artifacts attached to ``images``, in order: what a push
    stamp records as its ``referrers`` (a push is complete only with the same ones)."""
    return [sha256_digest(a.manifest) for image in images for a in image.artifacts]


def mount_sources(layer_store: str, target: PushTarget, base_images: Iterable[str] = ()) -> list[str]:
    """Repositories of ``target``'s registry the layer store at ``layer_store`` pushed to before,
    and those of ``base_images`` (each ``BaseImage.to_json``, '' for none) on that registry."""
    sources = []
    for base_image in filter(None, base_images):
        base = BaseImage.from_json(base_image).registry()
        if base is not None and base.host == target.host and base.repository != target.repository:
            sources.append(base.repository)
    for path in sorted(glob.glob(os.path.join(layer_store, "pushes", "*.json"))):
        stamp = read_json(path, mark_used=False)  # looking at other pushes is not using them
        if stamp.get("host") == target.host and stamp.get("repository") != target.repository:
            sources.append(stamp["repository"])
    return sorted(set(sources))


def record_push(task: luigi.Task, result: PushResult, stamp: str, layer_records: list[str],
                referrers: list[str] = (), images: dict[str, list[str]] | None = None) -> None:
    """After ``task`` pushed (``result``): its status message, the run log's entry (the run's
    summary line says it too, see ``pipelines.build``), and its stamp at ``stamp`` naming the
    manifest digest pushed, the layer records it is made of, the digests of the artifacts
    pushed as its ``referrers``, and for an index, its ``images``: each platform's layer
    records, bottom first (see ``LayerStore.previous_layers``)."""
    target = result.target
    task.set_status_message(
        f"pushed {target} {result.manifest_digest}: {result.uploaded} blobs uploaded"
        f" ({result.uploaded_bytes} bytes), {result.mounted} mounted, {result.present} already there")
    runlog.append([{"pushed": task.target, "digest": result.manifest_digest, "uploaded": result.uploaded, "uploaded_bytes": result.uploaded_bytes,
                    "mounted": result.mounted, "present": result.present}])
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    with atomic_file(stamp) as f:
        f.write(json.dumps({
            "target": str(target), "host": target.host, "repository": target.repository,
            "manifest_digest": result.manifest_digest, "layers": layer_records, "referrers": list(referrers),
            **({"images": images} if images else {}),
        }).encode())
