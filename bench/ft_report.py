"""What ``bench/ft.py`` writes besides ``ft.json``: ``ft.md`` (tables and targets) and PNG plots (matplotlib).

Plots, into the output directory:

- ``ft-timeline-<mode>.png``: the failure run of each mode, seconds since the kill on the x axis: the
  sink's records/s per 100 ms against the offered rate (and its 90%), and the p99 per 100 ms against
  the steady p99 (and twice it); the kill and the moment the output is back are marked.
- ``ft-latency.png``: p50/p99/p99.9 per mode at the offered rate, GCS delay 0 and 5 ms.
- ``ft-lineage-stash.png``: the lineage stash's bytes (all instances) and the lineage bytes piggybacked
  per second, over the lineage failure run.

A mode that failed gets no plot and, in ``ft.md``, its error instead of figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

__all__ = ["write_markdown", "write_plots"]


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}x" if isinstance(a, int | float) and isinstance(b, int | float) and b else "-"


def _params(params: dict[str, str] | None) -> str:
    return "".join(f" -P {k}={v}" for k, v in (params or {}).items())


def ok_modes(modes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The modes that have figures (no error)."""
    return {mode: m for mode, m in modes.items() if "error" not in m}


def write_markdown(report: dict[str, Any], path: Path) -> None:
    modes, cfg, machine = report["modes"], report["config"], report["machine"]
    none = modes.get("none", {})
    unit, sink_unit = cfg.get("unit", "sentences"), cfg.get("sink_unit", "words")
    batch = f", batch size {cfg['batch_size']}" if cfg.get("batch_size") else ""
    lines = [
        "# Fault tolerance: throughput, latency and recovery per `--ft` mode",
        "",
        f"`stashflow bench ft{' --quick' if report['quick'] else ''}`: {machine.get('cpus')} CPUs "
        f"({machine.get('cpu', '?')}), Python {machine.get('python')}, {report['wall_s']:g} s in all. "
        f"`{cfg['job']}`{_params(cfg.get('params'))}, parallelism {cfg['parallelism']}, the sink a task of its "
        f"own; checkpoint interval {cfg['checkpoint_interval_s']:g} s"
        f"{batch}. Offered rate {_num(report['offered_rate'])} "
        f"{unit}/s ({_num(report['offered_sink_rate'])} {sink_unit}/s at the sink), half of `none`'s maximum. "
        f"{cfg['victim']} is killed {cfg['kill_at']:g} s into the failure run.",
        "",
        f"| mode | max {unit}/s (median) | / none (median; per round) | output / offered | p50 ms | p99 ms | p99.9 ms | p99 / none "
        "| p99 ms, GCS 5 ms | / GCS 0 | recovery s | longest zero output s | rolled back |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, m in modes.items():
        if "error" in m:
            lines.append(f"| {mode} | **failed** in phase {m['phase']}: {m['error']} |" + " |" * 11)
            continue
        gcs5 = m.get("gcs5") or {}
        rolled = m.get("rolled_back") or []
        rolled_text = f"every instance ({len(rolled)})" if mode == "none" else ", ".join(rolled) or "none"
        recovery = m.get("recovery_s")
        vs_none = (
            f"{m['throughput_vs_none']:.2f}x ({', '.join(f'{r:.2f}' for r in m['throughput_ratio_runs'])})"
            if m.get("throughput_vs_none")
            else _ratio(m.get("throughput"), none.get("throughput"))
        )
        lines.append(
            f"| {mode} | {_num(m.get('throughput'))} | {vs_none} "
            f"| {_num(m.get('output_share'), 2)} | {_num(m.get('p50_ms'))} | {_num(m.get('p99_ms'))} | {_num(m.get('p999_ms'))} "
            f"| {_ratio(m.get('p99_ms'), none.get('p99_ms'))} | {_num(gcs5.get('p99_ms'))} "
            f"| {_ratio(gcs5.get('p99_ms'), m.get('p99_ms'))} "
            f"| {'not back within the run' if recovery is None else f'{recovery:.2f}'} "
            f"| {_num(m.get('zero_output_max_s'))} | {rolled_text} |"
        )
    light_modes = {mode: m["light"] for mode, m in modes.items() if "error" not in m and m.get("light")}
    if light_modes:
        light_none = light_modes.get("none") or {}
        offered_light = next(iter(light_modes.values())).get("offered_rate")
        lines += [
            "",
            f"Latency at a lighter load, {_num(offered_light)} {unit}/s (a quarter of `none`'s maximum), GCS "
            "delay 0:",
            "",
            "| mode | output / offered | p50 ms | p99 ms | p99.9 ms | p99 / none | at the sink's input p50 / p99 ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for mode, f in light_modes.items():
            lines.append(
                f"| {mode} | {_num(f.get('output_share'), 2)} | {_num(f.get('p50_ms'))} | {_num(f.get('p99_ms'))} "
                f"| {_num(f.get('p999_ms'))} | {_ratio(f.get('p99_ms'), light_none.get('p99_ms'))} "
                f"| {_num(f.get('arrival_p50_ms'))} / {_num(f.get('arrival_p99_ms'))} |"
            )
        lines += [
            "",
            "At the sink's input: ingestion to the sink's operator, before any output-commit wait (the sink's "
            "own histogram over the whole run); the rest of the latency is the sink holding output back.",
        ]
    lines += ["", "| target | value | goal | |", "|---|---|---|---|"]
    for t in report["targets"]:
        met = {True: "met", False: "**missed**", None: "n/a (mode not run or failed)"}[t["met"]]
        value = t["value"]  # a number, a list of instances, or words
        if isinstance(value, list):
            value = ", ".join(value)
        elif not isinstance(value, str):
            value = _num(value, 3)
        lines.append(f"| {t['target']} | {value} | {t['goal']} | {met} |")
    lineage = modes.get("lineage") or {}
    stash = [(k, lineage.get(k) or {}) for k in ("stash", "gcs5")]
    if any(s.get("stash") if k == "gcs5" else s for k, s in stash):
        lines += ["", "Lineage stash in the latency runs (all instances):", ""]
        for label, s in (
            ("GCS delay 0", lineage.get("stash")),
            ("GCS delay 5 ms", (lineage.get("gcs5") or {}).get("stash")),
        ):
            if s:
                lines.append(
                    f"- {label}: stash peak {_num(s['stash_bytes_max'])} B, mean {_num(s['stash_bytes_mean'])} B; "
                    f"piggybacked {_num(s['piggybacked_bytes_per_s_mean'])} B/s, "
                    f"{_num(s['piggybacked_bytes_per_batch'], 2)} B per batch sent"
                )
    lines += [
        "",
        f"Throughput: source {unit}/s from the job's start to its end, without a rate limit. Latency: per "
        f"batch, source ingestion to sink write, after {cfg['warmup_s']:g} s of output"
        + (" (`--quick`: from the failure run's steady part before the kill)" if report["quick"] else "")
        + ". Output / offered: the sink's records/s in that run, from the warm-up to the nominal end of the "
        "load, over the offered rate; well below 1, the mode does not keep up with the offered rate, its "
        "latency is mostly queueing and a recovery may never get back under 2x the steady p99. "
        f"Recovery: from the kill until {cfg['recovery_rule']}, after the output was disturbed; for "
        "`none`, until a rerun from scratch, started when the failed run exited, gets there.",
        "",
    ]
    slow = [mode for mode, m in ok_modes(modes).items() if (m.get("output_share") or 1) < 0.95]
    if slow:
        lines += [
            f"Did not keep up with the offered rate: {', '.join(slow)} (output / offered < 0.95).",
            "",
        ]
    path.write_text("\n".join(lines))


def _timeline_plot(mode: str, m: dict[str, Any], report: dict[str, Any], path: Path) -> None:
    t = m["timeline"]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.5))
    top.plot(t["t_s"], [r / 1000 for r in t["records_per_s"]], lw=1, label="sink output")
    offered = report["offered_sink_rate"] / 1000
    top.axhline(offered, color="grey", ls="--", lw=0.8, label="offered")
    top.axhline(0.9 * offered, color="grey", ls=":", lw=0.8, label="90% of offered")
    top.set_ylabel("k records/s per 100 ms")
    # no output, no p99: a gap in the line, not a slope across the outage
    p99 = [float("nan") if y is None else y for y in t["p99_ms"]]
    bottom.plot(t["t_s"], p99, lw=1, color="tab:orange", label="p99")
    bottom.axhline(m["steady_p99_ms"], color="grey", ls="--", lw=0.8, label="steady p99")
    bottom.axhline(2 * m["steady_p99_ms"], color="grey", ls=":", lw=0.8, label="2x steady")
    bottom.set_yscale("log")
    bottom.set_ylabel("p99 ms per 100 ms")
    bottom.set_xlabel(f"seconds since {report['config']['victim']} was killed")
    for ax in (top, bottom):
        ax.axvline(0, color="red", lw=1, label="kill")
        if m.get("recovery_s") is not None:
            ax.axvline(m["recovery_s"], color="green", lw=1, ls="--", label="back")
        ax.legend(loc="upper right", fontsize=7)
        ax.grid(alpha=0.3)
    recovery = m.get("recovery_s")
    top.set_title(
        f"--ft {mode}: recovery {'not within the run' if recovery is None else f'{recovery:.2f} s'}, "
        f"rolled back {len(m.get('rolled_back') or [])} instance(s)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency_plot(ok: dict[str, dict[str, Any]], path: Path) -> None:
    keys = [("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / (2 * len(keys))
    for i, mode in enumerate(ok):
        for j, (key, label) in enumerate(keys):
            for k, (source, hatch) in enumerate(((ok[mode], ""), (ok[mode].get("gcs5") or {}, "//"))):
                value = source.get(key)
                if value is None:
                    continue
                x = i + (2 * j + k - len(keys) + 0.5) * width
                ax.bar(x, value, width, color=f"C{j}", hatch=hatch, edgecolor="black", lw=0.3,
                       label=f"{label}, GCS {'5' if k else '0'} ms" if i == 0 or mode == "lineage" else None)  # fmt: skip
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7, ncol=3)
    ax.set_xticks(range(len(ok)), list(ok))
    ax.set_yscale("log")
    ax.set_ylabel("latency ms (source ingestion to sink write, per batch)")
    ax.set_title("latency at the offered rate (half of none's max)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stash_plot(m: dict[str, Any], path: Path) -> None:
    s = m["stash_timeline"]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 5))
    top.plot(s["t_s"], s["stash_bytes"], lw=1)
    top.set_ylabel("stash bytes (all instances)")
    smooth = [sum(s["piggybacked_per_s"][max(0, i - 4) : i + 1]) / len(s["piggybacked_per_s"][max(0, i - 4) : i + 1])
              for i in range(len(s["piggybacked_per_s"]))]  # fmt: skip
    bottom.plot(s["t_s"], [v / 1000 for v in smooth], lw=1, color="tab:purple")
    bottom.set_ylabel("piggybacked kB/s (0.5 s mean)")
    bottom.set_xlabel("seconds since the kill (lineage failure run)")
    for ax in (top, bottom):
        ax.axvline(0, color="red", lw=1, label="kill")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=7)
    top.set_title("--ft lineage: the stash and the lineage piggybacked on batches")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """Draw the plots of the modes that have figures; returns the files written."""
    ok = ok_modes(report["modes"])
    written = []
    for mode, m in ok.items():
        path = out / f"ft-timeline-{mode}.png"
        _timeline_plot(mode, m, report, path)
        written.append(path)
    if ok:
        _latency_plot(ok, out / "ft-latency.png")
        written.append(out / "ft-latency.png")
    if ok.get("lineage", {}).get("stash_timeline", {}).get("t_s"):
        _stash_plot(ok["lineage"], out / "ft-lineage-stash.png")
        written.append(out / "ft-lineage-stash.png")
    return written
