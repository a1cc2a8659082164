"""Luigi tasks, one per DAG node kind. Thin: parameters, requires, output, run calling nixlayer.

- ``layers.StorePathLayer``: one store path's layer, keyed by its hash part.
- ``layers.OverflowLayer``: the layer of the store paths past ``max_layers - 2``.
- ``layers.CustomisationLayer``: root symlinks into ``contents``.
- ``baseimage.BaseImageLayer``: one layer of a base image (``--from-image``), copied in.
- ``assemble.AssembleImage``: docker-archive, OCI layout or oci-archive from those layers.
- ``push.PushToRegistry``: push those layers and the manifest to a registry.
- ``image.ImageTask``: what the image-level tasks share; ``config``: the ``[nixlayer]`` section
  and the defaults used without a luigi.cfg; ``errors``: one line per error; ``runtime``: every point
  where nixlayer goes around Luigi.
- ``console``: everything a build prints (plan line, progress, summary, errors last);
  ``runlog``: what the run's processes did and how far their layers are, shared between them.
"""

from tasks import errors  # noqa: E402,F401 - one-line errors for everything run through Luigi
from tasks import runtime  # noqa: E402
from tasks.config import install_defaults  # noqa: E402

install_defaults()
runtime.install()
