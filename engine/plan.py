"""Planning: from a :class:`~engine.dsl.Job` to tasks (chains of steps) and the channels between them.

Chaining, as in Flink: a step is chained into its upstream's task, so that records pass between them
as Python lists with no serialization, when the step has exactly one input, that input is
forward-partitioned, both have the same parallelism, and the upstream step has no other consumer.
A task is named after its first step; its instance ``task/i`` hosts step instances ``step/i`` of every
step in the chain, and the failure unit is that task instance.

Channels connect task instances. A forward edge between tasks of equal parallelism is one-to-one
(instance i to instance i); every other edge is all-to-all. At the receiver, channels are numbered
``0..n-1`` in the order of the task's inputs and, within an input, of the upstream instances: that
number is what the causal log records for ``RECV`` (DESIGN.md §4), so it must not depend on anything
but the job graph.

>>> from engine import Job
>>> from connectors import CollectSink, ListSource
>>> job = Job("wc", parallelism=2)
>>> words = job.source("read", ListSource(["a b"])).flat_map("split", str.split)
>>> words.key_by(lambda w: w).count("count").sink("write", CollectSink())
>>> plan = Plan.of(job)
>>> [(t.name, [s.name for s in t.steps]) for t in plan.tasks]
[('read', ['read', 'split']), ('count', ['count', 'write'])]
>>> [str(c) for c in plan.inputs_of("count", 1)]
['read/0->count/1#0', 'read/1->count/1#1']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.channel import ChannelId
from engine.dsl import Job
from engine.errors import JobDefinitionError
from engine.graph import Partitioning, Step

__all__ = ["ChannelId", "Plan", "Task", "TaskInput", "TaskOutput"]


@dataclass(frozen=True)
class TaskInput:
    upstream: str  # task name
    partitioning: Partitioning
    step: str = ""  # the upstream step whose output this is ("" : the upstream task's last step)
    tag: str | None = None  # None: its main output; else a side output (a window's "late")


@dataclass(frozen=True)
class TaskOutput:
    """One output edge of a task: the records of step ``step`` (its side output ``tag``, if set)."""

    downstream: str  # task name
    partitioning: Partitioning
    key_fn: Callable[[Any], Any] | None
    one_to_one: bool
    step: str = ""
    tag: str | None = None
    timed: bool = False  # records are (timestamp, value) pairs: key_fn reads the value


@dataclass(frozen=True)
class Task:
    """A chain of steps executed together by each of ``parallelism`` instances."""

    name: str
    steps: tuple[Step, ...]
    parallelism: int
    inputs: tuple[TaskInput, ...]
    outputs: tuple[TaskOutput, ...]

    @property
    def is_source(self) -> bool:
        return self.steps[0].kind == "source"

    def instance(self, index: int) -> str:
        return f"{self.name}/{index}"


class Plan:
    """The physical plan of a job: tasks in topological order and the channels between them."""

    def __init__(self, job: Job, tasks: list[Task]):
        self.job = job
        self.tasks = tasks
        self._by_name = {t.name: t for t in tasks}
        self._task_of_step = {s.name: t.name for t in tasks for s in t.steps}

    @classmethod
    def of(cls, job: Job, default_parallelism: int | None = None) -> Plan:
        """Plan ``job``; ``default_parallelism`` overrides the job's default (the CLI's ``--parallelism``)."""
        steps = job.steps
        if not any(s.kind == "source" for s in steps):
            raise JobDefinitionError(
                f"job {job.name!r} has no source step; add one with job.source(name, source)"
            )
        default = default_parallelism or job.parallelism
        par = {s.name: s.parallelism or default for s in steps}
        consumers: dict[str, list[str]] = {s.name: [] for s in steps}  # of the main output
        side_consumers: dict[str, list[str]] = {s.name: [] for s in steps}
        for s in steps:
            for e in s.inputs:
                (consumers if e.tag is None else side_consumers)[e.upstream].append(s.name)
        dangling = [s.name for s in steps if s.kind != "sink" and not consumers[s.name]]
        if dangling:
            raise JobDefinitionError(
                f"job {job.name!r}: the output of step(s) {', '.join(map(repr, dangling))} goes nowhere; "
                "end every branch with .sink(name, sink)"
            )

        def chains_into_upstream(s: Step) -> bool:
            if len(s.inputs) != 1 or s.kind in ("source", "union"):
                return False
            e = s.inputs[0]
            return (
                e.tag is None  # a side output always leaves its task through channels
                and e.partitioning == "forward"
                and par[e.upstream] == par[s.name]
                and len(consumers[e.upstream]) == 1
            )

        chain_of: dict[str, list[Step]] = {}
        head_of: dict[str, str] = {}
        for s in steps:  # steps are in topological order: every input was added before its consumer
            if chains_into_upstream(s):
                head = head_of[s.inputs[0].upstream]
                chain_of[head].append(s)
            else:
                head = s.name
                chain_of[head] = [s]
            head_of[s.name] = head

        tasks: list[Task] = []
        for head, chain in chain_of.items():
            first, last = chain[0], chain[-1]
            inputs = tuple(
                TaskInput(head_of[e.upstream], e.partitioning, e.upstream, e.tag) for e in first.inputs
            )
            outputs = []
            # the main output of the chain's last step, then the side outputs of any step of the chain
            edges: list[tuple[Step, str | None, str]] = [(last, None, c) for c in consumers[last.name]]
            edges += [(s, "side", c) for s in chain for c in dict.fromkeys(side_consumers[s.name])]
            for producer, which, c in edges:
                cons = job.step(c)
                for e in cons.inputs:
                    if e.upstream != producer.name or (e.tag is None) != (which is None):
                        continue
                    one_to_one = e.partitioning == "forward" and par[c] == par[producer.name]
                    part: Partitioning = (
                        e.partitioning if one_to_one or e.partitioning != "forward" else "rebalance"
                    )
                    outputs.append(
                        TaskOutput(head_of[c], part, e.key_fn, one_to_one, producer.name, e.tag, e.timed)
                    )
            tasks.append(Task(head, tuple(chain), par[head], inputs, tuple(outputs)))
        return cls(job, tasks)

    def task(self, name: str) -> Task:
        return self._by_name[name]

    def task_of_step(self, step: str) -> Task:
        try:
            return self._by_name[self._task_of_step[step]]
        except KeyError:
            known = ", ".join(self._task_of_step)
            raise JobDefinitionError(
                f"job {self.job.name!r} has no step {step!r}; its steps: {known}"
            ) from None

    def instances(self) -> list[str]:
        """Every task instance name, in topological order."""
        return [t.instance(i) for t in self.tasks for i in range(t.parallelism)]

    def step_instances(self) -> list[str]:
        """Every step instance name (chained steps too), in topological order."""
        return [f"{s.name}/{i}" for t in self.tasks for i in range(t.parallelism) for s in t.steps]

    def inputs_of(self, task_name: str, index: int) -> list[ChannelId]:
        """The input channels of instance ``task_name/index``, numbered as the causal log records them."""
        return [c for group in self._input_channels(self._by_name[task_name], index) for c in group]

    def input_groups(self, task_name: str, index: int) -> list[list[ChannelId]]:
        """The input channels of ``task_name/index``, one list per input of the task, in order."""
        return self._input_channels(self._by_name[task_name], index)

    def _input_channels(self, task: Task, index: int) -> list[list[ChannelId]]:
        """The input channels of ``task/index``, grouped by the task's inputs."""
        dst = task.instance(index)
        groups: list[list[ChannelId]] = []
        n = 0
        for inp in task.inputs:
            up = self._by_name[inp.upstream]
            if inp.partitioning == "forward" and up.parallelism == task.parallelism:
                sources = [up.instance(index)]
            else:
                sources = [up.instance(j) for j in range(up.parallelism)]
            groups.append([ChannelId(src, dst, n + k) for k, src in enumerate(sources)])
            n += len(sources)
        return groups

    def outputs_of(self, task_name: str, index: int) -> list[list[ChannelId]]:
        """For each output of the task, the channels of instance ``index``, ordered by receiver index."""
        task = self._by_name[task_name]
        src = task.instance(index)
        result = []
        for out in task.outputs:
            down = self._by_name[out.downstream]
            # which of the receiver's inputs this output feeds (a receiver may take two outputs of a task)
            (position,) = [
                k
                for k, inp in enumerate(down.inputs)
                if inp.upstream == task_name and inp.step == out.step and inp.tag == out.tag
            ]
            receivers = [index] if out.one_to_one else list(range(down.parallelism))
            result.append(
                [c for r in receivers for c in self._input_channels(down, r)[position] if c.src == src]
            )
        return result

    def describe(self) -> list[dict[str, Any]]:
        """A msgpack/JSON-friendly description (the coordinator API and the dashboard draw it)."""
        return [
            {
                "task": t.name,
                "steps": [{"name": s.name, "kind": s.kind} for s in t.steps],
                "parallelism": t.parallelism,
                "inputs": [{"from": i.upstream, "partitioning": i.partitioning} for i in t.inputs],
            }
            for t in self.tasks
        ]
