"""Lazy package attributes (PEP 562): a package names its public objects and the modules that define them, and
each module is imported on first use. ``masterkey --help`` then never loads torch, pandas or timm."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the package ``package``: ``exports`` maps each public name to the module that
    defines it (``"module:attribute"`` where the module calls it otherwise; the subpackage's own name for a
    subpackage); the first look-up imports that module and caches the value in the package's namespace."""

    def __getattr__(name: str) -> Any:
        where = exports.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = where.partition(":")
        if module == f"{package}.{name}":  # a subpackage, imported on first use
            return importlib.import_module(module)
        value = getattr(importlib.import_module(module), attribute or name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
