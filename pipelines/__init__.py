"""User-facing entry tasks, found by ``luigi --module pipelines``.

``BuildImage`` builds one layered image from store paths, with the parameters of nixpkgs
``dockerTools.buildLayeredImage``. It works out the closure and the layer plan once, then
requires ``tasks.assemble.AssembleImage``, which requires one task per layer.

``BuildImages`` builds every image of a TOML batch file in one run (``pipelines.batch``).
"""

import gc

from pipelines.batch import BuildImages
from pipelines.build import BuildImage, PushImage

__all__ = ["BuildImage", "BuildImages", "PushImage"]

# Luigi, nixlayer and what they import are some 400 modules of objects that live as long as
# the process. Python's full garbage collections walk every one of them, and so does its
# shutdown: 60 ms of a 0.35 s one-leaf rebuild (bench/bench_build.py). Frozen here, once
# everything is imported, collections and shutdown look at the build's own objects only.
gc.freeze()
