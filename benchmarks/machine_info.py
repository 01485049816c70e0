"""What every benchmark prints about the machine it ran on: the CPU model (and its
/proc/cpuinfo fields, for the peak-FLOP estimate) and the load average, read in one place."""

from __future__ import annotations

import platform
from pathlib import Path


def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return cpuinfo().get("model name") or platform.processor() or "unknown"


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, or "unknown" where /proc/loadavg is missing."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
