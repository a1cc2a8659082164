"""Build an image from store paths with the core library only (no Luigi), for tests.

The same steps the Luigi tasks take: each store path's layer and the customisation layer go
into a LayerStore (``LayerStore.write`` + ``write_store_layer`` / ``write_customisation_layer``),
the records become ``ImageLayer``s, ``image_config`` makes the config and
``nixlayer.formats.write_image`` writes the format asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from nixlayer.compression import Compression
from nixlayer.customisation import write_customisation_layer
from nixlayer.formats import write_image
from nixlayer.image import ImageLayer, image_config
from nixlayer.layer import LayerSettings, write_store_layer
from nixlayer.layerstore import LayerStore, paths_layer_key, settings_key, store_path_layer_key
from nixlayer.storepath import DEFAULT_STORE_DIR

CREATED = datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc)
ARCHITECTURE = "amd64"


@dataclass(frozen=True)
class Built:
    """Layers written to a layer store, and the image config made from them."""

    store: LayerStore
    layers: list[ImageLayer]
    config: bytes


def build_layers(
    store_root: str | Path,
    store_paths: Sequence[str],
    contents: Sequence[str],
    compression: Compression = Compression(),
    settings: LayerSettings = LayerSettings(),
    config: dict | None = None,
) -> Built:
    """One layer per store path (in the order given), then the customisation layer of
    ``contents``, written into a LayerStore at ``store_root``; and the image config."""
    store = LayerStore(str(store_root))
    key = settings_key(settings, compression, DEFAULT_STORE_DIR)
    layers = []
    for path in store_paths:
        record = store.write(
            store.record_path(key, store_path_layer_key(path)),
            [path],
            "store paths: " + json.dumps([path]),
            lambda f, p=path: write_store_layer([p], f, settings, compression),
        )
        layers.append(store.image_layer(record))
    record = store.write(
        store.record_path(key, paths_layer_key("customisation", contents)),
        list(contents),
        "customisation layer",
        lambda f: write_customisation_layer(contents, f, settings, compression),
    )
    layers.append(store.image_layer(record))
    cfg = image_config(layers, config if config is not None else {}, CREATED, ARCHITECTURE)
    return Built(store, layers, cfg)


def write(
    built: Built, format: str, output: str | Path, name: str = "vectors", tag: str = "1", mtime: int = 1
) -> str:
    """Write ``built`` as ``format`` to ``output``; returns write_image's digest."""
    return write_image(format, str(output), built.layers, built.config, name, tag, mtime, built.store.root).digest
