"""Run the ``ddbench`` command in a subprocess as a user would (one helper for all tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m ddbench.cli ARGS`` with the default allocator and ``tests/`` importable."""
    env = dict(os.environ, DDBENCH_ALLOCATOR="system", HYDRA_FULL_ERROR="0")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "ddbench.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
