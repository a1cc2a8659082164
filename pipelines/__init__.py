"""User-facing entry tasks, found by ``luigi --module pipelines``.

``BuildImage`` builds one layered image from store paths, with the parameters of nixpkgs
``dockerTools.buildLayeredImage``. It works out the closure and the layer plan once, then
requires ``tasks.assemble.AssembleImage``, which requires one task per layer.

``BuildImages`` builds every image of a TOML batch file in one run (``pipelines.batch``).

With ``--spec``, each takes its images' parameters and closure from an image spec, built by
``nix-build`` of nixlayer's Nix library (``nix/default.nix``; ``pipelines.spec``).
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
# A batch build makes a few objects per task and keeps them to the end: Luigi's task, its
# parameters, the scheduler's record. At Python's default (a collection every 700 new
# objects) a batch of 3,200 tasks ran ~400 collections, three of them full, 0.09-0.18 s of
# its scheduling (bench/bench_batch.py); every 10,000 new objects: 0.05 s. Cycles that
# become garbage are still collected, a little later.
gc.set_threshold(10_000, 10, 10)
