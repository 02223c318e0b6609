"""The swap stage: put keys into a pretrained network and measure what is left (the paper's Table 1).

:mod:`~masterkey.swap.session` swaps, evaluates and recalibrates (:class:`SwapSession`); :mod:`~masterkey.swap.results`
holds what it measured (:class:`SwapResults`) and writes its tables; :mod:`~masterkey.swap.save` saves the swapped
network (plain weights, ONNX). Names are looked up on first use: ``import masterkey.swap`` loads no torch.
"""

from typing import TYPE_CHECKING

from masterkey.lazy import lazy_attributes

if TYPE_CHECKING:
    from masterkey.swap.results import BASELINE, RESULT_COLUMNS, SwapResults, markdown_summary
    from masterkey.swap.save import SavedNetwork, network_metadata, save_swapped
    from masterkey.swap.session import (
        Calibration,
        SwapSession,
        check_keys,
        expand_seeds,
        load_model,
        spec_group,
        write_swap_run,
    )

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "BASELINE": "masterkey.swap.results",
        "RESULT_COLUMNS": "masterkey.swap.results",
        "SwapResults": "masterkey.swap.results",
        "markdown_summary": "masterkey.swap.results",
        "SavedNetwork": "masterkey.swap.save",
        "network_metadata": "masterkey.swap.save",
        "save_swapped": "masterkey.swap.save",
        "Calibration": "masterkey.swap.session",
        "SwapSession": "masterkey.swap.session",
        "check_keys": "masterkey.swap.session",
        "expand_seeds": "masterkey.swap.session",
        "load_model": "masterkey.swap.session",
        "spec_group": "masterkey.swap.session",
        "write_swap_run": "masterkey.swap.session",
    },
)

__all__ = [
    "BASELINE",
    "RESULT_COLUMNS",
    "Calibration",
    "SavedNetwork",
    "SwapResults",
    "SwapSession",
    "check_keys",
    "expand_seeds",
    "load_model",
    "markdown_summary",
    "network_metadata",
    "save_swapped",
    "spec_group",
    "write_swap_run",
]
