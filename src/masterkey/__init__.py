"""masterkey: the master key filters of depthwise-separable CNNs.

Data flow: weights → :class:`FilterBank` → :class:`KeySet` → fits / networks → results.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("masterkey")
except PackageNotFoundError:  # running from a source tree (PYTHONPATH=src)
    __version__ = "0.1.0+src"

from masterkey.bank import FilterBank, open_bank
from masterkey.errors import MasterkeyError
from masterkey.fit import FitResult, fit_affine, fit_bank
from masterkey.keys import KeySet, load_keys
from masterkey.normalize import FilterFlag, center_norm, filter_flags
from masterkey.sources import harvest, harvest_bank

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
