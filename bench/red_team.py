"""Run the whole red-team corpus (``tests/red_team_corpus.py``) through the ``ddbench`` command.

    python bench/red_team.py [--out bench/results/red_team.txt] [--timeout 120] [--only NAME...]
                             [--exec]

Each case is one ``ddbench`` process on an input the corpus wrote to a temporary folder, killed
after ``--timeout`` seconds (a hang): by default a process forked from this one, which has
imported ddbench, torch and Hydra once, running ``ddbench.cli.main(ARGS)`` with its own working
directory, environment, stdout and stderr; with ``--exec`` a fresh ``python -m ddbench.cli ARGS``
(as a user runs it, seconds of imports per case). Per case it
prints: the exit code, whether a Python traceback was printed, whether it hung, whether the
outcome is the expected one (a non-zero exit with one ``ddbench: error:`` line matching the
case's word, or, for the inputs valid by design, exit 0), and the first line of the message.
The last line sums them up; the exit status is 1 if any case printed a traceback, hung or did
not end as expected. Set ``DDBENCH_DATA`` to use a data root other than the default (the corpus
reads digits, prepared on first use).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from red_team_corpus import Case, write_corpus  # noqa: E402


def exec_case(case: Case, cwd: Path, timeout: float) -> tuple[int | None, str, str]:
    """``python -m ddbench.cli ARGS``: (exit code, or None if killed; stdout; stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(case.env)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "ddbench.cli", *case.argv], cwd=cwd, env=env,
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or ""
        return None, "", err
    return p.returncode, p.stdout, p.stderr


def fork_case(case: Case, cwd: Path, timeout: float) -> tuple[int | None, str, str]:
    """``ddbench.cli.main(ARGS)`` in a forked process: (exit code, or None if killed; stdout;
    stderr). An exception that escapes ``main`` is printed as Python prints it (a traceback)."""
    from ddbench.cli import main

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.chdir(cwd)
                os.environ.pop("HYDRA_FULL_ERROR", None)
                os.environ.update(case.env)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                try:
                    main(list(case.argv))
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else int(e.code is not None)
                except BaseException:
                    traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                code = None
                break
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(errors="replace"), err.read().decode(errors="replace")


def run_case(case: Case, cwd: Path, timeout: float, fork: bool = True) -> dict:
    """Run one case's command line; its outcome as a dict."""
    t0 = time.perf_counter()
    code, stdout, stderr = (fork_case if fork else exec_case)(case, cwd, timeout)
    seconds = time.perf_counter() - t0
    tb = "Traceback (most recent call last)" in stderr
    if code is None:
        return {"code": None, "traceback": tb, "hang": True, "ok": False,
                "message": f"killed after {timeout:.0f} s", "seconds": seconds}  # fmt: skip
    errors = [ln for ln in stderr.splitlines() if ln.startswith("ddbench: error:")]
    if case.expect:
        ok = code != 0 and len(errors) == 1 and not tb
        ok = ok and re.search(case.expect, errors[0], re.IGNORECASE) is not None
        message = errors[0] if errors else (stderr.strip().splitlines() or [""])[-1]
    else:
        ok = code == 0 and not tb
        message = (stdout.strip().splitlines() or stderr.strip().splitlines() or [""])[-1]
    return {"code": code, "traceback": tb, "hang": False, "ok": ok,
            "message": message, "seconds": seconds}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before a case hangs")
    ap.add_argument("--only", nargs="*", default=None, help="run only these cases")
    ap.add_argument("--exec", action="store_true", help="a fresh `python -m ddbench.cli` per case")
    a = ap.parse_args()
    if not a.exec:  # one thread: no OpenMP pool exists when the cases fork
        import hydra  # noqa: F401  (the imports every case shares)
        import torch

        import ddbench.cli  # noqa: F401
        import ddbench.leaderboard  # noqa: F401
        import ddbench.methods  # noqa: F401
        import ddbench.protocol  # noqa: F401

        torch.set_num_threads(1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("")

    def emit(text: str) -> None:  # line by line: an interrupted run keeps the cases it ran
        print(text, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(text + "\n")

    with tempfile.TemporaryDirectory(prefix="ddbench-red-team-") as tmp:
        root = Path(tmp) / "corpus"
        submit = "cli_submit_deep_metadata_set"  # needs a real result.json: seconds of training
        cases = write_corpus(root, result=not a.only or submit in a.only)
        if a.only:
            cases = [c for c in cases if c.name in a.only]
        emit(f"{'case':38s} {'exit':>4s} {'traceback':>9s} {'hang':>4s} {'expected':>8s}  message")
        counts = {"traceback": 0, "hang": 0, "unexpected": 0, "skipped": 0}
        for case in cases:
            if case.skip:
                counts["skipped"] += 1
                emit(f"{case.name:38s} {'-':>4s} {'-':>9s} {'-':>4s} {'skipped':>8s}  {case.skip}")
                continue
            r = run_case(case, root, a.timeout, fork=not a.exec)
            counts["traceback"] += r["traceback"]
            counts["hang"] += r["hang"]
            counts["unexpected"] += not r["ok"]
            message = r["message"].replace(tmp, "$TMP")
            code = "-" if r["code"] is None else str(r["code"])
            yes = {True: "yes", False: "no"}
            emit(f"{case.name:38s} {code:>4s} {yes[r['traceback']]:>9s} {yes[r['hang']]:>4s} "
                 f"{yes[r['ok']]:>8s}  {message[:220]}")  # fmt: skip
        for c in root.rglob("*"):  # the corpus's read-only files and folders, for the cleanup
            if not c.is_symlink():
                c.chmod(0o755)
    run = len(cases) - counts["skipped"]
    emit(f"{len(cases)} cases, {run} run, {counts['skipped']} skipped: "
         f"{counts['traceback']} tracebacks, {counts['hang']} hangs, "
         f"{counts['unexpected']} not as expected")  # fmt: skip
    return 1 if counts["traceback"] or counts["hang"] or counts["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
