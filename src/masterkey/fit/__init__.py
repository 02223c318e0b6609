"""The exact affine fit of filters to keys (docs/design.md, pipeline step 4), in three modules: :mod:`.affine`
(the math: :func:`fit_affine`), :mod:`.bank_fit` (:func:`fit_bank`, its summaries) and :mod:`.run` (the fit run
directory and the report as text). Every public name is importable from ``masterkey.fit``."""

from masterkey.fit.affine import (
    EXACT_RESIDUAL_COS2,
    FIT_CHUNK,
    FIT_CHUNK_CUDA,
    FIT_COLUMNS,
    MAX_ABS_WEIGHT,
    FitResult,
    fit_affine,
    fit_chunk_size,
    fit_chunks,
    fittable,
)
from masterkey.fit.bank_fit import QUANTILES, BankFit, fit_bank, fit_report, summarize
from masterkey.fit.run import fit_kernel, render_markdown, render_text, write_fit_run

__all__ = [
    "EXACT_RESIDUAL_COS2",
    "FIT_CHUNK",
    "FIT_CHUNK_CUDA",
    "FIT_COLUMNS",
    "MAX_ABS_WEIGHT",
    "QUANTILES",
    "BankFit",
    "FitResult",
    "fit_affine",
    "fit_bank",
    "fit_chunk_size",
    "fit_chunks",
    "fit_kernel",
    "fit_report",
    "fittable",
    "render_markdown",
    "render_text",
    "summarize",
    "write_fit_run",
]
