"""Engine settings of one job run, validated once, shipped to every worker as a plain dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from engine.errors import ParameterError

__all__ = ["FT_MODES", "JobConfig"]

#: Fault-tolerance modes (DESIGN.md §8) this build implements; the first is the default.
FT_MODES = ("lineage", "checkpoint", "wal", "none")


@dataclass(frozen=True)
class JobConfig:
    """How a job runs. Every field has a CLI flag of the same name (``--batch-size``, ``--flush-ms``...)."""

    #: default parallelism of every step (overrides the job's own default when set)
    parallelism: int | None = None
    #: records per output batch: a buffer is sent as soon as it holds this many
    batch_size: int = 1000
    #: latency bound: a partially filled buffer is sent this many milliseconds after its first record
    flush_ms: float = 5.0
    #: credit window: batches a receiver buffers per input channel before the sender blocks
    window: int = 8
    #: largest frame a channel accepts, in bytes
    max_frame_bytes: int = 64 * 1024 * 1024
    #: fault tolerance (DESIGN.md §8)
    ft: str = "lineage"
    #: lineage stash forwarding depth f: 1 = direct receivers hold an instance's uncommitted
    #: determinants, -1 = every downstream instance does (DESIGN.md §5.2)
    ft_depth: int = 1
    #: seconds between two independent checkpoints of an instance (DESIGN.md §6): a checkpoint costs
    #: the instance a pause that grows with the keys changed since the last one; a longer interval
    #: means a longer replay after a failure (replay runs faster than live input arrives)
    checkpoint_interval: float = 5.0
    #: milliseconds the log flusher lets determinants gather before shipping them to the GCS: fewer,
    #: larger control messages against a longer commit lag (which delays sink output, §5.5)
    log_flush_ms: float = 5.0
    #: artificial latency added to every GCS write acknowledgment (to show storage is off the path)
    gcs_delay_ms: float = 0.0
    #: failure injection for tests: step instance -> records after which its k-th incarnation crashes
    kill_after: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def positive(name: str, value: float, kind: type = int) -> None:
            if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
                raise ParameterError(f"setting {name} must be a positive {kind.__name__}, got {value!r}")

        if self.parallelism is not None:
            positive("parallelism", self.parallelism)
        positive("batch_size", self.batch_size)
        positive("window", self.window)
        positive("max_frame_bytes", self.max_frame_bytes)
        if not isinstance(self.flush_ms, int | float) or self.flush_ms < 0:
            raise ParameterError(f"setting flush_ms must be a number >= 0, got {self.flush_ms!r}")
        if (
            not isinstance(self.ft_depth, int)
            or isinstance(self.ft_depth, bool)
            or (self.ft_depth < 1 and self.ft_depth != -1)
        ):
            raise ParameterError(
                f"setting ft_depth must be a positive integer or -1 (unbounded), got {self.ft_depth!r}"
            )
        for name in ("checkpoint_interval", "log_flush_ms", "gcs_delay_ms"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ParameterError(f"setting {name} must be a number >= 0, got {value!r}")
        if self.checkpoint_interval == 0:
            raise ParameterError("setting checkpoint_interval must be > 0 seconds")
        if self.ft not in FT_MODES:
            raise ParameterError(
                f"setting ft={self.ft!r} is not supported; choose one of {', '.join(FT_MODES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParameterError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)
