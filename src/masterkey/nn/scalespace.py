"""Keys generated from discrete scale-space models whose scales train: the kernel of the ``scalespace`` mode.

The models (family, σx, σy, γ, sign per key) come with the key set (``scalespace8``, or any key set made by
:func:`masterkey.scalespace.scalespace_keyset`: :func:`~masterkey.scalespace.stored_models`) or from a fit of the
keys (:func:`masterkey.scalespace.scalespace_models`); this module only trains them (the kernels themselves are
:mod:`masterkey.kernels`, the models :mod:`masterkey.scalespace`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from masterkey.errors import MasterkeyError
from masterkey.nn.layers import KernelParametrization
from masterkey.nn.modes import SIGMA_SCOPES
from masterkey.scalespace import ScaleSpaceKey, model_keyset, models_from_rows, stored_models

__all__ = ["ScaleSpaceKernel", "ScaleSpaceKey", "model_keyset", "models_from_rows", "stored_models"]


class ScaleSpaceKernel(KernelParametrization):
    """Keys that are discrete scale-space models with learnable scales.

    Channel ``c`` holds key ``key_index[c]``; its kernel is ``scale[c] * unit(sign * model(σx, σy, γ)) + offset[c]``
    where ``model`` is the key's family (:func:`masterkey.kernels.scalespace_kernel_torch`, differentiable) and
    ``unit`` centres and normalises as :class:`~masterkey.keys.KeySet` does. ``σ = exp(log σ)`` (always positive;
    Adam then moves σ by ratios). Scope ``key``: one entry of ``log_sigma_x`` / ``log_sigma_y`` per key of the set
    [K], shared by all channels of the layer holding it; scope ``channel``: one per channel [C]. ``gamma`` holds γ
    for the rows of the ``gaussian-laplacian`` family only. Families and signs are fixed; ``scale`` is a buffer
    (``learn_scale``: a parameter). The model kernels are computed in float64 outside autocast.
    """

    def __init__(
        self,
        models: Sequence[ScaleSpaceKey],
        key_index: Tensor,
        kernel_size: int,
        scope: str = "key",
        scale: Tensor | None = None,
        offset: Tensor | None = None,
        learn_scale: bool = False,
    ) -> None:
        key_index = torch.as_tensor(key_index).long()
        c = len(key_index)
        super().__init__(c, (kernel_size, kernel_size), key_index)
        if scope not in SIGMA_SCOPES:
            raise MasterkeyError(f"sigma scope '{scope}': expected one of {', '.join(SIGMA_SCOPES)}")
        self.scope = scope
        rows = list(models) if scope == "key" else [models[int(i)] for i in key_index.tolist()]
        self.families = tuple(m.family for m in rows)
        self.register_buffer("group", (key_index if scope == "key" else torch.arange(c)).clone())
        # 1-D parameters: the optimiser's grouping gives them no weight decay (which would pull log σ to 0).
        for axis in ("x", "y"):
            sigma = torch.tensor([getattr(m, f"sigma_{axis}") for m in rows], dtype=torch.float64)
            setattr(self, f"log_sigma_{axis}", nn.Parameter(sigma.clamp_min(1e-3).log().float()))
        gl_rows = [i for i, f in enumerate(self.families) if f == "gaussian-laplacian"]
        if gl_rows:
            self.gamma: nn.Parameter | None = nn.Parameter(torch.tensor([rows[i].gamma for i in gl_rows]).float())
        else:  # no empty parameter: DDP would wait for its gradient
            self.register_parameter("gamma", None)
        self.register_buffer("sign", torch.tensor([float(m.sign) for m in rows]))
        init_scale = torch.ones(c) if scale is None else torch.as_tensor(scale, dtype=torch.float32).reshape(c)
        if learn_scale:
            self.scale = nn.Parameter(init_scale.clone())
        else:
            self.register_buffer("scale", init_scale.clone())
        init_offset = torch.zeros(c) if offset is None else torch.as_tensor(offset, dtype=torch.float32)
        self.offset = nn.Parameter(init_offset.reshape(c).clone())
        # Rows of each family, in one order, and where each row lands again (for one gather per forward).
        by_family: dict[str, list[int]] = {}
        for i, family in enumerate(self.families):
            by_family.setdefault(family, []).append(i)
        self._groups = [(family, len(ids)) for family, ids in by_family.items()]
        order = [i for ids in by_family.values() for i in ids]
        self.register_buffer("_order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.register_buffer("_inverse", torch.argsort(self._order), persistent=False)
        position = torch.full((len(rows),), -1, dtype=torch.long)
        position[gl_rows] = torch.arange(len(gl_rows))
        self.register_buffer("_gamma_row", position, persistent=False)

    @property
    def sigma(self) -> Tensor:
        """(σx, σy) per row [G, 2]."""
        return torch.stack([self.log_sigma_x, self.log_sigma_y], dim=1).exp()

    def row_gamma(self) -> Tensor:
        """γ per parameter row [G] (NaN for rows whose family has none)."""
        out = torch.full((len(self.families),), math.nan, device=self._gamma_row.device)
        if self.gamma is not None:
            rows = self._gamma_row >= 0
            out[rows] = self.gamma.detach().float()[self._gamma_row[rows]]
        return out

    def unit_keys(self) -> Tensor:
        """The centred, unit-norm, sign-aligned model kernel of every row [G, k, k] (float64)."""
        from masterkey.kernels import scalespace_kernel_torch

        k = self.kernel_size[0]
        with torch.autocast(self.log_sigma_x.device.type, enabled=False):
            sigma_x = self.log_sigma_x.double().exp()[self._order]
            sigma_y = self.log_sigma_y.double().exp()[self._order]
            gamma_rows = self._gamma_row[self._order]
            parts, start = [], 0
            for family, count in self._groups:
                rows = slice(start, start + count)
                gamma = None
                if family == "gaussian-laplacian" and self.gamma is not None:
                    gamma = self.gamma.double()[gamma_rows[rows]]
                parts.append(scalespace_kernel_torch(family, sigma_x[rows], sigma_y[rows], gamma, k))
                start += count
            raw = torch.cat(parts)[self._inverse].flatten(1)
            # masterkey.normalize's arithmetic, kept here as a near-copy on purpose: this runs inside autograd at
            # every training step, and the clamp keeps the gradient finite where a σ makes a model (nearly)
            # constant, where center_norm would raise instead.
            centred = raw - raw.mean(dim=1, keepdim=True)
            unit = centred / torch.linalg.vector_norm(centred, dim=1, keepdim=True).clamp_min(1e-30)
            return (unit * self.sign.double()[:, None]).reshape(-1, k, k)

    def kernel(self) -> Tensor:
        """``scale * unit_key + offset`` per channel [C, 1, k, k] (in the offset's dtype; differentiable in σ, γ and
        the offset)."""
        keys = self.unit_keys()[self.group].to(self.offset.dtype)
        return (keys * self.scale[:, None, None] + self.offset[:, None, None])[:, None]

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, scope={self.scope}"
