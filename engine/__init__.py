"""stashflow's engine: the job DSL and the runtime.

>>> from engine import Job
>>> Job("example").name
'example'
"""

from engine.connector import Sink, SinkWriter, Source, SourceReader
from engine.context import ctx
from engine.dsl import Job, KeyedStream, Stream
from engine.errors import (
    JobDefinitionError,
    JobFailed,
    JobLoadError,
    ParameterError,
    StashflowError,
    UserFunctionError,
)

__all__ = [
    "Job",
    "JobDefinitionError",
    "JobFailed",
    "JobLoadError",
    "KeyedStream",
    "ParameterError",
    "Sink",
    "SinkWriter",
    "Source",
    "SourceReader",
    "StashflowError",
    "Stream",
    "UserFunctionError",
    "ctx",
]
