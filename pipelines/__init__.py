"""User-facing entry tasks, found by ``luigi --module pipelines``.

``BuildImage`` builds one layered image from store paths, with the parameters of nixpkgs
``dockerTools.buildLayeredImage``. It works out the closure and the layer plan once, then
requires ``tasks.assemble.AssembleImage``, which requires one task per layer.
"""

from pipelines.build import BuildImage, PushImage

__all__ = ["BuildImage", "PushImage"]
