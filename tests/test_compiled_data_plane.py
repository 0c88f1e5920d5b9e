"""The per-request packages run compiled by mypyc, and their source wins whenever
they differ.

`make setup` (pip install) compiles maitred.proxy and maitred.balancing
(setup.py). maitred imports their Python source instead, every module together,
when MAITRED_PURE_PYTHON=1 or when any source file is newer than its build
(maitred/compiled.py).
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import maitred
from maitred import compiled

PACKAGE_DIR = Path(maitred.__file__).parent
SRC_DIR = PACKAGE_DIR.parent
SETUP_PY = SRC_DIR.parent / "setup.py"
MODULES = sorted(
    f"{package}.{path.stem}"
    for package in compiled.PACKAGES
    for path in (PACKAGE_DIR / package).glob("*.py")
    if path.name != "__init__.py" and f"{package}/{path.name}" not in compiled.INTERPRETED
)

SHOW_ORIGINS = (
    "import importlib, sys\n"
    "for name in sys.argv[1:]:\n"
    "    print(name, importlib.import_module('maitred.' + name).__file__)\n"
)


def _origins(env: dict[str, str], names: list[str]) -> tuple[dict[str, str], str]:
    completed = subprocess.run(
        [sys.executable, "-c", SHOW_ORIGINS, *names],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(line.split(" ", 1) for line in completed.stdout.splitlines()), completed.stderr


@pytest.mark.skipif(
    os.environ.get("MAITRED_PURE_PYTHON") == "1", reason="MAITRED_PURE_PYTHON=1 runs the source"
)
def test_every_per_request_module_is_compiled() -> None:
    assert "proxy.http1" in MODULES and "balancing.round_robin" in MODULES
    for name in MODULES:
        module = importlib.import_module(f"maitred.{name}")
        assert module.__file__ is not None and module.__file__.endswith(".so"), (
            f"maitred.{name} runs from {module.__file__}: `make setup` compiles it"
        )


def _source(module: str) -> Path:
    return PACKAGE_DIR / (module.replace(".", "/") + ".py")


CONSTANT_NAME = re.compile(r"_?[A-Z][A-Z0-9_]*")


def _is_final(annotation: ast.expr) -> bool:
    if isinstance(annotation, ast.Subscript):
        annotation = annotation.value
    return isinstance(annotation, ast.Name) and annotation.id == "Final"


def test_module_constants_of_compiled_modules_are_final() -> None:
    # mypyc compiles a Final module constant to a C constant (or a C static); any
    # other module-level name is looked up in the module's dictionary at each use,
    # which was 8% of the per-request time before the constants were marked Final.
    unmarked = []
    for name in MODULES:
        path = _source(name)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                targets = [t for t in node.targets if isinstance(t, ast.Name)]
                annotation = None
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                targets, annotation = [node.target], node.annotation
            else:
                continue
            for target in targets:
                if CONSTANT_NAME.fullmatch(target.id) and (
                    annotation is None or not _is_final(annotation)
                ):
                    unmarked.append(f"{path.relative_to(SRC_DIR)}:{node.lineno} {target.id}")
    assert not unmarked, "module constants of compiled modules must be Final: " + ", ".join(
        unmarked
    )


def test_compiled_modules_search_bytes_with_find_not_in() -> None:
    # CPython 3.11's `sub in data` on bytes first tries `sub` as an integer: a
    # TypeError is formatted and cleared each time. `b"#" in url` alone was 2.5% of
    # the per-request time; `data.find(sub) >= 0` raises nothing.
    found = []
    for name in MODULES:
        path = _source(name)
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Compare)
                and isinstance(node.left, ast.Constant)
                and isinstance(node.left.value, bytes)
                and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
            ):
                found.append(f"{path.relative_to(SRC_DIR)}:{node.lineno}")
    assert not found, "search bytes with .find(), not `in`: " + ", ".join(found)


def test_pure_python_mode_imports_every_source_file() -> None:
    origins, _ = _origins(dict(os.environ, MAITRED_PURE_PYTHON="1"), MODULES)
    for name in MODULES:
        assert origins[name] == str(_source(name))


def test_an_edited_source_file_makes_every_compiled_package_run_from_source(
    tmp_path: Path,
) -> None:
    built = list(PACKAGE_DIR.glob("*/*.so"))
    if not built:
        pytest.skip("this checkout is not compiled")
    # A copy of the checkout's package with its build (copy2 keeps modification times).
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE_DIR, copy / "maitred", ignore=shutil.ignore_patterns("*.pyc"))
    for shared in SRC_DIR.glob("*__mypyc*.so"):
        shutil.copy2(shared, copy)
    shutil.copy2(SETUP_PY, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(copy))
    env.pop("MAITRED_PURE_PYTHON", None)
    names = ["proxy.http1", "proxy.upstream", "balancing.round_robin"]

    fresh, warnings = _origins(env, names)
    assert all(fresh[name].endswith(".so") for name in names), fresh
    assert warnings == ""

    edited = copy / "maitred" / "proxy" / "http1.py"
    later = max(path.stat().st_mtime for path in built) + 10
    os.utime(edited, (later, later))
    stale, warnings = _origins(env, names)
    # Only http1 changed, but compiled modules call each other directly: all or none.
    for name in names:
        assert stale[name] == str(copy / "maitred" / (name.replace(".", "/") + ".py"))
    assert "proxy/http1.py changed since it was compiled" in warnings

    # Installed (no checkout around it), the build runs whatever the files' times:
    # installing may write a source file after its compiled module.
    (tmp_path / "setup.py").unlink()
    installed, warnings = _origins(env, names)
    assert all(installed[name].endswith(".so") for name in names), installed
    assert warnings == ""
