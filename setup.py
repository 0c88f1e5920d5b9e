"""Build maitred with its data plane compiled by mypyc.

The modules of ``maitred.proxy`` run once or more per request; mypyc compiles
their type-checked Python to C extension modules (about a quarter less Python
time per request, see bench/RESULTS.md). The source stays the reference: the
package imports it instead when MAITRED_PURE_PYTHON=1 or when a source file is
newer than its build (see src/maitred/proxy/__init__.py). Build without
compiling with MAITRED_PURE_PYTHON=1.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup

PROXY = Path("src/maitred/proxy")
# h2_connection subclasses h2's interpreted H2Connection, which mypyc cannot
# compile; it stays Python and is called through the interpreter.
INTERPRETED = {"__init__.py", "h2_connection.py"}


def compiled_modules() -> list[Extension]:
    if os.environ.get("MAITRED_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    sources = sorted(str(p) for p in PROXY.glob("*.py") if p.name not in INTERPRETED)
    return mypycify(sources, opt_level="3")


setup(ext_modules=compiled_modules())
