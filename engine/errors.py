"""Every error stashflow raises on purpose, in one tree.

::

    StashflowError
    ├── JobDefinitionError (ValueError)      the job graph is invalid: exit code 2
    │   └── DuplicateStepError               two steps share a name
    ├── JobLoadError (ImportError)           job file missing/broken, no `job`/`build`: exit code 2
    ├── ParameterError (ValueError)          unknown or malformed -P parameter or setting: exit code 2
    ├── UserFunctionError                    a user function raised while processing a record: exit 1
    ├── SerializationError (TypeError)       a record cannot be msgpack-encoded to cross a channel
    ├── SourceDataError (ValueError)         a source's external input is undecodable or changed under it
    ├── StateError                           keyed state or a checkpoint cannot be written or read (disk
    │                                        full, unwritable --data-dir, corrupt or foreign checkpoint)
    ├── ChannelError (ConnectionError)
    │   ├── ChannelClosed                    *we* closed it; using it afterwards is a bug
    │   └── ChannelBroken                    the peer died or the connection failed: raised ``from`` the OSError
    ├── ProtocolError (ValueError)           a malformed, oversized or unauthenticated frame
    │   └── AuthenticationError              a channel handshake failed its HMAC check
    ├── JobFailed                            a job ended in failure (carries the first error message)
    └── CoordinatorError                     the coordinator refused a request or is unreachable

End of stream is not an error: channels and readers signal it by value, never by exception.

Messages say what was expected, what came, where (step, instance, function, address) and how to fix
it; they fit on one line, because the CLI prints them as the last line of a failed run.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ChannelBroken",
    "ChannelClosed",
    "ChannelError",
    "CoordinatorError",
    "DuplicateStepError",
    "JobDefinitionError",
    "JobFailed",
    "JobLoadError",
    "ParameterError",
    "ProtocolError",
    "SerializationError",
    "SourceDataError",
    "StashflowError",
    "StateError",
    "UserFunctionError",
    "short_repr",
]


def short_repr(value: object, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages that must stay one line."""
    try:
        text = repr(value)
    except Exception as exc:  # a user object whose __repr__ raises must not hide the real error
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StashflowError(Exception):
    """Base of every error stashflow raises on purpose."""


class JobDefinitionError(StashflowError, ValueError):
    """The job graph is invalid (bad step name, a stream of another job, a bad parallelism...)."""


class DuplicateStepError(JobDefinitionError):
    """Two steps of one job have the same name."""


class JobLoadError(StashflowError, ImportError):
    """The job file or module could not be loaded, or defines neither ``job`` nor ``build``."""


class ParameterError(StashflowError, ValueError):
    """A job parameter (``-P key=value``) or an engine setting is unknown or malformed."""


class UserFunctionError(StashflowError):
    """A user function raised while the engine applied it to a record.

    The message names the step, the instance, the function and the offending record; the original
    exception is the ``__cause__``.
    """

    def __init__(
        self,
        step: str,
        instance: str,
        function: str,
        record: object,
        cause: BaseException,
        *,
        where: str | None = None,
    ):
        self.step = step
        self.instance = instance
        self.function = function
        self.record_repr = short_repr(record)
        self.cause_repr = f"{type(cause).__name__}: {cause}"
        # ``where`` replaces "on record ..." when the record is not known (a source reading)
        super().__init__(
            f"step {step!r} (instance {instance}): user function {function} raised "
            f"{self.cause_repr} {where or 'on record ' + self.record_repr}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # keeps the exception picklable for pytest-xdist and friends; never used on the wire
        return (_rebuild_plain, (type(self), str(self)))


def _rebuild_plain(cls: type[Exception], message: str) -> Exception:
    exc = Exception.__new__(cls)
    Exception.__init__(exc, message)
    return exc


class SerializationError(StashflowError, TypeError):
    """A record or value cannot be encoded with msgpack to cross a channel or enter state."""


class SourceDataError(StashflowError, ValueError):
    """A source's external input cannot be turned into records, or changed while the job reads it.

    Examples: bytes that are not valid in the declared encoding, an input file that shrank after the
    source split it among its instances, an offset that no longer fits the input.
    """


class StateError(StashflowError):
    """Keyed state or a checkpoint cannot be written or read.

    Raised by :mod:`engine.state` and :mod:`engine.checkpoint` when the disk is full, the data
    directory is not writable, or a checkpoint is missing, corrupt or from an incompatible version.
    The message names the path, the underlying error and the fix; the storage error (an
    :class:`OSError` or a RocksDB error) is the ``__cause__``.
    """


class ChannelError(StashflowError, ConnectionError):
    """Base for errors of data channels between instances."""


class ChannelClosed(ChannelError):
    """The channel was closed by this side; using it afterwards is a programming error."""


class ChannelBroken(ChannelError):
    """The peer of a channel died or the connection failed (raised ``from`` the underlying OSError)."""


class ProtocolError(StashflowError, ValueError):
    """A frame on a data channel was malformed, oversized or out of sequence."""


class AuthenticationError(ProtocolError):
    """A data-channel handshake did not carry a valid HMAC for the job's secret."""


class JobFailed(StashflowError):
    """A job ended in failure; the message is the first error reported by any instance."""


class CoordinatorError(StashflowError):
    """The coordinator refused a request, or could not be reached."""
