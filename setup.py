"""Build maitred with its per-request packages compiled by mypyc.

The modules of ``maitred.proxy`` and ``maitred.balancing`` run once or more per
request; mypyc compiles their type-checked Python to C extension modules (about
a third less Python time per request, see bench/RESULTS.md). The source stays
the reference: maitred imports it instead when MAITRED_PURE_PYTHON=1 or when a
source file is newer than its build (src/maitred/compiled.py). Build without
compiling with MAITRED_PURE_PYTHON=1.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path("src/maitred")
# What to compile is named once, in maitred/compiled.py (standard library only, so it
# runs here without the package's dependencies).
_compiled = runpy.run_path(str(ROOT / "compiled.py"))
PACKAGES: tuple[str, ...] = _compiled["PACKAGES"]
INTERPRETED: frozenset[str] = _compiled["INTERPRETED"]


def compiled_modules() -> list[Extension]:
    if os.environ.get("MAITRED_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    sources = [
        str(path)
        for package in PACKAGES
        for path in sorted((ROOT / package).glob("*.py"))
        if path.name != "__init__.py" and f"{package}/{path.name}" not in INTERPRETED
    ]
    return mypycify(sources, opt_level="3")


setup(ext_modules=compiled_modules())
