"""Every point where nixlayer goes around Luigi (3.8), and why; what is code is here, installed
by ``tasks`` (:func:`install`), unless it says where else it lives.

Behaviour changed:

1. A run starts when Luigi's worker starts (:func:`_enter`, wrapping ``Worker.__enter__``):
   the run log (``tasks.runlog``) is started empty there. Luigi has no event for the start
   of a run, and keeps one instance of a task per parameters in a process, across runs
   (``luigi.build`` twice in tests); an entry task keeps what it did in a run in
   ``runlog.state(task)``, fresh at each run. So nothing relies on how often Luigi calls
   ``complete()`` (``[worker] check_complete_on_run`` calls it again after ``run()``).
2. With a central scheduler, the worker asks luigid for nothing before its first task is
   planned, which reads the closure and prints the plan line; a luigid that cannot be
   reached is found there first (:func:`_enter`: one ``ping``), so its error line is the
   only line of the run.
3. With a central scheduler, an idle worker waits for work only while some task of its run
   is running somewhere (:func:`_keep_alive`, replacing ``Worker._keep_alive``): a failure
   ends the run at once. Which tasks are the run's: the roots the worker added
   (:func:`_add`, wrapping ``Worker.add``; Luigi keeps only the first, ``_first_task``).
4. Luigi's process lock (an identical command already running: exit status 10) is told as
   one line ``nixlayer: error: ...`` on standard error (:func:`_acquire_for`, replacing
   ``luigi.lock.acquire_for``); Luigi prints it to standard output, where ``--output -``
   writes the image.
5. Errors are one line (``tasks.errors``): a filter on the ``luigi-interface`` logger that
   recognises Luigi's records by their message text (``Uncaught exception in luigi``,
   ``due to error in``, ``Worker %s failed``, ``unexpected framework error``, ``Failed
   connecting to remote scheduler``); ``warnings.showwarning`` replaced for
   NixlayerWarning; Luigi's ``UnconsumedParameterWarning`` silenced for the ``[core]
   rpc-*`` keys that Luigi's RemoteScheduler reads itself (:func:`install`); a
   ``sys.excepthook`` for an interrupt (Ctrl-C) of the ``luigi`` command, which Luigi lets
   through as a traceback; the processes Luigi forks to run tasks ignore it
   (:func:`_worker_ignores_interrupts`).
6. A parameter that cannot parse a value names its flag (``tasks.base.name_parse_errors``:
   each parameter's ``parse`` wrapped; here also ``luigi.interface.core``'s, for
   ``--workers abc``); it reads ``ChoiceParameter._choices``.
7. Whether this process runs the ``luigi`` command (:func:`luigi_command`): Luigi's
   ``CmdlineParser.get_instance()``, set only while the command line runs. Only then does
   ``tasks.console`` draw progress and hold lines for the end of the run.
8. A batch reports its members' progress and status to the scheduler under their own task
   ids, and tells it which members are done when the batch fails (``tasks.base``), through
   the scheduler of Luigi's status reporter (:func:`task_scheduler`: the bound method's
   ``__self__``, its private ``_scheduler`` and ``_worker_id``); Luigi gives a task no
   other way to report on another task.
9. Luigi's command-line parser takes a flag for every parameter of every registered task
   (``--StorePathLayer-store-path``, ...), and a run of the ``luigi`` command builds that
   parser nine times (three ``CmdlineParser``: the retcodes, the run, the summary): the
   parameters of nixlayer's tasks other than its entry tasks (``NixlayerTask._on_command_line``
   false: the layer and image tasks, which other tasks make with every parameter named, and
   which no one runs from the command line) are left out of it (:func:`_command_line_params`,
   replacing ``Register.get_all_params``, which only that parser reads): 151 of its 308
   parameters, 15 of the 32 ms of each ``CmdlineParser``; a no-op rebuild 0.50 -> 0.47 s.
   ``--help-all`` no longer lists them. luigi.cfg sections of those tasks still apply.
10. A push of an image whose base layers are left in the base's registry
   (``tasks.image.ImageTask.remote_base``) writes a ``BaseImageLayer``'s target itself, in
   its own run, for a blob it must upload because the registry neither holds it in the target
   repository nor mounts it from the base's (``BaseImageLayer.remote_layer``, lives there):
   as a required task, Luigi would download every base layer before the push, which then
   mounts them and reads none.

Luigi's internals used for speed or structure, elsewhere:

- ``tasks.base.NixlayerTask``: ``_visible_in_registry`` (abstract task classes out of the
  registry), ``get_params`` cached per class, ``get_param_values`` skipping Luigi's lookup
  for tasks made with every parameter named; ``BatchableTask`` ids made unique per process
  (luigid 3.8 never clears a finished batch's ``worker_running``).
- ``pipelines.spec``: ``Parameter._value_iterator`` and ``luigi.parameter._no_value``, to
  tell a parameter given on the command line or in luigi.cfg from its default.
- ``tasks.config``: ``[core]``, ``[worker]``, ``[retcode]`` defaults set into Luigi's
  configuration when no luigi.cfg sets them; ``--scheduler-host`` read from ``sys.argv``.
- ``nixlayer.luigi_hint`` (a ``.pth`` start-up hook): ``luigi BuildImage`` without
  ``--module pipelines``; Luigi has no hook for a task it does not know.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import sys
import warnings
from collections.abc import Iterator

import luigi.cmdline_parser
import luigi.interface
import luigi.lock
import luigi.scheduler
import luigi.task_register
import luigi.worker
from luigi.task import UnconsumedParameterWarning
from luigi.task_status import BATCH_RUNNING, RUNNING

from nixlayer.atomic import remove_own_temporaries
from tasks import errors, runlog


def luigi_command() -> bool:
    """Whether this process runs the ``luigi`` command (not ``luigi.build`` from a program)."""
    return luigi.cmdline_parser.CmdlineParser.get_instance() is not None


def task_scheduler(task: luigi.Task) -> tuple[object, str] | None:
    """The scheduler that ``task``'s running status reports go to, and the worker's id; None
    when the task does not run under a Luigi worker."""
    reporter = getattr(task.set_status_message, "__self__", None)  # Luigi's TaskStatusReporter
    scheduler = getattr(reporter, "_scheduler", None)
    return None if scheduler is None else (scheduler, reporter._worker_id)


def _enter(worker: luigi.worker.Worker) -> luigi.worker.Worker:
    """Luigi's ``Worker.__enter__``, a run's start: the run log started empty; with a
    central scheduler, one ``ping`` first (RPCError, one line, if luigid cannot be reached)."""
    runlog.start()
    worker._nixlayer_roots = []
    if not isinstance(worker._scheduler, luigi.scheduler.Scheduler):
        worker._scheduler.ping(worker=worker._id)
    return _luigi_enter(worker)


_luigi_enter = luigi.worker.Worker.__enter__


def _add(worker: luigi.worker.Worker, task, *args, **kwargs) -> bool:
    """Luigi's ``Worker.add`` (called once per root task of a run), the root noted."""
    roots = worker.__dict__.setdefault("_nixlayer_roots", [])
    if getattr(task, "task_id", None) is not None:
        roots.append(task.task_id)
    return _luigi_add(worker, task, *args, **kwargs)


_luigi_add = luigi.worker.Worker.add


def _keep_alive(worker: luigi.worker.Worker, get_work_response) -> bool:
    """Whether an idle worker keeps asking the scheduler for work: Luigi's rule
    (``keep_alive``, tasks pending, ``max_keep_alive_idle_duration``), and only while some task
    of its run is running, on any machine. Luigi counts a task that failed, and every task that
    waits on it, as pending: a run whose push failed waited the whole idle duration (10 minutes
    with luigid) with nothing left that could run. Nothing else can make one of the run's
    tasks runnable: a pending task whose dependencies are done is handed to this worker, which
    added it. So the worker stops, and Luigi's summary and exit status report the failure.

    The run's tasks are those the scheduler has under each root task the worker added (the one
    on the command line; each of ``luigi.build([a, b])``), not done. Each idle poll that Luigi's
    rule would wait on, and whose reply names no task of the worker running (it leaves out tasks
    running in another machine's batch), requests the dependency graph of one root after
    another until one has a running task: with thousands of tasks, a reply of that many.

    Tasks that wait for ``[resources]`` held by other runs are pending, not running: a worker
    whose run has nothing else running stops rather than wait for them (Luigi's summary names
    them as not run, exit 0 as ``not_run``); run it again once the resources are free."""
    if not _luigi_keep_alive(worker, get_work_response):
        return False
    roots = worker.__dict__.get("_nixlayer_roots")
    if get_work_response.running_tasks or worker._assistant or not roots:
        return True
    for root in roots:
        graph = worker._scheduler.dep_graph(root, include_done=False)
        if any(task["status"] in (RUNNING, BATCH_RUNNING) for task in graph.values()):
            return True
    return False


_luigi_keep_alive = luigi.worker.Worker._keep_alive


def _acquire_for(pid_dir: str, num_available: int = 1, kill_signal=None) -> bool:
    """Luigi's ``luigi.lock.acquire_for``: True if this process may run (fewer than
    ``num_available`` processes of the same command line run). When it may not, one line
    names the processes; what Luigi prints goes to standard error, never standard output."""
    with contextlib.redirect_stdout(io.StringIO()) as said:
        acquired = _luigi_acquire_for(pid_dir, num_available, kill_signal)
    if acquired:
        sys.stderr.write(said.getvalue())
        return True
    pids = ", ".join(re.findall(r"\d+", said.getvalue().partition("already running")[0])) or "?"
    errors.report(f"the same command is already running on this machine (pid {pids}): wait for it to finish,"
                  " or stop it (Luigi's process lock compares command lines; [core] no_lock = true turns it off)")
    return False


_luigi_acquire_for = luigi.lock.acquire_for


def _command_line_params(cls) -> Iterator[tuple[str, bool, str, luigi.Parameter]]:
    """Luigi's ``Register.get_all_params`` (task name, without section, parameter name, the
    parameter) for its command-line parser, without the tasks not on the command line (9)."""
    hidden = {name for name, task_cls in cls._get_reg().items()
              if isinstance(task_cls, type) and not getattr(task_cls, "_on_command_line", True)}
    return (param for param in _luigi_get_all_params(cls) if param[0] not in hidden)


_luigi_get_all_params = luigi.task_register.Register.get_all_params.__func__


def install() -> None:
    """Put the adjustments of this module in place in this process."""
    from tasks.base import name_parse_errors  # tasks.base uses this module

    luigi.worker.Worker.__enter__ = _enter
    luigi.worker.Worker.add = _add
    luigi.worker.Worker._keep_alive = _keep_alive
    luigi.lock.acquire_for = _acquire_for
    luigi.task_register.Register.get_all_params = classmethod(_command_line_params)
    name_parse_errors(luigi.interface.core)  # --workers abc names --workers too
    # Luigi's RemoteScheduler reads these [core] keys itself; its ``core`` config class, which
    # does not declare them, warns that they are unused (in Python's format, at every run).
    warnings.filterwarnings("ignore", r"The configuration contains the parameter 'rpc_", UnconsumedParameterWarning)
    os.register_at_fork(after_in_child=_worker_ignores_interrupts)


def _worker_ignores_interrupts() -> None:
    """In a process Luigi forks to run a task (``--workers N``) of the ``luigi`` command:
    Ctrl-C, sent to every process of the terminal, is left to the process luigi started,
    which says so in one line and ends; Luigi's worker then terminates the forked ones.
    (Each printed the traceback of wherever it was, through multiprocessing.) Terminated
    (SIGTERM), a forked process removes the temporary files it is writing, a layer's blob
    among them, and ends at once (:func:`_terminated`)."""
    if luigi_command():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: object) -> None:
    """A forked task process told to end: its temporaries go (else they would stay in the
    layer store's ``tmp/`` until swept as stale, ten minutes on), then the process, with the
    status a SIGTERM gives, without unwinding into Luigi's reporting of a failed task."""
    remove_own_temporaries()
    os._exit(128 + signum)
