"""Lazy re-exports for package ``__init__`` modules (PEP 562): a name is imported on first use.

Packages re-export their modules' public names, but importing every module up front pulls in numpy,
pyarrow or river for a ``streamlearn --help``. :func:`lazy_exports` gives a package the module
``__getattr__`` and ``__dir__`` that import a name's module only when the name is first read.

Examples
--------
>>> getattr_, dir_ = lazy_exports("json", {"decoder": ("JSONDecodeError",)}, {})
>>> getattr_("JSONDecodeError").__name__
'JSONDecodeError'
>>> "JSONDecodeError" in dir_()
True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, tuple[str, ...]], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps submodule -> names it defines.

    A name read once is stored in ``namespace`` (the package's ``globals()``), so later reads are
    plain attribute lookups.
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
