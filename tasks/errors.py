"""One line per error: how nixlayer's errors reach the user through Luigi.

Luigi logs a traceback for every task whose ``complete``, ``requires`` or ``run`` raised, and
for a parameter it could not parse. For nixlayer's own errors (NixlayerError: bad input, a
failed operation) and for bad parameter values, the user gets one line instead,
``nixlayer: error: <message>``, and the scheduler's dashboard the same text; Luigi's summary
and non-zero exit status (luigi.cfg ``[retcode]``) stay as they are. Other exceptions are bugs
and keep their tracebacks.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import luigi
from luigi.parameter import MissingParameterException
from luigi.rpc import RPCError

from nixlayer import luigi_hint
from nixlayer.errors import NixlayerError, NixlayerWarning
from tasks import console

PREFIX = "nixlayer: error: "

# Task id -> the image it makes, as its batch names it (``BuildImages``): for its error line.
_LABELS: dict[str, str] = {}


def label_tasks(labels: dict[str, str]) -> None:
    """Name, in their error lines, the image each task makes (task id -> ``FILE: image 2
    (NAME)``): a batch's images, whose errors would not say which image failed. Set in the
    process luigi started, before its workers fork."""
    _LABELS.update(labels)


def labelled(task: luigi.Task, error: Exception) -> Exception:
    """``error`` of ``task``, a NixlayerError naming the image the task makes if it has a label
    (:func:`label_tasks`); else ``error`` itself."""
    label = _LABELS.get(task.task_id)
    if label is None or not isinstance(error, NixlayerError):
        return error
    return NixlayerError(f"{label}: {error}")


def report(error: BaseException | str) -> None:
    """Print ``nixlayer: error: <error>`` to standard error (last, during a run: see
    ``tasks.console.error``)."""
    console.error(PREFIX + str(error))


class OneLineErrors(logging.Filter):
    """A filter for Luigi's ``luigi-interface`` logger that turns tracebacks into one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.msg == "Uncaught exception in luigi" and isinstance(error, (ValueError, NixlayerError)):
            if isinstance(error.__cause__, ValueError):  # "Error when parsing the default value of 'x'"
                error = error.__cause__  # names the flag and value (tasks.base.name_parse_errors)
            report(f"invalid parameter: {error}" if not isinstance(error, NixlayerError) else error)
            return False  # Luigi could not make the task: a parameter it could not parse
        if record.msg == "Uncaught exception in luigi" and isinstance(error, MissingParameterException):
            # "BuildImage[args=(), kwargs={}]: requires the 'name' parameter to be set"
            task, _, rest = str(error).partition("[")
            name = rest.split("requires the '")[-1].split("'")[0].replace("_", "-")
            report(f"{task} needs --{name}: give it (luigi --module pipelines {task} --help lists every parameter)")
            return False
        if record.msg == "Uncaught exception in luigi" and isinstance(error, RPCError):
            report(f"{error}: is luigid running there? ([core] rpc-retry-attempts and rpc-retry-wait"
                   " set how long luigi keeps trying)")
            return False
        if isinstance(error, NixlayerError) and record.msg.startswith("[pid %s] Worker %s failed"):
            return False  # a task failed: its one line is _on_failure's, without its parameters
        if isinstance(error, RPCError) and record.msg.startswith("Luigi unexpected framework error"):
            return False  # luigid went away while tasks were added: "Uncaught exception" says so
        if record.msg.startswith("Failed connecting to remote scheduler") and record.levelno == logging.WARNING:
            # Each of Luigi's attempts; the error line says when all failed. With --log-level INFO.
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
            return logging.getLogger("luigi-interface").isEnabledFor(logging.INFO)
        if isinstance(error, (NixlayerError, RPCError)) or (record.exc_info and record.exc_info[0] is None):
            # (Luigi logs some warnings with exc_info outside any exception: "NoneType: None".)
            record.exc_info, record.exc_text = None, None
            return True
        message = record.getMessage()
        if "due to error in" in message and "NixlayerError: " in message:
            # complete() or requires() raised: the traceback is in the message; its last line
            # is ``nixlayer.errors.NixlayerError: <message>``.
            report(message.rsplit("NixlayerError: ", 1)[1].strip())
            return False
        return True


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """NixlayerWarning as ``nixlayer: warning: <message>``; other warnings as Python shows them."""
    text = (f"nixlayer: warning: {message}\n" if issubclass(category, NixlayerWarning)
            else warnings.formatwarning(message, category, filename, lineno, line))
    try:
        (sys.stderr if file is None else file).write(text)
    except OSError:
        pass  # as Python's own: a closed or broken stderr loses the warning, not the run


def _interrupted(previous):
    """A ``sys.excepthook`` that, in the ``luigi`` command, tells an interrupt (Ctrl-C) as one
    line instead of the traceback of wherever Luigi was; anything else goes to ``previous``.
    Python then ends the process by SIGINT, as for any interrupt (status 130 in a shell)."""
    def hook(kind, error, traceback) -> None:
        # (Luigi's record of its command line is gone once the interrupt has left it.)
        if issubclass(kind, KeyboardInterrupt) and os.path.basename(sys.argv[0]) == "luigi":
            report("interrupted: the layers written so far are kept in the layer store, and nothing"
                   " half-written is taken as done; run the same command again to go on")
        else:
            previous(kind, error, traceback)
    return hook


def _on_failure(task: luigi.Task, error: Exception) -> None:
    if isinstance(error, NixlayerError):
        report(labelled(task, error))


luigi_hint.install(tasks_loaded=True)  # luigi --module pipelines BuildImag: Luigi's traceback otherwise
sys.excepthook = _interrupted(sys.excepthook)
logging.getLogger("luigi-interface").addFilter(OneLineErrors())
warnings.showwarning = _one_line_warning
luigi.Task.event_handler(luigi.Event.FAILURE)(_on_failure)
