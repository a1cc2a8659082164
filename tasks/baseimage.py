"""BaseImageLayer: one layer of a base image (``--from-image``), copied into the layer store.

Its target is a layer record like a store path layer's (``tasks.layers.LayerStoreTarget``), in
the settings directory ``base`` (a base layer's bytes depend on no layer setting), named by
the blob's digest and whether it is kept as it is or as a tar (a docker-archive output; made
from the blob kept as it is, so a compressed blob is downloaded once). The copy is streamed and
verified (``nixlayer.base_image.write_base_layer``), from the layer store when it holds the
blob already, else from the base image's source: a rebuild reads nothing.

An image only pushed to its base's registry does not require these tasks
(``tasks.image.ImageTask.remote_base``): its push takes each layer as
:meth:`BaseImageLayer.remote_layer`, copied (:meth:`BaseImageLayer.copy`) only if the push can
neither find the blob in the target repository nor mount it from the base's.
"""

from __future__ import annotations

import os

import luigi

from nixlayer.base_image import BaseImage, BaseLayer, write_base_layer
from nixlayer.errors import NixlayerError
from nixlayer.image import ImageLayer
from nixlayer.layer import LayerBlob
from nixlayer.layerstore import LayerRecord, LayerStore, record_name
from nixlayer.mediatypes import MEDIA_TYPE_OCI_LAYER
from tasks import runlog
from tasks.base import NixlayerTask
from tasks.errors import PREFIX
from tasks.layers import LayerStoreTarget

BASE_SETTINGS = "base"
"""The layer store's settings directory of base image layers."""


class BaseImageLayer(NixlayerTask):
    """Copies the blob ``digest`` of the base image ``source`` into the layer store; with
    ``uncompressed``, as the tar it holds (a docker-archive holds tars)."""

    source = luigi.Parameter(description="the base image, in skopeo's transport syntax")
    digest = luigi.Parameter()
    media_type = luigi.Parameter()
    blob_size = luigi.IntParameter()
    diff_id = luigi.Parameter()
    path = luigi.Parameter(default="", description="where the blob is in a file source")
    uncompressed = luigi.BoolParameter(default=False)
    insecure_registry = luigi.BoolParameter(default=False)
    layer_store_dir = luigi.Parameter(description="the layer store directory, absolute")
    priority = 1  # as the other layers (tasks.layers.LayerTask)

    def layer(self) -> BaseLayer:
        return BaseLayer(self.digest, self.media_type, self.blob_size, self.diff_id, self.path)

    def store_paths(self) -> list[str]:
        """None: a base layer holds no store path of this image's closure."""
        return []

    def requires(self) -> list["BaseImageLayer"]:
        """For the tar of a compressed blob, the blob kept as it is: it is downloaded once,
        and decompressed from the layer store."""
        if not self.uncompressed or self.media_type == MEDIA_TYPE_OCI_LAYER:
            return []
        return [BaseImageLayer(**{**self.param_kwargs, "uncompressed": False})]

    def output(self) -> LayerStoreTarget:
        target = self.__dict__.get("_output")
        if target is None:
            kind = "tar" if self.uncompressed or self.media_type == MEDIA_TYPE_OCI_LAYER else "blob"
            name = record_name(BASE_SETTINGS, f"{self.digest.partition(':')[2]}-{kind}")
            target = self._output = LayerStoreTarget(LayerStore(self.layer_store_dir), name)
        return target

    def comment(self) -> str:
        """The layer record's comment."""
        return f"base image {self.source}"

    def copy(self) -> LayerRecord:
        """Copy the blob into the layer store (see the module docstring); its record."""
        kept = LayerStore(self.layer_store_dir).blob_path(self.digest)
        try:
            kept_here = os.path.getsize(kept) == self.blob_size
        except OSError:
            kept_here = False
        return self.output().write([], self.comment(), lambda out: write_base_layer(
            self.source, self.layer(), out, uncompressed=self.uncompressed, kept=kept if kept_here else None,
            insecure=self.insecure_registry))

    def remote_layer(self) -> ImageLayer:
        """The layer as an image left in the base's registry takes it (``ImageTask.remote_base``):
        its digests from the base's manifest and config, its blob file where :meth:`copy` writes
        it (absent until then), :meth:`copy` as its ``fetch``."""
        blob = LayerBlob(self.diff_id, 0, self.digest, self.blob_size, self.media_type)
        return ImageLayer(blob, LayerStore(self.layer_store_dir).blob_path(self.digest), self.comment(), self.copy)

    def run(self) -> None:
        what = f"base layer {self.digest}"
        self.set_status_message(f"{what}: copying from {self.source}")
        target = self.output()
        record = self.copy()
        runlog.layer_written(target.path)
        runlog.append([{"layer": target.path}])
        runlog.flush()
        self.set_status_message(f"{what}: {record.blob.blob_size} bytes, diff_id {record.blob.diff_id}")

    def on_failure(self, exception: Exception) -> str:
        if isinstance(exception, NixlayerError):
            return f"{PREFIX}{exception}"
        return super().on_failure(exception)


def base_layer_tasks(base_image: str, uncompressed: bool, layer_store_dir: str) -> list[BaseImageLayer]:
    """The tasks of the layers of ``base_image`` (``BaseImage.to_json``; none if empty)."""
    if not base_image:
        return []
    base = BaseImage.from_json(base_image)
    return [BaseImageLayer(source=base.source, digest=layer.digest, media_type=layer.media_type,
                           blob_size=layer.blob_size, diff_id=layer.diff_id, path=layer.path,
                           uncompressed=uncompressed, insecure_registry=base.insecure,
                           layer_store_dir=layer_store_dir) for layer in base.layers]
