"""Loading a job: from a ``.py`` file or ``module:attr`` to a :class:`~engine.dsl.Job`.

User functions cannot travel (we never pickle), so every process that hosts an instance executes the
job code itself: the coordinator ships a :class:`JobRef` (the file's path *and* its source text, so a
worker needs no copy of the file) and the ``-P`` parameters. A file defines either ``job`` (a Job) or
``build(**params)`` returning one; parameters arrive as strings, as typed on the command line.

Every way this can go wrong raises :class:`~engine.errors.JobLoadError` or
:class:`~engine.errors.ParameterError` with a one-line message naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
import traceback
import types
from dataclasses import dataclass
from typing import Any

from engine.dsl import Job
from engine.errors import JobDefinitionError, JobLoadError, ParameterError

__all__ = ["JobRef", "load_job", "parse_params", "register_in_process"]

#: jobs handed over as objects (``engine.testing``): the coordinator and worker share the process
_IN_PROCESS: dict[str, Job] = {}


@dataclass(frozen=True)
class JobRef:
    """Where a job's code comes from: a file (path + source text), a ``module:attr``, or an in-process object."""

    path: str | None = None
    source: str | None = None
    module: str | None = None
    object_key: str | None = None

    @classmethod
    def parse(cls, spec: str) -> JobRef:
        """``spec`` as given on the command line: a path to a ``.py`` file or ``package.module:attr``."""
        if spec.endswith(".py") or os.sep in spec or os.path.exists(spec):
            path = os.path.abspath(spec)
            try:
                with open(path, encoding="utf-8") as f:
                    source = f.read()
            except FileNotFoundError:
                raise JobLoadError(
                    f"job file {spec!r} not found (cwd {os.getcwd()}); pass a path to a .py file"
                ) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise JobLoadError(f"job file {spec!r} cannot be read: {exc}") from None
            return cls(path=path, source=source)
        if ":" in spec:
            return cls(module=spec)
        raise JobLoadError(
            f"job {spec!r} is neither a .py file nor 'module:attr'; e.g. 'stashflow run jobs/wordcount.py'"
        )

    @property
    def display(self) -> str:
        return self.path or self.module or f"<in-process job {self.object_key}>"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRef:
        return cls(**{k: data.get(k) for k in ("path", "source", "module", "object_key")})


def register_in_process(job: Job) -> JobRef:
    """Make ``job`` loadable by reference inside this process (for :mod:`engine.testing`)."""
    key = f"{job.name}-{id(job):x}"
    _IN_PROCESS[key] = job
    return JobRef(object_key=key)


def parse_params(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["k=v", ...]`` to a dict; a pair without ``=`` or with an empty key is a ParameterError."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"parameter {pair!r} is not key=value; write e.g. -P input=data/*.txt")
        params[key.strip()] = value
    return params


def load_job(ref: JobRef, params: dict[str, str] | None = None) -> Job:
    """Execute the job code of ``ref`` and return its Job, built with ``params``."""
    params = dict(params or {})
    if ref.object_key is not None:
        try:
            job = _IN_PROCESS[ref.object_key]
        except KeyError:
            raise JobLoadError(
                f"in-process job {ref.object_key!r} is not registered in this process"
            ) from None
        if params:
            raise ParameterError(
                f"job {job.name!r} was given as an object and takes no parameters; got {sorted(params)}"
            )
        return job
    if ref.module is not None:
        namespace = _import_module_attr(ref.module)
        where = ref.module
    else:
        namespace = _exec_file(ref)
        where = ref.display
    return _build(namespace, params, where)


def _import_module_attr(spec: str) -> dict[str, Any]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise JobLoadError(f"job module {module_name!r} cannot be imported: {exc}") from None
    except Exception as exc:
        raise JobLoadError(
            f"job module {module_name!r} raised {type(exc).__name__}: {exc} while loading"
        ) from None
    if not attr:
        return vars(module)
    if not hasattr(module, attr):
        raise JobLoadError(f"job module {module_name!r} has no attribute {attr!r}")
    value = getattr(module, attr)
    if isinstance(value, Job):
        return {"job": value}
    if callable(value):
        return {"build": value}
    raise JobLoadError(
        f"{spec} is a {type(value).__name__}, expected an engine.Job or a build(**params) function"
    )


def _exec_file(ref: JobRef) -> dict[str, Any]:
    assert ref.path is not None
    source = ref.source
    if source is None:
        try:
            with open(ref.path, encoding="utf-8") as f:
                source = f.read()
        except OSError as exc:
            raise JobLoadError(f"job file {ref.path!r} cannot be read: {exc}") from None
    try:
        code = compile(source, ref.path, "exec")
    except SyntaxError as exc:
        raise JobLoadError(f"job file {ref.path!r} line {exc.lineno}: SyntaxError: {exc.msg}") from None
    # a stable module name per file content, registered in sys.modules: dataclasses and pickling-free
    # introspection need the defining module to be importable by name
    digest = hashlib.sha1(ref.path.encode() + source.encode()).hexdigest()[:12]
    name = f"stashflow_job_{digest}"
    if name in sys.modules:
        return vars(sys.modules[name])
    module = types.ModuleType(name)
    module.__file__ = ref.path
    folder = os.path.dirname(ref.path)
    if folder and folder not in sys.path and os.path.isdir(folder):
        sys.path.insert(0, folder)  # lets a job import helper modules that sit beside it
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except Exception as exc:
        del sys.modules[name]
        line = _user_line(exc, ref.path)
        raise JobLoadError(
            f"job file {ref.path!r}{line} raised {type(exc).__name__}: {exc} while loading"
        ) from None
    return module.__dict__


def _user_line(exc: BaseException, path: str) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    return f" line {frames[-1].lineno}" if frames else ""


def _build(namespace: dict[str, Any], params: dict[str, str], where: str) -> Job:
    build = namespace.get("build")
    if callable(build):
        _check_params(build, params, where)
        try:
            job = build(**params)
        except (JobLoadError, ParameterError, JobDefinitionError):
            raise
        except Exception as exc:
            raise JobLoadError(f"build() in {where} raised {type(exc).__name__}: {exc}") from None
        if not isinstance(job, Job):
            raise JobLoadError(f"build() in {where} returned {type(job).__name__}, expected an engine.Job")
        return job
    job = namespace.get("job")
    if isinstance(job, Job):
        if params:
            raise ParameterError(
                f"unknown parameter(s) {', '.join(sorted(params))}: {where} defines `job`, which takes no "
                "parameters; define build(name=default, ...) returning the Job to accept -P values"
            )
        return job
    if job is not None:
        raise JobLoadError(f"`job` in {where} is a {type(job).__name__}, expected an engine.Job")
    raise JobLoadError(f"{where} defines neither `job` (an engine.Job) nor `build(**params)` returning one")


def _check_params(build: Any, params: dict[str, str], where: str) -> None:
    try:
        sig = inspect.signature(build)
    except (TypeError, ValueError):
        return
    accepted = [
        p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {', '.join(unknown)} for build() in {where}; "
            f"it accepts: {', '.join(accepted) or 'none'}"
        )
    missing = [
        p.name
        for p in sig.parameters.values()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in params
    ]
    if missing:
        raise ParameterError(
            f"build() in {where} requires parameter(s) {', '.join(missing)}; pass -P {missing[0]}=..."
        )
