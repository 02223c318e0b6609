"""The swap stage: put keys into a pretrained network and measure what is left (the paper's Table 1).

:mod:`~masterkey.swap.session` swaps, evaluates and recalibrates (:class:`SwapSession`); :mod:`~masterkey.swap.results`
holds what it measured (:class:`SwapResults`) and writes its tables.
"""

from masterkey.swap.results import BASELINE, RESULT_COLUMNS, SwapResults, markdown_summary
from masterkey.swap.session import (
    Calibration,
    SwapSession,
    check_keys,
    expand_seeds,
    load_model,
    spec_group,
    write_swap_run,
)

__all__ = [
    "BASELINE",
    "RESULT_COLUMNS",
    "Calibration",
    "SwapResults",
    "SwapSession",
    "check_keys",
    "expand_seeds",
    "load_model",
    "markdown_summary",
    "spec_group",
    "write_swap_run",
]
