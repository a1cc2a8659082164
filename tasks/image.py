"""ImageTask: what every image-level task shares: the image's parameters, layers and config."""

from __future__ import annotations

import json

import luigi

from nixlayer.base_image import BaseImage
from nixlayer.closure import ClosureGraph
from nixlayer.errors import NixlayerError
from nixlayer.index import Platform, PlatformImage
from nixlayer.image import (
    DEFAULT_CREATED, Artifact, ImageLayer, canonical_json, config_store_paths, image_annotations, image_config,
    oci_manifest, parse_time, sha256_digest,
)
from nixlayer.layerstore import read_json
from nixlayer.perms import perms_json, rules_for
from nixlayer.sbom import image_sbom, sbom_artifact
from tasks.base import json_list
from tasks.baseimage import BaseImageLayer, base_layer_tasks
from tasks.layers import CustomisationLayer, LayerParameters, layer_task


# The closure graphs of the images this process planned, by digest (see ImageTask.closure).
_CLOSURES: dict[str, ClosureGraph] = {}


def keep_closure(graph: ClosureGraph) -> str:
    """Keep ``graph``, an image's closure planned in this process, for its image tasks' SBOM;
    return the ``closure`` parameter that names it: the digest of its JSON."""
    digest = sha256_digest(canonical_json(graph.to_json()))
    _CLOSURES[digest] = graph
    return digest


class ImageTask(LayerParameters, abstract=True):
    """An image: its layer plan (``store_layers``, lists of store paths), contents and config,
    on its base image (``base_image``, if any; ``config`` is merged with the base's already).

    Requires one task per base layer (``tasks.baseimage``), one layer task per store layer
    plus the customisation layer, all with this task's layer parameters, so tasks of several
    images that share a layer share its task.

    With ``remote_base`` (set by ``pipelines.build`` when every destination of the image is a
    push to its base's registry host) the base layers are not required: they are left in the
    base's registry, absent from the layer store. The image takes their digests, sizes, media
    types and diff_ids from the base's manifest and config (``BaseImage``), the same image
    bytes; the push mounts each blob the target lacks from the base's repository, and only if
    that fails copies it into the layer store then and uploads it
    (``BaseImageLayer.remote_layer``), as nix2container and go-containerregistry do.

    The image's own parameters gather when a subclass that is a ``tasks.base.BatchableTask``
    (AssembleImage) is handed out in batches: strings into a JSON list (no image name starts
    with ``[``), lists into a tuple (see ``batch_values``). Other subclasses go one image at a
    time (``max_batch_size`` 1).
    """

    name = luigi.Parameter(batch_method=json_list)
    tag = luigi.Parameter(batch_method=json_list)
    config = luigi.Parameter(default="{}", description="the image config object, as JSON", batch_method=json_list)
    created = luigi.Parameter(default=DEFAULT_CREATED, batch_method=json_list)
    architecture = luigi.Parameter(batch_method=json_list)
    variant = luigi.Parameter(default="", description="the CPU variant (v7 of linux/arm/v7); '' for none", batch_method=json_list)
    store_layers = luigi.ListParameter(batch_method=tuple)
    contents = luigi.ListParameter(default=[], batch_method=tuple)
    base_image = luigi.Parameter(default="", description="the base image's layers and history (BaseImage.to_json)",
                                 batch_method=json_list)
    remote_base = luigi.BoolParameter(default=False, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                      description="the base image's layers are left in its registry (see above)")
    # What the customisation layer holds beyond the contents' symlinks (nixlayer.rootfs);
    # ``perms`` (a layer parameter) is here every rule of the image.
    copy_to_root = luigi.ListParameter(default=[])
    extra_commands = luigi.Parameter(default="")
    fake_root_commands = luigi.Parameter(default="")
    include_nix_db = luigi.BoolParameter(default=False)
    source = luigi.Parameter(default="", batch_method=json_list)
    revision = luigi.Parameter(default="", batch_method=json_list)
    version = luigi.Parameter(default="", batch_method=json_list)
    # The image's closure graph, for its SBOM: the digest of its JSON (ClosureGraph.to_json), the
    # graph kept in memory by the process that planned the image (keep_closure). Every process
    # that runs a build plans its images (BuildImage, BuildImages, on each machine of a luigid
    # build; Luigi's forked workers inherit it), so the graph, too large for a parameter the
    # scheduler hashes and keeps, needs no file. Empty: no SBOM.
    closure = luigi.Parameter(default="", batch_method=json_list)
    attach_sbom = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING)
    max_batch_size = 1

    def batch_values(self, *names: str) -> list[dict] | None:
        """Each batch member's values of the parameters ``names`` (batched as above), or None
        if this task is one image."""
        if not self.name.startswith("["):
            return None
        columns = [getattr(self, name) for name in names]
        columns = [json.loads(column) if isinstance(column, str) else column for column in columns]
        return [dict(zip(names, values)) for values in zip(*columns)]

    def requires(self) -> list[LayerParameters]:
        # Computed once per task: Luigi asks several times (scheduling, deps check, image,
        # batch report), and instantiating a hundred layer tasks each time adds up in a batch.
        layers = self.__dict__.get("_layer_tasks")
        if layers is None:
            params = self.layer_parameters()
            rules = self.perm_rules()

            def perms(store_paths) -> dict:  # each layer task gets the rules that can touch it
                return {**params, "perms": perms_json(rules_for(rules, store_paths))}

            layers = [] if self.remote_base else self.base_layer_tasks()
            layers += [layer_task(list(paths), **perms(paths)) for paths in self.store_layers]
            nix_db = sorted({path for paths in self.store_layers for path in paths}) if self.include_nix_db else []
            layers.append(CustomisationLayer(
                contents=list(self.contents), copy_to_root=list(self.copy_to_root), extra_commands=self.extra_commands,
                fake_root_commands=self.fake_root_commands, nix_db=nix_db,
                **perms([*self.contents, *self.copy_to_root])))
            self._layer_tasks = layers
        return list(layers)

    @property
    def image_platform(self) -> Platform:
        """The image's platform (``architecture`` and ``variant``; os linux)."""
        return Platform(self.architecture, self.variant)

    def base_uncompressed(self) -> bool:
        """Whether the base image's layers are needed as tars (compressed blobs are kept as
        they are where the output takes them)."""
        return False

    def base_layer_tasks(self) -> list[BaseImageLayer]:
        """The tasks of the base image's layers (none without one)."""
        return base_layer_tasks(self.base_image, self.base_uncompressed(), self.layer_store_dir)

    def remote_base_layers(self) -> list[BaseImageLayer]:
        """The tasks of the base layers left in the base's registry (``remote_base``), which
        this task does not require (none unless ``remote_base``)."""
        return self.base_layer_tasks() if self.remote_base else []

    def image_layers(self) -> list[ImageLayer]:
        """The image's layers from the layer store (the required tasks must be complete), its
        base's first, those left in its registry as ``remote_base`` says."""
        store = self.layer_store()
        remote = [task.remote_layer() for task in self.remote_base_layers()]
        return remote + [store.image_layer(task.output().record()) for task in self.requires()]

    def image_config(self, layers: list[ImageLayer]) -> bytes:
        """The image config JSON for ``layers``."""
        base = BaseImage.from_json(self.base_image) if self.base_image else None
        return image_config(layers, json.loads(self.config), parse_time(self.created), self.architecture,
                            base_history=base.history if base else (), base_layers=len(base.layers) if base else 0,
                            variant=self.variant)

    def image_manifest(self, layers: list[ImageLayer], config: bytes) -> bytes:
        """The OCI image manifest of ``layers`` and ``config``, with its annotations
        (``nixlayer.image.image_annotations``): the base image manifest's, then ours."""
        base = BaseImage.from_json(self.base_image).annotations if self.base_image else {}
        annotations = image_annotations(parse_time(self.created), self.source, self.revision, self.version, base=base)
        return oci_manifest(config, layers, annotations)

    def image_sbom(self, layers: list[ImageLayer], config: bytes) -> bytes:
        """The image's SBOM (``nixlayer.sbom``) from its closure graph. Raises NixlayerError if
        this process did not plan the image (no BuildImage or BuildImages made it)."""
        graph = _CLOSURES.get(self.closure)
        if graph is None:
            raise NixlayerError(f"the closure graph of {self.name}:{self.tag} ({self.closure}) was not planned in"
                                " this process: build images with BuildImage, PushImage or BuildImages")
        # copy_to_root paths are roots as the contents are (the layer plan takes them so).
        roots = sorted({*self.contents, *self.copy_to_root, *config_store_paths(json.loads(self.config), self.store_dir)})
        return image_sbom(graph, self.store_layers, [layer.blob.diff_id for layer in layers], roots,
                          base_layers=len(BaseImage.from_json(self.base_image).layers) if self.base_image else 0,
                          name=self.name, image_id=sha256_digest(config), created=parse_time(self.created))

    def platform_image(self) -> PlatformImage:
        """The image from the layer store (the layers must be complete): layers, config,
        manifest, platform, and the artifacts attached to it (``attached``)."""
        return self.image_with_sbom()[0]

    def image_with_sbom(self) -> tuple[PlatformImage, bytes | None]:
        """The image (as :meth:`platform_image`), and its SBOM (None without a closure), which
        an output may also write to a file, attached or not: the one place both are made."""
        layers = self.image_layers()
        config = self.image_config(layers)
        manifest = self.image_manifest(layers, config)
        sbom = self.image_sbom(layers, config) if self.closure else None
        return PlatformImage(layers, config, manifest, self.image_platform, self.attached(manifest, sbom)), sbom

    def attached(self, manifest: bytes, sbom: bytes | None) -> list[Artifact]:
        """The artifacts to attach to the image ``manifest``: its SBOM, unless ``attach_sbom``
        is false or there is none."""
        if sbom is None or not self.attach_sbom:
            return []
        return [sbom_artifact(sbom, manifest, parse_time(self.created))]

    def layer_records(self) -> list[str]:
        """The image's layer records, relative to the layer store: a stamp names them, so the
        layer store's garbage collection keeps the layers of an image still in use."""
        return [task.output().name for task in self.requires()]

    def stamp_path(self, kind: str, key: str) -> str:
        """Where this task records, in the layer store, what it wrote (``kind``: images, pushes)."""
        return self.layer_store().stamp_path(kind, key)

    def read_stamp(self, path: str, mark_used: bool = True) -> dict:
        """The stamp at ``path``, or ``{}`` if there is none or it is unreadable. Reading it
        marks it used (the layer store's garbage collection keeps it) unless ``mark_used`` is
        false."""
        return read_json(path, mark_used)
