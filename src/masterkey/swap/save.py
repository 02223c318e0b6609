"""The network a swap built, saved: a plain state_dict of the original architecture (safetensors) and an ONNX
graph, checked with onnxruntime against PyTorch on the session's evaluation images.

The saved weights are the swapped model's own state_dict (depthwise weights ``a * key + b``, BatchNorm statistics
re-estimated when a calibration is given), so ``timm.create_model(arch, ...)`` /
``torchvision.models.get_model(arch, ...)`` loads them with ``load_state_dict(strict=True)``, and
``masterkey swap --weights FILE`` reads the architecture back from the file's metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from masterkey.data.evaluate import predict_logits
from masterkey.data.memory import ImageSet
from masterkey.errors import MasterkeyError, option
from masterkey.keys import KeySet
from masterkey.networks.surgery import LayerSelector
from masterkey.swap.session import Calibration, SwapSession

#: Model keyword arguments a weights file records, as :func:`masterkey.networks.models.create_model` reads them.
ARCH_KWARGS = ("num_classes", "patch_size", "in_chans")


@dataclass
class SavedNetwork:
    """What :func:`save_swapped` wrote: the key set, the files, the calibration (empty: none), the swap's mean cos²,
    and the largest |logit| difference between onnxruntime and PyTorch over ``checked_images`` evaluation images
    (None when there is no ONNX file or onnxruntime is not installed)."""

    keys: str
    weights: Path | None
    onnx: Path | None
    calibration: str
    mean_cos2: float
    onnx_max_abs_diff: float | None = None
    checked_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in vars(self).items()}

    def render(self) -> str:
        """What was saved, and how well the ONNX graph agrees with PyTorch (lines for the terminal)."""
        what = f"the network with {self.keys} swapped in"
        if self.calibration:
            what += f", recalibrated on {self.calibration}"
        lines = [f"saved {what}:"]
        if self.weights:
            lines.append(f"  weights {self.weights} (a plain state_dict of the original architecture)")
        if self.onnx:
            if self.onnx_max_abs_diff is None:
                check = "not checked: onnxruntime is not installed"
            else:
                check = f"onnxruntime vs PyTorch on {self.checked_images} images: max |Δ logit| "
                check += f"{self.onnx_max_abs_diff:.1e}"
            lines.append(f"  onnx {self.onnx} ({check})")
        return "\n".join(lines)


def check_save_targets(
    weights: str | Path | None,
    onnx: str | Path | None,
    specs: Sequence[str],
    crossfit: int | None,
    overwrite: bool,
    inputs: Iterable[str | Path | None],
) -> None:
    """Refuse, before any work, what :func:`save_swapped` cannot save: several key sets (one network is saved), a
    cross-fitted recalibration (one network per fold), outputs that break the output rule."""
    from masterkey.files import check_output

    wanted = [(name, path) for name, path in (("save_weights", weights), ("onnx", onnx)) if path]
    if not wanted:
        return
    what = " / ".join(option(name, "FILE") for name, _ in wanted)
    if len(specs) != 1:
        raise MasterkeyError(f"{what} saves one network: give one key set (got {len(specs)}: {', '.join(specs)})")
    if crossfit:
        raise MasterkeyError(
            f"{what}: {option('crossfit', 'K')} recalibrates one network per fold, so there is no one network to "
            f"save; recalibrate on training images ({option('calib_data', 'DIR')}) instead"
        )
    if weights and onnx and Path(weights).resolve() == Path(onnx).resolve():
        raise MasterkeyError(f"{what} name the same file")
    inputs = list(inputs)
    for name, path in wanted:
        check_output(path, "weights" if name == "save_weights" else "onnx", overwrite=overwrite, inputs=inputs)


def network_metadata(
    arch: str, source: Mapping[str, str] | None = None, model_kwargs: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The metadata that lets the saved weights be rebuilt: ``arch``, the model keyword arguments of
    :data:`ARCH_KWARGS` (given ones first, then the source file's) and the source's ``dataset`` (it picks the
    preprocessing)."""
    source, model_kwargs = source or {}, model_kwargs or {}
    meta = {"arch": arch}
    for key in ARCH_KWARGS:
        value = model_kwargs.get(key, source.get(key))
        if value is not None:
            meta[key] = str(value)
    if source.get("dataset"):
        meta["dataset"] = source["dataset"]
    return meta


def save_swapped(
    session: SwapSession,
    keys: str | KeySet,
    *,
    weights: str | Path | None = None,
    onnx: str | Path | None = None,
    layers: LayerSelector = None,
    resize: bool = False,
    calibration: Calibration | None = None,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
    check_images: int = 8,
) -> SavedNetwork:
    """Swap ``keys`` into the session's model (recalibrated with ``calibration``'s images when given), write its
    plain weights to ``weights`` and / or its ONNX graph to ``onnx`` (each atomically, under the output rule), and
    restore the model. The ONNX graph is run with onnxruntime on the first ``check_images`` evaluation images."""
    from masterkey.nn.export import save_onnx, save_weights

    inputs = list(inputs)
    name = keys.name if isinstance(keys, KeySet) else str(keys)
    label = calibration.label(session.images.root) if calibration is not None else ""
    with session.swapped(keys, layers, resize, calibration) as report:
        saved = SavedNetwork(name, None, None, label, report.mean_cos2)
        meta = {**(metadata or {}), "keys": name, "mean_cos2": f"{report.mean_cos2:.6f}"}
        if label:
            meta["recalibrated"] = label
        if weights is not None:
            saved.weights = save_weights(session.model, weights, meta, overwrite=overwrite, inputs=inputs)
        if onnx is not None:
            device = next(session.model.parameters()).device
            example = torch.zeros(2, *_image_shape(session.images), device=device)  # batch 1 would be fixed
            saved.onnx = save_onnx(session.model, onnx, example, overwrite=overwrite, inputs=inputs)
            checked = _check_onnx(session, saved.onnx, check_images)
            if checked is not None:
                saved.onnx_max_abs_diff, saved.checked_images = checked
    return saved


def _image_shape(images: Any) -> tuple[int, int, int]:
    return tuple(images.images.shape[1:]) if isinstance(images, ImageSet) else images.image_shape()


class _OnnxRuntimeModel(nn.Module):
    """An ONNX graph run by onnxruntime behind a module's forward, so that it is fed exactly as PyTorch is."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        super().__init__()
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def forward(self, x: Tensor) -> Tensor:
        batch = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {"images": batch})[0])


def _check_onnx(session: SwapSession, path: Path, n_images: int) -> tuple[float, int] | None:
    """The largest |logit| difference of onnxruntime vs PyTorch on the first ``n_images`` evaluation images."""
    try:
        runtime = _OnnxRuntimeModel(path)
    except ImportError:
        return None
    subset = session.images.subset(list(range(min(n_images, len(session.images)))))
    kwargs = {"batch_size": session.batch_size, "workers": session.workers, "progress": False}
    expected = predict_logits(session.model, subset, session.prep, device=session.device, **kwargs)
    got = predict_logits(runtime, subset, session.prep, device="cpu", **kwargs)
    return float((got - expected).abs().max()), len(subset)
