"""The data plane: HTTP/1.1, HTTP/2 and TCP proxying.

A normal build compiles these modules with mypyc (setup.py). What runs must be
what the source says, so the compiled modules are bypassed, all together
(compiled modules call each other directly), when MAITRED_PURE_PYTHON=1 or when
any source file is newer than its compiled module, as after an edit or a pull
in a checkout: the package then imports its source files.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from pathlib import Path


def _stale_builds(directory: Path) -> list[str]:
    stale = []
    for built in directory.glob("*.so"):
        source = directory / (built.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
            stale.append(source.name)
    return stale


def _import_sources_only(directory: str) -> None:
    # Submodules are found through the finder cached for this directory; one that
    # knows only source and bytecode loaders never picks an extension module.
    sys.path_importer_cache[directory] = importlib.machinery.FileFinder(
        directory,
        (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
        (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
    )


_here = __path__[0]
_stale = _stale_builds(Path(_here))
if os.environ.get("MAITRED_PURE_PYTHON") == "1" or _stale:
    if _stale:
        print(
            f"maitred: {', '.join(sorted(_stale))} changed since the data plane was compiled; "
            "running its Python source (`make setup` recompiles)",
            file=sys.stderr,
        )
    _import_sources_only(_here)
