"""masterkey: the master key filters of depthwise-separable CNNs.

Data flow: weights → :class:`FilterBank` → :class:`KeySet` → fits / networks → results.

The public names below (and ``__version__``) are looked up on first use (PEP 562), so that ``import masterkey``
(and with it every ``masterkey --help``) stays fast: torch, pandas and the rest load only when something needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from masterkey.lazy import lazy_attributes

#: Each public name and the module that defines it.
_PUBLIC = {
    "FilterBank": "masterkey.bank",
    "open_bank": "masterkey.bank",
    "MasterkeyError": "masterkey.errors",
    "FitResult": "masterkey.fit",
    "fit_affine": "masterkey.fit",
    "fit_bank": "masterkey.fit",
    "KeySet": "masterkey.keys",
    "load_keys": "masterkey.keys",
    "FilterFlag": "masterkey.normalize",
    "center_norm": "masterkey.normalize",
    "filter_flags": "masterkey.normalize",
    "harvest": "masterkey.sources",
    "harvest_bank": "masterkey.sources",
}

if TYPE_CHECKING:
    from masterkey.bank import FilterBank, open_bank
    from masterkey.errors import MasterkeyError
    from masterkey.fit import FitResult, fit_affine, fit_bank
    from masterkey.keys import KeySet, load_keys
    from masterkey.normalize import FilterFlag, center_norm, filter_flags
    from masterkey.sources import harvest, harvest_bank


_public_attribute, __dir__ = lazy_attributes(__name__, {**_PUBLIC, "__version__": __name__})


def __getattr__(name: str) -> Any:
    if name == "__version__":  # looked up on first use: importlib.metadata alone takes a tenth of a second
        global __version__
        __version__ = _installed_version()
        return __version__
    return _public_attribute(name)


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("masterkey")
    except PackageNotFoundError:  # running from a source tree (PYTHONPATH=src)
        return "0.1.0+src"


__all__ = [
    "FilterBank",
    "FilterFlag",
    "FitResult",
    "KeySet",
    "MasterkeyError",
    "__version__",
    "center_norm",
    "filter_flags",
    "fit_affine",
    "fit_bank",
    "harvest",
    "harvest_bank",
    "load_keys",
    "open_bank",
]
