"""Frozen keys in any network: depthwise convolutions whose kernels are made of keys, as a library.

Give a network keys, train it with any loop, export it as the plain architecture::

    import timm, torch
    import masterkey.nn as mknn

    model = timm.create_model("convnext_atto", num_classes=10)
    conversion = mknn.convert_to_keys(model, "paper8", mode="frozen")   # in place; what each layer got
    optimizer = torch.optim.AdamW(mknn.param_groups(model, weight_decay=0.05), lr=1e-3)
    ...                                                                 # any training loop
    state = mknn.export_state_dict(model)                               # a plain timm state_dict
    timm.create_model("convnext_atto", num_classes=10).load_state_dict(state, strict=True)

The converted convs stay ``nn.Conv2d`` (their class, forward and bias are kept); their ``weight`` is computed by a
parametrization (:mod:`torch.nn.utils.parametrize`) from frozen keys (buffers) and a few learnable numbers.

- :mod:`masterkey.nn.modes` — the training modes (``frozen``, ``span``, ``scalespace`` ...), declared once;
- :mod:`masterkey.nn.layers` — the key kernels (:class:`KeyKernel`, :class:`SpanKernel`), attaching and finding
  them, unwrapping DDP / compiled models;
- :mod:`masterkey.nn.scalespace` — keys generated from scale-space models with learnable σ;
- :mod:`masterkey.nn.assign` — which key each channel holds (published proportions, uniform, fits, a trained model);
- :mod:`masterkey.nn.convert` — whole networks: :func:`convert_to_keys`, :func:`transfer_filters`,
  :func:`apply_mode`;
- :mod:`masterkey.nn.export` — :func:`materialize`, :func:`export_state_dict`, :func:`save_weights`,
  :func:`save_onnx`;
- :mod:`masterkey.nn.summary` — :func:`key_counts`, :func:`parameter_counts` and what span / scale-space layers
  learned;
- :mod:`masterkey.nn.optim` — :func:`param_groups`: no weight decay on offsets, scales, σ, biases.

Names are looked up on first use: ``import masterkey.nn`` loads no torch.
"""

from typing import TYPE_CHECKING

from masterkey.lazy import lazy_attributes

if TYPE_CHECKING:
    from masterkey.nn.assign import (
        PUBLISHED_PROPORTIONS,
        Assigner,
        KeyAssignment,
        assign_by_proportions,
        assign_from_fit_table,
        assign_from_model,
        assign_uniform,
        counts_from_proportions,
        is_paper_keys,
        make_assigner,
        resolve_assignment,
    )
    from masterkey.nn.convert import Conversion, ConvertedLayer, apply_mode, convert_to_keys, transfer_filters
    from masterkey.nn.export import export_state_dict, materialize, onnx_bytes, save_onnx, save_weights
    from masterkey.nn.layers import (
        KernelParametrization,
        KeyKernel,
        SpanKernel,
        attach_kernel,
        kernel_of,
        key_layers,
        unwrap,
    )
    from masterkey.nn.modes import MODES, SIGMA_SCOPES, Mode, get_mode
    from masterkey.nn.optim import param_groups
    from masterkey.nn.scalespace import ScaleSpaceKernel, ScaleSpaceKey, stored_models
    from masterkey.nn.summary import depthwise_epoch_stats, depthwise_summary, key_counts, parameter_counts

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "Assigner": "masterkey.nn.assign",
        "KeyAssignment": "masterkey.nn.assign",
        "PUBLISHED_PROPORTIONS": "masterkey.nn.assign",
        "assign_by_proportions": "masterkey.nn.assign",
        "assign_from_fit_table": "masterkey.nn.assign",
        "assign_from_model": "masterkey.nn.assign",
        "assign_uniform": "masterkey.nn.assign",
        "counts_from_proportions": "masterkey.nn.assign",
        "is_paper_keys": "masterkey.nn.assign",
        "make_assigner": "masterkey.nn.assign",
        "resolve_assignment": "masterkey.nn.assign",
        "Conversion": "masterkey.nn.convert",
        "ConvertedLayer": "masterkey.nn.convert",
        "apply_mode": "masterkey.nn.convert",
        "convert_to_keys": "masterkey.nn.convert",
        "transfer_filters": "masterkey.nn.convert",
        "export_state_dict": "masterkey.nn.export",
        "materialize": "masterkey.nn.export",
        "onnx_bytes": "masterkey.nn.export",
        "save_onnx": "masterkey.nn.export",
        "save_weights": "masterkey.nn.export",
        "KernelParametrization": "masterkey.nn.layers",
        "KeyKernel": "masterkey.nn.layers",
        "SpanKernel": "masterkey.nn.layers",
        "attach_kernel": "masterkey.nn.layers",
        "kernel_of": "masterkey.nn.layers",
        "key_layers": "masterkey.nn.layers",
        "unwrap": "masterkey.nn.layers",
        "MODES": "masterkey.nn.modes",
        "Mode": "masterkey.nn.modes",
        "SIGMA_SCOPES": "masterkey.nn.modes",
        "get_mode": "masterkey.nn.modes",
        "param_groups": "masterkey.nn.optim",
        "ScaleSpaceKernel": "masterkey.nn.scalespace",
        "ScaleSpaceKey": "masterkey.nn.scalespace",
        "stored_models": "masterkey.nn.scalespace",
        "depthwise_epoch_stats": "masterkey.nn.summary",
        "depthwise_summary": "masterkey.nn.summary",
        "key_counts": "masterkey.nn.summary",
        "parameter_counts": "masterkey.nn.summary",
    },
)

__all__ = [
    "MODES",
    "PUBLISHED_PROPORTIONS",
    "SIGMA_SCOPES",
    "Assigner",
    "Conversion",
    "ConvertedLayer",
    "KernelParametrization",
    "KeyAssignment",
    "KeyKernel",
    "Mode",
    "ScaleSpaceKernel",
    "ScaleSpaceKey",
    "SpanKernel",
    "apply_mode",
    "assign_by_proportions",
    "assign_from_fit_table",
    "assign_from_model",
    "assign_uniform",
    "attach_kernel",
    "convert_to_keys",
    "counts_from_proportions",
    "depthwise_epoch_stats",
    "depthwise_summary",
    "export_state_dict",
    "get_mode",
    "is_paper_keys",
    "kernel_of",
    "key_counts",
    "key_layers",
    "make_assigner",
    "materialize",
    "onnx_bytes",
    "param_groups",
    "parameter_counts",
    "resolve_assignment",
    "save_onnx",
    "save_weights",
    "stored_models",
    "transfer_filters",
    "unwrap",
]
