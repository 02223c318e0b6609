"""The explain stage's name for :mod:`masterkey.scalespace`, where scale-space models of keys live (fits, stored
models, generated key sets): they moved below the stages because training's ``scalespace`` mode starts from them
too. Kept so that ``from masterkey.explain.scalespace import fit_keyset`` keeps working; nothing is defined here."""

from masterkey.kernels import FAMILIES, PAPER8_SCALESPACE, scalespace_kernel
from masterkey.scalespace import (
    BOUND_NOTE,
    GAMMA_MAX,
    SCALESPACE_COLUMNS,
    SIGMA_MAX,
    ScaleSpaceFit,
    at_bound,
    family_for_label,
    fit_keyset,
    fit_scalespace,
    paper8_parameters,
    scalespace_keyset,
    scalespace_models,
)

__all__ = [
    "BOUND_NOTE",
    "FAMILIES",
    "GAMMA_MAX",
    "PAPER8_SCALESPACE",
    "SCALESPACE_COLUMNS",
    "SIGMA_MAX",
    "ScaleSpaceFit",
    "at_bound",
    "family_for_label",
    "fit_keyset",
    "fit_scalespace",
    "paper8_parameters",
    "scalespace_kernel",
    "scalespace_keyset",
    "scalespace_models",
]
