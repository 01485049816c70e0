"""What a measurement says about the machine it ran on: the CPU model (and its /proc/cpuinfo
fields, for a peak-FLOP estimate) and the load average, read in one place. The benchmarks print
it beside every figure and a study repetition keeps it in its experiment.json, because a time
or a last-bit difference means little without the CPU and what else ran beside it."""

from __future__ import annotations

import os
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
    """The CPU's model name, or what the platform reports, or "unknown"."""
    return cpuinfo().get("model name") or platform.processor() or "unknown"


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, or "unknown" where /proc/loadavg is missing."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine_record() -> dict[str, object]:
    """The CPU model, the CPU count and the load average now, for a run's record."""
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "load_average": load_average()}
