"""AssembleIndex and PushIndex: a multi-platform image, an OCI image index of one image per
platform (``nixlayer.index``), written to an OCI layout or oci-archive, or pushed to a registry.

Each image of the index is given as the ImageTask parameters an image of its own would have
(``images``), so its layers are the same layer tasks: a layer two platforms share (the same
store paths and settings) is one task, written once, one blob in the layout, uploaded once.
Each image is the image it is alone (its manifest, annotations and all), with its SBOM
attached in an OCI layout and pushed as a referrer of its manifest.
"""

from __future__ import annotations

import json

import luigi

from nixlayer.formats import FORMATS, Written, write_index
from nixlayer.index import PlatformImage, oci_index
from nixlayer.layerstore import LayerStore, read_json
from nixlayer.mediatypes import MEDIA_TYPE_OCI_INDEX
from nixlayer.registry import PushTarget, parse_push_target, push_index
from tasks import runlog
from tasks.assemble import output_signature
from tasks.base import NixlayerTask
from tasks.image import ImageTask
from tasks.push import PushTargetParameter, image_push, push_options, pushed, record_push, referrer_digests


class IndexImage(ImageTask):
    """One image of an index: the layers it requires, its config, manifest and SBOM. Never
    scheduled: the index task requires its layers and writes it."""


class IndexTask(NixlayerTask, abstract=True):
    """An image index named ``name``:``tag`` of ``images``, each an image's ImageTask
    parameters (an object), in the index's order."""

    name = luigi.Parameter()
    tag = luigi.Parameter()
    images = luigi.ListParameter(description="each platform's image: its ImageTask parameters, as an object")

    def members(self) -> list[IndexImage]:
        members = self.__dict__.get("_members")
        if members is None:
            members = self._members = [IndexImage(**dict(params)) for params in self.images]
        return members

    def requires(self) -> list:
        """Every image's layer tasks, each once (two platforms' images may share layers)."""
        tasks = {task.task_id: task for member in self.members() for task in member.requires()}
        return list(tasks.values())

    def remote_base_layers(self) -> list:
        """Every image's base layers left in its base's registry (``ImageTask.remote_base``), each once."""
        tasks = {task.task_id: task for member in self.members() for task in member.remote_base_layers()}
        return list(tasks.values())

    def platform_images(self) -> list[PlatformImage]:
        """Each image, as it is alone (``ImageTask.platform_image``: its manifest annotations
        and SBOM too), from the layer store (the layers must be complete)."""
        return [member.platform_image() for member in self.members()]

    def layer_store(self) -> LayerStore:
        return self.members()[0].layer_store()

    def layer_records(self) -> list[str]:
        """Every image's layer records (see ``ImageTask.layer_records``), each once."""
        return sorted({record for member in self.members() for record in member.layer_records()})

    def image_records(self) -> dict[str, list[str]]:
        """Each image's layer records, bottom first, by its platform: the index's stamp names
        them, for the ``stable`` layering of each image's next build (``LayerStore.previous_layers``)."""
        return {str(member.image_platform): member.layer_records() for member in self.members()}

    def read_stamp(self, path: str, mark_used: bool = True) -> dict:
        return read_json(path, mark_used)


class AssembleIndex(IndexTask):
    """Writes the index to ``output`` (``format`` oci: added to the layout under ``tag``, each
    image's SBOM attached; oci-archive: a file whose index names it ``name:tag``). Complete, as
    AssembleImage, when a stamp in the layer store says ``output`` holds what this task wrote;
    the stamp names each image's layers, by platform, and the ``latest/`` pointers of the
    output's platforms name the stamp (``LayerStore.write_image_stamp``)."""

    format = luigi.ChoiceParameter(choices=FORMATS)
    output = luigi.Parameter()

    def stamp(self) -> str:
        return self.layer_store().stamp_path("images", json.dumps(self.to_str_params(), sort_keys=True))

    def complete(self) -> bool:
        signature = self.read_stamp(self.stamp()).get("signature")
        return signature is not None and signature == output_signature(self.format, self.output, self.tag)

    def run(self) -> None:
        self.set_status_message(f"writing {self.format} {self.output}: {self.name}:{self.tag}")
        written = self.write()
        self.layer_store().write_image_stamp(self.stamp(), {
            "output": self.output, "name": self.name, "digest": written.digest,
            "signature": output_signature(self.format, self.output, self.tag),
            "bytes": written.bytes, "layers": self.layer_records(), "images": self.image_records(),
        })
        self.set_status_message(f"wrote {self.format} {self.output}: {self.name}:{self.tag} {written.digest}")

    def write(self) -> Written:
        """Write the index and its images to ``output``; return its digest and bytes written."""
        mtime = self.members()[0].mtime
        written = write_index(self.format, self.output, self.platform_images(), self.name, self.tag, mtime,
                              self.layer_store().root)
        runlog.append([{"image": self.output, "digest": written.digest, "bytes": written.bytes}])
        return written


class PushIndex(IndexTask):
    """Pushes the index to ``target`` (``docker://HOST[:PORT]/REPOSITORY:TAG``): every image's
    missing blobs once, its manifest by digest and its SBOM as a referrer of it, the index
    under the tag. Complete, as PushToRegistry, when the registry holds this index under the
    tag, this layer store having pushed it with the same referrers."""

    target = PushTargetParameter()
    insecure_registry = luigi.BoolParameter(default=False, description="allow plain HTTP to a non-loopback registry")

    def _target(self) -> PushTarget:
        return parse_push_target(self.target)

    def _stamp(self) -> str:
        return self.layer_store().stamp_path("pushes", str(self._target()))

    def complete(self) -> bool:
        if not all(task.complete() for task in self.requires()):
            return False
        images = self.platform_images()
        return pushed(self, oci_index(images), MEDIA_TYPE_OCI_INDEX, images)

    def run(self) -> None:
        images = self.platform_images()
        result = push_index(self._target(), [image_push(self.layer_store(), image) for image in images], oci_index(images),
                            push_options(self, [member.base_image for member in self.members()]))
        record_push(self, result, self._stamp(), self.layer_records(), referrer_digests(images), self.image_records())
