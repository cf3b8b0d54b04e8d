"""What the benches read of other processes from /proc: CPU seconds and memory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def process_stats() -> Iterator[tuple[int, str, list[str]]]:
    """(pid, command name, the fields after it) of every process, from /proc/<pid>/stat."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        head, _, rest = text.rpartition(")")
        yield int(stat.parent.name), head.split("(", 1)[1], rest.split()


def stat_cpu(fields: list[str]) -> float:
    """CPU seconds (utime + stime, all threads) from the fields after the command name."""
    return (int(fields[11]) + int(fields[12])) / TICKS


def pid_cpu(pid: int) -> float:
    """CPU seconds of process `pid` so far (0 once it has ended)."""
    try:
        return stat_cpu(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split())
    except OSError:
        return 0.0


def children_cpu(pid: int) -> float:
    """CPU seconds of the running children of process `pid`."""
    return sum(stat_cpu(fields) for _, _, fields in process_stats() if int(fields[1]) == pid)


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of process `pid`, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out
