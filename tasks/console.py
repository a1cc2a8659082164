"""What a build prints for the person who started it: everything nixlayer prints goes here.

A run of the ``luigi`` command (``luigi --module pipelines BuildImage ...``) prints, on
standard error (Luigi's own log only with ``--log-level INFO``, see ``tasks.config``):

1. one line once the closure is read and planned (:func:`plan`): store paths and their
   bytes, layers to write and layers reused from the layer store;
2. while layers are written: on a terminal, a progress bar (tqdm, imported only then: 8 ms)
   of bytes written over bytes to write, rate and time left; otherwise a plain line every
   PLAIN_SECONDS, without escape codes;
3. at the end: the lines tasks gave (:func:`say`), the summary of the image(s), and the
   errors (:func:`error`), last.

One process draws: the one ``luigi`` started, which plans the build. With ``--workers N``
Luigi runs each task in a process it forks, whose reports to the embedded scheduler never
reach it, and two processes drawing on one terminal would overwrite each other. So every
process appends what it has written, and what it has to say, to the run log
(``tasks.runlog``, a file they all share), and a thread of the first process reads it and
draws; it prints the rest when the process exits, after Luigi is done, so the error is last.
The same holds for ``--workers 1`` (the tasks run in that process) and under luigid.

Runs that are not the ``luigi`` command (``luigi.build`` in tests and benchmarks) print each
line at once, and no progress.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Callable

from nixlayer.human import count, seconds, size  # noqa: F401 - what tasks print with
from tasks import runlog

PLAIN_SECONDS = 3.0
"""Without a terminal, a progress line at most this often (and none for a shorter build)."""
BAR_DELAY = 0.5
"""On a terminal, the bar shows once writing layers has taken this long (none for less)."""
TICK_SECONDS = 0.1



def _process_age() -> float:
    """Seconds since this process started (Linux's /proc), else since this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return 0.0


_STARTED = time.monotonic() - _process_age()

# The console of this run, in the process luigi started (and inherited by its forks).
_console: "_Console | None" = None
# Error lines of this process, held for the end of a ``luigi`` command run without a console
# (an error found while planning, before the plan line).
_held: list[str] = []


def elapsed() -> float:
    """Seconds since the process started."""
    return time.monotonic() - _STARTED


def say(text: str, stdout: bool = False) -> None:
    """Print ``text`` (a line) to standard error, or standard output; during a ``luigi``
    command's run, at its end, before the summary."""
    if _console is not None:
        runlog.append([{"say": text, "stdout": stdout}])
    else:
        print(text, file=sys.stdout if stdout else sys.stderr, flush=True)


def error(text: str) -> None:
    """Print ``text`` (``nixlayer: error: ...``) to standard error; during a ``luigi``
    command's run, at its very end, after everything else (Luigi's summary included)."""
    from tasks.runtime import luigi_command  # tasks.runtime reports errors through this module

    if _console is not None:
        runlog.append([{"error": text}])
    elif luigi_command():
        if not _held:
            atexit.register(_print_held, os.getpid())
        _held.append(text)
    else:
        print(text, file=sys.stderr, flush=True)


def _print_held(pid: int) -> None:
    """At exit: the error lines held, each once, unless a console prints them."""
    if os.getpid() == pid and (_console is None or _console.pid != pid):
        for text in dict.fromkeys(_held):
            print(text, file=sys.stderr, flush=True)


def plan(title: str, layers: list[tuple[str, list[str], int, bool]], nar_sizes: dict[str, int | None],
         summary: Callable[[list[dict]], list[str]] | None = None) -> None:
    """Print the plan line of a build and show its progress until it ends.

    ``title``: what is built (``hello:1``, ``batch FILE: 3 images``). ``layers``: each layer
    of the build once, as (its record path, the store paths it holds, the bytes it is planned to
    be (``tasks.runlog``), whether it is in the layer store already); a customisation or base
    layer holds none. ``nar_sizes``: store path -> NAR size (None: unknown), for the closure's
    size, left out of the line unless every one is known. The bytes to write are left out of
    the line when none are known (a customisation layer of links): the summary gives those
    written.
    ``summary(entries)``: the summary lines of the run, from the run log's entries, printed
    at its end (none if it returns none). The run log must be started.

    In a run that is not the ``luigi`` command, only the plan is recorded (nothing printed).
    Called once per run: later calls do nothing.
    """
    global _console
    if _console is not None and _console.pid == os.getpid():
        return
    planned = {record: size for record, _, size, done in layers if not done}
    runlog.plan(planned, nar_sizes)
    from tasks.runtime import luigi_command

    if not luigi_command():
        return
    paths = {path for _, layer_paths, _, _ in layers for path in layer_paths}
    known = all(nar_sizes.get(path) is not None for path in paths)  # a closure graph may give none
    total = f" ({size(sum(nar_sizes[path] for path in paths))})" if known else ""
    to_bytes = sum(planned.values())
    print(f"nixlayer: {title}: {count(len(paths), 'store path')}{total} in {count(len(layers), 'layer')}:"
          f" {len(planned)} to write{f' ({size(to_bytes)})' if to_bytes else ''}, {len(layers) - len(planned)} reused",
          file=sys.stderr, flush=True)
    _console = _Console(len(planned), to_bytes, summary)


def image_summary(report: dict, elapsed: float) -> str:
    """The line that ends a run of one image (``BuildImage``, ``PushImage``), from its report
    (``pipelines.build.image_report``): where it went (``wrote``, ``pushed``, ``is up to date``),
    each with the image's digest there (an output and a push: an image ID and a manifest
    digest), then its layers built and reused, the bytes written and ``elapsed`` seconds."""
    where = []
    name = f"{report['name']}:{report['tag']}"
    if report["output"]:
        went = (f"wrote {report['format']} {report['output']}" if report["image_written"]
                else f"{report['format']} {report['output']} is up to date")
        where.append(f"{went}: {name} {report['digest'] or '-'}")
    if report["push"]:
        blobs = report["push_blobs"]
        went = (f"pushed {report['push']} ({blobs['uploaded']} blobs uploaded, {size(blobs['uploaded_bytes'])};"
                f" {blobs['mounted']} mounted, {blobs['present']} already there)" if blobs
                else f"{report['push']} is up to date")
        where.append(f"{went}: {name} {report['push_digest'] or '-'}")
    return (f"nixlayer: {'; '.join(where)}; layers: {report['layers_built']} built, {report['layers_reused']} reused;"
            f" {size(report['bytes_written'])} written in {seconds(elapsed)}")


def batch_summary(report: dict) -> str:
    """The lines that end a ``BuildImages`` run, from its report (``pipelines.batch``): per
    image its digest (its output's, else its push's), layers built and reused, bytes written,
    and whether it was pushed (with the pushed digest when it has an output too), or that
    nothing of it changed; then the totals."""
    lines = [f"nixlayer: batch {report['batch']}: {count(len(report['images']), 'image')} in {report['seconds']} s"]
    for image in report["images"]:
        platforms = f" (index of {', '.join(image['platforms'])})" if "platforms" in image else ""
        line = (f"  {image['name']}:{image['tag']}{platforms} {image['digest'] or '-'}  layers: {image['layers_built']} built,"
                f" {image['layers_reused']} reused; {size(image['bytes_written'])} written")
        if image["image_pushed"]:
            line += "; pushed" + (f" {image['push_digest']}" if image["output"] else "")
        elif not image["image_written"]:
            line += " (image unchanged)"
        lines.append(line)
    t = report["totals"]
    done = count(t["images_written"], "image") + " written"
    if any(image["push"] for image in report["images"]):
        done = (f"{count(t['images_pushed'], 'image')} pushed" if not any(image["output"] for image in report["images"])
                else f"{done}, {t['images_pushed']} pushed")
    lines.append(f"  total: {t['distinct_layers']} distinct layers, {t['layers_built']} built, {t['layers_reused']} reused;"
                 f" {done}; {size(t['layer_bytes_written'] + t['image_bytes_written'])} written")
    return "\n".join(lines)


class _RawStderr:
    """Standard error for the drawing thread: written with ``os.write``, holding no lock of
    ``sys.stderr``. Luigi forks its worker processes while the thread may be drawing; a child
    that inherited ``sys.stderr``'s lock held would hang at its first line."""

    def __init__(self) -> None:
        self.encoding = getattr(sys.stderr, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        data = text.encode(self.encoding, "replace")
        while data:
            data = data[os.write(2, data):]
        return len(text)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return 2

    def isatty(self) -> bool:
        return os.isatty(2)


_STDERR = _RawStderr()


def _columns() -> int:
    """The width of the terminal on standard error: 0 when unknown (a pseudo-terminal whose
    size nobody set, as under ``script``)."""
    try:
        return os.get_terminal_size(2).columns
    except OSError:
        return 0


class _Console:
    """The run's progress display (a thread, while layers are left to write) and its end."""

    def __init__(self, layers: int, total: int, summary: Callable[[list[dict]], list[str]] | None) -> None:
        self.pid = os.getpid()
        self.layers, self.total, self.summary = layers, total, summary
        self.tty = sys.stderr.isatty() and _columns() > 0  # tqdm draws nothing on 0 columns
        self.stop = threading.Event()
        self.offset = 0
        self.progress: dict[int, dict] = {}  # pid -> its latest progress entry
        self.errors = 0
        self.path = ""
        self.bar = None
        self.started = time.monotonic()
        self.shown = self.started  # the last plain line
        self.thread = None
        if layers:
            self.thread = threading.Thread(target=self._run, name="nixlayer-console", daemon=True)
            self.thread.start()
        atexit.register(self.finish)

    def _run(self) -> None:
        while not self.stop.wait(TICK_SECONDS):
            self._tick()

    def _tick(self) -> None:
        entries, self.offset = runlog.read(self.offset)
        for entry in entries:
            if "pid" in entry:
                self.progress[entry["pid"]] = entry
                self.path = entry["path"] or self.path
            elif "error" in entry:
                self.errors += 1
        layers = sum(p["layers"] for p in self.progress.values())
        written = sum(p["bytes"] for p in self.progress.values())
        now = time.monotonic()
        if self.tty:
            self._draw(layers, written, now)
        elif now - self.shown >= PLAIN_SECONDS and layers < self.layers:
            self.shown = now
            _STDERR.write(self._plain(layers, written, now) + "\n")

    def _counts(self, layers: int) -> str:
        return f"{layers}/{self.layers} layers" + (f", {self.errors} failed" if self.errors else "")

    def _plain(self, layers: int, written: int, now: float) -> str:
        """A progress line without escape codes."""
        spent = now - self.started
        line = f"nixlayer: writing layers: {self._counts(layers)}"
        if self.total:
            rate = written / spent if spent > 0 else 0
            line += f", {size(written)} of {size(self.total)} ({100 * written // self.total}%), {size(rate)}/s"
            if rate > 0:
                line += f", {seconds((self.total - written) / rate)} left"
        return line

    def _draw(self, layers: int, written: int, now: float) -> None:
        value = written if self.total else layers
        if self.bar is None:
            if now - self.started < BAR_DELAY:
                return
            import tqdm  # only now: 8 ms that a short build never pays

            self.bar = tqdm.tqdm(
                total=self.total or self.layers, initial=value, desc=f"nixlayer: {self._counts(layers)}",
                unit="B" if self.total else " layers", unit_scale=bool(self.total),
                file=_STDERR, leave=False, dynamic_ncols=True, mininterval=TICK_SECONDS, smoothing=0.1,
            )
        self.bar.set_description_str(f"nixlayer: {self._counts(layers)}", refresh=False)
        if layers >= self.layers:  # the image is left to write
            self.bar.set_postfix_str("writing the image", refresh=False)
        else:  # the store path last reported on, by its name (no hash)
            self.bar.set_postfix_str(self.path.rsplit("/", 1)[-1][33:], refresh=False)
        self.bar.update(value - self.bar.n)

    def finish(self) -> None:
        """At exit of the process luigi started: stop the display, print what tasks said, the
        summary, then the errors."""
        if os.getpid() != self.pid:
            return
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=1)
        if self.bar is not None:
            self.bar.close()
        entries, _ = runlog.read()
        errors = [entry["error"] for entry in entries if "error" in entry]
        lines = [(entry["say"], entry["stdout"]) for entry in entries if "say" in entry]
        if not errors and self.summary is not None:
            try:
                lines += [(line, False) for line in self.summary(entries)]
            except Exception as e:  # noqa: BLE001 - a summary is not worth a traceback at exit
                lines.append((f"nixlayer: no summary: {e}", False))
        for text, stdout in lines:
            print(text, file=sys.stdout if stdout else sys.stderr, flush=True)
        for text in dict.fromkeys(errors + _held):  # each once: a batch's error may come from several
            print(text, file=sys.stderr, flush=True)
