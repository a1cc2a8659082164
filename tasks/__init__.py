"""Luigi tasks, one per DAG node kind. Thin: parameters, requires, output, run calling nixlayer.

- ``layers.StorePathLayer``: one store path's layer, keyed by its hash part.
- ``layers.OverflowLayer``: the layer of the store paths past ``max_layers - 2``.
- ``layers.CustomisationLayer``: root symlinks into ``contents``.
- ``assemble.AssembleImage``: docker-archive, OCI layout or oci-archive from those layers.
"""

from tasks import errors  # noqa: E402,F401 - one-line errors for everything run through Luigi
from tasks.config import install_defaults  # noqa: E402

install_defaults()
