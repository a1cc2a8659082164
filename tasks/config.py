"""The ``[nixlayer]`` section of luigi.cfg."""

from __future__ import annotations

import os

import luigi


def _default_layer_store() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "nixlayer")


class nixlayer(luigi.Config):  # noqa: N801 - the class name is the luigi.cfg section name
    """Settings shared by every nixlayer task, read from the ``[nixlayer]`` section.

    layer_store: directory of the layer store (default ``$XDG_CACHE_HOME/nixlayer``, else
    ``~/.cache/nixlayer``).

    layer_batch_size: how many pending store path layers a worker takes from the scheduler at
    once (one hand-out of work instead of one each; see ``tasks.layers.StorePathLayer``).
    """

    layer_store = luigi.Parameter(default=_default_layer_store())
    layer_batch_size = luigi.IntParameter(default=50)
