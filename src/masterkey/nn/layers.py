"""Depthwise kernels made of keys, registered on a conv's ``weight`` with :mod:`torch.nn.utils.parametrize`.

A converted depthwise convolution stays the module it was — an ``nn.Conv2d``, a subclass of it, timm's
``Conv2dSame`` (``isinstance(conv, nn.Conv2d)`` holds, its own ``forward`` runs) — but its ``weight`` is computed
on every access by a :class:`KernelParametrization` from the parametrization's own parameters and buffers:

- :class:`KeyKernel`: ``scale * key + offset`` per channel, ``key`` a frozen buffer (no optimiser, weight decay or
  gradient ever touches it), ``offset`` the learnable per-channel ``b`` the authors add to the kernel, ``scale`` an
  optional learnable ``a`` (not absorbable when a LayerNorm follows the conv, as in ConvNeXt);
- :class:`SpanKernel`: ``Σ_j alpha[c, j] key_j + offset[c]``, all keys frozen, the mixing weights learnable;
- :class:`~masterkey.nn.scalespace.ScaleSpaceKernel`: keys generated from scale-space models with learnable σ.

The conv's own ``bias`` stays as it is. Parameters live at ``<conv>.parametrizations.weight.0.<name>`` (e.g.
``offset``); :func:`masterkey.nn.export.export_state_dict` turns a converted model back into a plain state_dict
and :func:`masterkey.nn.export.materialize` back into plain convs.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from masterkey.depthwise import is_depthwise
from masterkey.errors import MasterkeyError


class KernelParametrization(nn.Module):
    """The base of every key kernel: computes a depthwise kernel [C, 1, k, k] from its own parameters and buffers.

    ``channels`` (C) and ``kernel_size`` (k, k) describe the kernel; the buffer ``key_index`` [C] holds the key
    each channel was assigned (-1 when unknown). Subclasses define :meth:`kernel`. As a parametrization it takes
    no tensor from the conv: the conv's original weight is dropped when the kernel is attached
    (:func:`attach_kernel`), and assigning ``conv.weight`` afterwards is refused.
    """

    def __init__(self, channels: int, kernel_size: tuple[int, int], key_index: Tensor | None = None) -> None:
        super().__init__()
        self.channels, self.kernel_size = int(channels), (int(kernel_size[0]), int(kernel_size[1]))
        index = torch.full((channels,), -1, dtype=torch.long) if key_index is None else torch.as_tensor(key_index)
        self.register_buffer("key_index", index.long().reshape(channels).clone())
        self._attached = False

    def kernel(self) -> Tensor:
        """The kernel [C, 1, k, k]."""
        raise NotImplementedError

    def forward(self, *originals: Tensor) -> Tensor:
        return self.kernel()

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, ...]:
        """No tensor of the conv is kept (the kernel is made of this module's own tensors)."""
        if self._attached:
            raise MasterkeyError(
                "the weight of a key layer is computed from its keys and cannot be assigned; materialize the model "
                "first (masterkey.nn.materialize)"
            )
        return ()

    @property
    def weight(self) -> Tensor:
        """The kernel (what the conv's ``weight`` reads)."""
        return self.kernel()

    def kernel_parameters(self) -> int:
        """Trainable parameters that shape the kernel."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class KeyKernel(KernelParametrization):
    """Per channel ``scale * key + offset`` with ``key`` frozen.

    Parameters: ``offset`` [C] (the learnable ``b``) and ``scale`` [C] when ``learn_scale`` (else ``None``).
    Buffers: ``key`` [C, 1, k, k] (frozen; without ``learn_scale`` a given ``scale`` is folded into it) and
    ``key_index`` [C].
    """

    def __init__(
        self,
        keys: Tensor,
        key_index: Tensor | None = None,
        *,
        offset: Tensor | None = None,
        scale: Tensor | None = None,
        learn_scale: bool = False,
    ) -> None:
        keys = torch.as_tensor(keys).detach().to(torch.float32)
        c, k = keys.shape[0], tuple(keys.shape[-2:])
        super().__init__(c, k, key_index)  # type: ignore[arg-type]
        keys = keys.reshape(c, 1, *self.kernel_size)
        init_scale = torch.ones(c) if scale is None else torch.as_tensor(scale, dtype=torch.float32).reshape(c)
        if not learn_scale:
            keys = keys * init_scale[:, None, None, None]
        self.register_buffer("key", keys.contiguous())
        self.offset = nn.Parameter(_per_channel(offset, c, 0.0))
        if learn_scale:
            self.scale: nn.Parameter | None = nn.Parameter(init_scale.clone())
        else:
            self.register_parameter("scale", None)

    def kernel(self) -> Tensor:
        """``scale * key + offset`` [C, 1, k, k] (differentiable in ``scale`` and ``offset``)."""
        w = self.key
        if self.scale is not None:
            w = w * self.scale[:, None, None, None]
        return w + self.offset[:, None, None, None]

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, learn_scale={self.scale is not None}"


class SpanKernel(KernelParametrization):
    """Per channel ``Σ_j alpha[c, j] key_j + offset[c]``: all keys frozen, their mix learnable.

    Buffer ``basis`` [K, k, k] (the unit keys); parameters ``alpha`` [C, K] and ``offset`` [C]. ``key_index`` is the
    key each channel started from. With a one-hot ``alpha`` (``alpha[c, key_index[c]] = s``) the kernel is exactly
    ``s * key + offset``. ``alpha`` is two-dimensional, the counterpart of a conv weight: optimisers grouped by
    :func:`masterkey.nn.param_groups` decay it like one.
    """

    def __init__(
        self, basis: Tensor, alpha: Tensor, offset: Tensor | None = None, key_index: Tensor | None = None
    ) -> None:
        basis = torch.as_tensor(basis).detach().to(torch.float32)
        if basis.ndim != 3:
            raise MasterkeyError(f"span keys: expected [K, k, k], got {tuple(basis.shape)}")
        alpha = torch.as_tensor(alpha, dtype=torch.float32)
        c = alpha.shape[0]
        super().__init__(c, tuple(basis.shape[1:]), key_index)  # type: ignore[arg-type]
        self.register_buffer("basis", basis.contiguous())
        self.alpha = nn.Parameter(alpha.reshape(c, len(basis)).clone())
        self.offset = nn.Parameter(_per_channel(offset, c, 0.0))

    def kernel(self) -> Tensor:
        """``alpha @ basis + offset`` as [C, 1, k, k], in float32 even under autocast."""
        with torch.autocast(self.alpha.device.type, enabled=False):
            mixed = (self.alpha @ self.basis.flatten(1)).reshape(self.channels, 1, *self.kernel_size)
        return mixed + self.offset[:, None, None, None]

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, keys={len(self.basis)}"


def _per_channel(values: Tensor | None, channels: int, fill: float) -> Tensor:
    if values is None:
        return torch.full((channels,), fill)
    return torch.as_tensor(values, dtype=torch.float32).detach().reshape(channels).clone()


# ---------------------------------------------------------------------- attaching and finding
def attach_kernel(conv: nn.Module, kernel: KernelParametrization) -> nn.Module:
    """Make ``kernel`` the weight of the depthwise conv ``conv``, in place (``conv`` keeps its class and bias).

    ``conv`` is any depthwise ``nn.Conv2d`` (a subclass, timm ``Conv2dSame``, a channel multiplier: one kernel per
    output channel) whose forward reads ``self.weight``. The kernel moves to the conv's device and dtype. Returns
    ``conv``.
    """
    if not is_depthwise(conv):
        raise MasterkeyError(f"a {type(conv).__name__} is not a depthwise nn.Conv2d: it cannot hold keys")
    if kernel_of(conv) is not None:
        raise MasterkeyError(f"this {type(conv).__name__} already holds keys (materialize it first)")
    shape = (kernel.channels, 1, *kernel.kernel_size)
    if tuple(conv.weight.shape) != shape:
        raise MasterkeyError(f"a kernel of shape {shape} cannot replace a depthwise weight {tuple(conv.weight.shape)}")
    kernel.to(device=conv.weight.device, dtype=conv.weight.dtype)  # floating-point tensors only
    parametrize.register_parametrization(conv, "weight", kernel)
    kernel._attached = True
    return conv


def kernel_of(module: nn.Module) -> KernelParametrization | None:
    """The key kernel that computes ``module.weight``, or None for any other module."""
    lists = getattr(module, "parametrizations", None)
    if lists is None or "weight" not in lists:
        return None
    first = lists["weight"][0]
    return first if isinstance(first, KernelParametrization) else None


def key_layers(model: nn.Module) -> list[tuple[str, KernelParametrization]]:
    """Every key-holding conv of ``model`` (DDP / DataParallel / ``torch.compile`` wrappers looked through): its
    name and its kernel (:class:`KeyKernel`, :class:`SpanKernel`,
    :class:`~masterkey.nn.scalespace.ScaleSpaceKernel`)."""
    found = []
    for name, module in unwrap(model).named_modules():
        kernel = kernel_of(module)
        if kernel is not None:
            found.append((name, kernel))
    return found


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` and ``torch.compile`` wrappers, recognised by
    their types (a user's child that happens to be called ``module`` is not a wrapper)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif _is_compiled(model):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def _is_compiled(model: nn.Module) -> bool:
    # Only torch.compile makes an OptimizedModule: if torch._dynamo was never imported there is none to find.
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    return dynamo is not None and isinstance(model, dynamo.OptimizedModule)
