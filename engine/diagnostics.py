"""Where is a process stuck? Stack dumps on a signal, for a job that stops making progress.

``kill -USR1 <pid>`` makes a stashflow process (coordinator or worker) print every asyncio task of
its event loop with the stack it is suspended in: what it awaits, where. ``kill -USR2 <pid>`` prints
every thread's stack instead (:mod:`faulthandler`), which works even when the loop itself is blocked
in a call that never returns. Both go to the process's stderr; neither stops the process.

>>> import io
>>> async def demo() -> str:
...     out = io.StringIO()
...     dump_tasks(out)
...     return out.getvalue()
>>> "task" in asyncio.run(demo())
True
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import signal
import sys
from collections.abc import Awaitable
from typing import TextIO, TypeVar

T = TypeVar("T")

__all__ = ["dump_tasks", "install_stack_dumps", "with_stack_dumps"]


def dump_tasks(file: TextIO | None = None) -> None:
    """Print every task of the running event loop, with its stack, to ``file`` (default stderr)."""
    out = file or sys.stderr
    tasks = asyncio.all_tasks()
    print(f"--- {len(tasks)} asyncio tasks ---", file=out)
    for task in sorted(tasks, key=lambda t: t.get_name()):
        print(f"task {task.get_name()!r}:", file=out)
        awaited: object = task.get_coro()
        while awaited is not None:  # down the chain of awaits, to what the task waits for
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:
                print(f"  waiting for {awaited!r}"[:300], file=out)
                break
            code = frame.f_code
            print(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_qualname}', file=out)
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    print("--- end of tasks ---", file=out, flush=True)


def install_stack_dumps() -> None:
    """SIGUSR1: :func:`dump_tasks`; SIGUSR2: every thread's stack. Call it on the running loop's thread.

    A no-op where the signals do not exist (Windows) or off the main thread (signal handlers are the
    main thread's).
    """
    if not hasattr(signal, "SIGUSR1"):
        return
    with contextlib.suppress(ValueError, RuntimeError):  # not the main thread, or no running loop
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
        faulthandler.register(signal.SIGUSR2, all_threads=True)


async def with_stack_dumps(main: Awaitable[T]) -> T:
    """``await main`` with :func:`install_stack_dumps` on: what a command's ``asyncio.run`` runs."""
    install_stack_dumps()
    return await main
