"""BuildImages: every image of a batch file, in one Luigi run.

The batch file is TOML. Its top-level keys are defaults for every image; each ``[[image]]``
table is one image, with the settings of ``BuildImage`` (``name``, ``tag``, ``contents``,
``config`` as a TOML table, ``max_layers``, ``layering``, ``layering_pipeline`` (an array of
steps, or its JSON text), ``uid``, ``gid``, ``uname``, ``gname``, ``platform``, ``copy_to_root``,
``extra_commands``, ``fake_root_commands``, ``perms`` (an array of tables, or its JSON text),
``include_nix_db``, ``created``, ``mtime``, ``format``, ``compression``, ``output``,
``from_image``, ...) plus ``nix_file`` and ``nix_attrs``: store paths built with
``nix-build NIX_FILE -A ATTR`` and added to ``contents``. Relative paths (``output``,
``nix_file``, ``closure_graph``, ``store_root``, the file of a ``from_image`` such as
``docker-archive:base.tar``, and links among ``contents`` and ``copy_to_root`` such as
``./result``) are relative to the batch file's directory. ``spec`` and
``spec_image`` are refused: a spec's images are built with ``BuildImages --spec``.

Images that share an ``output`` (oci or oci-archive) or a ``push`` target, with one ``name`` and
``tag`` and each its own ``platform`` (``"linux/arm64"``, or a table of ``os``, ``architecture``,
``variant``), are one multi-platform OCI image index (``pipelines.index``).

``BuildImages --spec FILE --output-dir DIR`` builds every image of an image spec instead
(nixlayer's Nix function ``buildImages``; ``pipelines.spec``).

Images with equal layer settings share layer tasks (a layer task is named by its store path
and settings only), so a layer common to several images is built once. Each run writes a JSON
report (atomically) and prints a summary: per image its digest, layers built in this run
versus reused from the layer store, and bytes written.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import tomllib
from typing import Iterator

import luigi

from nixlayer.atomic import atomic_file, check_writable
from nixlayer.base_image import absolute_source
from nixlayer.closure import nix_error_line
from nixlayer.errors import NixlayerError
from nixlayer.human import count
from nixlayer.perms import parse_perms
from nixlayer.plan import DEFAULT_LAYERING, check_layering
from nixlayer.formats import STDOUT, is_stream
from pipelines.build import BuildImage, layer_plan
from pipelines.index import INDEX_FIELDS, ImageIndex, index_groups
from pipelines.spec import spec_batch
from nixlayer.index import parse_platform
from tasks.image import ImageTask
from nixlayer.layerstore import LayerStore
from tasks import console, errors, runlog
from tasks.config import layer_store_root
from tasks.base import bad_value, plan_batches

NIX_KEYS = ("nix_file", "nix_attrs")
PATH_KEYS = ("output", "sbom", "closure_graph", "store_root")
# BuildImage's parameters a batch file cannot set: a spec's images are built with BuildImages --spec.
SPEC_KEYS = ("spec", "spec_image")

def _check_type(key: str, value, parameter: luigi.Parameter) -> None:
    if isinstance(parameter, luigi.BoolParameter):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(parameter, (luigi.IntParameter, luigi.OptionalIntParameter)):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(parameter, luigi.ListParameter):
        ok, kind = isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of strings"
    elif key == "config":
        ok, kind = isinstance(value, (dict, str)), "a table (or a JSON string)"
    elif key == "layering_pipeline":
        ok, kind = isinstance(value, (list, str)), "an array of steps (or a JSON string)"
    elif key == "platform":
        ok, kind = isinstance(value, (dict, str)), 'a string such as "linux/arm64" (or a table of os, architecture, variant)'
    elif key == "perms":
        ok, kind = isinstance(value, (list, str)), "an array of tables (rules) (or a JSON string)"
    else:
        ok, kind = isinstance(value, str), "a string"
    if not ok:
        raise NixlayerError(f"{key} must be {kind}, not {json.dumps(value, default=str)}")
    try:  # a value of the right type the parameter refuses: a format it has no choice of
        parameter.normalize(value)
    except ValueError as e:
        raise NixlayerError(bad_value(parameter, key, value, e)) from None


def _nix_build(nix_file: str, attrs: list[str]) -> list[str]:
    paths = []
    for attr in attrs:
        try:
            out = subprocess.run(["nix-build", nix_file, "-A", attr, "--no-out-link"],
                                 capture_output=True, text=True, errors="replace")
        except OSError as e:
            raise NixlayerError(f"cannot run nix-build: {e.strerror}") from None
        if out.returncode != 0:
            raise NixlayerError(f"nix-build {nix_file} -A {attr} failed (exit {out.returncode}): {nix_error_line(out.stderr)}")
        paths.append(out.stdout.strip().splitlines()[-1])
    return paths


def _check_keys(settings: dict) -> None:
    for key in SPEC_KEYS:
        if key in settings:
            raise NixlayerError(f"{key} cannot be used in a batch file: build a spec's images with BuildImages --spec FILE"
                                " --output-dir DIR")
    params = dict(BuildImage.get_params())
    unknown = sorted(set(settings) - set(params) - set(NIX_KEYS))
    if unknown:
        raise NixlayerError(f"unknown key {unknown[0]!r}")
    for key, value in settings.items():
        if key in params:
            _check_type(key, value, params[key])


def _image_params(settings: dict, directory: str) -> dict:
    """BuildImage parameters of one merged [[image]] table; raises NixlayerError."""
    _check_keys(settings)
    if "name" not in settings:
        raise NixlayerError("no name")
    out = {k: v for k, v in settings.items() if k not in NIX_KEYS}
    if isinstance(out.get("config"), dict):
        out["config"] = json.dumps(out["config"], sort_keys=True)
    if "platform" in out:  # a table or a string: the string BuildImage takes
        out["platform"] = str(parse_platform(out["platform"]))
    if isinstance(out.get("layering_pipeline"), list):
        out["layering_pipeline"] = json.dumps(out["layering_pipeline"], sort_keys=True)
    if isinstance(out.get("perms"), list):
        out["perms"] = json.dumps(out["perms"], sort_keys=True)
    parse_perms(out.get("perms", ""))
    check_layering(out.get("layering", DEFAULT_LAYERING), out.get("layering_pipeline"))
    if not out.get("output") and not out.get("push"):
        raise NixlayerError("no output (a file, or a directory for format 'oci') and no push")
    if out.get("output") == STDOUT:
        raise NixlayerError("output '-' (standard output) cannot be used in a batch")
    if out.get("output") and is_stream(os.path.join(directory, os.path.expanduser(out["output"]))):
        raise NixlayerError(f"output {out['output']} is a device or a FIFO, which cannot be used in a batch")
    for key in PATH_KEYS:
        if out.get(key) and not (key == "store_root" and out[key] == "/"):
            out[key] = os.path.normpath(os.path.join(directory, os.path.expanduser(out[key])))
    if out.get("from_image"):  # docker-archive:base.tar is found beside the batch file
        out["from_image"] = absolute_source(out["from_image"], directory)
    # A link such as ./result among the contents is found from the batch file too (its store
    # path is read when the image is planned, see ImageParameters).
    for key in ("contents", "copy_to_root"):
        out[key] = [os.path.join(directory, path) if path and not path.startswith("/") else path
                    for path in out.get(key, [])]
    if "nix_attrs" in settings:  # nix_file may be a default that other images do without
        nix_file, attrs = settings.get("nix_file"), settings["nix_attrs"]
        if not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs):
            raise NixlayerError("nix_attrs must be a list of attribute names")
        if not isinstance(nix_file, str):
            raise NixlayerError("nix_attrs needs nix_file, the Nix file (a string) to build them from")
        built = _nix_build(os.path.join(directory, nix_file), attrs)
        out["contents"] = list(out.get("contents", [])) + built
    return out


def load_batch(path: str) -> list[dict]:
    """The BuildImage parameters of each image in the batch file at ``path``.

    Raises NixlayerError naming the file, and the entry (``image N (NAME)``) at fault.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise NixlayerError(f"{path}: cannot read batch file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise NixlayerError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:  # TOML is UTF-8
        raise NixlayerError(f"{path}: not valid TOML: byte {e.start + 1} is not UTF-8 (TOML files are UTF-8)") from None
    images = data.pop("image", None)
    if not isinstance(images, list) or not images or not all(isinstance(i, dict) for i in images):
        raise NixlayerError(f"{path}: no [[image]] tables")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        _check_keys(data)
    except NixlayerError as e:
        raise NixlayerError(f"{path}: defaults: {e}") from None
    result = []
    for number, image in enumerate(images, 1):
        entry = f"image {number}" + (f" ({image['name']})" if isinstance(image.get("name"), str) else "")
        try:
            if "nix_file" in image and "nix_attrs" not in data and "nix_attrs" not in image:
                raise NixlayerError("nix_file without nix_attrs: name the attributes to build")
            params = _image_params({**data, **image}, directory)
        except NixlayerError as e:
            raise NixlayerError(f"{path}: {entry}: {e}") from None
        result.append((entry, params))
    try:
        index_groups(result)  # images sharing an output or a target: one index, or an error now
    except NixlayerError as e:
        raise NixlayerError(f"{path}: {e}") from None
    return result


def _read_graphs(images: list[BuildImage]) -> None:
    """Read one closure graph for all images that read theirs from the same place (one call
    to Nix instead of one per image; see ``ImageParameters.read_graph``). Best effort: an image
    whose contents are bad gets its own clear error when it is planned. Images of a spec are
    left out: the spec holds their graph, and reading it checks their store paths on disk,
    which their planning does anyway."""
    sources: dict[tuple, tuple[BuildImage, set[str]]] = {}
    for image in images:
        if image.spec is not None:
            continue
        try:
            sources.setdefault(image.graph_source(), (image, set()))[1].update(image.roots())
        except NixlayerError:
            pass
    for image, roots in sources.values():
        try:
            image.read_graph(sorted(roots))
        except NixlayerError:
            pass


class BuildImages(luigi.Task):
    """Build every image of the batch file ``batch_file``, or of the image spec ``spec`` (each
    written to ``output_dir``, see ``pipelines.spec.spec_batch``), in one run; write a JSON report.

    Always runs (its run writes the report); the images and layers it requires run only if
    they are not already there, so a rebuild where nothing changed does no layer work.
    """

    # Absolute paths: with luigid, the same command run from two working directories is two
    # batches (each machine writes its own report), as their images' outputs are two images.
    batch_file = luigi.OptionalPathParameter(default=None, absolute=True, description="the batch file (TOML): defaults, then one [[image]] table per image")
    spec = luigi.OptionalPathParameter(default=None, absolute=True, description="instead of a batch file: an image spec of several images (nixlayer's buildImages)")
    output_dir = luigi.PathParameter(absolute=True, default=".", description="with --spec: where each image is written, named by its key")
    report = luigi.PathParameter(absolute=True, default="nixlayer-report.json", description="where to write the JSON report of the run")

    def __init__(self, *args, **kwargs) -> None:
        """Raises NixlayerError for a ``spec`` that cannot be read, or an image of it that a
        BuildImage cannot be made of (``pipelines.spec.with_spec``): as BuildImage and
        PushImage do, when the task is made (Luigi exits with ``[retcode]
        unhandled_exception``). A batch file is read when the run is planned."""
        super().__init__(*args, **kwargs)
        if self.spec is not None and self.batch_file is None:
            for _, params in spec_batch(str(self.spec), str(self.output_dir)):
                BuildImage(**params)  # Luigi keeps the task: images() gets it again

    def complete(self) -> bool:
        """Complete once this run's ``run()`` wrote the report (``[worker]
        check_complete_on_run`` asks after it); the next run builds and reports again."""
        runlog.state(self).setdefault("started", time.time())
        return runlog.state(self).get("reported", False)

    def images(self) -> list[tuple[str, BuildImage | ImageIndex]]:
        """(entry, BuildImage) of each image, the images of an index as one (entry, ImageIndex);
        bad input is printed as one line, then raised.

        Every image is checked and planned before any work. The batch's output directories are
        made for it, as each image's output check needs them; if any image is bad, the
        directories made here are removed again.
        """
        if "images" not in runlog.state(self):  # read again at each run
            created: list[str] = []
            try:
                entries = self._entries()
                check_writable(str(self.report))
                images = []
                for entry, params in entries:
                    with self._entry_errors(entry):
                        if params.get("output"):
                            _make_directories(os.path.dirname(params["output"]), created)
                        images.append((entry, BuildImage(**params)))
                _read_graphs([task for _, task in images])
                for entry, task in images:
                    with self._entry_errors(entry):
                        task.plan  # check every setting, plan the layers: before any work
                with self._entry_errors(None):  # as a spec sets them too
                    groups = index_groups([(entry, {field: getattr(task, field) for field in INDEX_FIELDS})
                                           for entry, task in images])
                images = _with_indexes(images, groups)
            except BaseException:
                for directory in reversed(created):
                    try:
                        os.rmdir(directory)  # only if still empty: never anything else's files
                    except OSError:
                        pass
                raise
            runlog.state(self)["images"] = images
        return runlog.state(self)["images"]

    def _entries(self) -> list[tuple[str, dict]]:
        """(entry, BuildImage parameters) of each image of the batch file or the spec."""
        if (self.batch_file is None) == (self.spec is None):
            given = "both" if self.batch_file is not None else "neither"
            raise NixlayerError(f"BuildImages needs --batch-file FILE (TOML) or --spec FILE (nix-build of buildImages),"
                                f" one of them; {given} given")
        if self.spec is not None:
            return spec_batch(str(self.spec), str(self.output_dir))
        return load_batch(self.batch_file)

    @property
    def source(self) -> str:
        """The batch file or spec this run builds."""
        return str(self.batch_file if self.batch_file is not None else self.spec)

    @contextlib.contextmanager
    def _entry_errors(self, entry: str | None) -> Iterator[None]:
        """Bad input of the batch file's ``entry`` as one NixlayerError naming it (a spec's
        error that names the spec already is left as it is, as BuildImage says it)."""
        try:
            yield
        except (NixlayerError, ValueError) as e:  # ValueError: a value Luigi refused
            if self.spec is not None and str(e).startswith(f"spec {self.source}: "):
                raise
            raise NixlayerError(f"{self.source}: {entry + ': ' if entry else ''}{e}") from None

    def requires(self) -> list[ImageTask]:
        """Each image's targets (AssembleImage, PushToRegistry), not its BuildImage: that task
        only stands for them, and each task more costs the scheduler a hand-out of work."""
        images = [task for _, task in self.images()]
        targets = [target for task in images for target in task.targets()]
        errors.label_tasks({target.task_id: f"{self.source}: {entry}" for entry, task in self.images()
                            for target in task.targets()})
        plan_batches(targets)
        nar_sizes = {path: size for task in images for path, size in task.nar_sizes().items()}
        console.plan(f"batch {self.source}: {count(len(images), 'image')}", layer_plan(targets, nar_sizes), nar_sizes)
        return targets

    def run(self) -> None:
        report = self.make_report()
        with atomic_file(str(self.report)) as f:
            f.write(json.dumps(report, indent=1).encode() + b"\n")
        console.say(console.batch_summary(report), stdout=True)
        runlog.state(self)["reported"] = True

    def make_report(self) -> dict:
        results = runlog.results(runlog.read()[0])
        started = runlog.state(self).setdefault("started", time.time())
        layers: dict[str, tuple[int, str]] = {}  # layer record path -> blob bytes, path in the layer store
        report_images = [image.report(results, layers) for _, image in self.images()]
        image_bytes_written = sum(i["image_bytes_written"] for i in report_images)
        for image in report_images:
            del image["image_bytes_written"]
        sizes = {path: blob_size for path, (blob_size, _) in layers.items()}
        names = {path: name for path, (_, name) in layers.items()}
        distinct_built = results.built_layers & set(sizes)
        return {
            "batch": self.source,
            "started": _iso(started), "finished": _iso(time.time()),
            "seconds": round(time.time() - started, 3),
            "images": report_images,
            "totals": {
                "images": len(report_images),
                "images_written": sum(i["image_written"] for i in report_images),
                "images_pushed": sum(i["image_pushed"] for i in report_images),
                "distinct_layers": len(sizes),
                "layers_built": len(distinct_built),
                "layers_reused": len(sizes) - len(distinct_built),
                "layer_bytes_written": sum(sizes[p] for p in distinct_built),
                "image_bytes_written": image_bytes_written,
            },
            "layer_store": LayerStore(layer_store_root()).root,
            # The layer records this run wrote, relative to the layer store.
            "built_layers": sorted(names[p] for p in distinct_built),
        }


def _with_indexes(images: list[tuple[str, BuildImage]], groups: list[list[int]]) -> list[tuple[str, object]]:
    """``images`` with each group of positions (``index_groups``) made one ImageIndex, in
    the place of its first image, its entry naming them all."""
    first_of = {group[0]: group for group in groups}
    grouped = {position for group in groups for position in group}
    result: list[tuple[str, object]] = []
    for position, (entry, task) in enumerate(images):
        if position in first_of:
            group = first_of[position]
            result.append((", ".join(images[p][0] for p in group), ImageIndex([images[p][1] for p in group])))
        elif position not in grouped:
            result.append((entry, task))
    return result


def _make_directories(directory: str, created: list[str]) -> None:
    """``os.makedirs(directory)``, adding the directories it makes to ``created`` (outermost
    first; added before they are made, so a failure half-way loses none of them)."""
    missing = []
    while not os.path.isdir(directory) and os.path.dirname(directory) != directory:
        missing.append(directory)
        directory = os.path.dirname(directory)
    if missing:
        created += reversed(missing)
        try:
            os.makedirs(missing[0], exist_ok=True)
        except OSError as e:
            raise NixlayerError(f"cannot make output directory {missing[0]}: {e.strerror}") from None


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
