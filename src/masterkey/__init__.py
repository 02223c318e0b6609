"""masterkey: the master key filters of depthwise-separable CNNs.

Data flow: weights → :class:`FilterBank` → :class:`KeySet` → fits / networks → results. Each stage is a function
named for what it does to what it is given, and returns an object that carries its numbers::

    import masterkey as mk

    bank = mk.harvest_bank(["convnext_atto@weights.safetensors"], "bank")    # FilterBank
    found = mk.discover_bank(bank, config=mk.DiscoverConfig(n_keys=8))      # {kernel size: Discovery}
    fits = mk.fit_bank(bank, found[7].keys)                                 # FitResult: cos² per filter
    report = mk.swap_depthwise(model, "paper8")                             # SwapReport: cos² per layer
    result = mk.train_network(mk.TrainConfig(mode="frozen", data="cifar10"))  # TrainResult: summary, model
    conversion = mk.convert_to_keys(my_model, "paper8")                     # frozen keys in any network

The stages are packages too (``mk.discover``, ``mk.swap``, ``mk.train``, ``mk.explain``) and the frozen-key layers
are :mod:`masterkey.nn` (``mk.nn``). The public names (and ``__version__``) are looked up on first use (PEP 562), so
that ``import masterkey`` (and with it every ``masterkey --help``) stays fast: torch, pandas and the rest load only
when something needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from masterkey.lazy import lazy_attributes

#: Each public name and the module that defines it (``module:name`` where it is called otherwise there).
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
    # the stages
    "DiscoverConfig": "masterkey.discover.rounds",
    "Discovery": "masterkey.discover.pipeline",
    "discover_bank": "masterkey.discover.pipeline",
    "SwapReport": "masterkey.networks.surgery",
    "swap_depthwise": "masterkey.networks.surgery",
    "SwapSession": "masterkey.swap.session",
    "TrainConfig": "masterkey.train.config",
    "TrainResult": "masterkey.train.loop",
    "train_network": "masterkey.train.loop:train",
    "convert_to_keys": "masterkey.nn.convert",
    "export_state_dict": "masterkey.nn.export",
    # the packages
    "discover": "masterkey.discover",
    "explain": "masterkey.explain",
    "nn": "masterkey.nn",
    "swap": "masterkey.swap",
    "train": "masterkey.train",
}

if TYPE_CHECKING:
    from masterkey import discover, explain, nn, swap, train
    from masterkey.bank import FilterBank, open_bank
    from masterkey.discover.pipeline import Discovery, discover_bank
    from masterkey.discover.rounds import DiscoverConfig
    from masterkey.errors import MasterkeyError
    from masterkey.fit import FitResult, fit_affine, fit_bank
    from masterkey.keys import KeySet, load_keys
    from masterkey.networks.surgery import SwapReport, swap_depthwise
    from masterkey.nn.convert import convert_to_keys
    from masterkey.nn.export import export_state_dict
    from masterkey.normalize import FilterFlag, center_norm, filter_flags
    from masterkey.sources import harvest, harvest_bank
    from masterkey.swap.session import SwapSession
    from masterkey.train.config import TrainConfig
    from masterkey.train.loop import TrainResult
    from masterkey.train.loop import train as train_network


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
    "DiscoverConfig",
    "Discovery",
    "FilterBank",
    "FilterFlag",
    "FitResult",
    "KeySet",
    "MasterkeyError",
    "SwapReport",
    "SwapSession",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "center_norm",
    "convert_to_keys",
    "discover",
    "discover_bank",
    "explain",
    "export_state_dict",
    "filter_flags",
    "fit_affine",
    "fit_bank",
    "harvest",
    "harvest_bank",
    "load_keys",
    "nn",
    "open_bank",
    "swap",
    "swap_depthwise",
    "train",
    "train_network",
]
