"""NixlayerTask, the base of nixlayer's Luigi tasks; BatchableTask, one the scheduler may hand
out in batches; plan_batches, which sizes those batches for a build."""

from __future__ import annotations

import collections
import functools
import json
import logging
import time
import uuid
from typing import Callable

import luigi
from luigi.task_status import DONE

from nixlayer.errors import NixlayerError
from tasks.config import batches, whole_number
from tasks import console, errors, runtime

Report = Callable[[int, str], None]
"""Called as ``report(percentage, message)``: how a task's work goes, for the scheduler."""


# Task class -> its Luigi parameters (NixlayerTask.get_params).
_CLASS_PARAMS: dict[type, list[tuple[str, luigi.Parameter]]] = {}


def name_parse_errors(cls: type) -> None:
    """Make every parameter ``cls`` declares (a task or config class) name itself when it cannot
    parse a value: ``--uid abc`` raises ValueError ``--uid must be a whole number, not 'abc'``
    instead of Luigi's ``invalid literal for int() with base 10: 'abc'`` (printed as one line,
    see ``tasks.errors``). The value is parsed as before; only the error's message changes. A
    parameter may say what it expects in an ``expected`` attribute."""
    for name, param in list(vars(cls).items()):  # a subclass shares its bases' (wrapped) parameters
        if isinstance(param, luigi.Parameter) and "parse" not in vars(param):
            param.parse = functools.partial(_parse_named, param.parse, param, "--" + name.replace("_", "-"))


def _parse_named(parse: Callable, param: luigi.Parameter, flag: str, value: str):
    try:
        return parse(value)
    except ValueError as error:
        raise ValueError(bad_value(param, flag, value, error)) from None


def bad_value(param: luigi.Parameter, label: str, value: object, error: ValueError) -> str:
    """The message for a ``value`` that ``param`` refused with ``error``, naming it ``label``
    (``--uid`` on the command line, the field ``uid`` in a spec or batch file): ``LABEL must be
    EXPECTED, not VALUE`` when the parameter says what it takes (its ``expected`` attribute, or
    its kind: true or false, one of its choices, a whole number), else ``LABEL VALUE: ERROR``."""
    expected = getattr(param, "expected", None)
    if expected is None and isinstance(param, luigi.BoolParameter):
        expected = "true or false"
    elif expected is None and isinstance(param, luigi.ChoiceParameter):
        expected = "one of " + ", ".join(sorted(str(choice) for choice in param._choices))
    elif expected is None and isinstance(param, luigi.IntParameter):
        expected = "a whole number"
    if expected is None:
        return f"{label} {value!r}: {error}"
    return f"{label} must be {expected}, not {value!r}"


class NixlayerTask(luigi.Task):
    """A nixlayer task. ``class X(NixlayerTask, abstract=True)`` declares a base of other tasks
    rather than one to run: Luigi's registry leaves it out, so it is not on the command line
    (``--help-all`` listed 62 flags of abstract classes, such as ``--LayerTask-uid``), cannot
    be run by name, and costs Luigi's command-line parser nothing (it adds every registered
    parameter, several times a run)."""

    _visible_in_registry = False  # Luigi's Register skips classes with this false
    # Whether Luigi's command line takes flags for this task's parameters (``--Task-param``):
    # the entry tasks' only (``tasks.runtime``, 9).
    _on_command_line = False

    def __init_subclass__(cls, abstract: bool = False, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._visible_in_registry = not abstract
        name_parse_errors(cls)

    @classmethod
    def get_params(cls) -> list[tuple[str, luigi.Parameter]]:
        """Luigi's (name, Parameter) list of the class, in declaration order.

        Luigi computes it from ``dir(cls)`` at every call and calls it about ten times per task
        (instantiation, ids, the scheduler's copy, the summary): a third of the scheduling cost
        of a batch of thousands of layer tasks. Task classes do not change once defined, so it
        is computed once per class.
        """
        params = _CLASS_PARAMS.get(cls)
        if params is None:
            params = _CLASS_PARAMS[cls] = super().get_params()
        return list(params)

    @classmethod
    def get_param_values(cls, params, args, kwargs) -> list[tuple[str, object]]:
        """Luigi's (name, value) list for a task made with ``args`` and ``kwargs``.

        Luigi's own resolves each parameter not given from the command line and luigi.cfg,
        and formats a description of the call in case of an error, for every task made and
        every lookup of one already made (about 20 us for a layer task; a batch makes ten
        thousand). nixlayer's tasks make each other with every parameter named: then each
        value is normalized, as Luigi's would, and nothing else. Anything else (positional
        values, parameters left to their defaults or to a luigi.cfg section of the task's
        family, an unknown name) goes Luigi's way, with its errors.
        """
        if args or len(kwargs) != len(params) or luigi.configuration.get_config().has_section(cls.get_task_family()):
            return super().get_param_values(params, args, kwargs)
        try:
            values = [(name, param.normalize(kwargs[name])) for name, param in params]
        except KeyError:  # a name that is not a parameter: Luigi's error
            return super().get_param_values(params, args, kwargs)
        return [(name, tuple(value) if isinstance(value, (list, set)) else value) for name, value in values]

    def _report_self(self, percentage: int, message: str) -> None:
        """A Report to the scheduler about this task."""
        self.set_progress_percentage(percentage)
        self.set_status_message(message)


class BatchableTask(NixlayerTask, abstract=True):
    """A task the scheduler may hand out in batches.

    Luigi's scheduler walks every task it knows at each hand-out of work (about 6 ms for 3,000
    tasks), so a worker takes several pending tasks of one class at once: those whose other
    parameters are equal, the values of the parameters declared with a ``batch_method`` being
    gathered (Luigi's batching). A build's tasks of the class go out in about ``[nixlayer]
    layer_batches`` batches (see :func:`plan_batches`). The batch runs as one task of the class
    whose batched parameters hold every member's values (:meth:`batch_members` says how to
    split them); it does each member's work as that member would, skipping members done
    meanwhile, and reports each one's progress and status to the scheduler under that member's
    task id, and its own (the members' work done of all of it, and the member it is on) under
    its own id (see ``_BatchProgress``). Every member stays one task in the scheduler, done once. A member that fails does
    not stop the others; the batch then fails, once it has told the scheduler which members
    are done (Luigi fails the others, and what requires them waits; what requires only done
    ones goes on). Luigi's summary still counts every member of a failed batch as failed, and
    with the embedded scheduler and ``--workers N`` (forked processes) the scheduler is not
    told: the members written are complete for the next run, and their status says so.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.batch_members() is not None:
            # A batch's id is made unique to this process. luigid keeps a finished task, with the
            # worker that ran it, for ten minutes (Luigi 3.8 never clears ``worker_running``); a
            # later run handed the same batch would have its run ignored, and the batch handed
            # out again, forever. A member's id stays what every machine computes.
            self.task_id = f"{self.task_id}_{_PROCESS}"

    @property
    def max_batch_size(self) -> int:  # read by Luigi's worker when it first adds a task of the class
        return _BATCH_SIZES.get(type(self), 1)

    def batch_members(self) -> list[dict] | None:
        """Each member's values of the batched parameters (keyword arguments), or None for a
        task that is not a batch."""
        raise NotImplementedError

    def members(self) -> list:
        """The tasks this task stands for: itself, or each member of its batch."""
        members = self.__dict__.get("_members")
        if members is None:
            batch = self.batch_members()
            if batch is None:
                members = [self]
            else:
                shared = {name: getattr(self, name) for name, _ in self.get_params() if name not in batch[0]}
                members = [type(self)(**shared, **values) for values in batch]
            self._members = members
        return members

    def run_member(self, member, report: Report) -> None:
        """Do ``member``'s work (``member`` is this task when it is not a batch)."""
        raise NotImplementedError

    def member_weight(self, member) -> int:
        """How much of a batch's work ``member`` is, for the progress the batch shows: 1 each
        (a batch of layers: each one's planned bytes)."""
        return 1

    def run(self) -> None:
        members = self.members()
        if members == [self]:
            try:
                self.run_member(self, self._report_self)
            except Exception as error:  # its row on the dashboard says so, as a batch member's does
                self._report_self(0, f"failed: {error}")
                raise
            return
        scheduler, worker_id = runtime.task_scheduler(self) or (None, None)
        failures: list[Exception] = []
        done = []
        progress = _BatchProgress(self, members)
        for number, member in enumerate(members):
            if member.complete():  # done meanwhile by another worker
                done.append(member)
                progress.member_done(number)
                continue
            # Each member's own progress and status, under its own task id; the batch's own
            # row shows how far the whole batch is, and which member it is on.
            own = self._report_self if scheduler is None else functools.partial(_report_task, scheduler, member.task_id)
            report = functools.partial(progress.report, number, own)
            try:
                self.run_member(member, report)
                done.append(member)
                progress.member_done(number)
            except Exception as error:  # the other members are still done
                failures.append(errors.labelled(member, error))
                progress.member_failed(own, error)
        progress.finish(len(done), len(failures))
        if failures:
            if scheduler is not None:
                # Luigi fails every member still running in a failed batch, and what requires
                # them never runs. Told first that these are done, the scheduler goes on with
                # the images that need only them, in this run.
                for member in done:
                    scheduler.add_task(task_id=member.task_id, status=DONE, worker=worker_id)
            raise _batch_failure(failures)


class _BatchProgress:
    """The progress and status message of a batch's own task (its row on luigid's dashboard):
    its members' work done over all of it (bytes for layers, see ``member_weight``), and the
    member it is on with that member's own status; sent at most every REPORT_SECONDS.

    Luigi's scheduler copies a running batch's progress and status to every member still in
    it, so a member's last report (written, or failed) is sent when the batch ends, after the
    batch's own; the member being written has its reports sent after the batch's.
    """

    REPORT_SECONDS = 0.5

    def __init__(self, batch: BatchableTask, members: list) -> None:
        self.batch, self.count = batch, len(members)
        self.noun = type(members[0]).__name__
        self.weights = [batch.member_weight(member) for member in members]
        self.in_bytes = any(self.weights)  # else every member counts 1
        if not self.in_bytes:
            self.weights = [1] * len(members)
        self.total = sum(self.weights)
        self.done = 0
        self.sent = 0.0
        self.last: list[tuple[Report, int, str]] = []  # each member's last report, sent at the end

    def _amount(self, n: float) -> str:
        return console.size(n) if self.in_bytes else f"{n:.0f}"

    def report(self, number: int, own: Report, percentage: int, message: str) -> None:
        """A report of member ``number``, whose own is ``own(percentage, message)``: the
        batch's first, if due; then the member's, or at the end if it is its last (100)."""
        now = time.monotonic()
        if now - self.sent >= self.REPORT_SECONDS:
            self.sent = now
            done = self.done + self.weights[number] * percentage / 100
            self.batch._report_self(
                int(100 * done / self.total),
                f"{self._amount(done)} of {self._amount(self.total)} written; {self.noun} {number + 1} of {self.count}: {message}",
            )
        if percentage >= 100:
            self.last.append((own, percentage, message))
        else:
            own(percentage, message)

    def member_done(self, number: int) -> None:
        self.done += self.weights[number]

    def member_failed(self, own: Report, error: Exception) -> None:
        self.last.append((own, 0, f"failed: {error}"))

    def finish(self, done: int, failed: int) -> None:
        """The batch's last report, then each member's."""
        self.batch._report_self(100, f"{done} of {self.count} {self.noun} written ({self._amount(self.done)})"
                                + (f", {failed} failed" if failed else ""))
        for own, percentage, message in self.last:
            own(percentage, message)


def json_list(values) -> str:
    """A batch_method: the members' values of a string parameter as one JSON list (printable
    in Luigi's log, and told apart from one value by its ``[``)."""
    return json.dumps(list(values))


def _batch_failure(failures: list[Exception]) -> Exception:
    """What a batch whose members failed with ``failures`` raises: the one failure; one
    NixlayerError naming them all; or, if a bug is among them (not a NixlayerError), the first
    bug, its traceback kept, after the others are logged here (one line each, or a traceback)."""
    bugs = [error for error in failures if not isinstance(error, NixlayerError)]
    if len(failures) == 1:
        return failures[0]
    if not bugs:
        messages = list(dict.fromkeys(str(error) for error in failures))  # each once, in order
        return NixlayerError(f"{len(failures)} failed: " + "; ".join(messages))
    for error in failures:
        if isinstance(error, NixlayerError):
            errors.report(error)
        elif error is not bugs[0]:
            logging.getLogger("luigi-interface").error("A batch member failed", exc_info=error)
    return bugs[0]


def _report_task(scheduler, task_id: str, percentage: int, message: str) -> None:
    scheduler.set_task_progress_percentage(task_id, percentage)
    scheduler.set_task_status_message(task_id, message)


# This process, in the ids of the batch tasks it runs (see BatchableTask).
_PROCESS = uuid.uuid4().hex[:12]

# max_batch_size of each batchable class in the build being scheduled (see plan_batches).
_BATCH_SIZES: dict[type, int] = {}


def plan_batches(tasks: list[luigi.Task]) -> None:
    """Size the batches of the build about to be scheduled from its tasks: ``tasks`` (an entry
    task's targets) and what each requires, repeats counted once. Each BatchableTask class's
    tasks still to run are handed out in about ``[nixlayer] layer_batches`` batches (unset:
    one with the embedded scheduler and one worker, else 8; see ``tasks.config.batches``).
    The entry tasks call this from ``requires()``, which Luigi's worker calls before it adds
    the first task of each class and so reads ``max_batch_size``. Raises NixlayerError if
    ``layer_batches`` is not a whole number of at least 1.

    One image's hundred layers in 8 batches keep ``--workers 2`` busy to the end; a batch of
    50 images' 3,000 layers, 50 customisation layers and 50 images in 8 batches each cost the
    scheduler 24 hand-outs of work instead of 3,100, and in one batch each (one worker) 3;
    the ten layers a rebuild has left to write go in batches of 2, not one of 400.
    """
    count = batches(whole_number("layer_batches"))
    build = [t for task in tasks for t in (task, *luigi.task.flatten(task.requires()))]
    distinct = {task.task_id: type(task) for task in build if isinstance(task, BatchableTask) and not task.complete()}
    _BATCH_SIZES.clear()
    for cls, tasks_left in collections.Counter(distinct.values()).items():
        _BATCH_SIZES[cls] = -(-tasks_left // count)
