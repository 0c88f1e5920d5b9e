"""Read a process tree's memory and CPU time from /proc.

Proxies may fork (nginx keeps a master beside its worker), so every figure is
summed over the process and all its descendants.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    text = (PROC / str(pid) / "stat").read_text()
    # The command name may hold spaces and parentheses: split after its last ')'.
    return text[text.rindex(")") + 2 :].split()


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


def cpu_seconds(root_pid: int) -> float:
    """User plus system CPU time of the whole tree since it started."""
    ticks = 0
    for pid in descendants(root_pid):
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        # After the command name: state is field 0, utime 11, stime 12.
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS_PER_SECOND
