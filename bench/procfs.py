"""Read a process tree's memory and CPU time from /proc.

Proxies may fork (nginx keeps a master beside its worker), so every figure is
summed over the process and all its descendants.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTicks:
    """User and system CPU time in clock ticks (utime, stime of /proc/PID/stat)."""

    user: int
    system: int

    def __add__(self, other: CpuTicks) -> CpuTicks:
        return CpuTicks(self.user + other.user, self.system + other.system)

    def __sub__(self, other: CpuTicks) -> CpuTicks:
        return CpuTicks(self.user - other.user, self.system - other.system)


def _fields_after_name(text: str) -> list[str]:
    # The command name may hold spaces and parentheses: split after its last ')'.
    return text[text.rindex(")") + 2 :].split()


def _stat_fields(pid: int) -> list[str]:
    return _fields_after_name((PROC / str(pid) / "stat").read_text())


def parse_cpu_ticks(stat_line: str) -> CpuTicks:
    """utime and stime (fields 14 and 15) of one /proc/PID/stat line."""
    fields = _fields_after_name(stat_line)
    # After the command name: state is field 0, utime 11, stime 12.
    return CpuTicks(int(fields[11]), int(fields[12]))


def descendants(root_pid: int) -> list[int]:
    """`root_pid` and every live process below it."""
    children_of: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we were looking
        children_of.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [root_pid]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children_of.get(pid, []))
    return found


def rss_kib(root_pid: int) -> int:
    """Resident memory of the whole tree, in KiB (VmRSS of each process)."""
    total = 0
    for pid in descendants(root_pid):
        try:
            for line in (PROC / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def cpu_ticks(root_pid: int) -> CpuTicks:
    """User and system CPU time of the whole tree since it started."""
    total = CpuTicks(0, 0)
    for pid in descendants(root_pid):
        try:
            total += parse_cpu_ticks((PROC / str(pid) / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # exited while we were reading
    return total


def cpu_seconds(root_pid: int) -> float:
    """User plus system CPU time of the whole tree since it started."""
    ticks = cpu_ticks(root_pid)
    return (ticks.user + ticks.system) / CLOCK_TICKS_PER_SECOND
