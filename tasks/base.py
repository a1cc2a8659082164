"""NixlayerTask: the base of nixlayer's Luigi tasks."""

from __future__ import annotations

import luigi


class NixlayerTask(luigi.Task):
    """A nixlayer task. ``class X(NixlayerTask, abstract=True)`` declares a base of other tasks
    rather than one to run: Luigi's registry leaves it out, so it is not on the command line
    (``--help-all`` listed 62 flags of abstract classes, such as ``--LayerTask-uid``), cannot
    be run by name, and costs Luigi's command-line parser nothing (it adds every registered
    parameter, several times a run)."""

    _visible_in_registry = False  # Luigi's Register skips classes with this false

    def __init_subclass__(cls, abstract: bool = False, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._visible_in_registry = not abstract
