"""The training modes of the depthwise filters, declared once: the one registry that ``masterkey train``, the
training loop, experiments and the report ask (never comparing mode names themselves).

A :class:`Mode` says what a network's depthwise convolutions become (``kernel``: which builder of
:func:`masterkey.nn.convert.apply_mode` makes them), whether the mode takes a key set or a trained model's filters,
what trains, and which configuration fields a run records beside ``mode``, ``keys`` and ``assignment``. Adding a
mode means one new entry in :data:`MODES` (and, for a new kind of kernel, one builder in
:mod:`masterkey.nn.convert`).

This module imports nothing heavy, so that ``masterkey train --help`` lists the modes without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from masterkey.errors import MasterkeyError, option


@dataclass(frozen=True)
class Mode:
    """One way of training the depthwise filters.

    ``kernel``: what the depthwise convs get — ``"key"`` (one frozen key per channel, learnable offset),
    ``"span"`` (a learnable mix of all frozen keys), ``"scalespace"`` (scale-space keys with learnable σ),
    ``"key-init"`` (the keys written into the plain conv weights, which then train), ``"copy"`` (a trained model's
    filters written into them) or ``None`` (left as they are). ``uses_keys``: takes a key set (and with it
    ``keys``, ``assignment``, ``key_gain``, ``resize_keys``); ``copies_filters``: takes ``filters_from``;
    ``frozen``: the copied filters stop training. ``records``: configuration fields the run's summary records
    for this mode (beside ``mode``, ``keys``, ``assignment`` and ``learn_scale``, which every run records).
    """

    name: str
    trains: str  #: one line for --help and the docs: what the depthwise filters are and what of them trains
    kernel: str | None = None
    uses_keys: bool = False
    copies_filters: bool = False
    frozen: bool = False
    records: tuple[str, ...] = ()


#: Every mode, in the order ``--help`` lists them.
MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("trainable", "plain depthwise convs, trained as usual (the reference)"),
        Mode(
            "frozen",
            "one frozen key per channel; its offset b trains (and a scale a, with learn_scale)",
            kernel="key",
            uses_keys=True,
        ),
        Mode(
            "key-init", "plain convs initialised from the keys, then fully trainable", kernel="key-init", uses_keys=True
        ),
        Mode(
            "span",
            "each channel mixes all frozen keys; the mixing weights and offset train",
            kernel="span",
            uses_keys=True,
        ),
        Mode(
            "scalespace",
            "scale-space keys: their σ (and γ) train, per key or per channel (sigma_scope), with the offset",
            kernel="scalespace",
            uses_keys=True,
            records=("sigma_scope",),
        ),
        Mode(
            "transfer-frozen",
            "the filters of a trained model (filters_from), copied and frozen",
            kernel="copy",
            copies_filters=True,
            frozen=True,
            records=("filters_from",),
        ),
        Mode(
            "transfer-init",
            "the filters of a trained model (filters_from), copied, then trainable",
            kernel="copy",
            copies_filters=True,
            records=("filters_from",),
        ),
    )
}

#: The mode every other is compared with (experiment summaries, the report).
REFERENCE = "trainable"

#: σ scopes of the scale-space kernels: one (σx, σy, γ) per key of a layer, or one per channel.
SIGMA_SCOPES = ("key", "channel")


def get_mode(name: str) -> Mode:
    """The registered mode ``name``; a :class:`MasterkeyError` listing the modes otherwise."""
    mode = MODES.get(name) if isinstance(name, str) else None
    if mode is None:
        raise MasterkeyError(f"{option('mode', repr(name))}: expected one of {', '.join(MODES)}")
    return mode


def modes_help() -> str:
    """One line per mode (name: what trains), for ``masterkey train --help``."""
    width = max(map(len, MODES))
    return "\n".join(f"  {m.name:<{width}}  {m.trains}" for m in MODES.values())
