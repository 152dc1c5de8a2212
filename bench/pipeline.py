"""The three-step pipeline (source -> map -> sink): a hand-written asyncio bound, then stashflow.

::

    .venv/bin/python bench/pipeline.py [--records 10000000 | --quick] [--rounds 3]
        [--modes throughput,latency] [--systems asyncio,stashflow] [--hops 1] [--map call]
        [--rate 50000 --duration 10 --flush-ms 5] [--out bench/out/pipeline.json]

**asyncio** is what a careful programmer would write by hand for this job, without a framework: a
source process generates the integers ``0..N-1``, cuts them into batches of ``--batch`` (1000),
msgpack-encodes each batch and sends it length-prefixed over asyncio TCP on loopback; a second
process decodes every batch, maps ``x -> x + 1`` record by record and counts the records (and sums
them, to check the result). ``--map call`` (default) maps by calling a function per record, as an
engine must call the user's function; ``--map inline`` writes ``x + 1`` into the comprehension, the
bound without that call. With ``--hops 2`` the map runs in a third process between the two, which
re-batches and forwards, so every record crosses two connections.

**stashflow** runs the same shape, ``bench/jobs/pipeline.py`` (source -> rebalance -> map -> sink:
the source in one task, map and sink chained in another; ``--hops 2`` puts the sink in a third),
through the CLI with ``--parallelism 1`` and the same ``--batch-size`` and ``--flush-ms``; its sink
writes what it counted, and what it measured, to a summary file.

Modes:

- ``throughput``: the source sends as fast as it can (the baseline sends full batches only).
  Reported: records/s at the sink (records / time from the first batch's arrival to the last one,
  the same measure for both systems, leaving out start-up); for the baseline also from the source's
  start; for stashflow also the wall time of the CLI and the engine's own ``records_per_s``.
- ``latency``: the source offers ``--rate`` records/s for ``--duration`` s, every record stamped
  with the time it was due (so a source that falls behind counts against latency: no coordinated
  omission); each hop sends a batch when it is full or when its periodic ``--flush-ms`` timer fires
  (as Flink's buffer timeout). The sink reads ``CLOCK_MONOTONIC`` (one clock for all processes of
  the machine) when a batch arrives; reported: p50/p90/p99/p99.9/max latency of the records after
  the first ``--warmup`` seconds.

Every run's count and checksum are checked: a wrong result is reported as an error, not a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _harness import (
    LOOPBACK,
    REPO,
    GroupFailed,
    OtherWork,
    kill_group,
    machine_info,
    run_group,
    start,
    summarize,
    supervise,
    tail,
    wait_until_quiet,
    write_json,
)

ENGINE_PYTHON = REPO / ".venv" / "bin" / "python"
ENGINE_MAIN = REPO / "engine" / "__main__.py"
PIPELINE_JOB = REPO / "bench" / "jobs" / "pipeline.py"
SYSTEMS = ("asyncio", "stashflow")
MODES = ("throughput", "latency")
HEADER = 4  # bytes of the little-endian frame length


class Skipped(Exception):
    """The system is not available here."""


class WrongResult(Exception):
    """The system ran but did not deliver what the source produced."""


# --- the hand-written baseline: one role per process --------------------------------------------


class Outbox:
    """Batches records to one connection: sends when ``batch`` are buffered or, if ``flush_s`` is set,
    when the periodic flush timer fires with a partial batch pending."""

    def __init__(self, writer: asyncio.StreamWriter, batch: int, flush_s: float | None):
        import msgpack

        self._writer = writer
        self._batch = batch
        self._buffer: list[Any] = []
        self._pack = msgpack.Packer().pack
        self._timer = asyncio.create_task(self._flush_periodically(flush_s)) if flush_s else None

    def _send(self, records: list[Any]) -> None:
        payload = self._pack(records)
        self._writer.writelines((len(payload).to_bytes(HEADER, "little"), payload))

    async def extend(self, records: list[Any]) -> None:
        if not self._buffer and len(records) == self._batch:
            self._send(records)  # the common case when throughput-bound: no copy
        else:
            self._buffer.extend(records)
            while len(self._buffer) >= self._batch:
                self._send(self._buffer[: self._batch])
                del self._buffer[: self._batch]
        await self._writer.drain()  # backpressure: waits only while the socket buffer is full

    async def _flush_periodically(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            # Absolute deadlines: a late wake-up does not push every later flush back.
            deadline = max(deadline + interval, loop.time())
            await asyncio.sleep(deadline - loop.time())
            if self._buffer:
                self._send(self._buffer)
                self._buffer = []

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._buffer:
            self._send(self._buffer)
            self._buffer = []
        self._writer.write_eof()
        await self._writer.drain()
        self._writer.close()
        await self._writer.wait_closed()


async def _read_batches(reader: asyncio.StreamReader):
    import msgpack

    unpack = msgpack.unpackb
    while True:
        try:
            header = await reader.readexactly(HEADER)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return  # end of stream
        yield unpack(await reader.readexactly(int.from_bytes(header, "little")))


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def role_source(args: argparse.Namespace) -> None:
    _, writer = await asyncio.open_connection(LOOPBACK, args.port)
    outbox = Outbox(writer, args.batch, args.flush_ms / 1000 if args.rate else None)
    t_start = time.monotonic_ns()
    n = args.records
    if not args.rate:
        for first in range(0, n, args.batch):
            await outbox.extend(list(range(first, min(first + args.batch, n))))
    else:
        # Offer records at their due times t_start + i / rate; each carries its due time, so a
        # source that falls behind shows up as latency instead of silently lowering the rate.
        step_ns = 1e9 / args.rate
        sent = 0
        while sent < n:
            due = min(n, int((time.monotonic_ns() - t_start) / step_ns) + 1)
            if due > sent:
                await outbox.extend([(i, t_start + int(i * step_ns)) for i in range(sent, due)])
                sent = due
            await asyncio.sleep(args.tick_ms / 1000)
    await outbox.aclose()
    _emit(t_start_ns=t_start, t_end_ns=time.monotonic_ns())


async def _serve_once(handler) -> None:
    """Accept one connection on a free loopback port, announce the port on stdout, run ``handler``."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader)
            done.set_result(None)
        except Exception as exc:
            done.set_exception(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, LOOPBACK, 0)
    _emit(port=server.sockets[0].getsockname()[1])
    async with server:
        await done


def increment(x: int) -> int:
    """The map step's function, called once per record as an engine calls a user's function."""
    return x + 1


def map_batch(batch: list[Any], args: argparse.Namespace) -> list[Any]:
    """Apply the map step to a decoded batch: plain ints, or ``(x, due)`` pairs in latency mode."""
    if args.rate:
        return [(increment(x), due) for x, due in batch] if args.call else [(x + 1, due) for x, due in batch]
    return [increment(x) for x in batch] if args.call else [x + 1 for x in batch]


async def role_relay(args: argparse.Namespace) -> None:
    """The map step in a process of its own (``--hops 2``): decode, map, re-batch, forward."""
    _, writer = await asyncio.open_connection(LOOPBACK, args.port)
    outbox = Outbox(writer, args.batch, args.flush_ms / 1000 if args.rate else None)

    async def relay(reader: asyncio.StreamReader) -> None:
        async for batch in _read_batches(reader):
            await outbox.extend(map_batch(batch, args))
        await outbox.aclose()

    await _serve_once(relay)


async def role_sink(args: argparse.Namespace) -> None:
    count = checksum = 0
    t_first = t_end = 0
    latencies: list[int] = []
    warmup_records = int(args.warmup * args.rate) if args.rate else 0

    async def sink(reader: asyncio.StreamReader) -> None:
        nonlocal count, checksum, t_first, t_end
        async for batch in _read_batches(reader):
            now = time.monotonic_ns()
            if not t_first:
                t_first = now
            if args.with_map:
                batch = map_batch(batch, args)
            if args.rate:
                # x is the mapped value: record i carries i + 1 from here on.
                latencies.extend(now - due for x, due in batch if x > warmup_records)
                batch = [x for x, _ in batch]
            count += len(batch)
            checksum += sum(batch)
        t_end = time.monotonic_ns()

    await _serve_once(sink)
    _emit(
        records=count,
        checksum=checksum,
        t_first_ns=t_first,
        t_end_ns=t_end,
        latency_ms=latency_summary(latencies),
    )


def latency_summary(latencies_ns: list[int]) -> dict[str, float] | None:
    """Percentiles (nearest rank) of latencies in nanoseconds, in milliseconds."""
    if not latencies_ns:
        return None
    ordered = sorted(latencies_ns)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1e6

    return {
        "samples": len(ordered),
        "mean": sum(ordered) / len(ordered) / 1e6,
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "p99.9": pct(99.9),
        "max": ordered[-1] / 1e6,
    }


ROLES = {"source": role_source, "relay": role_relay, "sink": role_sink}


def role_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pipeline.py role", description="one process of the asyncio baseline"
    )
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--port", type=int, help="downstream port (source, relay)")
    parser.add_argument("--records", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0, help="records/s offered; 0: as fast as possible")
    parser.add_argument("--flush-ms", type=float, default=5)
    parser.add_argument("--tick-ms", type=float, default=1, help="how often the rate-limited source wakes up")
    parser.add_argument(
        "--warmup", type=float, default=1, help="seconds of records left out of the latencies"
    )
    parser.add_argument("--with-map", action="store_true", help="the sink also does the map step")
    parser.add_argument("--call", action="store_true", help="map by calling a function per record")
    args = parser.parse_args(argv)
    asyncio.run(ROLES[args.role](args))
    return 0


# --- the benchmark: runs and checks both systems --------------------------------------------------


def expected_checksum(n: int) -> int:
    return n * (n + 1) // 2  # sum of x + 1 over 0..n-1


async def _announced_port(proc: asyncio.subprocess.Process, timeout: float) -> int:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        raise GroupFailed(f"process {proc.pid} exited before announcing its port", [])
    return json.loads(line)["port"]


async def run_asyncio(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    latency = mode == "latency"
    records = int(args.rate * args.duration) if latency else args.records
    common = [
        "--records",
        str(records),
        "--batch",
        str(args.batch),
        *(["--call"] if args.map == "call" else []),
    ]
    if latency:
        common += ["--rate", str(args.rate), "--flush-ms", str(args.flush_ms), "--warmup", str(args.warmup)]
    me = [sys.executable, str(Path(__file__).resolve()), "role"]
    commands = [[*me, "sink", *common, *(["--with-map"] if args.hops == 1 else [])]]
    procs = []
    started = time.perf_counter()
    try:
        procs.append(await start(commands[0]))
        port = await _announced_port(procs[0], 30)
        if args.hops == 2:
            commands.append([*me, "relay", "--port", str(port), *common])
            procs.append(await start(commands[-1]))
            port = await _announced_port(procs[-1], 30)
        commands.append([*me, "source", "--port", str(port), *common])
        procs.append(await start(commands[-1]))
    except BaseException:
        for proc in procs:
            kill_group(proc)
        raise
    finished = await supervise(procs, commands, timeout=args.timeout, started=started)
    sink, source = json.loads(finished[0].stdout), json.loads(finished[-1].stdout)
    check_counts(sink["records"], sink["checksum"], records)
    result: dict[str, Any] = {"records": records, "processes": len(procs)}
    if latency:
        result["latency_ms"] = sink["latency_ms"]
    else:
        result["records_per_s"] = records / ((sink["t_end_ns"] - sink["t_first_ns"]) / 1e9)
        result["records_per_s_from_source_start"] = records / (
            (sink["t_end_ns"] - source["t_start_ns"]) / 1e9
        )
    return result


def check_counts(count: int, checksum: int, records: int) -> None:
    if count != records:
        raise WrongResult(f"the sink counted {count:,} records, the source produced {records:,}")
    if checksum != expected_checksum(records):
        raise WrongResult(
            f"the sink's checksum is {checksum}, expected {expected_checksum(records)} (sum of x + 1)"
        )


async def run_stashflow(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    missing = [str(p.relative_to(REPO)) for p in (ENGINE_MAIN, PIPELINE_JOB) if not p.exists()]
    if missing:
        raise Skipped(f"the engine is not there yet: {', '.join(missing)} missing")
    latency = mode == "latency"
    records = int(args.rate * args.duration) if latency else args.records
    work = args.work / "stashflow" / mode
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    metrics_file = work / "metrics.json"
    params = {
        "records": records,
        "summary": work,
        "rate": args.rate if latency else 0,
        "warmup_s": args.warmup,
        "hops": args.hops,
    }
    command = [str(ENGINE_PYTHON), "-m", "engine", "run", str(PIPELINE_JOB)]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    command += ["--parallelism", "1", "--batch-size", str(args.batch), "--flush-ms", str(args.flush_ms)]
    command += ["--metrics-out", str(metrics_file), *args.engine_arg]
    started = time.perf_counter()
    await run_group([command], timeout=args.timeout)
    wall = time.perf_counter() - started
    summaries = [json.loads(p.read_text()) for p in sorted(work.glob("summary-*.json"))]
    if not summaries:
        raise WrongResult(f"the job's sink wrote no summary-*.json to {work}")
    check_counts(sum(s["records"] for s in summaries), sum(s["checksum"] for s in summaries), records)
    metrics = json.loads(metrics_file.read_text())
    result: dict[str, Any] = {
        "records": records,
        "wall_s": wall,
        "engine_args": args.engine_arg,
        "engine_elapsed_s": metrics.get("elapsed_s"),
        "engine_records_per_s": metrics.get("records_per_s"),
        "ft": metrics.get("ft"),
    }
    if latency:
        result["latency_ms"] = (
            summaries[0]["latency_ms"] if len(summaries) == 1 else [s["latency_ms"] for s in summaries]
        )
    else:
        t_first = min(s["t_first_ns"] for s in summaries)
        t_end = max(s["t_end_ns"] for s in summaries)
        result["records_per_s"] = records / ((t_end - t_first) / 1e9)
        result["records_per_s_wall"] = records / wall
    return result


RUNNERS = {"asyncio": run_asyncio, "stashflow": run_stashflow}


def aggregate(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-round results into medians (min/max alongside) for every numeric figure."""
    out: dict[str, Any] = {"rounds": rounds}
    keys = {k for r in rounds for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    for key in sorted(keys - {"records", "processes"}):
        out[key] = summarize([r[key] for r in rounds if r.get(key) is not None])
    lat = [r["latency_ms"] for r in rounds if isinstance(r.get("latency_ms"), dict)]
    if lat:
        out["latency_ms"] = {p: summarize([x[p] for x in lat]) for p in lat[0] if p != "samples"}
    return out


def median(result: dict[str, Any], key: str) -> float | None:
    value = result.get(key)
    return value["median"] if isinstance(value, dict) and "median" in value else None


async def main_async(args: argparse.Namespace) -> int:
    report: dict[str, Any] = {
        "benchmark": "pipeline",
        "machine": machine_info(),
        "settings": {
            "records": args.records,
            "batch": args.batch,
            "hops": args.hops,
            "baseline_map": args.map,
            "rounds": args.rounds,
            "latency": {
                "rate": args.rate,
                "duration_s": args.duration,
                "flush_ms": args.flush_ms,
                "warmup_s": args.warmup,
            },
        },
        "modes": {},
    }
    failed = False
    for mode in args.modes:
        systems: dict[str, Any] = {}
        for name in args.systems:
            rounds = []
            try:
                for round_ in range(1, args.rounds + 1):
                    print(f"{mode} {name} round {round_}/{args.rounds}", file=sys.stderr)
                    await wait_until_quiet(args.quiet_wait)
                    with OtherWork() as others:
                        result = await RUNNERS[name](args, mode)
                    rounds.append({**result, "cpu_s_by_others": others.cpu_s})
            except Skipped as exc:
                systems[name] = {"status": "skipped", "reason": str(exc)}
                continue
            except GroupFailed as exc:
                logs = "\n".join(
                    f"--- {' '.join(f.argv)}\n{tail(f.stderr) or tail(f.stdout)}" for f in exc.finished
                )
                systems[name] = {"status": "error", "reason": f"{exc}\n{logs}", "completed_rounds": rounds}
                failed = True
                continue
            except WrongResult as exc:
                systems[name] = {
                    "status": "error",
                    "reason": f"wrong result: {exc}",
                    "completed_rounds": rounds,
                }
                failed = True
                continue
            systems[name] = {"status": "ok", **aggregate(rounds)}
        report["modes"][mode] = systems
        if mode == "throughput":
            a, b = (median(systems.get(s, {}), "records_per_s") for s in ("stashflow", "asyncio"))
            e = median(systems.get("stashflow", {}), "engine_records_per_s")
            systems["ratios"] = {
                "stashflow/asyncio": a / b if a and b else None,
                "stashflow_engine_metric/asyncio": e / b if e and b else None,
            }
    print_report(report)
    write_json(args.out, report)
    return 1 if failed else 0


def print_report(report: dict[str, Any]) -> None:
    hops = report["settings"]["hops"]
    for mode, systems in report["modes"].items():
        print(f"\npipeline {mode}, {hops} hop(s), {report['settings']['rounds']} round(s), medians")
        for name, r in systems.items():
            if name == "ratios":
                continue
            if r["status"] != "ok":
                print(f"  {name:<10} {r['status']}: {r['reason']}")
                continue
            others = [x["cpu_s_by_others"] for x in r["rounds"] if x.get("cpu_s_by_others") is not None]
            note = f"  (others used up to {max(others):.2f} CPU-s in a round)" if others else ""
            if mode == "throughput":
                parts = [f"{median(r, 'records_per_s'):,.0f} records/s at the sink"]
                if median(r, "engine_records_per_s"):
                    parts.append(f"engine metric {median(r, 'engine_records_per_s'):,.0f}/s")
                if median(r, "wall_s"):
                    parts.append(f"CLI wall {median(r, 'wall_s'):.2f} s")
                print(f"  {name:<10} " + ", ".join(parts) + note)
            else:
                lat = r["latency_ms"]
                print(
                    f"  {name:<10} p50 {lat['p50']['median']:.2f} ms  p90 {lat['p90']['median']:.2f}  "
                    f"p99 {lat['p99']['median']:.2f}  p99.9 {lat['p99.9']['median']:.2f}  max {lat['max']['median']:.2f}"
                    + note
                )
        for key, value in systems.get("ratios", {}).items():
            print(f"  {key:<32} {'-' if value is None else f'{value:.3f}x'}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records", type=int, default=10_000_000, help="records in throughput mode (default 10M)"
    )
    parser.add_argument("--quick", action="store_const", dest="records", const=1_000_000, help="1M records")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}"
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}"
    )
    parser.add_argument("--batch", type=int, default=1000, help="records per batch (baseline)")
    parser.add_argument(
        "--hops", type=int, choices=(1, 2), default=1, help="connections a record crosses (baseline)"
    )
    parser.add_argument("--rate", type=float, default=50_000, help="latency mode: records/s offered")
    parser.add_argument("--duration", type=float, default=10, help="latency mode: seconds of offered load")
    parser.add_argument(
        "--flush-ms", type=float, default=5, help="latency mode: flush timer per hop (baseline)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1, help="latency mode: seconds left out of the figures"
    )
    parser.add_argument(
        "--map",
        choices=("call", "inline"),
        default="call",
        help="baseline map: call a function per record, as an engine calls the user's (default), "
        "or inline `x + 1` in a comprehension (the bound without that call)",
    )
    parser.add_argument("--engine-arg", action="append", default=[], help="extra argument for `engine run`")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="seconds to wait, before each run, for other work to stop",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds one run may take")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "pipeline")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "pipeline.json")
    args = parser.parse_args(argv)
    for name, allowed in (("modes", MODES), ("systems", SYSTEMS)):
        chosen = [s.strip() for s in getattr(args, name).split(",") if s.strip()]
        if unknown := sorted(set(chosen) - set(allowed)):
            parser.error(f"unknown {name} {unknown}; choose from {', '.join(allowed)}")
        setattr(args, name, chosen)
    if args.rounds < 1 or args.records < 1 or args.rate <= 0 or args.duration <= args.warmup:
        parser.error("need --rounds >= 1, --records >= 1, --rate > 0 and --duration > --warmup")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["role"]:
        return role_main(argv[1:])
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
