"""The training modes, declared once: every consumer asks the registry, and a new mode is one new entry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import masterkey
from masterkey.errors import MasterkeyError
from masterkey.nn import MODES, Mode, apply_mode, get_mode, key_layers, parameter_counts
from masterkey.nn.convert import KERNEL_BUILDERS
from masterkey.train.config import TrainConfig
from masterkey.train.experiment import arm_name

from .conftest import tiny_convnext

PACKAGE = Path(masterkey.__file__).parent
NAMES = "|".join(re.escape(name) for name in MODES)
#: String dispatch on a training mode: comparing a mode with a mode's name, testing it against a tuple of names.
COMPARISONS = [
    re.compile(rf"""(==|!=)\s*["']({NAMES})["']"""),
    re.compile(rf"""["']({NAMES})["']\s*(==|!=|in\b|not\s+in\b)"""),
    re.compile(rf"""\b(not\s+)?in\s*[(\[{{]\s*["']({NAMES})["']"""),
    re.compile(r"\bmode\s+(not\s+)?in\s*[(\[{]"),
]
#: Dispatch however it is spelled: the old tuples of names, or the reference mode (arm) named by hand.
ANYWHERE = [
    re.compile(r"TRANSFER_MODES|KEY_MODES"),
    re.compile(r"""(==|!=)\s*["']trainable["']|["']trainable["']\s+in\b"""),
]


def dispatches(line: str) -> bool:
    """Whether ``line`` decides something by a training mode's name (``mode`` on the line, or the reference)."""
    return any(p.search(line) for p in ANYWHERE) or ("mode" in line and any(p.search(line) for p in COMPARISONS))


def test_no_module_dispatches_on_mode_names_outside_the_registry() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "nn" / "modes.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if dispatches(line):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert found == []


def test_the_scan_catches_dispatch() -> None:
    """The patterns above find the forms the code used to have."""
    for line in (
        'if config.mode == "scalespace":',
        'freeze=config.mode == "transfer-frozen"',
        'if config.mode not in ("trainable", *TRANSFER_MODES):',
        "if mode in TRANSFER_MODES:",
        'c.keys if c.mode != "trainable" else None',
        'reference = "trainable" if "trainable" in names else None',
    ):
        assert dispatches(line), line


def test_every_mode_builds_and_its_kernel_has_a_builder(cifar_convnexts: list) -> None:
    weights = next(p for p in cifar_convnexts if p.name == "convnext_atto_s2_e55.safetensors")
    for mode in MODES.values():
        assert mode.kernel is None or mode.kernel in KERNEL_BUILDERS or mode.copies_filters, mode
        assert mode.uses_keys != mode.copies_filters or mode.kernel is None
        keys = "scalespace8" if mode.kernel == "scalespace" else "paper8"
        model = (
            tiny_convnext() if not mode.copies_filters else tiny_convnext(dims=(40, 80, 160, 320), depths=(2, 2, 6, 2))
        )
        conversion = apply_mode(model, mode.name, keys=keys, filters_from=weights)
        assert conversion.mode == mode.name
        assert bool(key_layers(model)) == (mode.kernel in ("key", "span", "scalespace"))
    with pytest.raises(MasterkeyError, match="mode='half': expected one of trainable, frozen, key-init"):
        get_mode("half")


def test_a_new_mode_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mode that trains a scale with every frozen key: nothing but the entry is added."""
    entry = Mode("frozen-a", "frozen keys whose per-channel scale trains", kernel="key", uses_keys=True)
    monkeypatch.setitem(MODES, "frozen-a", entry)
    config = TrainConfig(mode="frozen-a", keys="random:8:0", learn_scale=True, data="cifar10").validated()
    assert arm_name(config) == "frozen-a-random-8-0"
    assert config.key_assignment() == "uniform"
    model = tiny_convnext()
    conversion = apply_mode(model, "frozen-a", keys="random:8:0", learn_scale=True)
    assert conversion.assignment == "uniform" and parameter_counts(model)["depthwise_trainable_per_channel"] == 2
    assert all(k.scale is not None and k.scale.requires_grad for _, k in key_layers(model))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
