"""AssembleImage: the image, in the format asked for, from the layers in the layer store."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import luigi

from nixlayer.atomic import atomic_file
from nixlayer.formats import FORMATS, STDOUT, write_image
from nixlayer.image import image_config, parse_time
from tasks.layers import CustomisationLayer, LayerParameters, layer_task


class AssembleImage(LayerParameters):
    """Writes the image of ``store_layers`` plus the customisation layer to ``output``.

    ``store_layers`` is the layer plan: a list of layers, each a list of store paths. The output
    is written atomically; ``-`` streams docker-archive or oci-archive to standard output.
    Complete when ``output`` exists and was written by this very task (a stamp in the layer
    store records it), so a changed image is never mistaken for the one already there.
    """

    name = luigi.Parameter()
    tag = luigi.Parameter()
    config = luigi.Parameter(default="{}", description="the image config object, as JSON")
    created = luigi.Parameter(default="1970-01-01T00:00:01Z")
    architecture = luigi.Parameter()
    format = luigi.ChoiceParameter(choices=FORMATS, default="docker-archive")
    output = luigi.Parameter()
    store_layers = luigi.ListParameter()
    contents = luigi.ListParameter(default=[])

    def requires(self) -> list[LayerParameters]:
        params = self.layer_parameters()
        layers = [layer_task(list(paths), **params) for paths in self.store_layers]
        return layers + [CustomisationLayer(contents=list(self.contents), **params)]

    def _stamp_path(self) -> str:
        key = hashlib.sha256(json.dumps(self.to_str_params(), sort_keys=True).encode()).hexdigest()
        return os.path.join(self.layer_store().root, "images", key[:32] + ".json")

    def _output_signature(self) -> list[int] | None:
        path = os.path.join(self.output, "index.json") if self.format == "oci" else self.output
        try:
            st = os.stat(path)
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def complete(self) -> bool:
        try:
            with open(self._stamp_path()) as f:
                stamp = json.load(f)
        except (OSError, ValueError):
            return False
        return stamp.get("signature") == self._output_signature() and stamp.get("output") == self.output

    def run(self) -> None:
        digest = self.write()
        self.set_status_message(f"wrote {self.format} {self.output}: {self.name}:{self.tag} {digest}")
        if self.output != STDOUT:
            os.makedirs(os.path.dirname(self._stamp_path()), exist_ok=True)
            with atomic_file(self._stamp_path()) as f:
                f.write(json.dumps({
                    "output": self.output, "digest": digest, "signature": self._output_signature(),
                }).encode())

    def write(self) -> str:
        """Write the image to ``output`` (its layers must be complete); return its digest.

        Standard output cannot be a Luigi target, so ``BuildImage --output -`` calls this from
        its own ``run`` instead of scheduling this task.
        """
        store = self.layer_store()
        layers = [store.image_layer(task.output().record()) for task in self.requires()]
        config = image_config(layers, json.loads(self.config), parse_time(self.created), self.architecture)
        digest = write_image(
            self.format, self.output, layers, config, self.name, self.tag, self.mtime, store.root
        )
        print(f"nixlayer: wrote {self.format} {self.output}: {self.name}:{self.tag} {digest}", file=sys.stderr)
        return digest
