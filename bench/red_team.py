"""Run the whole red-team corpus (``tests/red_team_corpus.py``) through the ``ddbench`` command.

    python bench/red_team.py [--out bench/results/red_team.txt] [--timeout 120] [--only NAME...]

Each case is one ``ddbench`` process (``python -m ddbench.cli``, as a user runs it) on an input
the corpus wrote to a temporary folder, killed after ``--timeout`` seconds (a hang). Per case it
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from red_team_corpus import Case, write_corpus  # noqa: E402


def run_case(case: Case, cwd: Path, timeout: float) -> dict:
    """Run one case's command line; its outcome as a dict."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(case.env)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [sys.executable, "-m", "ddbench.cli", *case.argv], cwd=cwd, env=env,
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or ""
        return {"code": None, "traceback": "Traceback" in err, "hang": True, "ok": False,
                "message": f"killed after {timeout:.0f} s", "seconds": time.perf_counter() - t0}  # fmt: skip
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("ddbench: error:")]
    traceback = "Traceback (most recent call last)" in p.stderr
    if case.expect:
        ok = p.returncode != 0 and len(errors) == 1 and not traceback
        ok = ok and re.search(case.expect, errors[0], re.IGNORECASE) is not None
        message = errors[0] if errors else (p.stderr.strip().splitlines() or [""])[-1]
    else:
        ok = p.returncode == 0 and not traceback
        message = (p.stdout.strip().splitlines() or p.stderr.strip().splitlines() or [""])[-1]
    return {"code": p.returncode, "traceback": traceback, "hang": False, "ok": ok,
            "message": message, "seconds": time.perf_counter() - t0}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before a case hangs")
    ap.add_argument("--only", nargs="*", default=None, help="run only these cases")
    a = ap.parse_args()
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
        cases = write_corpus(root, result=True)
        if a.only:
            cases = [c for c in cases if c.name in a.only]
        emit(f"{'case':38s} {'exit':>4s} {'traceback':>9s} {'hang':>4s} {'expected':>8s}  message")
        counts = {"traceback": 0, "hang": 0, "unexpected": 0, "skipped": 0}
        for case in cases:
            if case.skip:
                counts["skipped"] += 1
                emit(f"{case.name:38s} {'-':>4s} {'-':>9s} {'-':>4s} {'skipped':>8s}  {case.skip}")
                continue
            r = run_case(case, root, a.timeout)
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
