"""AssembleImage: the image, in the format asked for, from the layers in the layer store."""

from __future__ import annotations

import json
import os

import luigi

from nixlayer.atomic import atomic_file
from nixlayer.formats import FORMATS, Written, is_stream, write_image
from nixlayer.oci_layout import layout_digest, layout_holds
from tasks import runlog
from tasks.base import BatchableTask, Report, json_list
from tasks.image import ImageTask


def output_signature(format: str, output: str, tag: str) -> list[int] | str | None:
    """What identifies an output as written: an archive file's size, mtime and inode; for an
    OCI layout, the digest its index names for the tag (other tags may come and go)."""
    if format == "oci":
        return layout_digest(output, tag)
    try:
        st = os.stat(output)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class AssembleImage(BatchableTask, ImageTask):
    """Writes the image of ``store_layers`` plus the customisation layer to ``output``.

    ``store_layers`` is the layer plan: a list of layers, each a list of store paths. The output
    is written atomically (``write`` also streams to standard output, ``-``); an OCI layout
    gets this image added under its tag, its SBOM attached (``attach_sbom``). ``sbom``: a file
    the SBOM is written to as well (atomically, after the image).
    Complete when ``output`` holds what this very task wrote (a stamp in the layer store records
    it: the archive file as it was written, or the layout's entry for the tag), so a changed
    image is never mistaken for the one already there.

    The images of a build that share their layer settings and format are handed out in batches
    (see BatchableTask): 50 images cost the scheduler one hand-out of work (8 with several
    workers), not 50.
    """

    format = luigi.ChoiceParameter(choices=FORMATS, default="docker-archive")
    output = luigi.Parameter(batch_method=json_list)
    sbom = luigi.Parameter(default="", batch_method=json_list)  # the SBOM's file, written beside the output

    def batch_members(self) -> list[dict] | None:
        return self.batch_values(*self.batch_param_names())

    def requires(self) -> list:
        members = self.members()
        return super().requires() if members == [self] else [task for m in members for task in m.requires()]

    def base_uncompressed(self) -> bool:
        """A docker-archive holds tars: a base image's compressed layers are decompressed."""
        return self.format == "docker-archive"

    def stamp(self) -> str:
        """Where this task records, in the layer store, the output it wrote."""
        return self.stamp_path("images", json.dumps(self.to_str_params(), sort_keys=True))

    def _output_signature(self) -> list[int] | str | None:
        return output_signature(self.format, self.output, self.tag)

    def complete(self) -> bool:
        members = self.members()
        if members != [self]:
            return all(member.complete() for member in members)
        if is_stream(self.output):
            return False
        signature = self.read_stamp(self.stamp()).get("signature")
        if self.sbom and not os.path.exists(self.sbom):
            return False
        if signature is None or signature != self._output_signature():
            return False
        # An OCI layout hard-links its layer blobs from the layer store: one damaged there (and
        # removed by its check) is damaged in the layout too, which is written again; so is a
        # layout whose own blobs of this image are not what was written (oci_layout.layout_holds).
        return self.format != "oci" or (all(task.complete() for task in self.requires())
                                        and layout_holds(self.output, signature, self.image_layers()))

    def written(self) -> list[str]:
        """The outputs this task's run wrote (none before it ran)."""
        return self.__dict__.get("_written", [])

    def run(self) -> None:
        self._written = []
        super().run()

    def run_member(self, member: "AssembleImage", report: Report) -> None:
        report(0, f"writing {member.format} {member.output}: {member.name}:{member.tag}")
        digest, written = member.write()
        report(100, f"wrote {member.format} {member.output}: {member.name}:{member.tag} {digest}")
        self._written.append(member.output)
        if not is_stream(member.output):  # a stream is written again every time
            member.layer_store().write_image_stamp(member.stamp(), {
                "output": member.output, "name": member.name, "platform": str(member.image_platform), "digest": digest,
                "signature": member._output_signature(), "bytes": written, "layers": member.layer_records(),
            })

    def write(self) -> Written:
        """Write the image to ``output`` (its layers must be complete); return its digest and
        the bytes written.

        Standard output cannot be a Luigi target, so ``BuildImage --output -`` calls this from
        its own ``run`` instead of scheduling this task.
        """
        image, sbom = self.image_with_sbom()
        written = write_image(
            self.format, self.output, image.layers, image.config, self.name, self.tag, self.mtime,
            self.layer_store().root, manifest=image.manifest, artifacts=image.artifacts,
        )
        if self.sbom and sbom is not None:
            with atomic_file(self.sbom) as f:
                f.write(sbom)
        runlog.append([{"image": self.output, "digest": written.digest, "bytes": written.bytes}])
        return written
