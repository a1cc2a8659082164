"""PushToRegistry: push an image's layers from the layer store, then its manifest.

Only the blobs the registry lacks are uploaded; blobs this layer store pushed before to another
repository of the same registry are mounted from there instead. A stamp in the layer store
records the manifest digest pushed to each target, so a push with nothing changed is complete.
"""

from __future__ import annotations

import glob
import json
import logging
import os

import luigi

from nixlayer.atomic import atomic_file
from nixlayer.image import ImageLayer, oci_manifest, sha256_digest
from nixlayer.mediatypes import MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST
from nixlayer.errors import NixlayerError
from nixlayer.reference import without_credentials
from nixlayer.registry import Blob, PushTarget, parse_push_target, push_image, tagged_manifest_digest
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

    def _manifest(self) -> tuple[bytes, bytes, list[ImageLayer]]:
        layers = self.image_layers()
        config = self.image_config(layers)
        return oci_manifest(config, layers), config, layers

    def complete(self) -> bool:
        """The layers are built and the registry holds this image's manifest under the tag
        (asked with a HEAD: another push may have moved the tag since this one)."""
        if not all(task.complete() for task in self.requires()):
            return False
        manifest, _, _ = self._manifest()
        expected = sha256_digest(manifest)
        if self.read_stamp(self._stamp()).get("manifest_digest") != expected:
            return False
        try:
            held = tagged_manifest_digest(self._target(), MEDIA_TYPE_OCI_MANIFEST, insecure=self.insecure_registry)
        except NixlayerError:
            return False  # unreachable now: run() will say so, in one line
        return held == expected

    def _mount_sources(self, target: PushTarget) -> list[str]:
        """Repositories of the same registry this layer store pushed to before."""
        sources = []
        for path in sorted(glob.glob(os.path.join(self.layer_store().root, "pushes", "*.json"))):
            stamp = self.read_stamp(path, mark_used=False)  # looking at other pushes is not using them
            if stamp.get("host") == target.host and stamp.get("repository") != target.repository:
                sources.append(stamp["repository"])
        return sorted(set(sources))

    def run(self) -> None:
        target = self._target()
        manifest, config, layers = self._manifest()
        store = self.layer_store()
        config_blob = Blob(sha256_digest(config), len(config), MEDIA_TYPE_OCI_CONFIG, store.put_bytes(config))
        blobs = [Blob(l.blob.digest, l.blob.blob_size, l.blob.media_type, l.file) for l in layers]
        result = push_image(
            target, manifest, MEDIA_TYPE_OCI_MANIFEST, config_blob, blobs,
            insecure=self.insecure_registry, mount_from=self._mount_sources(target), log=logger.info,
        )
        message = (
            f"pushed {target} {result.manifest_digest}: {result.uploaded} blobs uploaded"
            f" ({result.uploaded_bytes} bytes), {result.mounted} mounted, {result.present} already there"
        )
        self.set_status_message(message)  # the run's summary line says it too (pipelines.build)
        runlog.append([{"pushed": self.target, "uploaded": result.uploaded, "uploaded_bytes": result.uploaded_bytes,
                        "mounted": result.mounted, "present": result.present}])
        os.makedirs(os.path.dirname(self._stamp()), exist_ok=True)
        with atomic_file(self._stamp()) as f:
            f.write(json.dumps({
                "target": str(target), "host": target.host, "repository": target.repository,
                "manifest_digest": result.manifest_digest, "layers": self.layer_records(),
            }).encode())
