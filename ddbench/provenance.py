"""Where a result or a cached artefact was made: library versions, allocator, peak memory."""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path

import numpy
import torch

import ddbench
from ddbench import _alloc


def peak_memory_bytes(device: torch.device | None = None) -> int:
    """Peak resident memory of this process image (or of the CUDA allocator on a GPU):
    ``VmHWM`` on Linux (``ru_maxrss`` survives ``exec``, so after the CLI's allocator restart or
    in a benchmark's child it could report the parent's peak), else ``ru_maxrss``."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def machine(device: torch.device | None = None) -> str:
    """The machine a job ran on, in words: the GPU's name on CUDA, else the CPU model and the
    number of cores this process may use."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores"


def versions() -> dict[str, str]:
    return {
        "ddbench": ddbench.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "allocator": _alloc.describe(),
    }
