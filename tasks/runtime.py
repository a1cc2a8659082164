"""Two points where Luigi's own behaviour is adjusted for nixlayer (installed by ``tasks``).

- With a central scheduler, an idle worker waits for work only while some task of its run is
  running somewhere (:func:`_keep_alive`): a failure ends the run at once.
- Luigi's process lock (an identical command already running: exit status 10) is told as one
  line ``nixlayer: error: ...`` on standard error (:func:`_acquire_for`); Luigi prints it to
  standard output, where ``--output -`` writes the image.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys

import luigi.lock
import luigi.worker
from luigi.task_status import BATCH_RUNNING, RUNNING

from tasks import errors


def _keep_alive(worker: luigi.worker.Worker, get_work_response) -> bool:
    """Whether an idle worker keeps asking the scheduler for work: Luigi's rule
    (``keep_alive``, tasks pending, ``max_keep_alive_idle_duration``), and only while some task
    of its run is running, on any machine. Luigi counts a task that failed, and every task that
    waits on it, as pending: a run whose push failed waited the whole idle duration (10 minutes
    with luigid) with nothing left that could run. Nothing else can make one of the run's
    tasks runnable: a pending task whose dependencies are done is handed to this worker, which
    added it. So the worker stops, and Luigi's summary and exit status report the failure.

    The run's tasks are those the scheduler has under the worker's first task (the one on the
    command line), not done: one ``dep_graph`` request, made only when Luigi's rule would wait
    and the scheduler's reply names no task of the worker running (it leaves out tasks running
    in another machine's batch)."""
    if not _luigi_keep_alive(worker, get_work_response):
        return False
    if get_work_response.running_tasks or worker._assistant or worker._first_task is None:
        return True
    graph = worker._scheduler.dep_graph(worker._first_task, include_done=False)
    return any(task["status"] in (RUNNING, BATCH_RUNNING) for task in graph.values())


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


def install() -> None:
    """Put both adjustments in place in this process."""
    luigi.worker.Worker._keep_alive = _keep_alive
    luigi.lock.acquire_for = _acquire_for
