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
from engine.event_time import BoundedOutOfOrderness
from operators.windows import Session, Sliding, Tumbling

__all__ = [
    "BoundedOutOfOrderness",
    "Job",
    "JobDefinitionError",
    "JobFailed",
    "JobLoadError",
    "KeyedStream",
    "ParameterError",
    "Session",
    "Sink",
    "SinkWriter",
    "Sliding",
    "Source",
    "SourceReader",
    "StashflowError",
    "Stream",
    "Tumbling",
    "UserFunctionError",
    "ctx",
]
