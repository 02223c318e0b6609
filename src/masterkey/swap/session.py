"""Swap keys into a pretrained network and measure what is left (the paper's Table 1).

:class:`SwapSession` holds one model, its evaluation images and (for BatchNorm networks) calibration images. For
every key set it swaps each depthwise filter for its best affine fit
(:func:`~masterkey.networks.surgery.swap_depthwise`), evaluates top-1 / top-5, optionally re-estimates the
BatchNorm statistics and evaluates again, and restores the original weights before the next key set.
:meth:`SwapSession.sweep` runs a list of key sets (plus the unswapped baseline) into
:class:`~masterkey.swap.results.SwapResults`; :meth:`SwapSession.sensitivity` swaps one stage or layer at a time.

Key specs are anything :func:`masterkey.keys.resolve_key_spec` resolves: built-ins, key files and discover runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from masterkey.data.evaluate import accuracy, check_class_count, evaluate, predict_logits
from masterkey.data.memory import ImageSet
from masterkey.data.preprocessing import Preprocessing, preprocessing_for
from masterkey.data.selection import CROSSFIT_NOTE, crossfit_folds
from masterkey.data.stream import Images, StreamedImages
from masterkey.errors import MasterkeyError, option
from masterkey.keys import KeySet, resolve_key_spec
from masterkey.networks.recalibrate import has_batchnorm, recalibrate_batchnorm
from masterkey.networks.surgery import LayerSelector, SwapReport, depthwise_layers, swap_depthwise
from masterkey.progress import progress_bar
from masterkey.swap.results import BASELINE, SwapResults, points

# ---------------------------------------------------------------------- key specs


def expand_seeds(specs: Sequence[str], seeds: int) -> list[str]:
    """``random:K`` without a seed becomes ``random:K:0`` .. ``random:K:{seeds-1}``; other specs stay."""
    out: list[str] = []
    for spec in specs:
        m = re.fullmatch(r"random:(\d+)", str(spec))
        if m and seeds > 1:
            out.extend(f"random:{m.group(1)}:{s}" for s in range(seeds))
        else:
            out.append(str(spec))
    return out


def spec_group(name: str) -> tuple[str, int | None]:
    """``("random:8", 3)`` for ``random:8:3``: the family a seeded key set belongs to, and its seed."""
    m = re.fullmatch(r"(random:\d+):(\d+)", name)
    if m:
        return m.group(1), int(m.group(2))
    return name, None


def _display_name(spec: str | KeySet) -> str:
    return spec.name if isinstance(spec, KeySet) else str(spec)


def check_keys(
    model: nn.Module, specs: Sequence[str | KeySet], layers: LayerSelector = None, resize: bool = False
) -> None:
    """Raise :class:`MasterkeyError` if some key spec cannot serve the kernel sizes of the selected layers."""
    from masterkey.networks.surgery import chosen_layers, keys_for_kernel

    chosen = chosen_layers(model, layers)
    sizes = sorted({pos.kernel_size[0] for pos in chosen if pos.kernel_size[0] == pos.kernel_size[1]})
    for spec in specs:
        keys = resolve_key_spec(spec)
        for k in sizes:
            keys_for_kernel(keys, k, resize=resize)


# ---------------------------------------------------------------------- the session


@dataclass(frozen=True)
class Calibration:
    """Where recalibration images come from: separate ``images`` (training data, never the evaluation set: the
    documented default), or ``crossfit`` K folds of the evaluation images themselves, each fold classified after
    recalibrating on ``n_images`` images (all, by default) of the other folds, so no image calibrates the model that
    classifies it — but the statistics come from the distribution being evaluated (transductive), which every label
    of such a row says (:data:`~masterkey.data.selection.CROSSFIT_NOTE`). ``name`` labels the result rows."""

    images: Images | None = None
    crossfit: int = 0
    n_images: int | None = None
    seed: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if self.images is not None and self.crossfit:
            raise MasterkeyError("a calibration takes calibration images or crossfit folds, not both")
        if self.images is None and self.crossfit < 2:
            raise MasterkeyError(f"crossfit {self.crossfit}: cross-fitting needs at least 2 folds")

    @property
    def transductive(self) -> bool:
        """Whether the calibration statistics come from the evaluation images (cross-fitting)."""
        return self.images is None

    def label(self, eval_root: str) -> str:
        """The row label: ``name`` (or a description), with "uses the evaluation distribution" for cross-fitting."""
        if self.images is not None:
            return self.name or f"{len(self.images)} images of {self.images.root}"
        n = self.n_images if self.n_images is not None else "all"
        text = self.name or f"crossfit {self.crossfit} folds of {eval_root} ({n} images of the other folds each)"
        return text if CROSSFIT_NOTE in text else f"{text}; {CROSSFIT_NOTE}"


class SwapSession:
    """Swap experiments on one model: evaluate, swap, recalibrate, restore.

    ``images`` are the evaluation images (decoded with ``prep``'s geometry, see
    :func:`masterkey.data.selection.load_eval_images`), held in memory or streamed by ``workers`` DataLoader
    processes (:class:`~masterkey.data.stream.StreamedImages`: the same numbers). ``calibration`` (BatchNorm networks
    only) is an :class:`ImageSet` (or streamed images) of training images, a :class:`Calibration`, or several; with
    ``recalibrate`` every result gets one recalibrated row per calibration. The model's original state is kept and
    restored before every key set, so a session can run any number of them. Accuracies are in percent.
    """

    def __init__(
        self,
        model: nn.Module,
        images: Images,
        prep: Preprocessing | None = None,
        calibration: Images | Calibration | Sequence[Calibration] | None = None,
        batch_size: int = 128,
        calib_batch_size: int = 64,
        device: str | torch.device = "cpu",
        progress: bool = False,
        workers: int | None = None,
    ) -> None:
        if not depthwise_layers(model):
            raise MasterkeyError(f"{type(model).__name__}: the model has no depthwise convolution to swap")
        if isinstance(calibration, (ImageSet, StreamedImages)):
            calibration = Calibration(images=calibration)
        self.calibrations: list[Calibration] = (
            [] if calibration is None else [calibration] if isinstance(calibration, Calibration) else list(calibration)
        )
        if self.calibrations and not has_batchnorm(model):
            raise MasterkeyError(
                f"{type(model).__name__}: recalibration asked for, but the model has no BatchNorm layer (LayerNorm "
                "networks such as ConvNeXt keep no running statistics); drop the recalibration"
            )
        self.model = model.eval()
        self.images = images
        self.prep = prep or preprocessing_for(model)
        self.batch_size = batch_size
        self.calib_batch_size = calib_batch_size
        self.device = torch.device(device)
        self.progress = progress
        self.workers = workers
        self.original = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._baseline: dict[str, float] | None = None

    # -------------------------------------------------------------- basics
    def restore(self) -> None:
        """Put the original weights and BatchNorm statistics back."""
        self.model.load_state_dict(self.original)

    def evaluate(self, desc: str = "evaluate") -> dict[str, float]:
        """Top-1 / top-5 of the model as it is now (``desc`` names its progress bar)."""
        return evaluate(
            self.model,
            self.images,
            self.prep,
            batch_size=self.batch_size,
            device=self.device,
            progress=self.progress,
            workers=self.workers,
            desc=desc,
        )

    def _calib_count(self, calibration: Calibration) -> int:
        if calibration.images is not None:
            return len(calibration.images)
        return len(self._folds(calibration)[0][0])

    def _folds(self, calibration: Calibration) -> list[tuple[Tensor, Tensor]]:
        return crossfit_folds(self.images.labels, calibration.crossfit, calibration.n_images, seed=calibration.seed)

    def evaluate_recalibrated(self, calibration: Calibration, desc: str = "") -> dict[str, float]:
        """Re-estimate the BatchNorm statistics of the model as it is now, then evaluate it (on calibration
        images, or cross-fitted). The recalibrated statistics stay in the model. ``desc`` names the progress bars
        (the key set being measured)."""
        prefix = f"{desc}: " if desc else ""
        if calibration.images is not None:
            self._recalibrate(calibration, f"{prefix}recalibrate")
            return self.evaluate(f"{prefix}evaluate recalibrated")
        check_class_count(self.model, self.images, self.prep, device=self.device)
        swapped = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        logits: Tensor | None = None
        folds = self._folds(calibration)
        for fold, (calib_idx, eval_idx) in enumerate(folds, 1):
            where = f"{prefix}fold {fold}/{len(folds)}"
            self.model.load_state_dict(swapped)
            self._recalibrate(calibration, f"{where} recalibrate", self.images.subset(calib_idx))
            part = predict_logits(
                self.model,
                self.images.subset(eval_idx),
                self.prep,
                batch_size=self.batch_size,
                device=self.device,
                progress=self.progress,
                workers=self.workers,
                desc=f"{where} evaluate",
            )
            if logits is None:
                logits = torch.empty(len(self.images), part.shape[1])
            logits[eval_idx] = part
        assert logits is not None
        return accuracy(logits, self.images.labels)

    def _recalibrate(self, calibration: Calibration, desc: str, images: Images | None = None) -> None:
        """Re-estimate the model's BatchNorm statistics on ``images`` (default: the calibration's own)."""
        images = images if images is not None else calibration.images
        assert images is not None
        recalibrate_batchnorm(
            self.model,
            images,
            self.prep,
            batch_size=self.calib_batch_size,
            device=self.device,
            progress=self.progress,
            workers=self.workers,
            desc=desc,
        )

    def baseline(self) -> dict[str, float]:
        """Accuracy of the unswapped model (computed once)."""
        if self._baseline is None:
            self.restore()
            self._baseline = self.evaluate("unswapped model: evaluate")
        return self._baseline

    def check_keys(self, specs: Sequence[str | KeySet], layers: LayerSelector = None, resize: bool = False) -> None:
        """Fail early, before any evaluation, if a key spec cannot serve the selected layers."""
        check_keys(self.model, specs, layers, resize)

    # -------------------------------------------------------------- one key set
    @contextmanager
    def swapped(
        self,
        keys: str | KeySet,
        layers: LayerSelector = None,
        resize: bool = False,
        calibration: Calibration | None = None,
    ) -> Iterator[SwapReport]:
        """Within the block, the session's model has ``keys`` swapped in (and, with a ``calibration`` of
        calibration images, its BatchNorm statistics re-estimated on them): the network :meth:`run` measures. The
        original weights are restored when the block ends. Yields the swap's per-layer report."""
        if calibration is not None and calibration.images is None:
            raise MasterkeyError(
                "a cross-fitted recalibration gives one network per fold, not one network; recalibrate on "
                f"calibration images ({option('calib_data', 'DIR')}) to get the recalibrated network"
            )
        self.restore()
        try:
            report = swap_depthwise(self.model, resolve_key_spec(keys), layers=layers, resize=resize)
            if calibration is not None:
                self._recalibrate(calibration, f"{_display_name(keys)}: recalibrate")
            yield report
        finally:
            self.restore()

    def run(
        self,
        keys: str | KeySet,
        layers: LayerSelector = None,
        resize: bool = False,
        recalibrate: bool = False,
    ) -> tuple[list[dict[str, Any]], SwapReport]:
        """Swap ``keys`` in, evaluate (and, with ``recalibrate``, recalibrate with each calibration and evaluate
        again), restore. Returns the result rows and the swap's per-layer report."""
        if recalibrate and not self.calibrations:
            raise MasterkeyError("recalibration asked for, but the session has no calibration images")
        base = self.baseline()
        name = _display_name(keys)
        group, seed = spec_group(name)
        start = time.perf_counter()
        with self.swapped(keys, layers, resize) as report:
            common = {
                "keys": name,
                "group": group,
                "seed": seed,
                "n_keys": report.n_keys,
                "mean_cos2": report.mean_cos2,
                "n_layers": len(report.layers),
                "n_filters": report.n_filters,
            }
            rows = [self._row(common, self.evaluate(f"{name}: evaluate"), base, None, start)]
            if recalibrate:
                swapped = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                for calibration in self.calibrations:
                    self.model.load_state_dict(swapped)
                    start = time.perf_counter()
                    acc = self.evaluate_recalibrated(calibration, name)
                    rows.append(self._row(common, acc, base, calibration, start))
        return rows, report

    def _row(
        self,
        common: dict[str, Any],
        acc: dict[str, float],
        base: dict[str, float],
        calibration: Calibration | None,
        start: float,
    ) -> dict[str, Any]:
        return {
            **common,
            "recalibrated": calibration is not None,
            "calibration": calibration.label(self.images.root) if calibration is not None else "",
            "top1": acc["top1"],
            "top5": acc["top5"],
            "delta_top1": points(acc["top1"], base["top1"]),
            "n_images": int(acc["n"]),
            "calib_images": self._calib_count(calibration) if calibration is not None else 0,
            "seconds": round(time.perf_counter() - start, 2),
        }

    def baseline_rows(self, recalibrate: bool = False) -> list[dict[str, Any]]:
        """The unswapped model's row; with ``recalibrate`` also the unswapped model after each recalibration (a
        control: what the calibration data alone do to the statistics)."""
        start = time.perf_counter()
        base = self.baseline()
        common = {
            "keys": BASELINE,
            "group": BASELINE,
            "seed": None,
            "n_keys": 0,
            "mean_cos2": 1.0,
            "n_layers": 0,
            "n_filters": 0,
        }
        rows = [self._row(common, base, base, None, start)]
        if recalibrate:
            for calibration in self.calibrations:
                self.restore()
                start = time.perf_counter()
                try:
                    acc = self.evaluate_recalibrated(calibration, "unswapped model")
                    rows.append(self._row(common, acc, base, calibration, start))
                finally:
                    self.restore()
        return rows

    # -------------------------------------------------------------- many key sets
    def sweep(
        self,
        specs: Sequence[str | KeySet],
        layers: LayerSelector = None,
        resize: bool = False,
        recalibrate: bool = False,
    ) -> SwapResults:
        """The baseline and every key set of ``specs`` (each with and without recalibration if asked)."""
        self.check_keys(specs, layers, resize)
        rows = self.baseline_rows(recalibrate)
        stages = []
        for spec in progress_bar(specs, desc="key sets", unit="set", enabled=self.progress, leave=True):
            new, report = self.run(spec, layers=layers, resize=resize, recalibrate=recalibrate)
            rows.extend(new)
            per_stage = report.per_stage()
            per_stage.insert(0, "keys", _display_name(spec))
            stages.append(per_stage)
        per_stage = pd.concat(stages, ignore_index=True) if stages else pd.DataFrame()
        return SwapResults(rows, per_stage, None, self.describe())

    def sensitivity(
        self,
        keys: str | KeySet,
        by: str = "stage",
        resize: bool = False,
        recalibrate: bool = False,
    ) -> pd.DataFrame:
        """Swap one stage (``by="stage"``) or one layer (``by="layer"``) at a time; the accuracy drop of each.

        Columns: unit, name, stage, keys, n_layers, n_filters, mean_cos2, top1, top5 (percent), drop (baseline top-1
        minus top-1, in percentage points) and, with ``recalibrate``, top1_recal / drop_recal.
        """
        if by not in ("stage", "layer"):
            raise MasterkeyError(f"{option('by', repr(by), flag='--sensitivity')}: expected 'stage' or 'layer'")
        base = self.baseline()
        positions = depthwise_layers(self.model)
        if by == "stage":
            stages = sorted({p.stage for p in positions})
            units = [(str(s), [p.name for p in positions if p.stage == s]) for s in stages]
        else:
            units = [(p.name, [p.name]) for p in positions]
        stage_of = {p.name: p.stage for p in positions}
        self.check_keys([keys], resize=resize)
        rows = []
        for name, members in progress_bar(units, desc=f"sensitivity by {by}", enabled=self.progress, leave=True):
            new, report = self.run(keys, layers=members, resize=resize, recalibrate=recalibrate)
            row: dict[str, Any] = {
                "unit": by,
                "name": name,
                # the stage as harvest records it in the bank and fit in fits.parquet: tables join on it
                "stage": int(name) if by == "stage" else stage_of[name],
                "keys": _display_name(keys),
                "n_layers": len(report.layers),
                "n_filters": report.n_filters,
                "mean_cos2": report.mean_cos2,
                "top1": new[0]["top1"],
                "top5": new[0]["top5"],
                "drop": points(base["top1"], new[0]["top1"]),
            }
            if recalibrate:
                row["top1_recal"] = new[1]["top1"]
                row["drop_recal"] = points(base["top1"], new[1]["top1"])
            rows.append(row)
        return pd.DataFrame(rows)

    def describe(self) -> dict[str, Any]:
        """What this session evaluates (for results' ``info``)."""
        info: dict[str, Any] = {
            "model": type(self.model).__name__,
            "data": self.images.root,
            "n_images": len(self.images),
            "n_classes": len(self.images.classes),
            "preprocessing": self.prep.to_dict(),
            "n_depthwise_layers": len(depthwise_layers(self.model)),
            "data_mode": "stream" if isinstance(self.images, StreamedImages) else "memory",
        }
        if self.calibrations:
            info["calibration"] = "; ".join(c.label(self.images.root) for c in self.calibrations)
        return info


# ---------------------------------------------------------------------- model loading and run directories


def load_model(
    name: str | None, weights: str | Path | None, pretrained: bool = False, **kwargs: Any
) -> tuple[nn.Module, str, dict[str, str]]:
    """A model for swapping: by name, or — with ``name`` omitted — named by the weights' safetensors metadata
    (``arch``) or recognised from the state_dict (:func:`~masterkey.networks.models.guess_model_name`). Returns the
    model, the name used, and the weights' metadata (its ``preprocessing`` or ``dataset`` pick the preprocessing:
    :func:`~masterkey.data.preprocessing.preprocessing_for`)."""
    from masterkey.networks.models import create_model, guess_model_name, read_state_dict

    metadata: dict[str, str] = {}
    if weights is not None:
        state, metadata = read_state_dict(weights)
        if name is None and "arch" not in metadata:
            name = guess_model_name(state)
            if name is None:
                raise MasterkeyError(
                    f"{weights}: the file names no architecture and matches none of the common DS-CNNs; "
                    f"give {option('name', 'NAME', flag='--model')} (a timm or torchvision model name)"
                )
        name = name or metadata["arch"]
    elif name is None:
        raise MasterkeyError(
            f"no model: give {option('name', 'NAME', flag='--model')}, {option('weights', 'FILE')}, or both"
        )
    model = create_model(name, weights=weights, pretrained=pretrained, **kwargs)
    return model, name, metadata


def write_swap_run(out: str | Path, results: SwapResults, config: dict[str, Any], overwrite: bool = False) -> None:
    """A "swap" run directory: results.csv / results.json, summary.csv, per_stage.csv, optional
    sensitivity.csv, summary.md and run.json (see the run-directory contract)."""
    from masterkey.files import atomic_directory, write_json, write_text
    from masterkey.runformats import write_table
    from masterkey.runs import write_run_info

    with atomic_directory(out, "swap", overwrite=overwrite) as tmp:
        write_table(tmp, "swap", "results.csv", results.frame())
        write_table(tmp, "swap", "summary.csv", results.summary())
        write_table(tmp, "swap", "per_stage.csv", results.per_stage)
        if results.sensitivity is not None:
            write_table(tmp, "swap", "sensitivity.csv", results.sensitivity)
        write_json(tmp / "results.json", results.to_dict())
        write_text(tmp / "summary.md", results.to_markdown())
        write_run_info(tmp, "swap", {k: v for k, v in config.items() if not k.startswith("_")})
