"""Shared small models for the tests of masterkey.nn."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

#: A ConvNeXt-atto shrunk to 80 depthwise channels (8 + 16 + 24 + 32) in four 7x7 layers.
TINY = {"num_classes": 10, "dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "patch_size": 2}


def tiny_convnext(**extra: object) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", **{**TINY, **extra})


def plain_convnext() -> nn.Module:
    return timm.create_model("convnext_atto", **TINY)


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs its small models on one thread."""
