"""One discover run, end to end: :class:`DiscoverJob` (what a run needs: bank, configuration, objective, output) and
:func:`run_discover` (check the output, discover, write the run directory, clean up after a failure). The command
line fills a job from its options (:meth:`DiscoverJob.from_options`); a Python caller or a TOML file can do the same.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from masterkey.discover.settings import DiscoverConfig, protocol_config
from masterkey.errors import MasterkeyError, option

__all__ = ["DEFAULT_OUT", "AccuracyInputs", "DiscoverJob", "DiscoverResult", "default_out", "run_discover"]

#: Where a run goes without ``out``: this, or ``-2``, ``-3`` ... if it exists.
DEFAULT_OUT = Path("masterkey-runs") / "discover"
_TEST_SPLITS = {"test", "tests", "testing"}
#: Options of :meth:`DiscoverJob.from_options` that are :class:`DiscoverConfig` fields under another name.
_CONFIG_OPTIONS = {
    "candidates": "n_candidates",
    "path_to": "floor",
    "threads": "cpu_threads",
}
#: ... and :class:`AutoencoderConfig` fields.
_AE_OPTIONS = {
    "ae_steps": "steps",
    "ae_hidden": "hidden",
    "ae_batch": "batch_size",
    "ae_lr": "lr",
    "loss": "loss",
    "spread": "spread",
    "activation": "activation",
}


def default_out(base: Path = DEFAULT_OUT) -> Path:
    """``base`` if free, else ``base-2``, ``base-3`` ... (a directory being written counts as taken)."""
    candidate, n = base, 2
    while candidate.exists():
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


@dataclass(frozen=True)
class AccuracyInputs:
    """Where the accuracy objective's model and held-out images come from."""

    weights: str  #: the model's weights (safetensors or state_dict)
    data: str  #: an ImageFolder of the model's TRAINING data; a split of it is held out
    model: str | None = None  #: timm / torchvision name (optional when the weights name their arch)
    held_out: float | int = 5000  #: held-out images: a count, or a fraction < 1
    max_per_class: int | None = None  #: read only the first N images of each class
    split_seed: int = 0  #: seed of the stratified held-out split
    batch_size: int = 256
    data_mode: str = "auto"  #: "memory", "stream" or "auto" (see :mod:`masterkey.data`)
    memory_budget: str | None = None

    def __post_init__(self) -> None:
        if Path(self.data).name.lower() in _TEST_SPLITS:
            raise MasterkeyError(
                f"{option('data', self.data)}: looks like a test split; keys must be selected on a held-out split of "
                "TRAINING data (e.g. .../cifar10/train), never on the numbers they are judged by"
            )

    def setup(self) -> Any:
        """The :class:`masterkey.discover.AccuracySetup`: the model, and the held-out split of its training images
        (the one place discovery loads images)."""
        from masterkey.data.evaluate import check_class_count
        from masterkey.data.memory import ImageSet
        from masterkey.data.preprocessing import preprocessing_for
        from masterkey.data.selection import load_eval_images, stratified_split
        from masterkey.discover.pipeline import AccuracySetup
        from masterkey.networks.models import create_model, read_state_dict

        model = create_model(self.model, weights=self.weights)
        metadata = read_state_dict(self.weights)[1] if str(self.weights).endswith(".safetensors") else {}
        prep = preprocessing_for(model, metadata)
        images = load_eval_images(
            Path(self.data), prep, max_per_class=self.max_per_class, data_mode=self.data_mode,
            memory_budget=self.memory_budget,
        )  # fmt: skip
        check_class_count(model, images, prep)  # the check swap makes: foreign classes are refused, not scored
        _, held = stratified_split(images.labels, self.held_out, seed=self.split_seed)
        description = {
            "model": self.model or metadata.get("arch"),
            "weights": str(self.weights),
            "data": str(self.data),
            "held_out": len(held),
            "of_images": len(images),
            "split_seed": self.split_seed,
            "max_per_class": self.max_per_class,
            "data_mode": "memory" if isinstance(images, ImageSet) else "stream",
        }
        return AccuracySetup(model, images.subset(held), prep, self.batch_size, description)


@dataclass
class DiscoverJob:
    """One ``masterkey discover`` run."""

    bank: str = "default"  #: a bank directory, or "default" (the embedded bank)
    config: DiscoverConfig = field(default_factory=DiscoverConfig)
    kernel_sizes: tuple[int, ...] | None = None  #: default: all the bank holds (the model's, for accuracy)
    query: str | None = None  #: use only the bank rows matching this metadata query
    accuracy: AccuracyInputs | None = None  #: the accuracy objective's inputs (None: the data-free objective)
    universality: bool = False
    device: str = "cpu"
    out: str | Path | None = None  #: default: :func:`default_out`
    overwrite: bool = False
    resume: bool = True  #: continue from the checkpoint of an interrupted run with the same options
    progress: bool = False
    options: dict[str, Any] = field(default_factory=dict)  #: as given, recorded in run.json

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> DiscoverJob:
        """A job from flat options named as on the command line (``n_keys``, ``candidates``, ``ae_steps``,
        ``protocol``, ``objective``, ``weights`` ...). Options that are None keep the protocol's value; unknown
        names are refused."""
        given = {k: v for k, v in options.items() if v is not None and not k.startswith("_")}
        protocol = given.pop("protocol", "masterkey")
        job_fields = {f.name for f in fields(cls)} - {"config", "accuracy", "options"}
        accuracy_fields = {f.name for f in fields(AccuracyInputs)}
        config_fields = {f.name for f in fields(DiscoverConfig)} - {"autoencoder", "protocol"}
        job, acc, conf, ae = {}, {}, {}, {}
        objective = given.pop("objective", "variance")
        for name, value in given.items():
            if name in _AE_OPTIONS:
                ae[_AE_OPTIONS[name]] = value
            elif name in _CONFIG_OPTIONS or name in config_fields:
                conf[_CONFIG_OPTIONS.get(name, name)] = tuple(value) if isinstance(value, list) else value
            elif name in job_fields:
                job[name] = tuple(value) if isinstance(value, list) else value
            elif name in accuracy_fields:
                acc[name] = value
            elif name not in ("json", "no_resume", "command", "kernel_size", "encoder"):
                raise MasterkeyError(f"discover: unknown option {name!r}")
        if "kernel_size" in given:
            job["kernel_sizes"] = tuple(given["kernel_size"])
        if given.get("no_resume"):
            job["resume"] = False
        if "encoder" in given:
            ae["symmetric"] = given["encoder"] == "symmetric"
        if conf.get("dedupe") == 0:
            conf["dedupe"] = None  # 0 turns de-duplication off
        if objective == "accuracy":
            for needed, what in (("weights", "FILE"), ("data", "DIR")):
                if needed not in acc:
                    raise MasterkeyError(f"the accuracy objective needs {option(needed, what)}")
            job["accuracy"] = AccuracyInputs(**acc)
            conf.setdefault("compare_k", (conf.get("n_keys", DiscoverConfig.n_keys),))
        config = protocol_config(protocol, **conf, autoencoder=ae)
        return cls(config=config, **job, options={**given, "protocol": protocol, "objective": objective})

    def output(self) -> Path:
        return Path(self.out) if self.out is not None else default_out()


@dataclass
class DiscoverResult:
    """What :func:`run_discover` did."""

    out: Path
    discoveries: dict[int, Any]  #: kernel size -> :class:`masterkey.discover.Discovery`
    seconds: float


def _kernel_sizes(job: DiscoverJob, bank: Any, accuracy: Any) -> list[int] | None:
    if job.kernel_sizes or accuracy is None:
        return list(job.kernel_sizes) if job.kernel_sizes else None
    from masterkey.depthwise import find_depthwise

    model_sizes = sorted({dw.kernel_size[0] for dw in find_depthwise(accuracy.model)})
    sizes = [k for k in model_sizes if k in bank.kernel_sizes]
    if not sizes:
        raise MasterkeyError(
            f"the model's depthwise kernel sizes {model_sizes} do not occur in {bank.path} "
            f"(it holds {bank.kernel_sizes})"
        )
    return sizes


def run_discover(job: DiscoverJob) -> DiscoverResult:
    """Run ``job``: refuse a taken output first (unless ``overwrite``), discover, write the run directory
    atomically. An interrupted run keeps its checkpoint beside the output (``.OUT.checkpoint``) and resumes from it;
    a failed one leaves nothing behind."""
    from masterkey.bank import default_bank_path, open_bank
    from masterkey.discover.output import write_discover_run
    from masterkey.discover.pipeline import discover_bank
    from masterkey.files import check_output, missing_parents, remove_empty_folders
    from masterkey.threads import torch_threads

    started = time.perf_counter()
    out = job.output()
    bank_path = default_bank_path() if job.bank == "default" else job.bank
    accuracy_files = [job.accuracy.weights, job.accuracy.data] if job.accuracy else []
    check_output(out, "discover", overwrite=job.overwrite, inputs=[bank_path, *accuracy_files])
    with torch_threads(job.config.cpu_threads, job.device):
        bank = open_bank(job.bank)
        if job.query:
            bank = bank.query(job.query)
        accuracy = job.accuracy.setup() if job.accuracy is not None else None
        kernel_sizes = _kernel_sizes(job, bank, accuracy)
        checkpoint_dir = out.with_name(f".{out.name}.checkpoint")
        if not job.resume and checkpoint_dir.exists():
            shutil.rmtree(checkpoint_dir)
        created = missing_parents(out)
        try:
            discoveries = discover_bank(
                bank, kernel_sizes, job.config, accuracy=accuracy, universality=job.universality, device=job.device,
                checkpoint_dir=checkpoint_dir, progress=job.progress,
            )  # fmt: skip
            run_config = {**job.options, "out": str(out), "protocol": job.config.protocol,
                          "discover": job.config.to_dict(), "kernel_sizes": list(discoveries)}  # fmt: skip
            write_discover_run(out, discoveries, run_config, str(bank.path), job.overwrite, job.progress)
        except Exception:
            # A failed discovery leaves nothing behind; only a killed or interrupted one keeps its checkpoint.
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            remove_empty_folders(created)
            raise
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return DiscoverResult(out, discoveries, time.perf_counter() - started)
