"""Which packages mypyc compiles, and running their source when the build is stale.

A normal build compiles the per-request packages with mypyc (setup.py). What
runs must be what the source says, so the compiled modules are bypassed, all
together (compiled modules call each other directly, across packages), when
MAITRED_PURE_PYTHON=1 or when any source file is newer than its compiled
module, as after an edit or a pull in a checkout: the packages then import
their source files. This module itself is never compiled.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from pathlib import Path

#: The packages setup.py compiles (each module but __init__ and INTERPRETED).
PACKAGES = ("proxy", "balancing")
#: Modules mypyc cannot compile. h2_connection subclasses h2's interpreted
#: H2Connection, which a compiled class cannot do.
INTERPRETED = frozenset({"proxy/h2_connection.py"})


def stale_sources(root: Path) -> list[str]:
    """Source files (relative to ``root``) newer than their compiled module, in a
    checkout (an installed copy is never edited, and installing it may well write a
    source file after its compiled module)."""
    if not (root.parent.parent / "setup.py").exists():
        return []
    stale = []
    for package in PACKAGES:
        for built in (root / package).glob("*.so"):
            source = built.with_name(built.name.split(".", 1)[0] + ".py")
            if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
                stale.append(f"{package}/{source.name}")
    return sorted(stale)


def _import_sources_only(directory: Path) -> None:
    # Submodules are found through the finder cached for their package's directory;
    # one that knows only source and bytecode loaders never picks an extension module.
    sys.path_importer_cache[str(directory)] = importlib.machinery.FileFinder(
        str(directory),
        (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
        (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
    )


def choose_source_or_build(root: Path) -> None:
    """Called by maitred/__init__.py before any compiled package is imported."""
    stale = stale_sources(root)
    if stale:
        print(
            f"maitred: {', '.join(stale)} changed since it was compiled; running the "
            "Python source of the compiled packages (`make setup` recompiles)",
            file=sys.stderr,
        )
    if stale or os.environ.get("MAITRED_PURE_PYTHON") == "1":
        for package in PACKAGES:
            _import_sources_only(root / package)
