"""Layer tasks: each writes one layer into the layer store; its target is the layer's record.

A layer's record path depends on every setting that changes its bytes (see
``nixlayer.layerstore.settings_key``) and on what it holds: a store path's hash part, or a hash
of the ordered store paths (overflow) or of the contents and everything else the customisation
layer holds (``nixlayer.rootfs.RootTree``); and on the permission rules that can touch it
(``nixlayer.perms``: each layer task gets only those).
"""

from __future__ import annotations

import json
import os
import time
from typing import BinaryIO

import luigi

from nixlayer.compression import NAMES, Compression
from nixlayer.customisation import write_customisation_layer
from nixlayer.layer import LayerBlob, LayerSettings, write_store_layer
from nixlayer.perms import PermRule, parse_perms, perms_key
from nixlayer.rootfs import RootTree, write_root_layer
from nixlayer.storepath import DEFAULT_STORE_DIR
from nixlayer.layerstore import (
    LayerRecord, LayerStore, customisation_layer_key, paths_layer_key, record_name, settings_key,
    store_path_layer_key,
)
from nixlayer.errors import NixlayerError
from tasks.base import BatchableTask, NixlayerTask, json_list
from tasks.config import compression_threads
from tasks import console, runlog
from tasks.errors import PREFIX


class LayerStoreTarget(luigi.LocalTarget):
    """A layer record in the layer store; it exists only if its blob is present and whole.

    The record is parsed once, or kept from :meth:`write`; later checks stat the record and
    its blob (``LayerStore.check``: size, inode, modification time), as Luigi asks several
    times a build, and an image taking the record (:meth:`record`) checks its blob only.
    ``name`` is the record's path relative to the layer store's root.
    """

    def __init__(self, store: LayerStore, name: str) -> None:
        super().__init__(os.path.join(store.root, name))
        self.store = store
        self.name = name
        self._record: LayerRecord | None = None

    def write(self, store_paths: list[str], comment: str, write_blob) -> LayerRecord:
        """Write the layer (see ``LayerStore.write``) and return its record."""
        self._record = self.store.write(self.path, store_paths, comment, write_blob)
        return self._record

    def exists(self) -> bool:
        if self._record is not None and os.path.isfile(self.path):
            self._record = self.store.check(self.path, self._record)
        else:
            self._record = self.store.find(self.path)
        return self._record is not None

    def record(self) -> LayerRecord:
        """The layer's record, once its blob is checked (``LayerStore.check``): what an image
        is made of. Raises NixlayerError if the blob is missing or damaged, or if the record
        is and was not read before."""
        if self._record is not None:
            self._record = self.store.check(self.path, self._record)
        if self._record is None and not self.exists():
            return self.store.read(self.path)  # raises, naming what is wrong
        assert self._record is not None
        return self._record


class LayerParameters(NixlayerTask, abstract=True):
    """Parameters every layer shares: owner and mtime of entries, compression, store location."""

    mtime = luigi.IntParameter(default=1, description="mtime of every entry, seconds since the epoch")
    uid = luigi.IntParameter(default=0)
    gid = luigi.IntParameter(default=0)
    uname = luigi.Parameter(default="root")
    gname = luigi.Parameter(default="root")
    compression = luigi.ChoiceParameter(choices=NAMES, default="none")
    compression_level = luigi.OptionalIntParameter(default=None)
    store_dir = luigi.Parameter(default=DEFAULT_STORE_DIR)
    store_root = luigi.Parameter(default="/", description="where the store directory is on disk")
    # Part of every task's id: one luigid can serve builds into different layer stores (a layer
    # written into one is not done for another), and machines sharing one mount it at one path.
    layer_store_dir = luigi.Parameter(description="the layer store directory, absolute")
    # A layer task gets the rules that can touch it (nixlayer.perms.rules_for), as canonical JSON.
    perms = luigi.Parameter(default="", description="permission rules, a JSON list (nixlayer.perms)")

    def settings(self) -> LayerSettings:
        return LayerSettings(self.mtime, self.uid, self.gid, self.uname, self.gname)

    def compressor(self) -> Compression:
        """The layer compression, on ``[nixlayer] compression_threads`` threads."""
        return Compression(self.compression, self.compression_level, compression_threads())

    def perm_rules(self) -> tuple[PermRule, ...]:
        return parse_perms(self.perms)

    def layer_store(self) -> LayerStore:
        return LayerStore(self.layer_store_dir)

    def layer_parameters(self) -> dict:
        """This task's layer parameters, to hand on to the layer tasks it requires."""
        return {name: getattr(self, name) for name in LayerParameters.get_param_names()}

    def on_failure(self, exception: Exception) -> str:
        """What the scheduler shows for a failure: one line for nixlayer's own errors."""
        if isinstance(exception, NixlayerError):
            return f"{PREFIX}{exception}"
        return super().on_failure(exception)


class LayerTask(LayerParameters, abstract=True):
    """A task that writes one layer into the layer store; its output is the layer's record.

    Layers come before images (priority 1, images 0): an image's task becomes ready when its
    last layer is written, and images that wait until every layer is written are handed out
    together, in batches, rather than one at a time between the layer batches.
    """

    priority = 1  # read by Luigi's worker when it adds the task

    def layer_key(self) -> str:
        raise NotImplementedError

    def store_paths(self) -> list[str]:
        raise NotImplementedError

    def output(self) -> LayerStoreTarget:
        target = self.__dict__.get("_output")  # Luigi asks often (complete, deps checks, images)
        if target is None:
            store = self.layer_store()
            key = settings_key(self.settings(), self.compressor(), self.store_dir)
            target = self._output = LayerStoreTarget(store, record_name(key, self.layer_key()))
        return target

    def write_blob(self, out: BinaryIO) -> LayerBlob:
        return write_store_layer(
            self.store_paths(), out, self.settings(), self.compressor(),
            self.store_root, self.store_dir, progress=self._progress, perms=self.perm_rules(),
            nar_sizes=runlog.nar_sizes(self.store_paths()),
        )

    def run(self) -> None:
        try:
            self._write_layer()
        finally:
            runlog.flush()

    def written(self) -> list[LayerStoreTarget]:
        """The layer records this task's run wrote (none before it ran)."""
        return self.__dict__.get("_written", [])

    def describe(self) -> str:
        """What the layer holds, for status messages: its store path, or the first of several."""
        paths = self.store_paths()
        return paths[0] if len(paths) == 1 else f"{len(paths)} store paths ({paths[0]}, ...)"

    def _write_layer(self, report=None) -> LayerRecord:
        """Write this layer; ``report(percentage, message)`` tells the scheduler how it goes,
        and ``tasks.runlog`` the terminal."""
        report = report or self._report_self
        self._last_report = 0.0
        self._reporting = report
        what = self.describe()
        report(0, f"{what}: writing")
        target = self.output()
        comment = "store paths: " + json.dumps(self.store_paths())
        record = target.write(self.store_paths(), comment, self.write_blob)
        self._written = [target]
        runlog.layer_written(target.path)
        report(100, f"{what}: {console.size(record.blob.size)}, diff_id {record.blob.diff_id}, blob {record.blob.digest}")
        return record

    def _progress(self, done: int) -> None:
        """The tar writer's report: ``done`` file-content bytes of the layer written. How much
        that is of the layer is told by its planned bytes (its store paths' NAR sizes, their
        contents and a little more; unknown when the closure has none): the writer does not
        list the files before it writes them."""
        record = self.output().path
        runlog.layer_progress(record, self.store_paths()[0], done)
        now = time.monotonic()
        if now - self._last_report < 0.5:
            return
        self._last_report = now
        planned = runlog.planned_bytes(record)
        of = f" of about {console.size(planned)}" if planned else ""
        self._reporting(min(99, 100 * done // planned) if planned else 0, f"{self.describe()}: {console.size(done)}{of} written")


class BatchableLayer(BatchableTask, LayerTask, abstract=True):
    """A layer task the scheduler may hand out in batches (see BatchableTask): one batched
    parameter holds the members' layers. A batch's output is its members' layer records."""

    def output(self):
        members = self.members()
        return super().output() if members == [self] else [m.output() for m in members]

    def run(self) -> None:
        self._written = []
        try:
            super().run()
        finally:
            runlog.flush()

    def member_weight(self, member: "BatchableLayer") -> int:
        return runlog.planned_bytes(member.output().path)

    def run_member(self, member: "BatchableLayer", report) -> None:
        member._write_layer(report)
        if member is not self:
            self._written.extend(member.written())


class StorePathLayer(BatchableLayer):
    """The layer of one store path (most popular paths get one each); keyed by its hash part.

    A batch (see BatchableLayer) has the store paths of its members in ``store_path``, a JSON list.
    """

    store_path = luigi.Parameter(batch_method=json_list)

    def batch_members(self) -> list[dict] | None:
        if not self.store_path.startswith("["):
            return None
        return [{"store_path": path} for path in json.loads(self.store_path)]

    def layer_key(self) -> str:
        return store_path_layer_key(self.store_path) + perms_key(self.perm_rules())

    def store_paths(self) -> list[str]:
        return [self.store_path]


class OverflowLayer(BatchableLayer):
    """One layer of several store paths, in the order given: popularity's overflow layer, or a
    layer of several store paths another layering made (its key stays ``overflow-...``, so the
    layer store keeps serving the layers it has).

    Its priority is its number of store paths: it is usually the largest layer of the image,
    so the scheduler starts it first rather than last, where it would run alone on the
    critical path while the other workers idle.

    A batch (see BatchableLayer) has the store paths of its members in ``paths``, a list of
    lists: the ``stable`` and ``auto`` layerings make dozens of these layers, each handed out
    on its own before (10-30 ms of the scheduler and a process each, most of the time of the
    small ones).
    """

    paths = luigi.ListParameter(batch_method=tuple)

    @property
    def priority(self) -> int:  # read by Luigi's worker when it adds the task
        return len(self.paths)

    def batch_members(self) -> list[dict] | None:
        # One layer's paths are store paths (strings); a batch's are lists of them.
        batched = bool(self.paths) and not isinstance(self.paths[0], str)
        return [{"paths": paths} for paths in self.paths] if batched else None

    def layer_key(self) -> str:
        return paths_layer_key("overflow", self.store_paths()) + perms_key(self.perm_rules())

    def store_paths(self) -> list[str]:
        return list(self.paths)


class CustomisationLayer(BatchableLayer):
    """The customisation layer: symlinks at / into each contents store path, and what
    ``nixlayer.rootfs`` adds (copy_to_root trees, commands, a Nix database, permission rules).

    A batch (see BatchableLayer; one per image in a batch of images) has the contents of its
    members in ``contents``, a list of lists.
    """

    contents = luigi.ListParameter(batch_method=tuple)
    copy_to_root = luigi.ListParameter(default=[])
    extra_commands = luigi.Parameter(default="")
    fake_root_commands = luigi.Parameter(default="")
    nix_db = luigi.ListParameter(default=[], description="the store paths a Nix database registers (none: no database)")

    def tree(self) -> RootTree:
        return RootTree(tuple(self.copy_to_root), self.extra_commands, self.fake_root_commands,
                        self.perm_rules(), tuple(self.nix_db))

    def batch_members(self) -> list[dict] | None:
        # One layer's contents are store paths (strings); a batch's are lists of them.
        batched = bool(self.contents) and not isinstance(self.contents[0], str)
        return [{"contents": contents} for contents in self.contents] if batched else None

    def layer_key(self) -> str:
        return customisation_layer_key(self.store_paths(), self.tree().key())

    def describe(self) -> str:
        return f"the customisation layer of {len(self.contents)} contents"

    def store_paths(self) -> list[str]:
        return list(self.contents)

    def write_blob(self, out: BinaryIO) -> LayerBlob:
        tree = self.tree()
        if tree:
            return write_root_layer(self.store_paths(), tree, out, self.settings(), self.compressor(),
                                    self.store_root, self.store_dir, runlog.nar_sizes(self.store_paths()))
        return write_customisation_layer(
            self.store_paths(), out, self.settings(), self.compressor(), self.store_root,
            self.layer_store().fragments_dir(self.settings(), self.store_dir), runlog.nar_sizes(self.store_paths()),
        )


@LayerTask.event_handler(luigi.Event.SUCCESS)
def _layer_written(task: LayerTask) -> None:
    """The layers a task wrote, in the run log (a batch's in one write; not those of its
    members another process wrote meanwhile)."""
    runlog.append([{"layer": target.path} for target in task.written()])


def layer_task(paths: list[str], **settings) -> LayerTask:
    """The task for one store layer of the plan: StorePathLayer for one path, else OverflowLayer.

    A one-path overflow layer has the same bytes as that path's own layer, so it is that task.
    """
    if len(paths) == 1:
        return StorePathLayer(store_path=paths[0], **settings)
    return OverflowLayer(paths=list(paths), **settings)
