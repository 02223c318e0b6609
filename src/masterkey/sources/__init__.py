"""Readers that yield the depthwise filters of a network: timm / torchvision models, raw state_dicts, ONNX.

Every reader returns a :class:`HarvestedSource`; :func:`harvest` picks the reader from what it is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from masterkey.errors import MasterkeyError, option
from masterkey.files import atomic_write, check_output, missing_parents, remove_empty_folders, safetensors_bytes
from masterkey.jsonio import dumps, loads
from masterkey.reading import regular_file
from masterkey.sources.base import HarvestedLayer, HarvestedSource, accept_layer
from masterkey.sources.network import harvest_model, harvest_module
from masterkey.sources.onnx_graph import harvest_onnx
from masterkey.sources.state_dict import harvest_state_dict, harvest_state_dict_file

if TYPE_CHECKING:
    from masterkey.bank import FilterBank

log = logging.getLogger("masterkey")

__all__ = [
    "HarvestedLayer",
    "HarvestedSource",
    "accept_layer",
    "harvest",
    "harvest_bank",
    "harvest_model",
    "harvest_module",
    "harvest_onnx",
    "harvest_state_dict",
    "harvest_state_dict_file",
]

_FILE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".onnx", ".tar"}


def harvest(
    source: str | Path,
    weights: str | Path | None = None,
    name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    pretrained: bool = False,
) -> HarvestedSource:
    """Depthwise filters of one source.

    ``source`` is a file (``.onnx``, or a state_dict in ``.pth``/``.pt``/``.bin``/``.safetensors`` — no model
    class needed), or a model name (``convnext_atto``, ``timm:...``, ``torchvision:mobilenet_v2``), optionally
    as ``NAME@WEIGHTS``; ``weights`` gives the local weights file for a model name. Without weights a model name
    needs ``pretrained=True`` and the hub.
    """
    text = str(source)
    path = Path(text)
    if path.is_dir():
        raise MasterkeyError(
            f"{path}: a folder; a SOURCE is a weights file (.pth, .pt, .bin, .safetensors), an .onnx file or a "
            "model name"
        )
    if os.path.lexists(path) and not path.is_dir():
        regular_file(path, "weights file")  # a FIFO, a device, a dangling link or a link loop: one line saying so
    if path.is_file():
        if weights is not None:
            raise MasterkeyError(f"{path}: {option('weights')} goes with a model name, not with a weights file")
        if path.suffix.lower() == ".onnx":
            return harvest_onnx(path, name=name)
        return harvest_state_dict_file(path, name=name)
    if "@" in text and weights is None:
        text, _, weights_text = text.partition("@")
        weights = Path(weights_text)
    elif path.suffix.lower() in _FILE_SUFFIXES or "/" in text:
        raise MasterkeyError(f"{text}: no such file")
    if weights is not None and not Path(weights).is_file():
        what = "a folder, not a weights file" if Path(weights).is_dir() else "no such weights file"
        raise MasterkeyError(f"{weights}: {what}")
    return harvest_model(text, weights=weights, name=name, model_kwargs=model_kwargs, pretrained=pretrained)


def _cache_key(spec: str, options: dict[str, Any]) -> str:
    """Identifies one harvest: the spec, the options, and the size and mtime of every file involved."""
    files = [Path(spec), Path(spec.partition("@")[2] or spec), Path(str(options.get("weights") or spec))]
    stamps = sorted({(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()})
    text = json.dumps([spec, stamps, {k: str(v) for k, v in sorted(options.items())}])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _save_partial(source: HarvestedSource, path: Path) -> None:
    meta = {
        "name": source.name,
        "kind": source.kind,
        "path": source.path,
        "sha256": source.sha256,
        "model": source.model,
        "skipped": source.skipped,
        "layers": [
            {
                "name": x.name,
                "stride": x.stride,
                "dilation": x.dilation,
                "multiplier": x.multiplier,
                "stage": x.stage,
                "block": x.block,
            }
            for x in source.layers
        ],
    }
    blob = safetensors_bytes(
        {f"layer{i}": x.weight.contiguous() for i, x in enumerate(source.layers)},
        metadata={"masterkey": dumps(meta, indent=None)},
    )
    with atomic_write(path) as f:
        f.write(blob)


def _load_partial(path: Path) -> HarvestedSource | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = loads(f.metadata()["masterkey"], path)
            layers = [HarvestedLayer(weight=f.get_tensor(f"layer{i}"), **info) for i, info in enumerate(meta["layers"])]
    except Exception:
        return None  # a damaged cache entry is harvested again
    return HarvestedSource(
        meta["name"], meta["kind"], layers, meta["path"], meta["sha256"], meta["model"], meta["skipped"]
    )


def harvest_bank(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    weights: str | Path | None = None,
    name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    pretrained: bool = False,
    overwrite: bool = False,
    progress: Callable[[Sequence[str | Path]], Any] | None = None,
) -> FilterBank:
    """Harvest every source into a new bank at ``out``, resumably.

    Each harvested source is kept in ``.<out>.partial/`` until the bank is written, so a run that is killed
    resumes with the sources it had finished; the partial directory is removed once the bank is complete.
    """
    from masterkey.bank import write_bank

    out = Path(out)
    if not sources:
        raise MasterkeyError("harvest: give at least one SOURCE")
    check_output(out, "bank", overwrite=overwrite, inputs=[*sources, weights])
    if (weights is not None or name is not None) and len(sources) > 1:
        raise MasterkeyError(
            f"{option('weights')} and {option('name')} go with a single SOURCE (use NAME@WEIGHTS for several)"
        )
    work = out.with_name(f".{out.name}.partial")
    options = {"weights": weights, "name": name, "kwargs": model_kwargs, "pretrained": pretrained}
    harvested = []
    resumed = 0
    created = missing_parents(out)
    try:
        for spec in progress(sources) if progress else sources:
            cache = work / f"{_cache_key(str(spec), options)}.safetensors"
            src = _load_partial(cache) if cache.is_file() else None
            if src is None:
                src = harvest(spec, weights=weights, name=name, model_kwargs=model_kwargs, pretrained=pretrained)
                _save_partial(src, cache)
            else:
                resumed += 1
            for skip in src.skipped:
                log.info("%s: skipped %s: %s", src.name, skip["layer"], skip["reason"])
            harvested.append(src)
        if resumed:
            log.info("resumed an interrupted harvest: %d of %d sources were already harvested", resumed, len(sources))
        bank = write_bank(harvested, out, overwrite=overwrite)
    except Exception:
        # A failed harvest (bad source, full disk ...) leaves nothing behind; only a killed or interrupted one
        # keeps its finished sources for the rerun to resume with.
        shutil.rmtree(work, ignore_errors=True)
        remove_empty_folders(created)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return bank
