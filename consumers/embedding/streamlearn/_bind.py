"""Bind the names of streamlearn's internal packages to its own installed copies.

Python resolves ``import state`` by the first match on ``sys.path``, and a script's directory comes
first: a ``state/`` folder beside an application would become the ``state`` package (a namespace
package, when the folder has no ``__init__.py``), and streamlearn's imports of it would fail. So
before anything imports them, each internal package is loaded from the directory that holds this
installation, by file location, and registered under its name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

INTERNAL_PACKAGES = ("pipeline", "state", "consumers")


def installation_root() -> Path:
    """The directory holding streamlearn's packages: site-packages, or a source checkout's root."""
    here = Path(__file__).resolve().parent
    for root in (here.parent, here.parents[2]):  # installed beside them; in a checkout, consumers/embedding/
        if all((root / name / "__init__.py").is_file() for name in INTERNAL_PACKAGES):
            return root
    raise ImportError(
        f"streamlearn: its packages {', '.join(INTERNAL_PACKAGES)} are not installed beside {here}"
    )


def bind_internal_packages() -> None:
    """Import each internal package from :func:`installation_root` (once; idempotent)."""
    root = installation_root()
    for name in INTERNAL_PACKAGES:
        init = root / name / "__init__.py"
        loaded = sys.modules.get(name)
        if loaded is not None:
            where = getattr(loaded, "__file__", None)
            if where is not None and Path(where).resolve() == init:
                continue
            found = where or ", ".join(getattr(loaded, "__path__", [])) or "an unknown place"
            raise ImportError(
                f"streamlearn uses a package named {name!r}, but another {name!r} is already imported "
                f"(from {found}); import streamlearn before it, or rename the application's package"
            )
        spec = importlib.util.spec_from_file_location(
            name, init, submodule_search_locations=[str(init.parent)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
