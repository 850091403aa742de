"""Guards of the ``run``/``distill``/``evaluate`` jobs: one process per run directory, and no
parallel-sweep workers outliving the sweep.

:func:`run_dir_lock` holds a run directory for one process (an advisory ``flock`` on
``run.lock`` in it): a second job writing the same directory fails at once, naming the holder's
pid. The kernel drops a ``flock`` when its holder dies, so the lock of a killed run never
blocks the next one.

The joblib launcher (``hydra/launcher=joblib``) runs the jobs in loky worker processes, which
a killed sweep would leave running. :func:`stop_workers_on_signal` makes SIGTERM, SIGINT and
SIGHUP of the sweep's process kill its workers first; :func:`die_with_parent` makes a worker
die with the process that started it, also when that process is killed with SIGKILL (Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from ddbench.errors import DDBenchError

log = logging.getLogger("ddbench")
LOCK_NAME = "run.lock"


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir`` for this process until the block ends (the lock file is then removed).

    Raises :class:`DDBenchError` naming the holder's pid when another process holds it.
    """
    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise DDBenchError(
                f"run directory {Path(run_dir)} is in use by {who}: wait for that run to end, or "
                "give this one another directory (hydra.run.dir=...)"
            ) from None
        # a holder removes the file as it lets go: a file opened before that is not the lock
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _loky_workers() -> list:
    """The worker processes of joblib's loky executor in this process (none if it has none)."""
    mod = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(mod, "_executor", None)
    return [] if executor is None else list((getattr(executor, "_processes", None) or {}).values())


def kill_workers() -> int:
    """Kill the loky workers of this process (and their children) at once; returns how many."""
    workers = _loky_workers()
    if not workers:
        return 0
    from joblib.externals.loky import reusable_executor
    from joblib.externals.loky.backend.utils import kill_process_tree

    executor = reusable_executor._executor
    with contextlib.suppress(Exception):
        executor.shutdown(wait=False, kill_workers=True)
    for p in workers:
        with contextlib.suppress(ProcessLookupError, OSError):
            kill_process_tree(p)
    return len(workers)


def _on_signal(signum: int, frame) -> None:
    killed = kill_workers()
    if killed:
        log.warning("%s: killed %d sweep worker(s)", signal.Signals(signum).name, killed)
    if signum == signal.SIGINT:
        signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as without the handler
    signal.signal(signum, signal.SIG_DFL)  # then end as the signal would have ended us
    os.kill(os.getpid(), signum)


@contextlib.contextmanager
def stop_workers_on_signal() -> Iterator[None]:
    """Within the block, in the main thread of the main process: SIGTERM, SIGINT and SIGHUP
    kill the sweep's loky workers (if any) before they act as before (SIGINT: KeyboardInterrupt;
    the others end the process with that signal). A signal set to be ignored stays ignored; the
    handlers before the block are restored after it."""
    before = {}
    if multiprocessing.parent_process() is None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(ValueError, OSError):  # ValueError: not the main thread
                handler = signal.getsignal(sig)
                if handler not in (signal.SIG_IGN, None):
                    signal.signal(sig, _on_signal)
                    before[sig] = handler
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> bool:
    """In a loky worker on Linux: ask the kernel to SIGKILL this process when the process that
    started it ends, however it ends. Returns whether it was set (False elsewhere)."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return False
    if not multiprocessing.current_process().name.startswith("LokyProcess"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent.pid is not None and os.getppid() != parent.pid:  # it ended before the request
        os.kill(os.getpid(), signal.SIGKILL)
    return True
