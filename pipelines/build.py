"""BuildImage and PushImage: one layered image from Nix store paths, written or pushed."""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import sys

import luigi

from nixlayer.atomic import check_writable
from nixlayer.closure import ClosureGraph, read_graph
from nixlayer.compression import NAMES, Compression
from nixlayer.formats import FORMATS, STDOUT, check_format
from nixlayer.errors import NixlayerError
from nixlayer.customisation import check_contents
from nixlayer.oci_layout import check_layout_writable
from nixlayer.image import DEFAULT_CREATED, check_architecture, check_config, config_store_paths, host_architecture, parse_time
from nixlayer.layer import LayerSettings
from nixlayer.plan import plan_image, plan_layers
from nixlayer.reference import check_name, check_tag
from nixlayer.registry import parse_push_target
from nixlayer.storepath import DEFAULT_STORE_DIR, normalize_store_dir, resolve_store_path
from nixlayer.layerstore import LayerStore
from tasks.assemble import AssembleImage
from tasks.base import NixlayerTask, plan_batches
from tasks.config import layer_store_root
from tasks.image import ImageTask
from tasks.push import PushToRegistry

PUSH_COMPRESSION = "gzip"  # what --compression auto means for a registry


class StorePathsParameter(luigi.ListParameter):
    """A JSON list of store paths; a value that is not one says what is expected (see
    ``tasks.base.name_parse_errors``)."""

    expected = "a JSON list of store paths such as '[\"/nix/store/...-hello\"]'"


class ImageParameters(NixlayerTask, abstract=True):
    """The parameters of one image, as nixpkgs ``buildLayeredImage``, and its layer plan.

    The closure of the contents and of the store paths the config mentions is ordered by
    popularity; the first ``max_layers - 2`` store paths get a layer each, the rest share one
    overflow layer, and a customisation layer links the contents into ``/``. Bad input raises
    NixlayerError (printed as one line, ``nixlayer: error: ...``) before any layer is written.
    """

    name = luigi.Parameter(description="image name, such as 'hello' or 'registry:5000/team/hello'")
    tag = luigi.Parameter(default="", description="image tag; default: a hash of everything that determines the image")
    contents = StorePathsParameter(default=[], description="store paths linked into /, as a JSON list")
    config = luigi.Parameter(default="{}", description='image config as JSON: {"Cmd": [...], "Env": [...]}')
    created = luigi.Parameter(default=DEFAULT_CREATED, description="image creation time, ISO 8601 or 'now'")
    mtime = luigi.Parameter(default=DEFAULT_CREATED, description="mtime of every file, ISO 8601 or 'now'")
    max_layers = luigi.IntParameter(default=100)
    uid = luigi.IntParameter(default=0)
    gid = luigi.IntParameter(default=0)
    uname = luigi.Parameter(default="root")
    gname = luigi.Parameter(default="root")
    include_store_paths = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING)
    architecture = luigi.Parameter(default="", description="Go architecture name; default: this machine's")
    compression = luigi.ChoiceParameter(
        choices=["auto", *NAMES], default="auto",
        description="layer compression; auto: none for docker-archive, gzip for OCI and registries",
    )
    compression_level = luigi.OptionalIntParameter(default=None)
    store_dir = luigi.Parameter(default=DEFAULT_STORE_DIR)
    store_root = luigi.Parameter(default="/", description="where the store directory is on disk; not '/' means: scan it, no Nix")
    closure_graph = luigi.OptionalPathParameter(default=None, description="read the closure from this JSON (nix path-info --json) instead of asking Nix")
    insecure_registry = luigi.BoolParameter(default=False, description="allow plain HTTP to a non-loopback registry")

    def check(self) -> None:
        """Checks of the subclass's own parameters, run before the closure is computed."""

    def compression_for(self, default: str) -> Compression:
        """The layer compression of one target: ``--compression``, or ``default`` for ``auto``
        (none for docker-archive, gzip for OCI and registries). Raises NixlayerError for a
        level out of range."""
        return Compression(default if self.compression == "auto" else self.compression, self.compression_level)

    def image_task(self, task: type[ImageTask], default_compression: str, **extra) -> ImageTask:
        """``task`` (AssembleImage, PushToRegistry) for this image, its layers compressed as
        ``compression_for(default_compression)`` says."""
        compression = self.compression_for(default_compression)
        return task(**self.plan, compression=compression.name, compression_level=self.compression_level, **extra)

    def run(self) -> None:
        pass

    @functools.cached_property
    def plan(self) -> dict:
        """The ImageTask parameters of this image: every parameter checked, the closure read and
        the layers planned, once per build. Raises NixlayerError for bad input (Luigi then
        prints it as one line, see ``tasks.errors``)."""
        check_name(self.name)
        if self.tag:
            check_tag(self.tag)
        store_dir = normalize_store_dir(self.store_dir)
        contents, config, config_paths = self._inputs
        created = parse_time(self.created)
        mtime = int(parse_time(self.mtime).timestamp())
        settings = LayerSettings(mtime, self.uid, self.gid, self.uname, self.gname)
        self.check()
        layer_store = LayerStore(layer_store_root())
        # Two contents with one file: fail now. Checked while Nix works out the closure in its
        # own process (20 ms of a 0.27 s rebuild); errors come in the order of the code.
        checked = _checker().submit(check_contents, contents, self.store_root, settings,
                                    layer_store.fragments_dir(settings, store_dir))
        try:
            graph = self.read_graph(self.roots())
        finally:
            concurrent.futures.wait([checked])
        if self.include_store_paths:
            plan = plan_image(graph, contents, config_paths, self.max_layers)
        else:  # only the customisation layer; the layer budget is still checked
            plan = plan_layers([], self.max_layers)
        checked.result()
        image = {
            "store_layers": [list(layer.store_paths) for layer in plan.layers],
            "contents": contents, "config": json.dumps(config, sort_keys=True),
            "created": created.isoformat(),
            "architecture": check_architecture(self.architecture) if self.architecture else host_architecture(),
        }
        # The default tag: a hash of everything that determines the image, as nixpkgs' output
        # hash (the name and the layer compression too: an OCI layout names images by tag alone).
        identity = {**image, "settings": settings.key, "store_dir": store_dir, "name": self.name,
                    "compression": [self.compression, self.compression_level]}
        tag = self.tag or hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
        return {
            **image, "name": self.name, "tag": tag, "mtime": mtime, "uid": self.uid, "gid": self.gid,
            "uname": self.uname, "gname": self.gname, "store_dir": store_dir, "store_root": self.store_root,
            "layer_store_dir": layer_store.root,
        }

    def graph_source(self) -> tuple:
        """Where this image's closure graph is read from: (closure_graph, store_root, store_dir)."""
        return (self.closure_graph, self.store_root, normalize_store_dir(self.store_dir))

    @functools.cached_property
    def _inputs(self) -> tuple[list[str], dict, list[str]]:
        """The checked contents (links such as ./result resolved to their store paths), config,
        and store paths the config mentions."""
        store_dir = normalize_store_dir(self.store_dir)
        contents = [resolve_store_path(p, store_dir) for p in self.contents]
        try:
            config = check_config(json.loads(self.config))
        except json.JSONDecodeError as e:
            raise NixlayerError(f"--config is not valid JSON: {e}") from None
        return contents, config, config_store_paths(config, store_dir)

    def roots(self) -> list[str]:
        """The image's roots: its contents and the store paths its config mentions, sorted.

        Raises NixlayerError for a bad contents path or config."""
        contents, _, config_paths = self._inputs
        return sorted(set(contents) | set(config_paths))

    def read_graph(self, roots: list[str]) -> ClosureGraph:
        """The closure of ``roots``, read as this image's parameters say (a JSON graph, a store
        directory scan, or live Nix).

        Graphs read in this process are kept by where they came from, and a closure inside one
        is taken from it: ``BuildImages`` reads one graph for all its images this way instead
        of asking Nix once per image. Raises NixlayerError.
        """
        store_dir = normalize_store_dir(self.store_dir)
        if not roots:  # an image of its config alone, as nixpkgs allows
            return ClosureGraph({}, store_dir=store_dir)
        source = self.graph_source()
        for graph in _GRAPHS.get(source, ()):
            if all(root in graph for root in roots):
                return graph.closure(roots)
        graph = read_graph(roots, graph_file=None if self.closure_graph is None else str(self.closure_graph),
                           scan_root=None if self.store_root == "/" else self.store_root, store_dir=store_dir)
        if self.closure_graph is not None:  # a graph file holds more than this closure
            graph = graph.closure(roots)
        _GRAPHS.setdefault(source, []).append(graph)
        return graph


# Closure graphs read in this process, by (closure_graph, store_root, store_dir).
_GRAPHS: dict[tuple, list[ClosureGraph]] = {}


@functools.cache
def _checker() -> concurrent.futures.ThreadPoolExecutor:
    """The thread that checks an image's contents while its closure is read: one for the
    process (a thread started and joined per image cost a batch of 50 images 15 ms). A forked
    process (Luigi's ``--workers N``) has not the thread, so it makes its own."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="nixlayer-check")


os.register_at_fork(after_in_child=_checker.cache_clear)


class BuildImage(ImageParameters):
    """Build the image and write it to ``--output`` (a file, an OCI directory, or ``-``), push
    it to ``--push`` (``docker://HOST[:PORT]/REPOSITORY:TAG``), or both.
    """

    format = luigi.ChoiceParameter(choices=FORMATS, default="docker-archive")
    output = luigi.Parameter(default="", description="output file, directory for 'oci', or '-' for standard output")
    push = luigi.Parameter(default="", description="push to docker://HOST[:PORT]/REPOSITORY[:TAG]")

    def check(self) -> None:
        if not self.output and not self.push:
            raise NixlayerError("nothing to do: give --output FILE (or -) and/or --push docker://HOST/REPOSITORY:TAG")
        if self.push:
            parse_push_target(self.push)
            self.compression_for(PUSH_COMPRESSION)
        if self.output:
            check_format(self.format, self.compression_for(self._output_compression()).media_type, self.output)
            self._check_output()

    def _output_compression(self) -> str:
        """The compression ``auto`` means for the output format."""
        return "none" if self.format == "docker-archive" else "gzip"

    def assemble_task(self) -> AssembleImage:
        output = self.output if self.output == STDOUT else os.path.abspath(self.output)
        return self.image_task(AssembleImage, self._output_compression(), format=self.format, output=output)

    def targets(self) -> list[ImageTask]:
        """AssembleImage for a file or directory output, PushToRegistry for a push."""
        tasks: list[ImageTask] = []
        if self.output and self.output != STDOUT:
            tasks.append(self.assemble_task())
        if self.push:
            tasks.append(self.image_task(PushToRegistry, PUSH_COMPRESSION, target=self.push,
                                         insecure_registry=self.insecure_registry))
        return tasks

    def requires(self) -> list:
        """The targets; for standard output, also the layers (this task writes the image)."""
        targets = self.targets()
        layers = self.assemble_task().requires() if self.output == STDOUT else []
        plan_batches(targets + layers)
        return targets + layers

    def complete(self) -> bool:
        self.plan  # every parameter is checked, even when nothing is left to do
        return self.output != STDOUT and all(task.complete() for task in self.targets())

    def run(self) -> None:
        if self.output == STDOUT:
            self.assemble_task().write()

    def _check_output(self) -> None:
        """Fail before any layer is written if the output cannot be written (a standard output
        that is a terminal included: an image is written to a pipe or a file, as docker save)."""
        if self.output == STDOUT:
            if sys.stdout is not None and sys.stdout.isatty():
                raise NixlayerError("cowardly refusing to write an image to a terminal; redirect or pipe it"
                                    " (--output - > FILE, --output - | podman load) or give --output FILE")
            return
        output = os.path.abspath(self.output)
        if self.format != "oci" and os.path.isdir(output):
            raise NixlayerError(f"cannot write output {self.output}: it is a directory")
        check_writable(output)
        if self.format == "oci":
            check_layout_writable(output)


class PushImage(ImageParameters):
    """Push the image to ``--target`` (``docker://HOST[:PORT]/REPOSITORY:TAG``), reusing the
    layers already in the layer store: only missing layers are built, only missing blobs sent.
    """

    target = luigi.Parameter(description="docker://HOST[:PORT]/REPOSITORY[:TAG]")

    def check(self) -> None:
        parse_push_target(self.target)
        self.compression_for(PUSH_COMPRESSION)

    def requires(self) -> PushToRegistry:
        task = self.image_task(PushToRegistry, PUSH_COMPRESSION, target=self.target, insecure_registry=self.insecure_registry)
        plan_batches([task])
        return task

    def complete(self) -> bool:
        return self.requires().complete()
