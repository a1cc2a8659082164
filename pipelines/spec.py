"""``--spec``: the Luigi parameters of an image spec (``nixlayer.spec``) for BuildImage,
PushImage and BuildImages.

A task given ``spec`` (and, for a spec of several images, ``spec_image``) takes each parameter
the spec's image sets from the spec, unless the command line (or luigi.cfg, or the code making
the task) gives it too: then the given value wins, and one ``nixlayer: warning:`` line says so.
The spec also holds the image's closure graph (``ImageParameters.read_graph`` takes it from
here), so Nix is never asked.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from typing import Any

import luigi
from luigi.parameter import _no_value

from nixlayer.errors import NixlayerError, NixlayerWarning
from nixlayer.spec import IMAGE_FIELDS, ImageSpec, override_warning, read_spec
from tasks.base import bad_value

# What BuildImages names each image's output of a spec, in its --output-dir: KEY + this.
OUTPUT_SUFFIXES = {"docker-archive": ".tar", "oci-archive": ".oci.tar", "oci": ""}


def load_spec(path: str) -> ImageSpec:
    """The spec in the file ``path``, read and checked once per process (while the file, or
    the store path a ``result`` link points to, is unchanged). Raises NixlayerError."""
    try:
        info = os.stat(path)
        key = (os.path.realpath(path), info.st_ino, info.st_mtime_ns, info.st_size)
    except OSError:
        key = (path,)  # read_spec says what is wrong with it
    return _read_spec(path, key)


@functools.lru_cache(maxsize=32)
def _read_spec(path: str, key: tuple) -> ImageSpec:
    return read_spec(path)


def _given(param: luigi.Parameter, family: str, name: str) -> bool:
    """Whether the command line or luigi.cfg sets ``name`` of task ``family``: everything
    Luigi looks at before the parameter's default (its last source)."""
    sources = [value for value, _ in param._value_iterator(family, name)]
    return any(value is not _no_value for value in sources[:-1])


# Fields a spec holds as JSON values and the parameters take as JSON text.
_JSON_FIELDS = ("config", "layering_pipeline", "perms")


def _spec_value(name: str, value: Any) -> Any:
    """A spec field's value as the Luigi parameter of that name takes it."""
    return json.dumps(value, sort_keys=True) if name in _JSON_FIELDS else value


def _as_in_spec(name: str, value: Any) -> Any:
    """A parameter's value as a spec holds that field's (``ImageSpec.parameters``)."""
    if name in _JSON_FIELDS:
        if name == "perms" and value == "":
            return []
        try:
            return json.loads(value)
        except (TypeError, ValueError):
            return value  # not JSON: another value, refused when the image is planned
    return list(value) if name in ("contents", "copy_to_root") else value


def with_spec(task: type[luigi.Task], params: list[tuple[str, luigi.Parameter]], kwargs: dict) -> dict:
    """``kwargs`` for making ``task`` (BuildImage, PushImage), with the parameters its spec
    sets added: the spec's image's fields, and its store directory (``ImageSpec.parameters``).
    ``kwargs`` unchanged when the task has no ``spec``. Warns once (NixlayerWarning) naming the
    parameters given beside the spec that override it.

    Raises NixlayerError: the spec cannot be read or is not valid (``nixlayer.spec``), it has
    no such image, a value of its image that the task's parameter refuses (``spec FILE: image
    KEY: compression must be one of ..., not 'zip'``, the command line's words), ``closure_graph``
    is given too, or ``spec_image`` without ``spec``.
    """
    family = task.get_task_family()
    by_name = dict(params)

    def given(name: str) -> bool:
        return name in kwargs or _given(by_name[name], family, name)

    def value(name: str) -> Any:
        return kwargs[name] if name in kwargs else by_name[name].task_value(family, name)

    path = by_name["spec"].normalize(value("spec"))
    if path is None:
        if value("spec_image") is not None:
            raise NixlayerError("--spec-image names an image of a spec: give the spec too (--spec FILE)")
        return kwargs
    if value("closure_graph") is not None:
        raise NixlayerError("--spec and --closure-graph cannot be used together: the spec holds the closure graph")
    spec = load_spec(str(path))
    key = spec.image(value("spec_image")).key
    fields = [name for name in (*IMAGE_FIELDS, "store_dir") if name in by_name]  # no format for PushImage
    parameters, overrides = spec.parameters(key, {name: _as_in_spec(name, value(name)) for name in fields if given(name)})
    result = dict(kwargs)
    for name, spec_value in parameters.items():
        if name in by_name and not given(name):
            result[name] = _spec_value(name, spec_value)
            try:  # a value the parameter refuses (a compression it has no choice of), as the command line says it
                by_name[name].normalize(result[name])
            except ValueError as error:
                raise NixlayerError(f"spec {path}: image {key}: {bad_value(by_name[name], name, spec_value, error)}") from None
    if overrides:  # the same text each time the task is made: Python shows it once
        warnings.warn(override_warning(str(path), overrides), NixlayerWarning)
    return result


def spec_batch(path: str, output_dir: str) -> list[tuple[str, dict]]:
    """(entry, BuildImage parameters) of each image of the spec at ``path``, for BuildImages:
    the image's key, or the name of the index it is an image of, names its output in
    ``output_dir`` (``KEY.tar`` for docker-archive, ``KEY.oci.tar`` for oci-archive, the
    directory ``KEY`` for oci): the images of one index share it. Raises NixlayerError."""
    spec = load_spec(path)
    return [(f"image {image.key}", {
        "spec": path, "spec_image": image.key,
        "output": os.path.join(output_dir, (image.index or image.key)
                               + OUTPUT_SUFFIXES.get(image.parameters.get("format", "docker-archive"), "")),
    }) for image in spec.images]
