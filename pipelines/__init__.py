"""User-facing entry tasks, found by ``luigi --module pipelines``.

``BuildImage`` builds one layered image from store paths, with the parameters of nixpkgs
``dockerTools.buildLayeredImage``. It works out the closure and the layer plan once, then
requires ``tasks.assemble.AssembleImage``, which requires one task per layer.

``BuildImages`` builds every image of a TOML batch file in one run (``pipelines.batch``).
"""

from pipelines.batch import BuildImages
from pipelines.build import BuildImage, PushImage

__all__ = ["BuildImage", "BuildImages", "PushImage"]
