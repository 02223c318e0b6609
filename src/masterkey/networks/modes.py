"""The modes of ``masterkey train`` (see :mod:`masterkey.networks.keyconv`), apart from the torch code that
implements them, so that ``masterkey train --help`` lists them without importing torch."""

#: Training modes of the depthwise filters (see :func:`convert_to_keys` and :func:`transfer_filters`).
MODES = ("trainable", "frozen", "key-init", "span", "scalespace", "transfer-frozen", "transfer-init")
#: Modes that copy the filters of a trained model (``filters_from``) instead of using keys.
TRANSFER_MODES = ("transfer-frozen", "transfer-init")
#: Modes that use a key set.
KEY_MODES = ("frozen", "key-init", "span", "scalespace")

#: σ scopes of :class:`ScaleSpaceConv2d`: one (σx, σy, γ) per key of a layer, or one per channel.
SIGMA_SCOPES = ("key", "channel")
