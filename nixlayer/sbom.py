"""The software bill of materials (SBOM) of an image, from its closure graph: CycloneDX 1.6 JSON.

Why CycloneDX rather than SPDX 2.3: what nixlayer knows fits its fields one to one. A store
path's references are CycloneDX's ``dependencies`` (one entry per component, ``dependsOn`` its
references; SPDX needs one ``DEPENDS_ON`` relationship per edge), the store path itself is an
``evidence.occurrences`` location, and per-component facts without a field of their own (the
layer's diff_id, the NAR size) are ``properties``. Scanners read both (Trivy, Grype,
Dependency-Track); the CycloneDX project maintains the JSON schemas and the Python validator
the tests use (``cyclonedx-python-lib``). The OCI media type is the IANA-registered
``application/vnd.cyclonedx+json``.

One component per store path in the image's layers (Source: CycloneDX 1.6 JSON schema):

- ``bom-ref``: the store path; ``name`` and ``version`` as Nix's ``builtins.parseDrvName``
  splits the store path's name (``openssl-3.0.13`` -> ``openssl``, ``3.0.13``);
- ``hashes``: the NAR hash (SHA-256 of the store path's NAR serialisation, what Nix records
  and checks), where the closure graph has it (a scanned store directory has none);
- ``evidence.occurrences``: the store path, where the component is in the image;
- ``properties``: ``nix:store_path``, ``nix:nar_hash`` (as Nix prints it, SRI),
  ``nix:nar_size``, ``nixlayer:layer_diff_id`` (the diff_id of the layer holding it, as the
  image config's ``rootfs.diff_ids`` lists it) and ``nixlayer:layer_index`` (its position there,
  from 0);
- ``dependencies``: its references, itself left out.

The image is ``metadata.component`` (type ``container``, its name, ``bom-ref`` the image ID),
depending on the store paths the image's contents, ``copy_to_root`` and config name (its
roots, as the layer plan takes them). Not its tag: an
image under two tags is one image, with one SBOM (one artifact in a layout or registry).

Reproducible: the same image gives the same bytes. No random serial number and no clock:
``serialNumber`` is a UUID derived (version 5) from the image's name and image ID (the image
config's digest, the same for every output format and compression), and
``metadata.timestamp`` is the image's ``created`` time. Canonical JSON (sorted keys).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from nixlayer.closure import ClosureGraph
from nixlayer.errors import NixlayerError
from nixlayer.image import Artifact, ANNOTATION_CREATED, artifact, canonical_json, format_time
from nixlayer.mediatypes import MEDIA_TYPE_CYCLONEDX
from nixlayer.storepath import parse_drv_name, store_path_name

SPEC_VERSION = "1.6"
SBOM_MEDIA_TYPE = MEDIA_TYPE_CYCLONEDX
_SERIAL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "nixlayer:sbom")


def image_sbom(
    graph: ClosureGraph,
    store_layers: Sequence[Sequence[str]],
    diff_ids: Sequence[str],
    roots: Sequence[str],
    *,
    base_layers: int = 0,
    name: str,
    image_id: str,
    created: datetime,
) -> bytes:
    """The CycloneDX 1.6 JSON SBOM of an image (see the module docstring).

    Args:
        graph: the image's closure graph (references, NAR hashes and sizes).
        store_layers: the image's store layers, bottom first, each its store paths.
        diff_ids: the diff_ids of the image's layers, bottom first, as its image config's
            ``rootfs.diff_ids`` lists them: ``base_layers`` base image layers (not described
            here), the store layers, then others (the customisation layer) that hold no store
            path.
        roots: the store paths the image's contents, ``copy_to_root`` and config name.
        base_layers: how many layers of a base image come first.
        name: the image's name; image_id: its config's ``sha256:<hex>``.
        created: the image's creation time (the SBOM's timestamp).
    Returns the canonical JSON bytes.
    Raises:
        NixlayerError: a layer's store path not in ``graph``, a store path in two layers,
            or fewer diff_ids than base and store layers.
    """
    if len(diff_ids) < base_layers + len(store_layers):
        raise NixlayerError(f"the image has {base_layers} base and {len(store_layers)} store layers but"
                            f" {len(diff_ids)} diff_ids")
    layer_of: dict[str, int] = {}
    for index, paths in enumerate(store_layers):
        for path in paths:
            if path not in graph:
                raise NixlayerError(f"layer {index} holds {path}, which is not in the image's closure graph")
            if path in layer_of:
                raise NixlayerError(f"{path} is in store layers {layer_of[path] - base_layers} and {index}")
            layer_of[path] = base_layers + index
    components = [_component(graph, path, index, diff_ids[index]) for path, index in sorted(layer_of.items())]
    dependencies = [{"ref": image_id, "dependsOn": sorted(set(roots) & layer_of.keys())}]
    dependencies += [
        {"ref": path, "dependsOn": sorted((graph.references(path) - {path}) & layer_of.keys())}
        for path in sorted(layer_of)
    ]
    serial = uuid.uuid5(_SERIAL_NAMESPACE, f"{name}@{image_id}")
    return canonical_json({
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": serial.urn,
        "version": 1,
        "metadata": {
            "timestamp": format_time(created),
            "tools": {"components": [{"type": "application", "name": "nixlayer"}]},
            "component": {"type": "container", "bom-ref": image_id, "name": name},
        },
        "components": components,
        "dependencies": dependencies,
    })


def _component(graph: ClosureGraph, path: str, index: int, diff_id: str) -> dict[str, Any]:
    name, version = parse_drv_name(store_path_name(path))
    properties = [{"name": "nix:store_path", "value": path}]
    component: dict[str, Any] = {"type": "library", "bom-ref": path, "name": name}
    if version:
        component["version"] = version
    nar_hash = graph.nar_hash(path)
    if nar_hash is not None:
        hex_digest = nar_hash.removeprefix("sha256:")
        component["hashes"] = [{"alg": "SHA-256", "content": hex_digest}]
        properties.append({"name": "nix:nar_hash", "value": "sha256-" + base64.b64encode(bytes.fromhex(hex_digest)).decode()})
    if graph.nar_size(path) is not None:
        properties.append({"name": "nix:nar_size", "value": str(graph.nar_size(path))})
    properties += [{"name": "nixlayer:layer_diff_id", "value": diff_id},
                   {"name": "nixlayer:layer_index", "value": str(index)}]
    component["evidence"] = {"occurrences": [{"location": path}]}
    component["properties"] = properties
    return component


def sbom_artifact(sbom: bytes, manifest: bytes, created: datetime) -> Artifact:
    """The SBOM as an artifact attached to the image manifest ``manifest`` (its ``subject``):
    ``artifactType`` ``application/vnd.cyclonedx+json``, annotated with the image's
    ``created`` time (the referrers list shows it), no clock read."""
    return artifact(SBOM_MEDIA_TYPE, SBOM_MEDIA_TYPE, sbom, manifest, {ANNOTATION_CREATED: format_time(created)})
