"""BuildImage: one layered image from Nix store paths."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile

import luigi

from nixlayer.closure import graph_from_json, graph_from_nix, graph_from_store_dir
from nixlayer.compression import Compression
from nixlayer.formats import FORMATS, STDOUT, check_format
from nixlayer.errors import NixlayerError
from nixlayer.image import check_config, config_store_paths, host_architecture, parse_time
from nixlayer.layer import LayerSettings
from nixlayer.plan import plan_layers
from nixlayer.popularity import image_order
from nixlayer.reference import check_name, check_tag
from nixlayer.storepath import check_store_path, normalize_store_dir
from tasks.assemble import AssembleImage

DEFAULT_TIME = "1970-01-01T00:00:01Z"


def fail(error: NixlayerError) -> None:
    """Print the one-line error for the user, then let Luigi record the failure."""
    print(f"nixlayer: error: {error}", file=sys.stderr, flush=True)
    raise error


class BuildImage(luigi.Task):
    """Build a layered image of ``contents`` and ``config``, as nixpkgs ``buildLayeredImage``.

    The closure of the contents and of the store paths the config mentions is ordered by
    popularity; the first ``max_layers - 2`` store paths get a layer each, the rest share one
    overflow layer, and a customisation layer links the contents into ``/``. Bad input raises
    NixlayerError (printed as one line, ``nixlayer: error: ...``) before any layer is written.
    """

    name = luigi.Parameter(description="image name, such as 'hello' or 'registry:5000/team/hello'")
    tag = luigi.Parameter(default="", description="image tag; default: a hash of everything that determines the image")
    contents = luigi.ListParameter(default=[], description='store paths linked into /, as a JSON list')
    config = luigi.Parameter(default="{}", description='image config as JSON: {"Cmd": [...], "Env": [...]}')
    created = luigi.Parameter(default=DEFAULT_TIME, description="image creation time, ISO 8601 or 'now'")
    mtime = luigi.Parameter(default=DEFAULT_TIME, description="mtime of every file, ISO 8601 or 'now'")
    max_layers = luigi.IntParameter(default=100)
    uid = luigi.IntParameter(default=0)
    gid = luigi.IntParameter(default=0)
    uname = luigi.Parameter(default="root")
    gname = luigi.Parameter(default="root")
    include_store_paths = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING)
    architecture = luigi.Parameter(default="", description="Go architecture name; default: this machine's")
    format = luigi.ChoiceParameter(choices=FORMATS, default="docker-archive")
    compression = luigi.ChoiceParameter(choices=["none", "gzip", "zstd"], default="none")
    compression_level = luigi.OptionalIntParameter(default=None)
    output = luigi.Parameter(description="output file, directory for 'oci', or '-' for standard output")
    store_dir = luigi.Parameter(default="/nix/store")
    store_root = luigi.Parameter(default="/", description="where the store directory is on disk; not '/' means: scan it, no Nix")
    closure_graph = luigi.OptionalPathParameter(default=None, description="read the closure from this JSON (nix path-info --json) instead of asking Nix")

    def requires(self):
        """AssembleImage; for standard output, its layers (this task then writes the image)."""
        assemble = self.assembly()
        return assemble.requires() if self.output == STDOUT else assemble

    def complete(self) -> bool:
        return self.output != STDOUT and self.assembly().complete()

    def run(self) -> None:
        if self.output == STDOUT:
            self.assembly().write()

    def assembly(self) -> AssembleImage:
        """The AssembleImage of this build; bad input is printed as one line, then raised."""
        try:
            return self._assemble
        except NixlayerError as error:
            fail(error)
            raise

    @functools.cached_property
    def _assemble(self) -> AssembleImage:
        """Check every parameter, compute the closure and the layer plan: once per build."""
        check_name(self.name)
        if self.tag:
            check_tag(self.tag)
        store_dir = normalize_store_dir(self.store_dir)
        contents = [check_store_path(p, store_dir) for p in self.contents]
        try:
            config = check_config(json.loads(self.config))
        except json.JSONDecodeError as e:
            raise NixlayerError(f"--config is not valid JSON: {e}") from None
        created = parse_time(self.created)
        mtime = int(parse_time(self.mtime).timestamp())
        settings = LayerSettings(mtime, self.uid, self.gid, self.uname, self.gname)
        compression = Compression(self.compression, self.compression_level)
        check_format(self.format, compression.media_type, self.output)
        self._check_output()
        config_paths = config_store_paths(config, store_dir)
        roots = sorted(set(contents) | set(config_paths))
        graph = self._graph(roots, store_dir)
        order = image_order(graph, contents, config_paths) if self.include_store_paths else []
        plan = plan_layers(order, self.max_layers)
        store_layers = [list(layer.store_paths) for layer in plan.layers]
        image = {
            "store_layers": store_layers, "contents": contents, "config": config,
            "created": created.isoformat(), "settings": settings.key,
            "compression": compression.key, "architecture": self.architecture or host_architecture(),
        }
        tag = self.tag or hashlib.sha256(json.dumps(image, sort_keys=True).encode()).hexdigest()[:32]
        return AssembleImage(
            name=self.name, tag=tag, config=json.dumps(config, sort_keys=True),
            created=created.isoformat(), architecture=image["architecture"], format=self.format,
            output=self.output if self.output == STDOUT else os.path.abspath(self.output),
            store_layers=store_layers, contents=contents,
            mtime=mtime, uid=self.uid, gid=self.gid, uname=self.uname, gname=self.gname,
            compression=self.compression, compression_level=self.compression_level,
            store_dir=store_dir, store_root=self.store_root,
        )

    def _graph(self, roots: list[str], store_dir: str):
        if self.closure_graph is not None:
            try:
                with open(self.closure_graph) as f:
                    return graph_from_json(f.read(), store_dir).closure(roots)
            except OSError as e:
                raise NixlayerError(f"cannot read closure graph {self.closure_graph}: {e.strerror}") from None
        if self.store_root != "/":
            return graph_from_store_dir(roots, self.store_root, store_dir)
        return graph_from_nix(roots, store_dir)

    def _check_output(self) -> None:
        """Fail before any layer is written if the output cannot be written."""
        if self.output == STDOUT:
            return
        output = os.path.abspath(self.output)
        if self.format != "oci" and os.path.isdir(output):
            raise NixlayerError(f"cannot write output {self.output}: it is a directory")
        try:
            fd, probe = tempfile.mkstemp(prefix=".nixlayer-probe-", dir=os.path.dirname(output))
        except OSError as e:
            raise NixlayerError(f"cannot write output {self.output}: {e.strerror}") from None
        os.close(fd)
        os.unlink(probe)
