"""The data plane runs compiled by mypyc, and its source wins whenever they differ.

`make setup` (pip install) compiles ``maitred.proxy`` (setup.py). The package
imports its Python source instead, all modules together, when
MAITRED_PURE_PYTHON=1 or when any source file is newer than its build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import maitred.proxy

PROXY_DIR = Path(maitred.proxy.__path__[0])
SRC_DIR = PROXY_DIR.parent.parent
# Subclasses h2's interpreted H2Connection: mypyc cannot compile it (setup.py).
INTERPRETED = {"__init__", "h2_connection"}
COMPILED = sorted(p.stem for p in PROXY_DIR.glob("*.py") if p.stem not in INTERPRETED)

SHOW_ORIGINS = (
    "import importlib, sys\n"
    "for name in sys.argv[1:]:\n"
    "    module = importlib.import_module('maitred.proxy.' + name)\n"
    "    print(name, module.__file__)\n"
)


def _origins(env: dict[str, str], names: list[str]) -> dict[str, str]:
    completed = subprocess.run(
        [sys.executable, "-c", SHOW_ORIGINS, *names],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    origins = dict(line.split(" ", 1) for line in completed.stdout.splitlines())
    return origins | {"stderr": completed.stderr}


@pytest.mark.skipif(
    os.environ.get("MAITRED_PURE_PYTHON") == "1", reason="MAITRED_PURE_PYTHON=1 runs the source"
)
def test_every_data_plane_module_is_compiled() -> None:
    import importlib

    for name in COMPILED:
        module = importlib.import_module(f"maitred.proxy.{name}")
        assert module.__file__ is not None and module.__file__.endswith(".so"), (
            f"maitred.proxy.{name} runs from {module.__file__}: `make setup` compiles it"
        )


def test_pure_python_mode_imports_every_source_file() -> None:
    env = dict(os.environ, MAITRED_PURE_PYTHON="1")
    origins = _origins(env, COMPILED)
    for name in COMPILED:
        assert origins[name] == str(PROXY_DIR / f"{name}.py")


def test_an_edited_source_file_makes_the_whole_package_run_from_source(
    tmp_path: Path,
) -> None:
    built = list(PROXY_DIR.glob("*.so"))
    if not built:
        pytest.skip("this checkout's data plane is not compiled")
    # A copy of the package with its build (copy2 keeps modification times).
    copy = tmp_path / "src"
    shutil.copytree(SRC_DIR / "maitred", copy / "maitred", ignore=shutil.ignore_patterns("*.pyc"))
    for shared in SRC_DIR.glob("*__mypyc*.so"):
        shutil.copy2(shared, copy)
    env = dict(os.environ, PYTHONPATH=str(copy))
    env.pop("MAITRED_PURE_PYTHON", None)

    fresh = _origins(env, ["http1", "upstream"])
    assert fresh["http1"].endswith(".so") and fresh["upstream"].endswith(".so")
    assert fresh["stderr"] == ""

    edited = copy / "maitred" / "proxy" / "http1.py"
    later = max(p.stat().st_mtime for p in built) + 10
    os.utime(edited, (later, later))
    stale = _origins(env, ["http1", "upstream"])
    assert stale["http1"] == str(edited)
    # upstream did not change, but compiled modules call each other directly: all or none.
    assert stale["upstream"] == str(copy / "maitred" / "proxy" / "upstream.py")
    assert "http1.py changed since the data plane was compiled" in stale["stderr"]
