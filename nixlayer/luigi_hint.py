"""``luigi BuildImage ...`` without ``--module pipelines``: one line saying to add it (and,
with it, a task name misspelt: one line naming nixlayer's tasks).

Luigi's command line imports task modules only from ``--module``: the ``[core] module``
setting of luigi.cfg is read by no code that loads modules (Luigi 3.8), and nothing of
nixlayer runs before Luigi fails to find the task, with a traceback ending ``No task
BuildImage. Candidates are: ...``. What runs that early is Python's own start-up:
``scripts/nixlayer-luigi.pth``, which ``scripts/install-deps`` puts into site-packages, calls
:func:`install` in a process whose program is ``luigi`` (nothing in any other process). This
module imports nothing of Luigi or nixlayer.
"""

from __future__ import annotations

import sys

# nixlayer's entry tasks (pipelines/__init__.py).
TASKS = ("BuildImage", "BuildImages", "PushImage")


def message(task: str) -> str:
    """The error line for ``luigi TASK ...`` run without nixlayer's tasks loaded."""
    return f"nixlayer: error: luigi finds {task} only with --module pipelines: run luigi --module pipelines {task} ..."


def install(tasks_loaded: bool = False) -> None:
    """Make an uncaught ``TaskClassNotFoundException`` print one line (exit status 1, as
    before) instead of its traceback: for one of nixlayer's tasks, :func:`message`; with
    ``tasks_loaded`` (called by ``tasks.errors``: ``--module pipelines`` was given), for any
    task name, the names nixlayer has. Any other error is left to the ``sys.excepthook`` in
    place before."""
    previous = sys.excepthook

    def hook(kind, error, traceback) -> None:
        text = str(error)
        task = text.removeprefix("No task ").split(".")[0]
        if kind.__name__ != "TaskClassNotFoundException" or not text.startswith("No task "):
            previous(kind, error, traceback)
        elif task in TASKS:
            print(message(task), file=sys.stderr, flush=True)
        elif tasks_loaded:
            print(f"nixlayer: error: there is no task {task}: nixlayer's are {', '.join(TASKS)}"
                  " (luigi --module pipelines TASK --help lists its parameters)", file=sys.stderr, flush=True)
        else:
            previous(kind, error, traceback)

    sys.excepthook = hook
