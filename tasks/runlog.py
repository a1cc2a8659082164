"""The run log: what the processes of one Luigi run did, and how far their layers are.

An anonymous file (unlinked as soon as it is made: nothing is left on disk however the run
ends, even killed) that the run's tasks append JSON lines to, from the process ``luigi``
started and from the worker processes ``--workers N`` forks (they inherit its descriptor;
O_APPEND on the shared open file description: every line lands whole at the end, whoever
writes it). It is started when Luigi's worker starts (:func:`start`, see
``tasks.runtime``); anyone reads it with :func:`read`. The lines:

- ``{"layer": RECORD}``: a layer was written (its record's path), appended when its task
  succeeds (a batch's layers in one write).
- ``{"image": OUTPUT, "digest": D, "bytes": N}``: an image was written.
- ``{"pid": P, "layers": N, "bytes": B, "path": STORE_PATH}``: process P has written N layers
  and B of the planned bytes so far (absolute, so a later line replaces an earlier one), and
  is on STORE_PATH (see :func:`layer_progress`).
- ``{"pushed": TARGET, "digest": D, "uploaded": N, "uploaded_bytes": B, "mounted": M, "present": P}``:
  an image (or index) was pushed, its manifest's digest D; its blobs uploaded, mounted from
  another repository, already there.
- ``{"say": TEXT, "stdout": BOOL}`` and ``{"error": TEXT}``: lines for the user, printed at the
  end of the run by the process luigi started (``tasks.console``).

Bytes of a layer are *planned bytes*: the NAR sizes of its store paths, as the closure says
(:func:`plan` takes them per layer record). While a layer is written, its file contents
written so far count, up to its planned bytes (a NAR is its files' contents and a little
framing); a layer without them (the customisation layer, a closure without NAR sizes)
counts as written only.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from typing import Iterable, Mapping, NamedTuple

# The descriptor of this process's run log, or None before any run started.
_fd: int | None = None
# How many runs this process started (its current run's number).
_run = 0
# Planned bytes of each layer to write in this run, by layer record path, and the closure's NAR
# size of each store path (see ``plan``).
_planned: dict[str, int] = {}
_nar_sizes: dict[str, int] = {}

FLUSH_SECONDS = 0.1
"""How often a process appends its progress line while it writes layers, at most."""


def start() -> None:
    """Start an empty run log, closing the previous run's (of this process): a run starts
    (``tasks.runtime``, when Luigi's worker starts)."""
    global _fd, _run
    _run += 1
    if _fd is not None:
        os.close(_fd)
        _fd = None
    fd, path = tempfile.mkstemp(prefix="nixlayer-run-", suffix=".jsonl")
    os.unlink(path)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    _fd = fd
    _planned.clear()
    _nar_sizes.clear()
    _tally.__init__()


def state(owner: object) -> dict:
    """What ``owner`` (a task) keeps for the current run: empty at its first call in each run.
    Luigi keeps one instance of a task per parameters in a process, across runs."""
    held = owner.__dict__.get("_run_state")
    if held is None or held[0] != _run:
        held = owner.__dict__["_run_state"] = (_run, {})
    return held[1]


def append(entries: list[dict]) -> None:
    """Append ``entries``, in one write (more only if the system takes part of it); nothing
    without a run log."""
    data = "".join(json.dumps(entry) + "\n" for entry in entries).encode()
    while _fd is not None and data:
        data = data[os.write(_fd, data):]


def read(offset: int = 0) -> tuple[list[dict], int]:
    """The entries from byte ``offset`` on, and the offset after the last whole line (a line
    being appended meanwhile is left for the next read)."""
    if _fd is None:
        return [], offset
    data = os.pread(_fd, max(0, os.fstat(_fd).st_size - offset), offset)
    end = data.rfind(b"\n") + 1
    return [json.loads(line) for line in data[:end].splitlines()], offset + end


class Results(NamedTuple):
    """What a run made: the records of the layers it wrote, the entries of the images it
    wrote by output, and those of the images it pushed by target."""

    built_layers: set[str]
    written: dict[str, dict]
    pushed: dict[str, dict]


def results(entries: list[dict]) -> Results:
    """What a run made, from its ``entries``."""
    return Results({entry["layer"] for entry in entries if "layer" in entry},
                   {entry["image"]: entry for entry in entries if "image" in entry},
                   {entry["pushed"]: entry for entry in entries if "pushed" in entry})


def plan(planned: dict[str, int], nar_sizes: Mapping[str, int | None]) -> None:
    """Record the planned bytes of each layer to write (layer record path -> bytes), read by
    :func:`layer_progress`, and the closure's NAR size of each store path (None: unknown), read
    by :func:`nar_sizes`: in this process and in those forked from it later."""
    _planned.update(planned)
    _nar_sizes.update((path, size) for path, size in nar_sizes.items() if size is not None)


def nar_sizes(paths: Iterable[str]) -> dict[str, int]:
    """The NAR sizes the planned closure gives ``paths`` (those it knows): what a layer of them
    is checked against as it is written (``nixlayer.layer.write_store_layer``)."""
    return {path: _nar_sizes[path] for path in paths if path in _nar_sizes}


def planned_bytes(record: str) -> int:
    """The planned bytes of the layer whose record is ``record``: 0 if not planned."""
    return _planned.get(record, 0)


class _Tally:
    """This process's layers written, planned bytes written, and the layer it is on."""

    def __init__(self) -> None:
        self.layers = 0
        self.done = 0  # planned bytes of the layers written
        self.current = 0  # planned bytes written of the layer being written
        self.path = ""
        self.flushed = 0.0


_tally = _Tally()
os.register_at_fork(after_in_child=_tally.__init__)  # a worker process counts its own


def layer_progress(record: str, path: str, done: int) -> None:
    """Note that ``done`` bytes of file contents of the layer with record ``record``, which
    holds store path ``path`` (first of several), are written: as many planned bytes, up to the
    layer's; appended at most every FLUSH_SECONDS."""
    _tally.current = min(done, planned_bytes(record))
    _tally.path = path
    _flush(force=False)


def layer_written(record: str) -> None:
    """Note that the layer with record ``record`` is written (appended with the next flush)."""
    _tally.layers += 1
    _tally.done += planned_bytes(record)
    _tally.current = 0
    _flush(force=False)


def flush() -> None:
    """Append this process's progress now (a task's end: the display sees its last layer)."""
    _flush(force=True)


def _flush(force: bool) -> None:
    now = time.monotonic()
    if _fd is None or (not force and now - _tally.flushed < FLUSH_SECONDS):
        return
    _tally.flushed = now
    append([{"pid": os.getpid(), "layers": _tally.layers, "bytes": _tally.done + _tally.current, "path": _tally.path}])
