"""AssembleImage: the image, in the format asked for, from the layers in the layer store."""

from __future__ import annotations

import json
import os

import luigi

from nixlayer.atomic import atomic_file
from nixlayer.formats import FORMATS, Written, is_stream, write_image
from nixlayer.oci_layout import layout_digest
from tasks import runlog
from tasks.base import BatchableTask, Report, json_list
from tasks.image import ImageTask


class AssembleImage(BatchableTask, ImageTask):
    """Writes the image of ``store_layers`` plus the customisation layer to ``output``.

    ``store_layers`` is the layer plan: a list of layers, each a list of store paths. The output
    is written atomically (``write`` also streams to standard output, ``-``); an OCI layout
    gets this image added under its tag.
    Complete when ``output`` holds what this very task wrote (a stamp in the layer store records
    it: the archive file as it was written, or the layout's entry for the tag), so a changed
    image is never mistaken for the one already there.

    The images of a build that share their layer settings and format are handed out in batches
    (see BatchableTask): 50 images cost the scheduler one hand-out of work (8 with several
    workers), not 50.
    """

    format = luigi.ChoiceParameter(choices=FORMATS, default="docker-archive")
    output = luigi.Parameter(batch_method=json_list)

    def batch_members(self) -> list[dict] | None:
        return self.batch_values(*self.batch_param_names())

    def requires(self) -> list:
        members = self.members()
        return super().requires() if members == [self] else [task for m in members for task in m.requires()]

    def stamp(self) -> str:
        """Where this task records, in the layer store, the output it wrote."""
        return self.stamp_path("images", json.dumps(self.to_str_params(), sort_keys=True))

    def _output_signature(self) -> list[int] | str | None:
        """What identifies the output as written: an archive file's size, mtime and inode; for
        an OCI layout, the manifest digest its index names for the tag (other tags may come
        and go)."""
        if self.format == "oci":
            return layout_digest(self.output, self.tag)
        try:
            st = os.stat(self.output)
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def complete(self) -> bool:
        members = self.members()
        if members != [self]:
            return all(member.complete() for member in members)
        if is_stream(self.output):
            return False
        signature = self.read_stamp(self.stamp()).get("signature")
        if signature is None or signature != self._output_signature():
            return False
        # An OCI layout hard-links its layer blobs from the layer store: one damaged there (and
        # removed by its check) is damaged in the layout too, which is written again.
        return self.format != "oci" or all(task.complete() for task in self.requires())

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
            stamp = member.stamp()
            os.makedirs(os.path.dirname(stamp), exist_ok=True)
            with atomic_file(stamp) as f:
                f.write(json.dumps({
                    "output": member.output, "name": member.name, "digest": digest,
                    "signature": member._output_signature(),
                    "bytes": written, "layers": member.layer_records(),
                }).encode())

    def write(self) -> Written:
        """Write the image to ``output`` (its layers must be complete); return its digest and
        the bytes written.

        Standard output cannot be a Luigi target, so ``BuildImage --output -`` calls this from
        its own ``run`` instead of scheduling this task.
        """
        layers = self.image_layers()
        written = write_image(
            self.format, self.output, layers, self.image_config(layers), self.name, self.tag,
            self.mtime, self.layer_store().root,
        )
        runlog.append([{"image": self.output, "digest": written.digest, "bytes": written.bytes or 0}])
        return written
