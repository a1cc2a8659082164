"""The ``[nixlayer]`` section of luigi.cfg."""

from __future__ import annotations

import sys

import luigi
import luigi.configuration
import luigi.interface

from nixlayer.errors import NixlayerError
from nixlayer.layerstore import default_layer_store


# What the repository's luigi.cfg sets, for a run that finds no luigi.cfg (nixlayer installed
# with pip and run from anywhere): the embedded scheduler, Luigi's log from warnings up (a
# build prints its own lines, see tasks.console; ``--log-level INFO`` shows what Luigi does),
# and a non-zero exit status for every kind of failure (Luigi's own defaults exit 0 when a
# task fails). ``not_run`` stays 0: under
# luigid, a task another machine is running is "not granted run permission" here, which is fine.
DEFAULTS = {
    "core": {"local_scheduler": "true", "autoload_range": "false", "log_level": "WARNING"},
    "worker": {"check_unfulfilled_deps": "false"},
    "retcode": {
        "already_running": "10", "missing_data": "20", "task_failed": "30",
        "scheduling_error": "35", "unhandled_exception": "40",
    },
}


# With a central scheduler, several machines share a build: a worker whose image waits on a
# layer another machine is building must keep asking luigid for work (Luigi's worker otherwise
# exits as soon as it has nothing to run, its image unbuilt, with "already running"), polling
# every 1-2 s, and gives up after 10 minutes with nothing to run (a failure elsewhere). A task
# it saw another machine run is "run by another worker" in Luigi's summary, whose exit status
# is ``already_running``: normal here, so 0 (with the embedded scheduler it means Luigi's
# process lock, an identical command running on this machine: 10). luigid coordinates runs, so
# Luigi's process lock is off: it compares command lines, and takes the same relative command
# in another directory (another batch) for a run already going.
CENTRAL_DEFAULTS = {
    "core": {"no_lock": "true"},
    "worker": {"keep_alive": "true", "max_keep_alive_idle_duration": "10 minutes", "wait_jitter": "1"},
    "retcode": {"already_running": "0"},
}


def install_defaults(argv: list[str] | None = None) -> None:
    """Set each of ``DEFAULTS`` in Luigi's configuration unless a luigi.cfg already does, and
    of ``CENTRAL_DEFAULTS`` too when the run uses a central scheduler.

    A command line that names a central scheduler (``--scheduler-host``, ``--scheduler-url``)
    uses it: ``[core] local_scheduler`` is then false, whatever luigi.cfg says, rather than
    the flags being silently ignored; ``--local-scheduler`` makes it true.
    """
    config = luigi.configuration.get_config()
    argv = sys.argv if argv is None else argv
    flags = {arg.split("=")[0] for arg in argv}
    if flags & {"--scheduler-host", "--scheduler-url", "--local-scheduler"}:
        if not config.has_section("core"):
            config.add_section("core")
        config.set("core", "local_scheduler", str("--local-scheduler" in flags).lower())
    if not config.getboolean("core", "local_scheduler", True):
        _set_unset(CENTRAL_DEFAULTS)  # first: where both set an option, the central one holds
    _set_unset(DEFAULTS)


def _set_unset(defaults: dict[str, dict[str, str]]) -> None:
    config = luigi.configuration.get_config()
    for section, options in defaults.items():
        if not config.has_section(section):
            config.add_section(section)
        for option, value in options.items():
            if not config.has_option(section, option):
                config.set(section, option, value)


# The most each whole-number [nixlayer] setting takes (the least is 1).
_MOST = {"layer_batches": 2**31 - 1, "compression_threads": 2**16 - 1}


class nixlayer(luigi.Config):  # noqa: N801 - the class name is the luigi.cfg section name
    """Settings shared by every nixlayer task, read from the ``[nixlayer]`` section.

    layer_store: directory of the layer store (default ``$XDG_CACHE_HOME/nixlayer``, else
    ``~/.cache/nixlayer``).

    layer_batches: in about how many batches a build's store path layers (and, apart, its
    customisation layers, and its images) are handed out to workers (see
    ``tasks.base.BatchableTask``): at least the number of worker processes that share the
    build, on every machine. Unset: 1 with the embedded scheduler and one worker process
    (``[core] local_scheduler``, ``[core] workers`` or ``--workers``: nothing else takes
    work), else 8 (see :func:`batches`).

    compression_threads: threads that compress one gzip or zstd layer (unset: every core this
    process may run on). The compressed bytes are the same for every thread count
    (``nixlayer.compression``), so it is no task parameter: machines with other core counts
    share layers, and luigid's task ids.
    """

    layer_store = luigi.Parameter(default=default_layer_store())
    # Luigi's range is [min_value, max_value): the most is max_value - 1 (see whole_number).
    layer_batches = luigi.OptionalNumericalParameter(default=None, var_type=int, min_value=1,
                                                     max_value=_MOST["layer_batches"] + 1)
    compression_threads = luigi.OptionalNumericalParameter(default=None, var_type=int, min_value=1,
                                                           max_value=_MOST["compression_threads"] + 1)


def batches(layer_batches: int | None) -> int:
    """The number of batches for ``[nixlayer] layer_batches`` (None: unset).

    Unset, it is 1 when the run uses the embedded scheduler with one worker process, as
    Luigi's configuration and command line say (``luigi.build(..., workers=N)`` passes its
    arguments past them: such a caller sets ``layer_batches``); else 8, so that the workers of
    several processes or machines each get some.
    """
    if layer_batches is not None:
        return layer_batches
    core = luigi.interface.core()
    return 1 if core.local_scheduler and core.workers == 1 else 8


def layer_store_root() -> str:
    """The layer store directory, as Luigi resolves ``[nixlayer] layer_store``:
    ``--nixlayer-layer-store`` on the command line, else luigi.cfg, else the default. (That
    parameter alone: ``nixlayer()`` would also parse the others, whose bad values get their
    own one-line errors: ``tasks.base.plan_batches``, :func:`compression_threads`.)"""
    return nixlayer.layer_store.task_value("nixlayer", "layer_store") or default_layer_store()


def compression_threads() -> int | None:
    """``[nixlayer] compression_threads`` (``--nixlayer-compression-threads``); None: unset,
    every core. Raises NixlayerError if it is not a whole number of at least 1."""
    return whole_number("compression_threads")


def whole_number(key: str) -> int | None:
    """The value of ``[nixlayer] KEY``, a whole number within its parameter's range, or None
    when unset. Raises NixlayerError naming the key, its flag and the range otherwise (Luigi's
    own message, "0 is not in the set of int in [1, 65536)", names neither)."""
    try:
        return getattr(nixlayer, key).task_value("nixlayer", key)
    except ValueError:
        flag = "--nixlayer-" + key.replace("_", "-")
        raise NixlayerError(f"[nixlayer] {key} ({flag}) must be a whole number from 1 to {_MOST[key]}") from None
