"""masterkey: the master key filters of depthwise-separable CNNs.

Data flow: weights → :class:`FilterBank` → :class:`KeySet` → fits / networks → results.

The public names below are imported on first use (PEP 562), so that ``import masterkey`` (and with it every
``masterkey --help``) stays fast: torch, pandas and the rest load only when something needs them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from masterkey.lazy import lazy_attributes

try:
    __version__ = version("masterkey")
except PackageNotFoundError:  # running from a source tree (PYTHONPATH=src)
    __version__ = "0.1.0+src"

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


__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)

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
