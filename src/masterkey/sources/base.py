"""What a reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class HarvestedLayer:
    """The filters of one depthwise layer: ``weight`` is [C_out, 1, k, k] (float32, CPU)."""

    name: str
    weight: Tensor
    stride: int = 1
    dilation: int = 1
    multiplier: int = 1
    #: Stage and block as swap places the layer (:func:`masterkey.networks.surgery.depthwise_layers`: from the
    #: layer name, else from the network's strides); None: parsed from the name when the bank is written.
    stage: int | None = None
    block: int | None = None

    @property
    def kernel_size(self) -> int:
        return int(self.weight.shape[-1])

    @property
    def n_filters(self) -> int:
        return int(self.weight.shape[0])


@dataclass
class HarvestedSource:
    """The depthwise layers of one network, in definition order, and what was skipped (with reasons)."""

    name: str
    kind: str
    layers: list[HarvestedLayer]
    path: str | None = None
    sha256: str | None = None
    model: str | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def n_filters(self) -> int:
        return sum(layer.n_filters for layer in self.layers)

    def counts_by_kernel(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for layer in self.layers:
            counts[layer.kernel_size] = counts.get(layer.kernel_size, 0) + layer.n_filters
        return dict(sorted(counts.items()))


def accept_layer(name: str, shape: tuple[int, ...], skipped: list[dict[str, str]]) -> bool:
    """Whether a depthwise weight of ``shape`` [C, 1, kh, kw] goes into a bank; notes the reason if not."""
    kh, kw = int(shape[-2]), int(shape[-1])
    if kh == 1 and kw == 1:
        skipped.append({"layer": name, "reason": "1x1 depthwise conv: no spatial structure"})
        return False
    if kh != kw:
        skipped.append({"layer": name, "reason": f"non-square {kh}x{kw} kernel: banks hold square k x k filters"})
        return False
    return True
