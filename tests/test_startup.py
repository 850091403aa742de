"""What starting ddbench does to a process: the CLI's allocator restart runs the ddbench it was
started with, whatever ``ddbench/`` folder the working directory holds; importing the library
changes nothing process-wide (only the CLI sets the allocator); the package has no import cycle."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from ddbench import _alloc
from ddbench.cli import restart_command

REPO = Path(__file__).parents[1]
needs_tcmalloc = pytest.mark.skipif(
    _alloc.tcmalloc_path() is None, reason="no tcmalloc here: the CLI does not restart itself"
)


def _shadowing_folder(root: Path) -> Path:
    """A folder holding a ``ddbench/`` package that leaves a marker file when imported."""
    pkg = root / "ddbench"
    pkg.mkdir(parents=True)
    marker = root / "shadow-ran"
    (pkg / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise SystemExit('the shadowing ddbench ran')\n"
    )
    return marker


def _cli_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: the CLI picks its allocator itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DDBENCH_", "_DDBENCH_"))}
    env.pop("LD_PRELOAD", None)
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def test_the_restart_command_imports_this_ddbench_not_the_working_directorys(tmp_path, monkeypatch):
    marker = _shadowing_folder(tmp_path)
    monkeypatch.setattr(sys, "argv", ["ddbench", "data", "list"])
    argv, env = restart_command("")  # exactly what the CLI executes, with nothing preloaded
    assert argv[0] == sys.executable and argv[-2:] == ["data", "list"]
    p = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "data root:" in p.stdout and "digits" in p.stdout
    assert not marker.exists()
    # the same folder does shadow a plain `python -m ddbench.cli` (what the restart must not be)
    plain = subprocess.run([sys.executable, "-m", "ddbench.cli", "data", "list"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert plain.returncode != 0 and marker.exists()


def _console_script() -> str:
    found = shutil.which("ddbench", path=str(Path(sys.executable).parent)) or shutil.which(
        "ddbench"
    )
    if found is None:
        pytest.skip("the ddbench console script is not installed")
    return found


@needs_tcmalloc
def test_the_ddbench_command_in_a_folder_holding_a_ddbench_package_runs_the_installed_one(
    tmp_path,
):
    marker = _shadowing_folder(tmp_path)
    p = subprocess.run([_console_script(), "data", "list"], env=_cli_env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "data root:" in p.stdout and not marker.exists()


@needs_tcmalloc
@pytest.mark.skipif(sys.platform != "linux", reason="venv layout and tcmalloc: Linux")
def test_a_non_editable_install_runs_from_inside_its_checkout(tmp_path):
    """``pip install .`` (not editable), then ``ddbench`` from the checkout root, whose
    ``ddbench/`` folder has no ``conf`` package: Hydra must find the installed ``ddbench.conf``."""
    checkout = tmp_path / "checkout"
    for part in ("ddbench", "methods", "conf"):
        shutil.copytree(REPO / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, checkout / part)
    # a fresh environment that sees this one's dependencies (a plain path: .pth files in them,
    # such as an editable install of ddbench, are not run) but no ddbench
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    deps |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    (Path(site) / "deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
               "--no-build-isolation", "--no-index", "--quiet", str(checkout)]  # fmt: skip
    p = subprocess.run(install, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    where = subprocess.run([str(python), "-c", "import ddbench.conf; print(ddbench.conf.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert where.stdout.startswith(site), where.stdout + where.stderr  # the installed copy
    p = subprocess.run([str(env_dir / "bin" / "ddbench"), "distill", "dataset=digits", "--cfg", "job"],
                       env=_cli_env(), cwd=checkout, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "name: digits" in p.stdout and "precision: auto" in p.stdout


_RECORD_MALLOPT = """
import ctypes, json, sys

calls = []


class CDLL(ctypes.CDLL):  # records every mallopt call made through ctypes
    def __getattr__(self, name):
        fn = super().__getattr__(name)
        if name == "mallopt":
            def mallopt(*args, fn=fn):
                calls.append(list(args))
                return fn(*args)
            setattr(self, name, mallopt)
            return mallopt
        return fn


ctypes.CDLL = CDLL
import ddbench, ddbench.cli, ddbench.engine, ddbench.protocol, ddbench.methods
from ddbench import _alloc

imported = {"calls": list(calls), "state": _alloc.state["mallopt"]}
sys.argv = ["ddbench", "--help"]
ddbench.cli.main()
print(json.dumps({"import": imported, "cli": {"calls": calls, "state": _alloc.state["mallopt"]}}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux")
def test_importing_ddbench_leaves_the_allocator_alone_and_only_the_cli_sets_it():
    # _DDBENCH_REEXEC: as after the CLI's restart, so that it sets glibc's allocator in-process
    env = _cli_env(_DDBENCH_REEXEC="1")
    p = subprocess.run([sys.executable, "-c", _RECORD_MALLOPT], env=env, capture_output=True,
                       text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["import"] == {"calls": [], "state": False}
    expected = [[_alloc.M_MMAP_MAX, 0], [_alloc.M_TRIM_THRESHOLD, 1 << 30]]
    assert out["cli"]["calls"][:2] == expected and out["cli"]["state"] is True
    # DDBENCH_ALLOCATOR=system: the CLI leaves it alone too
    p = subprocess.run([sys.executable, "-c", _RECORD_MALLOPT], capture_output=True, text=True,
                       env={**env, "DDBENCH_ALLOCATOR": "system"}, timeout=120, cwd=REPO)  # fmt: skip
    assert json.loads(p.stdout.strip().splitlines()[-1])["cli"] == {"calls": [], "state": False}


def _ddbench_imports(path: Path) -> set[str]:
    """The ddbench modules a file imports, at module level or in a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ddbench":
                out |= {f"ddbench.{a.name}" for a in node.names}
            elif node.module.startswith("ddbench."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ddbench.")}
    return out


def test_the_core_modules_import_each_other_without_a_cycle():
    modules = {
        f"ddbench.{f.stem}": f for f in (REPO / "ddbench").glob("*.py") if f.stem != "__init__"
    }
    graph = {m: _ddbench_imports(f) & set(modules) for m, f in modules.items()}
    assert "ddbench.teachers" in graph["ddbench.protocol"]  # the scan sees the imports
    state: dict[str, str] = {}

    def visit(m: str, path: tuple[str, ...]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            assert state.get(n) != "open", f"import cycle: {' -> '.join((*path, m, n))}"
            if n not in state:
                visit(n, (*path, m))
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, ())
