"""The report of benchmarks/dist.py: result records, the machine table and the rich tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _dist_helpers as h
from rich.console import Console
from rich.table import Table

THROUGHPUT_TARGET = 10_000.0
BROADCAST_TARGET_MS = 200.0


@dataclass(frozen=True)
class Throughput:
    transport: str
    workers: int
    mode: str
    """``recorded`` (episodes recorded beforehand) or ``live`` (simulator in the loop)."""
    samples_per_s: float
    transitions: int
    messages: int
    seconds: float


@dataclass(frozen=True)
class Broadcast:
    policy: str
    transport: str
    workers: int
    weights_bytes: int
    decoded_ms: list[float]
    built_ms: list[float]

    @property
    def decoded_median(self) -> float:
        return statistics.median(self.decoded_ms)

    @property
    def built_median(self) -> float:
        return statistics.median(self.built_ms)


@dataclass(frozen=True)
class WireSize:
    transport: str
    bytes_per_transition: float
    transitions_per_message: float
    build_us_per_step: float
    """Worker-side cost of turning steps into messages (the codec for tm-dist), per step."""


# -- report -----------------------------------------------------------------------------------
def source_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "packages", "benchmarks"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + local changes" if dirty else head


def machine_info() -> dict[str, Any]:
    import tlspyo  # noqa: F401

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    from importlib.metadata import version

    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "tlspyo": version("tlspyo"),
        "twisted": version("twisted"),
        "msgpack": version("msgpack"),
        "zstandard": version("zstandard"),
        "source": source_revision(),
    }


def rate(x: float) -> str:
    return f"{x:,.0f}"


def print_report(
    console: Console,
    machine: dict[str, Any],
    settings: dict[str, Any],
    sizes: list[WireSize],
    flows: list[Throughput],
    casts: list[Broadcast],
) -> list[dict[str, Any]]:
    info = Table(title="Machine and settings", show_header=False, title_justify="left")
    info.add_column(style="bold")
    info.add_column()
    for key, value in {**machine, **settings}.items():
        info.add_row(key, str(value))
    console.print(info)

    ours_size = next((s for s in sizes if s.transport == h.OURS), None)
    st = Table(title="Bytes per transition (tlspyo frames, before TLS)", title_justify="left")
    for col in ("transport", "B/transition", "baseline/ours", "transitions/msg", "build us/step"):
        st.add_column(col, justify="left" if col == "transport" else "right")
    for s in sizes:
        ratio = (
            f"{s.bytes_per_transition / ours_size.bytes_per_transition:,.1f}x" if ours_size else "-"
        )
        st.add_row(
            s.transport,
            rate(s.bytes_per_transition),
            ratio,
            f"{s.transitions_per_message:.0f}",
            f"{s.build_us_per_step:,.0f}",
        )
    console.print(st)

    ours_rate = {(f.workers, f.mode): f.samples_per_s for f in flows if f.transport == h.OURS}
    ft = Table(title="Samples/s delivered to the trainer and decoded", title_justify="left")
    for col in ("transport", "workers", "episodes", "samples/s", "ours/this", "MB/s wire"):
        ft.add_column(col, justify="left" if col in ("transport", "episodes") else "right")
    by_size = {s.transport: s.bytes_per_transition for s in sizes}
    for f in sorted(flows, key=lambda f: (f.mode, f.workers, h.TRANSPORTS.index(f.transport))):
        ours = ours_rate.get((f.workers, f.mode))
        ratio = f"{ours / f.samples_per_s:,.2f}x" if ours and f.samples_per_s else "-"
        mb = f"{f.samples_per_s * by_size[f.transport] / 1e6:,.1f}" if f.mode == "recorded" else "-"
        ft.add_row(f.transport, str(f.workers), f.mode, rate(f.samples_per_s), ratio, mb)
    console.print(ft)

    bt = Table(title="Policy broadcast to workers (ms)", title_justify="left")
    for col in (
        "policy",
        "transport",
        "workers",
        "MB",
        "decoded med",
        "max",
        "built med",
        "max",
        "this/ours",
    ):
        bt.add_column(col, justify="left" if col in ("policy", "transport") else "right")
    ours_cast = {b.policy: b.built_median for b in casts if b.transport == h.OURS}
    for b in casts:
        ref = ours_cast.get(b.policy)
        bt.add_row(
            b.policy,
            b.transport,
            str(b.workers),
            f"{b.weights_bytes / 1e6:.2f}",
            f"{b.decoded_median:.1f}",
            f"{max(b.decoded_ms):.1f}",
            f"{b.built_median:.1f}",
            f"{max(b.built_ms):.1f}",
            f"{b.built_median / ref:.2f}x" if ref else "-",
        )
    console.print(bt)

    targets: list[dict[str, Any]] = []
    recorded = [f for f in flows if f.transport == h.OURS and f.mode == "recorded"]
    if recorded:
        best = max(recorded, key=lambda f: f.samples_per_s)
        targets.append(
            {
                "target": f">= {THROUGHPUT_TARGET:,.0f} image samples/s through the relay",
                "measured": best.samples_per_s,
                "required": THROUGHPUT_TARGET,
                "from": f"{best.workers} workers, recorded",
                "passed": best.samples_per_s >= THROUGHPUT_TARGET,
            }
        )
    small = next((b for b in casts if b.transport == h.OURS and b.policy == "cnn-small"), None)
    if small is not None:
        targets.append(
            {
                "target": f"cnn-small policy to {small.workers} workers <= {BROADCAST_TARGET_MS:.0f} ms",
                "measured": small.built_median,
                "required": BROADCAST_TARGET_MS,
                "from": f"median, policy rebuilt (max {max(small.built_ms):.0f} ms)",
                "passed": small.built_median <= BROADCAST_TARGET_MS,
            }
        )
    tt = Table(title="Targets", title_justify="left")
    for col in ("target", "measured", "from", "result"):
        tt.add_column(col)
    for t in targets:
        shown = f"{t['measured']:,.0f}" + (" ms" if "ms" in t["target"] else " samples/s")
        tt.add_row(
            t["target"], shown, t["from"], "[green]PASS[/]" if t["passed"] else "[red]MISS[/]"
        )
    console.print(tt)
    console.print(
        f"load average at the end: {[round(x, 2) for x in os.getloadavg()]} "
        f"(at the start: {machine['load_average_start']}); this machine is shared",
        style="dim",
    )
    return targets
