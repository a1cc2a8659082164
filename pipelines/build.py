"""BuildImage and PushImage: one layered image from Nix store paths, written or pushed."""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import sys
import warnings

import luigi

from nixlayer.atomic import check_writable
from nixlayer.base_image import BaseImage, absolute_source, inherit_config, read_base_image
from nixlayer.closure import ClosureGraph, read_graph
from nixlayer.compression import NAMES, Compression
from nixlayer.formats import FORMATS, STDOUT, check_format, is_stream
from nixlayer.errors import NixlayerError, NixlayerWarning
from nixlayer.customisation import check_contents
from nixlayer.perms import parse_perms, perms_json
from nixlayer.rootfs import RootTree, check_root_tree, layer_tree
from nixlayer.oci_layout import check_layout_writable
from nixlayer.image import DEFAULT_CREATED, check_config, config_store_paths, parse_time
from nixlayer.index import Platform, image_platform
from nixlayer.layer import LayerSettings
from nixlayer.plan import DEFAULT_LAYERING, LAYERINGS, check_layering, plan_image
from nixlayer.reference import check_name, check_tag, without_credentials
from nixlayer.registry import parse_pull_reference, parse_push_target, push_reference
from nixlayer.storepath import DEFAULT_STORE_DIR, normalize_store_dir, resolve_store_path
from nixlayer.layerstore import LayerStore
from tasks import console, runlog
from tasks.assemble import AssembleImage
from tasks.base import NixlayerTask, plan_batches
from tasks.baseimage import BaseImageLayer
from tasks.config import compression_threads, layer_store_root
from tasks.image import ImageTask, keep_closure
from tasks.index import AssembleIndex
from tasks.layers import CustomisationLayer
from tasks.push import PushTargetParameter, PushToRegistry
from pipelines.spec import load_spec, with_spec

PUSH_COMPRESSION = "gzip"  # what --compression auto means for a registry


class StorePathsParameter(luigi.ListParameter):
    """A JSON list of store paths; a value that is not one says what is expected (see
    ``tasks.base.name_parse_errors``)."""

    expected = "a JSON list of store paths such as '[\"/nix/store/...-hello\"]'"

    def parse(self, x):
        value = json.loads(x)  # (Luigi's own takes an object's keys for a list)
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise ValueError("not a list of strings")
        return super().parse(x)

    def normalize(self, x):
        """The list, a relative path in it (a link such as ``./result``) made absolute: with
        luigid, the same command run from two directories is two images, as its links are."""
        return super().normalize([os.path.abspath(p) if isinstance(p, str) and p and not p.startswith("/") else p
                                  for p in x])


class ImageSourceParameter(luigi.Parameter):
    """A base image in skopeo's transport syntax; a relative path in it made absolute (as
    StorePathsParameter's). A registry reference with credentials in it is refused as it is
    read, as a push target is (``tasks.push.PushTargetParameter``)."""

    def normalize(self, x):
        if isinstance(x, str) and x.startswith("docker://") and without_credentials(x)[1]:
            parse_pull_reference(x)  # raises, showing the reference without them
        return absolute_source(x) if isinstance(x, str) and x else x


class ImageParameters(NixlayerTask, abstract=True):
    """The parameters of one image, as nixpkgs ``buildLayeredImage``, and its layer plan.

    The closure of the contents, the copy_to_root paths and the store paths the config mentions
    is grouped into at most ``max_layers - 1`` store layers as ``layering`` says
    (``nixlayer.plan``: by default ``stable``, grouped by what changes together, the previous
    build's unchanged layers kept; ``popularity`` is nixpkgs' 2018-2024 layering bit for bit),
    and a customisation layer links the contents into ``/``, with what ``nixlayer.rootfs`` adds
    (copy_to_root trees, extra and fakeroot commands, a Nix database); permission rules
    (``nixlayer.perms``) apply to every layer they can touch. Bad input raises
    NixlayerError (printed as one line, ``nixlayer: error: ...``) before any layer is written.
    With ``spec``, the parameters the spec sets and the closure come from it (``pipelines.spec``).
    With ``from_image``, the base image's layers come first and count against ``max_layers``,
    and its config is inherited (``nixlayer.base_image``).
    """

    _on_command_line = True  # an entry task (tasks.runtime, 9)

    name = luigi.Parameter(description="image name, such as 'hello' or 'registry:5000/team/hello'")
    tag = luigi.Parameter(default="", description="image tag; default: a hash of everything that determines the image")
    contents = StorePathsParameter(default=[], description="store paths linked into /, as a JSON list")
    config = luigi.Parameter(default="{}", description='image config as JSON: {"Cmd": [...], "Env": [...]}')
    created = luigi.Parameter(default=DEFAULT_CREATED, description="image creation time, ISO 8601 or 'now'")
    mtime = luigi.Parameter(default=DEFAULT_CREATED, description="mtime of every file, ISO 8601 or 'now'")
    max_layers = luigi.IntParameter(default=100, description="layers of the image, the customisation layer included (2 to 127)")
    layering = luigi.ChoiceParameter(
        choices=LAYERINGS, default=DEFAULT_LAYERING,
        description="how store paths are grouped into layers: stable (the default: by what changes together,"
                    " the previous build's unchanged layers kept), popularity (nixpkgs 2018-2024), auto (nixpkgs'"
                    " auto-layer), pipeline (nixpkgs' layeringPipeline, given as --layering-pipeline)",
    )
    layering_pipeline = luigi.Parameter(
        default="", description='for --layering pipeline: nixpkgs\' layeringPipeline, a JSON list of steps such as'
                                ' [["popularity_contest"], ["limit_layers", 99]]')
    uid = luigi.IntParameter(default=0, description="owner (user id) of every file in the layers")
    gid = luigi.IntParameter(default=0, description="group id of every file in the layers")
    uname = luigi.Parameter(default="root", description="owner's user name in the layers")
    gname = luigi.Parameter(default="root", description="group name in the layers")
    include_store_paths = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                              description="false: only the customisation layer")
    copy_to_root = StorePathsParameter(default=[], description="store paths (directories) whose trees are copied to /"
                                                               " in the customisation layer, as a JSON list")
    extra_commands = luigi.Parameter(default="", description="shell commands run in the customisation layer's tree")
    fake_root_commands = luigi.Parameter(default="", description="shell commands run in the customisation layer's tree"
                                                                 " under fakeroot (chown, chmod persist)")
    perms = luigi.Parameter(default="", description='permission rules, a JSON list such as [{"regex": "^/tmp$",'
                                                    ' "mode": "1777"}] (regex, path, mode, uid, gid, uname, gname)')
    include_nix_db = luigi.BoolParameter(default=False, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                         description="a Nix database of the image's store paths in /nix/var/nix/db")
    architecture = luigi.Parameter(default="", description="Go architecture name; default: this machine's")
    platform = luigi.Parameter(default="", description="os/architecture[/variant] as docker buildx --platform"
                               " (linux/arm64, linux/arm/v7); default: linux/--architecture")
    compression = luigi.ChoiceParameter(
        choices=["auto", *NAMES], default="auto",
        description="layer compression; auto: none for docker-archive, gzip for OCI and registries",
    )
    compression_level = luigi.OptionalIntParameter(default=None, description="gzip 1-9 (default 6), zstd 1-22 (default 3)")
    store_dir = luigi.Parameter(default=DEFAULT_STORE_DIR, description="the Nix store directory the image's store paths are in")
    store_root = luigi.Parameter(default="/", description="where the store directory is on disk; not '/' means: scan it, no Nix")
    closure_graph = luigi.OptionalPathParameter(default=None, description="read the closure from this JSON (nix path-info --json) instead of asking Nix")
    from_image = ImageSourceParameter(
        default="", description="base image, whose layers come first and whose config is inherited:"
                                " docker-archive:FILE, oci:DIR[:TAG], oci-archive:FILE[:TAG],"
                                " docker://HOST/REPOSITORY[:TAG] or docker://HOST/REPOSITORY@sha256:DIGEST")
    insecure_registry = luigi.BoolParameter(default=False, description="allow plain HTTP to a non-loopback registry")
    spec = luigi.OptionalPathParameter(default=None, absolute=True, description="image spec (nix-build of nixlayer's Nix library): the image's parameters and closure; parameters given beside it override it")
    spec_image = luigi.OptionalParameter(default=None, description="the key of the image to build, in a spec of several images")
    source = luigi.Parameter(default="", description="URL of the image's source: annotation org.opencontainers.image.source")
    revision = luigi.Parameter(default="", description="the source's revision (a commit): annotation org.opencontainers.image.revision")
    version = luigi.Parameter(default="", description="the packaged software's version: annotation org.opencontainers.image.version")
    attach_sbom = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                      description="attach the image's SBOM (CycloneDX) in an OCI layout and a push (false: do not)")

    @classmethod
    def get_param_values(cls, params, args, kwargs):
        """Luigi's parameter values, with those a ``spec`` sets filled in (``pipelines.spec``)."""
        return super().get_param_values(params, args, with_spec(cls, params, kwargs))

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
        return task(**self.image_parameters(default_compression), **extra)

    def image_parameters(self, default_compression: str) -> dict:
        """The ImageTask parameters of this image, its layers compressed as
        ``compression_for(default_compression)`` says (an index names its images by them)."""
        compression = self.compression_for(default_compression)
        return {**self.plan, "compression": compression.name, "compression_level": self.compression_level}

    @functools.cached_property
    def image_platform(self) -> Platform:
        """The image's platform (``nixlayer.index.image_platform``). Raises NixlayerError."""
        return image_platform(self.platform, self.architecture)

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
        copy_to_root = self._copy_to_root
        rules = parse_perms(self.perms, store_dir)
        if self.from_image and self.include_nix_db:
            raise NixlayerError("include_nix_db with from_image would replace the base image's Nix database"
                                " (/nix/var/nix/db), leaving its store paths unregistered: give one of them")
        if self.from_image and any(rule.path is None for rule in rules):
            warnings.warn("perms rules without a path do not change the base image's files (its layers are copied"
                          " as they are): give the rule a path, or change them in the base image", NixlayerWarning)
        created = parse_time(self.created, what="--created")
        mtime = int(parse_time(self.mtime, what="--mtime").timestamp())
        if mtime < 0:
            raise NixlayerError(f"--mtime {self.mtime} is before 1970-01-01T00:00:00Z, where a layer's file times"
                                " start: give that time or a later one")
        settings = LayerSettings(mtime, self.uid, self.gid, self.uname, self.gname)
        self.check()
        compression_threads()  # a bad [nixlayer] setting: one line now, not from every layer
        pipeline = check_layering(self.layering, self.layering_pipeline)
        layer_store = LayerStore(layer_store_root())
        base = read_base_image(self.from_image, self.image_platform, layer_store,
                               insecure=self.insecure_registry) if self.from_image else None
        # Two contents with one file: fail now. Checked while Nix works out the closure in its
        # own process (20 ms of a 0.27 s rebuild); errors come in the order of the code.
        tree = layer_tree(RootTree(tuple(copy_to_root), self.extra_commands, self.fake_root_commands, rules), contents)
        if tree or self.include_nix_db:
            checked = _checker().submit(check_root_tree, contents, tree, self.store_root, self.include_nix_db)
        else:
            checked = _checker().submit(check_contents, contents, self.store_root, settings,
                                        layer_store.fragments_dir(settings, store_dir))
        try:
            graph = self.read_graph(self.roots())
        finally:
            concurrent.futures.wait([checked])
        self._graph = graph
        previous = self.previous_layers(layer_store) if self.layering == "stable" else None
        # copy_to_root paths are in the customisation layer as the contents are: roots alike.
        plan = plan_image(graph, [*contents, *copy_to_root], config_paths, self.max_layers, len(base.layers) if base else 0,
                          include_store_paths=self.include_store_paths, layering=self.layering, pipeline=pipeline,
                          previous=previous)
        checked.result()
        image = {
            "store_layers": [list(layer.store_paths) for layer in plan.layers],
            "contents": contents, "config": json.dumps(inherit_config(base.config, config) if base else config, sort_keys=True),
            "copy_to_root": copy_to_root, "extra_commands": self.extra_commands,
            "fake_root_commands": self.fake_root_commands, "perms": perms_json(rules),
            "include_nix_db": self.include_nix_db,
            "created": created.isoformat(),
            "architecture": self.image_platform.architecture,
            # A variant only where there is one: the default tag of every other image stays.
            **({"variant": self.image_platform.variant} if self.image_platform.variant else {}),
            "base_image": base.to_json() if base else "",
        }
        # The default tag: a hash of everything that determines the image, as nixpkgs' output
        # hash (the name and the layer compression too: an OCI layout names images by tag alone).
        # The layering is in it through store_layers, the layers it made: two layerings that make
        # the same layers make the same image.
        identity = {**image, "settings": settings.key, "store_dir": store_dir, "name": self.name,
                    "compression": [self.compression, self.compression_level],
                    "base_image": base.identity() if base else ""}
        annotations = {"source": self.source, "revision": self.revision, "version": self.version}
        if any(annotations.values()):  # they change the manifest (default tags without them are kept)
            identity["annotations"] = annotations
        tag = self.tag or hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
        return {
            **image, **annotations, "name": self.name, "tag": tag, "mtime": mtime, "uid": self.uid, "gid": self.gid,
            "uname": self.uname, "gname": self.gname, "store_dir": store_dir, "store_root": self.store_root,
            "layer_store_dir": layer_store.root, "closure": keep_closure(graph), "attach_sbom": self.attach_sbom,
            **({"remote_base": True} if base and self.leaves_base_remote(base) else {}),
        }

    def leaves_base_remote(self, base: BaseImage) -> bool:
        """Whether the layers of ``base`` are left in its registry (``ImageTask.remote_base``):
        every destination of the image is a push to the base's registry host, so no layer of
        it need be downloaded unless the push can neither find nor mount it there. An output
        (an archive, a layout, an index written to one) holds their bytes: they are copied."""
        where = base.registry()
        return (where is not None and bool(self.push) and not self.output
                and parse_push_target(self.push_target(self.push)).host == where.host)

    def push_target(self, target: str) -> str:
        """The push target ``target`` (``--push``, ``--target``, a batch file's ``push``) as
        pushed: ``docker://HOST/REPOSITORY:TAG``.

        The tag pushed is the target's; a target without one takes the image's tag (``--tag``,
        a batch file's or the spec's), else ``latest`` (``docker push`` pushes an image's tag;
        ``skopeo copy`` takes ``latest``). A tag given beside a target naming another is one
        tag named twice: NixlayerError. A spec's tag names the image (its archives) as an
        archive's own tag does for ``skopeo copy``: a target's own tag wins over it.
        """
        from_spec = self.spec is not None and load_spec(str(self.spec)).image(self.spec_image).parameters.get("tag") == self.tag
        return f"docker://{push_reference(target, self.tag, tag_yields=from_spec)}"

    def previous_layers(self, layer_store: LayerStore) -> list[list[str]] | None:
        """The store layers of the previous build of this image in ``layer_store`` (for the
        ``stable`` layering): the image of this platform last written to this output under this
        name, else last pushed to this target (``LayerStore.previous_build``); None for a first
        build."""
        return layer_store.previous_build(name=self.name, output=self.output,
                                          push=self.push_target(self.push) if self.push else "",
                                          platform=str(self.image_platform))

    def nar_sizes(self) -> dict[str, int | None]:
        """Store path -> NAR size in bytes (None: unknown) of the image's closure, once planned."""
        self.plan
        return {path: self._graph.nar_size(path) for path in self._graph}

    def image_tasks(self) -> list[ImageTask]:
        """The tasks that make the image: AssembleImage for an output (standard output
        included, which this task's own run writes), PushToRegistry for a push."""
        raise NotImplementedError

    def targets(self) -> list[ImageTask]:
        """The image tasks Luigi schedules: all but an AssembleImage writing to standard output
        (not a target Luigi can check; this task requires its layers and writes it itself)."""
        return [task for task in self.image_tasks() if not _streamed(task)]

    def requires(self) -> list:
        """The targets, and the layers of an image written to standard output."""
        tasks = [task for target in self.image_tasks() for task in (target.requires() if _streamed(target) else [target])]
        plan_batches(tasks)
        self.announce(done=False)
        return tasks

    def complete(self) -> bool:
        """Whether the image is made already (never for standard output before this task's
        run), every parameter checked first."""
        self.plan  # every parameter is checked, even when nothing is left to do
        if runlog.state(self).get("ran"):
            return True
        done = all(not _streamed(task) and task.complete() for task in self.image_tasks())
        if done:
            self.announce(done=True)
        return done

    def run(self) -> None:
        for task in self.image_tasks():
            if _streamed(task):
                task.write()
        runlog.state(self)["ran"] = True

    def report(self, results: runlog.Results, layers: dict[str, tuple[int, str]]) -> dict:
        """This image in a run's report (see :func:`image_report`)."""
        return image_report(self, results, layers)

    def announce(self, done: bool) -> None:
        """Print the plan line and show the build's progress (``tasks.console.plan``), the run
        log started; ``done``: the image is there already, every layer too. Once a run."""
        if runlog.state(self).setdefault("announced", False):
            return
        runlog.state(self)["announced"] = True
        layers = [(record, paths, planned, done or complete)
                  for record, paths, planned, complete in layer_plan(self.image_tasks(), self.nar_sizes(), check=not done)]
        console.plan(f"{self.name}:{self.plan['tag']}", layers, self.nar_sizes(), self.summary)

    def summary(self, entries: list[dict]) -> list[str]:
        """The line printed at the end of a run that made the image (none if it did not):
        ``tasks.console.image_summary`` of its report."""
        results = runlog.results(entries)
        if not all(task.output in results.written if _streamed(task) else task.complete() for task in self.image_tasks()):
            return []
        return [console.image_summary(self.report(results, {}), console.elapsed())]

    def graph_source(self) -> tuple:
        """Where this image's closure graph is read from: (closure_graph, store_root, store_dir, spec)."""
        return (self.closure_graph, self.store_root, normalize_store_dir(self.store_dir), self.spec)

    @functools.cached_property
    def _inputs(self) -> tuple[list[str], dict, list[str]]:
        """The checked contents (links such as ./result resolved to their store paths), config,
        and store paths the config mentions."""
        store_dir = normalize_store_dir(self.store_dir)
        contents = [resolve_store_path(p, store_dir) for p in self.contents]
        twice = next((path for number, path in enumerate(contents) if path in contents[:number]), None)
        if twice is not None:
            raise NixlayerError(f"--contents names {twice} twice: give each store path once")
        try:
            config = check_config(json.loads(self.config))
        except json.JSONDecodeError as e:
            raise NixlayerError(f"--config is not valid JSON: {e}") from None
        return contents, config, config_store_paths(config, store_dir)

    @functools.cached_property
    def _copy_to_root(self) -> list[str]:
        """The checked copy_to_root store paths (links resolved)."""
        store_dir = normalize_store_dir(self.store_dir)
        return [resolve_store_path(p, store_dir) for p in self.copy_to_root]

    def roots(self) -> list[str]:
        """The image's roots: its contents, its copy_to_root paths (their closures hold what
        their trees link to) and the store paths its config mentions, sorted.

        Raises NixlayerError for a bad contents or copy_to_root path, or config."""
        contents, _, config_paths = self._inputs
        return sorted(set(contents) | set(self._copy_to_root) | set(config_paths))

    def read_graph(self, roots: list[str]) -> ClosureGraph:
        """The closure of ``roots``, read as this image's parameters say (its spec, a JSON graph, a store
        directory scan, or live Nix).

        Graphs read in this process are kept by where they came from, and a closure inside one
        is taken from it: ``BuildImages`` reads one graph for all its images this way instead
        of asking Nix once per image. Raises NixlayerError.
        """
        store_dir = normalize_store_dir(self.store_dir)
        if not roots:  # an image of its config alone, as nixpkgs allows
            return ClosureGraph({}, store_dir=store_dir)
        if self.spec is not None:  # the spec holds the closure: Nix is not asked
            return load_spec(str(self.spec)).closure(roots, self.store_root)
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


def image_report(image, results: runlog.Results, layers: dict[str, tuple[int, str]]) -> dict:
    """An image (a BuildImage, PushImage or ``pipelines.index.ImageIndex``: anything with a
    ``name``, ``output``, ``push``, ``format`` and ``image_tasks()``) in a run's report (see
    ``pipelines.batch``), its layers those of its output and its push (a docker-archive's tars
    and a push's gzip blobs are two layers each).

    ``results``: what the run made (``tasks.runlog.results``). ``layers`` (layer record path ->
    blob bytes if built in the run, else 0; path in the layer store) gets this image's layers
    added; a batch's images share it. ``digest`` is the output's (the image ID of a
    docker-archive, the manifest digest of OCI), else the push's; ``push_digest`` the manifest
    (or index) digest pushed; ``push_blobs`` the push's blob counts if it pushed in this run.
    Adds ``image_bytes_written``: the bytes of the image file(s) the run wrote.
    """
    tasks = image.image_tasks()
    assemble = next((task for task in tasks if isinstance(task, (AssembleImage, AssembleIndex))), None)
    push = next((task for task in tasks if not isinstance(task, (AssembleImage, AssembleIndex))), None)
    targets = list({layer.output().path: layer.output() for task in tasks
                    for layer in [*task.remote_base_layers(), *task.requires()]}.values())
    for target in targets:  # the blob sizes of the layers built (others may be gone since)
        if target.path not in layers:
            built_here = target.path in results.built_layers
            layers[target.path] = (target.record().blob.blob_size if built_here else 0, target.name)
    built = [t.path for t in targets if t.path in results.built_layers]
    entry = results.written.get(assemble.output, {}) if assemble else {}
    digest = None
    if assemble and not entry and not (isinstance(assemble, AssembleImage) and _streamed(assemble)):
        digest = assemble.read_stamp(assemble.stamp()).get("digest")
    elif assemble:
        digest = entry.get("digest")
    pushed = results.pushed.get(push.target) if push else None
    push_digest = (pushed["digest"] if pushed else push.read_stamp(push._stamp()).get("manifest_digest")) if push else None
    return {
        "name": image.name, "tag": tasks[0].tag, "output": image.output or None,
        "push": push.target if push else None, "format": image.format if image.output else None,
        "digest": digest if assemble else push_digest, "layers": len(targets),
        "layers_built": len(built), "layers_reused": len(targets) - len(built),
        "image_written": bool(entry), "image_pushed": bool(pushed),
        "push_digest": push_digest,
        "push_blobs": {key: pushed[key] for key in ("uploaded", "uploaded_bytes", "mounted", "present")} if pushed else None,
        "bytes_written": sum(layers[p][0] for p in built) + entry.get("bytes", 0),
        "image_bytes_written": entry.get("bytes", 0),
    }


def _streamed(task: ImageTask) -> bool:
    """Whether ``task`` writes its image as a stream (to standard output, a device or a FIFO:
    ``nixlayer.formats.is_stream``), which is not a target Luigi can check."""
    return isinstance(task, AssembleImage) and is_stream(task.output)


def layer_plan(targets: list[ImageTask], nar_sizes: dict[str, int | None],
               check: bool = True) -> list[tuple[str, list[str], int, bool]]:
    """Each layer of ``targets`` once, as ``tasks.console.plan`` takes them: (its record path,
    its store paths (none for a customisation layer), its planned bytes, whether it is in the
    layer store; with ``check`` false, taken as not). Planned bytes: a store layer's NAR sizes
    (``nar_sizes``), a base layer's blob size, a customisation layer's copy_to_root NAR sizes
    (its links and commands' files count none). A base layer left in its registry
    (``ImageTask.remote_base``) is not to write: taken as in the layer store (reused)."""
    layers = {}
    required = [(task, False) for target in targets for task in target.requires()]
    remote = [(task, True) for target in targets for task in target.remote_base_layers()]
    for task, left_remote in [*required, *remote]:  # a layer another target requires is to write
        record = task.output().path
        if record not in layers:
            if isinstance(task, CustomisationLayer):
                paths, planned = [], sum(nar_sizes.get(path) or 0 for path in task.copy_to_root)
            elif isinstance(task, BaseImageLayer):
                paths, planned = [], task.blob_size
            else:
                paths = task.store_paths()
                planned = sum(nar_sizes.get(path) or 0 for path in paths)
            layers[record] = (record, paths, planned, left_remote or (check and task.complete()))
    return list(layers.values())


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
    push = PushTargetParameter(default="", description="push to docker://HOST[:PORT]/REPOSITORY[:TAG]")
    sbom = luigi.Parameter(default="", description="also write the image's SBOM (CycloneDX 1.6 JSON) to this file")

    def check(self) -> None:
        if not self.output and not self.push:
            raise NixlayerError("nothing to do: give --output FILE (or -) and/or --push docker://HOST/REPOSITORY:TAG")
        if self.sbom:
            self._check_sbom()
        if self.push:
            self.push_target(self.push)
            self.compression_for(PUSH_COMPRESSION)
        if self.output:
            check_format(self.format, self.compression_for(self._output_compression()).media_type, self.output)
            self._check_output()

    def _check_sbom(self) -> None:
        """Fail before any work if the SBOM file cannot be written where asked."""
        if not self.output:
            raise NixlayerError("--sbom FILE is written beside an image output: give --output too (a push carries"
                                " the SBOM attached to the image)")
        if self.sbom == STDOUT or (self.output != STDOUT and os.path.abspath(self.sbom) == os.path.abspath(self.output)):
            raise NixlayerError(f"--sbom {self.sbom} must be a file of its own, not the image output or standard output")
        if os.path.isdir(self.sbom):
            raise NixlayerError(f"cannot write --sbom {self.sbom}: it is a directory")
        check_writable(os.path.abspath(self.sbom))

    def _output_compression(self) -> str:
        """The compression ``auto`` means for the output format."""
        return "none" if self.format == "docker-archive" else "gzip"

    def assemble_task(self) -> AssembleImage:
        output = self.output if self.output == STDOUT else os.path.abspath(self.output)
        return self.image_task(AssembleImage, self._output_compression(), format=self.format, output=output,
                               sbom=os.path.abspath(self.sbom) if self.sbom else "")

    def image_tasks(self) -> list[ImageTask]:
        tasks: list[ImageTask] = []
        if self.output:
            tasks.append(self.assemble_task())
        if self.push:
            tasks.append(self.image_task(PushToRegistry, PUSH_COMPRESSION, target=self.push_target(self.push),
                                         insecure_registry=self.insecure_registry))
        return tasks

    def _check_output(self) -> None:
        """Fail before any layer is written if the output cannot be written (a standard output
        that is a terminal included: an image is written to a pipe or a file, as docker save)."""
        if self.output == STDOUT:
            if sys.stdout is not None and sys.stdout.isatty():
                raise NixlayerError("cowardly refusing to write an image to a terminal; redirect or pipe it"
                                    " (--output - > FILE, --output - | podman load) or give --output FILE")
            return
        if is_stream(self.output):
            if not os.access(self.output, os.W_OK):
                raise NixlayerError(f"cannot write output {self.output}: permission denied")
            return
        output = os.path.realpath(self.output)  # a symlink is followed (nixlayer.formats)
        check_writable(output)
        if self.format == "oci":
            check_layout_writable(output)


class PushImage(ImageParameters):
    """Push the image to ``--target`` (``docker://HOST[:PORT]/REPOSITORY:TAG``), reusing the
    layers already in the layer store: only missing layers are built, only missing blobs sent.
    """

    target = PushTargetParameter(description="docker://HOST[:PORT]/REPOSITORY[:TAG]")

    def check(self) -> None:
        self.push_target(self.target)
        self.compression_for(PUSH_COMPRESSION)

    output = ""

    @property
    def push(self) -> str:  # what BuildImage calls it (ImageParameters.report, summary)
        return self.target

    def image_tasks(self) -> list[ImageTask]:
        return [self.image_task(PushToRegistry, PUSH_COMPRESSION, target=self.push_target(self.target),
                                insecure_registry=self.insecure_registry)]
