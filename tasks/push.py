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
from nixlayer.image import Artifact, ImageLayer, sha256_digest
from nixlayer.mediatypes import MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST
from nixlayer.errors import NixlayerError
from nixlayer.base_image import BaseImage, parse_source
from nixlayer.layerstore import read_json
from nixlayer.registry import Blob, PushResult, PushTarget, Referrer, parse_pull_reference, parse_push_target, push_image, tagged_manifest_digest
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

    def _manifest(self) -> tuple[bytes, bytes, list[ImageLayer], list[Artifact]]:
        """The image manifest, config, layers, and the artifacts attached to it (its SBOM)."""
        layers = self.image_layers()
        config = self.image_config(layers)
        manifest = self.image_manifest(layers, config)
        sbom = self.image_sbom(layers, config) if self.closure else None
        return manifest, config, layers, self.attached(manifest, sbom)

    def complete(self) -> bool:
        """The layers are built and the registry holds this image's manifest under the tag
        (asked with a HEAD: another push may have moved the tag since this one), this layer
        store having pushed it with the same artifacts."""
        if not all(task.complete() for task in self.requires()):
            return False
        manifest, _, _, artifacts = self._manifest()
        expected = sha256_digest(manifest)
        stamp = self.read_stamp(self._stamp())
        if stamp.get("manifest_digest") != expected:
            return False
        if stamp.get("referrers", []) != [sha256_digest(a.manifest) for a in artifacts]:
            return False
        try:
            held = tagged_manifest_digest(self._target(), MEDIA_TYPE_OCI_MANIFEST, insecure=self.insecure_registry)
        except NixlayerError:
            return False  # unreachable now: run() will say so, in one line
        return held == expected

    def run(self) -> None:
        target = self._target()
        manifest, config, layers, artifacts = self._manifest()
        store = self.layer_store()
        config_blob = Blob(sha256_digest(config), len(config), MEDIA_TYPE_OCI_CONFIG, store.put_bytes(config))
        blobs = [Blob(l.blob.digest, l.blob.blob_size, l.blob.media_type, l.file) for l in layers]
        referrers = [
            Referrer(a.manifest, a.descriptor, [Blob(sha256_digest(b), len(b), media_type, store.put_bytes(b))
                                                for b, media_type in zip(a.blobs, a.media_types)])
            for a in artifacts
        ]
        result = push_image(
            target, manifest, MEDIA_TYPE_OCI_MANIFEST, config_blob, blobs,
            insecure=self.insecure_registry, mount_from=mount_sources(store.root, target, [self.base_image]), log=logger.info,
            referrers=referrers,
        )
        record_push(self, result, self._stamp(), self.layer_records(), [sha256_digest(a.manifest) for a in artifacts])


def mount_sources(layer_store: str, target: PushTarget, base_images: Iterable[str] = ()) -> list[str]:
    """Repositories of ``target``'s registry the layer store at ``layer_store`` pushed to before,
    and those of ``base_images`` (each ``BaseImage.to_json``, '' for none) on that registry."""
    sources = []
    for base_image in filter(None, base_images):
        transport, reference, _ = parse_source(BaseImage.from_json(base_image).source)
        base = parse_pull_reference(reference)[0] if transport == "docker" else None
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
    runlog.append([{"pushed": task.target, "uploaded": result.uploaded, "uploaded_bytes": result.uploaded_bytes,
                    "mounted": result.mounted, "present": result.present}])
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    with atomic_file(stamp) as f:
        f.write(json.dumps({
            "target": str(target), "host": target.host, "repository": target.repository,
            "manifest_digest": result.manifest_digest, "layers": layer_records, "referrers": list(referrers),
            **({"images": images} if images else {}),
        }).encode())
