"""What counts as a depthwise convolution, and where it sits in a network."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class DepthwiseConv:
    """A depthwise ``nn.Conv2d`` found in a module: ``groups == in_channels`` and one input channel per filter."""

    name: str
    conv: nn.Conv2d

    @property
    def kernel_size(self) -> tuple[int, int]:
        return tuple(self.conv.kernel_size)  # type: ignore[return-value]

    @property
    def multiplier(self) -> int:
        return self.conv.out_channels // self.conv.in_channels


def is_depthwise(module: nn.Module) -> bool:
    """True for a 2-D convolution that filters each input channel on its own (channel multipliers included)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels
        and module.weight.shape[1] == 1
    )


def find_depthwise(model: nn.Module, spatial_only: bool = True) -> list[DepthwiseConv]:
    """All depthwise convs of ``model`` in definition order.

    With ``spatial_only`` (the default) 1x1 depthwise convs, which have no spatial structure, are left out.
    """
    found = []
    for name, module in model.named_modules():
        if is_depthwise(module):
            if spatial_only and tuple(module.kernel_size) == (1, 1):
                continue
            found.append(DepthwiseConv(name, module))
    return found


_STAGE_BLOCK = [
    re.compile(r"(?:^|\.)stages?\.(\d+)\.blocks?\.(\d+)(?:\.|$)"),  # timm ConvNeXt / HorNet
    re.compile(r"(?:^|\.)stages?\.(\d+)\.(\d+)(?:\.|$)"),  # timm stage-sequential
    re.compile(r"(?:^|\.)layers?\.(\d+)\.(\d+)(?:\.|$)"),  # ResNet-style
    re.compile(r"(?:^|\.)_?blocks\.(\d+)\.(\d+)(?:\.|$)"),  # timm EfficientNet / MobileNet: blocks.<stage>.<block>
    re.compile(r"(?:^|\.)features\.(\d+)\.(\d+)(?:\.|$)"),  # torchvision EfficientNet: features.<stage>.<block>
]
_BLOCK_ONLY = [
    re.compile(r"(?:^|\.)_?blocks\.(\d+)(?:\.|$)"),  # efficientnet_pytorch: _blocks.<n>
    re.compile(r"(?:^|\.)features\.(\d+)(?:\.|$)"),  # torchvision MobileNet / EfficientNet
]


#: Shown instead of stage -1: the layer names do not say the stage (e.g. ``features.N`` of a raw state_dict) and
#: harvest had no network to take strides from (a state_dict of an architecture it does not recognise). A stage is
#: not guessed from the layer order: where a stage starts (a stride or width change) a state_dict alone does not
#: always tell.
UNKNOWN_STAGE_NOTE = (
    "stage 'unknown': neither the layer names (e.g. features.N of a raw state_dict) nor a recognised architecture "
    "say the stage (harvest MODEL@FILE gives the network); layers are listed one by one in the by-layer table"
)


def stage_name(stage: object) -> str:
    """A stage index as shown to a person: ``"unknown"`` for -1 (not derivable from the layer name)."""
    return "unknown" if stage is None or str(stage) == "-1" else str(stage)


def stage_block(layer: str) -> tuple[int, int]:
    """(stage, block) parsed from a layer name; -1 where the naming does not say."""
    for pattern in _STAGE_BLOCK:
        m = pattern.search(layer)
        if m:
            return int(m.group(1)), int(m.group(2))
    for pattern in _BLOCK_ONLY:
        m = pattern.search(layer)
        if m:
            return -1, int(m.group(1))
    m = re.search(r"(?:^|\.)stages?\.(\d+)(?:\.|$)", layer)
    if m:
        return int(m.group(1)), -1
    return -1, -1
