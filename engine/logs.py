"""Logging of every stashflow process: one line per event, tagged with the job and instance it concerns.

:func:`setup_logging` (called by the CLI with ``--log-level`` and ``--log-format``) sends the records
of the ``stashflow.*`` loggers (and of the ``engine.*`` ones some modules use) to stderr; it leaves
the root logger and other libraries' loggers alone. Records still propagate to the root logger, so
an embedding application or pytest's ``caplog`` sees them too (a root handler that also writes to
stderr would print them twice: the CLI installs none).

**Text** (``--log-format text``, the default): one line per event (wrapped here)::

    2025-03-01T09:12:03.418Z WARNING recovery pid=5120 job=union_count-3fa2c1 instance=count/1
        job union_count-3fa2c1: instance count/1 lost (worker w-5133 went away, exit code -9);
        recovering it alone (incarnation 1) reason="worker w-5133 went away, exit code -9"
        incarnation=1 detected_s=0.012

UTC time with milliseconds, level, component (the logger's name without ``stashflow.``), process id,
``job=`` and ``instance=`` when known, the message, then the record's structured fields (strings
with spaces, quotes or ``=`` are JSON-quoted, so a field never spans two lines; other values are
compact JSON; fields that are ``None`` are left out). A traceback, and the second and later lines
of a multi-line message, follow on the next lines, each indented by four spaces: a line that does
not start with a time continues the event above it.

**JSON** (``--log-format json``): one JSON object per line, ``ts``, ``level``, ``logger``, ``pid``,
``job``, ``instance`` (``null`` when unknown), ``msg``, then the fields; a traceback is the ``exc``
field. Newlines inside the message or a traceback are escaped: one event is always one line.

**Tagging.** Code that runs an instance need not name it: the worker binds the job and instance to
the asyncio task running the instance (:func:`bind`; :func:`tagged` for a block), the tasks that
task creates inherit the binding (a task copies its creator's :mod:`contextvars` context), and a
filter on the handler stamps every record with it. A local-mode worker process hosts one instance,
so it also binds its whole process (:func:`bind_process`): lines of its control loop and data server
name the instance as well. Code outside an instance's tasks (the coordinator) passes the tags with
the record: ``log.warning(..., extra={"job": job_id, "instance": inst, "reason": why})``; every key of
``extra`` other than ``job`` and ``instance`` becomes a field. :func:`event` does the same with
keyword arguments.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from typing import Any

from engine.errors import ParameterError

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "TagFilter",
    "TextFormatter",
    "bind",
    "bind_process",
    "component",
    "current_format",
    "current_level",
    "current_tags",
    "event",
    "fields_of",
    "format_name",
    "level_name",
    "setup_logging",
    "tagged",
]

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: the logger hierarchies :func:`setup_logging` configures (``engine.*``: modules named by ``__name__``)
_HIERARCHIES = ("stashflow", "engine")

#: attributes every record has: anything else a record carries came with ``extra`` and is a field
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_TAGS = frozenset({"job", "instance"})

#: the job and instance the current asyncio task (or thread) works for
_context: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "stashflow_log_tags", default=(None, None)
)
#: what a process hosting a single instance (a pinned worker) is about, under any task's tags
_process_tags: tuple[str | None, str | None] = (None, None)
#: (level name, format) of the last :func:`setup_logging`, if any
_configured: tuple[str, str] | None = None


# -- set-up ------------------------------------------------------------------------------------------


def setup_logging(level: str, fmt: str = "text") -> None:
    """Send the ``stashflow.*`` loggers' records at ``level`` and above to stderr, one line each.

    ``level``: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case); ``fmt``: ``text`` or ``json``.
    Calling it again replaces the previous set-up (never a second handler). Raises
    :class:`~engine.errors.ParameterError` naming the accepted values for anything else, before
    changing anything.
    """
    global _configured
    name = _level_name(level)
    style = _format_name(fmt)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if style == "json" else TextFormatter())
    handler.addFilter(TagFilter())
    for hierarchy in _HIERARCHIES:
        logger = logging.getLogger(hierarchy)
        for old in [h for h in logger.handlers if isinstance(h, StderrHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(name)
    _configured = (name, style)


def current_level() -> str:
    """The level name of the ``stashflow`` loggers (what worker processes started now should use)."""
    if _configured is not None:
        return _configured[0]
    return logging.getLevelName(logging.getLogger("stashflow").getEffectiveLevel())


def current_format() -> str:
    """The format :func:`setup_logging` last set (``text`` before any)."""
    return _configured[1] if _configured is not None else "text"


def level_name(level: str) -> str | None:
    """``level`` as one of :data:`LOG_LEVELS` (any case, spaces around), or None if it is none."""
    name = str(level).strip().upper()
    return name if name in LOG_LEVELS else None


def format_name(fmt: str) -> str | None:
    """``fmt`` as one of :data:`LOG_FORMATS` (any case, spaces around), or None if it is none."""
    name = str(fmt).strip().lower()
    return name if name in LOG_FORMATS else None


def _level_name(level: str) -> str:
    name = level_name(level)
    if name is None:
        raise ParameterError(
            f"unknown log level {level!r}: use one of {', '.join(LOG_LEVELS)} (any case) "
            "with --log-level or STASHFLOW_LOG_LEVEL"
        )
    return name


def _format_name(fmt: str) -> str:
    name = format_name(fmt)
    if name is None:
        raise ParameterError(
            f"unknown log format {fmt!r}: use {' or '.join(LOG_FORMATS)} "
            "with --log-format or STASHFLOW_LOG_FORMAT"
        )
    return name


class StderrHandler(logging.Handler):
    """Writes each formatted record to the *current* ``sys.stderr`` (it may be replaced after set-up,
    as pytest and click's test runner do), in one ``write`` call."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            stream = sys.stderr
            stream.write(line)
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


# -- tags --------------------------------------------------------------------------------------------


def bind(job: str | None, instance: str | None = None) -> None:
    """Tag what the current asyncio task logs from now on, and the tasks it creates from now on.

    A task runs in its own copy of its creator's context: the binding never leaks back to the task
    that created this one. ``None`` keeps the current value of that tag.
    """
    cur_job, cur_instance = _context.get()
    _context.set((job if job is not None else cur_job, instance if instance is not None else cur_instance))


@contextlib.contextmanager
def tagged(job: str | None, instance: str | None = None) -> Iterator[None]:
    """Tag what is logged inside the ``with`` block (and tasks created there); ``None`` keeps a tag."""
    cur_job, cur_instance = _context.get()
    token = _context.set(
        (job if job is not None else cur_job, instance if instance is not None else cur_instance)
    )
    try:
        yield
    finally:
        _context.reset(token)


def bind_process(job: str | None, instance: str | None = None) -> None:
    """Tag every line of this process that no task binding overrides (a pinned, one-instance worker);
    ``bind_process(None)`` removes the process's tags."""
    global _process_tags
    _process_tags = (job, instance)


def current_tags() -> tuple[str | None, str | None]:
    """The (job, instance) a record logged here and now is tagged with."""
    job, instance = _context.get()
    return (
        job if job is not None else _process_tags[0],
        instance if instance is not None else _process_tags[1],
    )


class TagFilter(logging.Filter):
    """Stamps ``job`` and ``instance`` on records that did not bring them (``extra``) from the tags."""

    def filter(self, record: logging.LogRecord) -> bool:
        job, instance = current_tags()
        if getattr(record, "job", None) is None:
            record.job = job
        if getattr(record, "instance", None) is None:
            record.instance = instance
        return True


def event(
    logger: logging.Logger,
    msg: str,
    /,
    *args: object,
    level: int = logging.INFO,
    job: str | None = None,
    instance: str | None = None,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    """Log ``msg % args`` at ``level`` with structured ``fields``; ``job``/``instance`` override the tags.

    A field named like a record attribute (``name``, ``module``, ``process``...) gets a ``_`` suffix
    instead of breaking the call.
    """
    if not logger.isEnabledFor(level):
        return
    extra = {(k + "_" if k in _RESERVED else k): v for k, v in fields.items()}
    if job is not None:
        extra["job"] = job
    if instance is not None:
        extra["instance"] = instance
    logger.log(level, msg, *args, exc_info=exc_info, extra=extra, stacklevel=2)


# -- formats -----------------------------------------------------------------------------------------


def component(logger_name: str) -> str:
    """The short name a line shows for a logger: ``stashflow.recovery`` -> ``recovery``."""
    for hierarchy in _HIERARCHIES:
        if logger_name.startswith(hierarchy + "."):
            return logger_name[len(hierarchy) + 1 :]
    return logger_name


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: what came with ``extra`` but the tags, in the order given."""
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and k not in _TAGS}


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _traceback(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:  # cached on the record, as logging.Formatter does
        record.exc_text = formatter.formatException(record.exc_info)
    text = record.exc_text or ""
    if record.stack_info:
        text = (text + "\n" if text else "") + formatter.formatStack(record.stack_info)
    return text


def _text_value(value: Any) -> str:
    """A field's value in a text line: strings as they are unless they hold spaces, quotes or ``=``
    (then JSON-quoted), other values as compact JSON (quoted too if a space is inside)."""
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in '"=' for c in value)
        return value if plain else json.dumps(value, ensure_ascii=False)
    try:
        text = json.dumps(value, separators=(",", ":"), default=_jsonable, ensure_ascii=False)
    except ValueError:  # a circular structure
        text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c.isspace() for c in text) else text


class TextFormatter(logging.Formatter):
    """The text line of a record (see the module docstring).

    >>> record = logging.makeLogRecord({
    ...     "name": "stashflow.recovery", "levelname": "WARNING", "msg": "instance %s live again",
    ...     "args": ("count/1",), "created": 1.25, "msecs": 250.0, "process": 42,
    ...     "job": "wc-1a2b3c", "instance": "count/1", "live_s": 0.4, "reason": "exit code -9",
    ... })
    >>> print(TextFormatter().format(record))
    1970-01-01T00:00:01.250Z WARNING recovery pid=42 job=wc-1a2b3c instance=count/1 instance count/1 \
live again live_s=0.4 reason="exit code -9"
    """

    def format(self, record: logging.LogRecord) -> str:
        job, instance = getattr(record, "job", None), getattr(record, "instance", None)
        head = [_timestamp(record), record.levelname, component(record.name), f"pid={record.process}"]
        if job is not None:
            head.append(f"job={_text_value(job)}")
        if instance is not None:
            head.append(f"instance={_text_value(instance)}")
        message, *more = record.getMessage().splitlines() or [""]
        head.append(message)
        head.extend(f"{k}={_text_value(v)}" for k, v in fields_of(record).items() if v is not None)
        lines = [" ".join(head), *more]
        trace = _traceback(self, record)
        if trace:
            lines.extend(trace.splitlines())
        return "\n    ".join(lines)


class JsonFormatter(logging.Formatter):
    """The JSON line of a record (see the module docstring).

    >>> record = logging.makeLogRecord({
    ...     "name": "stashflow.coordinator", "levelname": "INFO", "msg": "job %s running",
    ...     "args": ("wc-1a2b3c",), "created": 1.25, "msecs": 250.0, "process": 42,
    ...     "job": "wc-1a2b3c", "instances": 6,
    ... })
    >>> print(JsonFormatter().format(record))
    {"ts": "1970-01-01T00:00:01.250Z", "level": "INFO", "logger": "coordinator", "pid": 42, \
"job": "wc-1a2b3c", "instance": null, "msg": "job wc-1a2b3c running", "instances": 6}
    """

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": component(record.name),
            "pid": record.process,
            "job": getattr(record, "job", None),
            "instance": getattr(record, "instance", None),
            "msg": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            obj[key + "_" if key in obj else key] = value
        trace = _traceback(self, record)
        if trace:
            obj["exc"] = trace
        try:
            return json.dumps(obj, default=_jsonable, allow_nan=False)
        except ValueError:  # NaN or infinity somewhere, or a circular structure: never an invalid line
            return json.dumps(_sanitized(obj), default=_jsonable, allow_nan=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


def _sanitized(value: Any, depth: int = 0) -> Any:
    if depth > 20:
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _sanitized(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_sanitized(v, depth + 1) for v in value]
    return value
