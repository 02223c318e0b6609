"""One report section per run: the figures and tables that make each kind of run legible at a glance. One module
per run kind (``fit``, ``discover``, ``swap``, ``training``, ``explain``) on what they share (``common``); here, the
one entry point that picks the builder of a run and draws several runs side by side."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from masterkey.report.html import Section
from masterkey.report.runs import DiscoverRun, ExperimentRun, ExplainRun, FitRun, LoadedRun, SwapRun, TrainRun
from masterkey.report.sections.common import ReportOptions
from masterkey.report.sections.discover import discover_section
from masterkey.report.sections.explain import explain_section
from masterkey.report.sections.fit import fit_section
from masterkey.report.sections.swap import swap_section
from masterkey.report.sections.training import experiment_section, train_section

_BUILDERS = {
    FitRun: fit_section,
    DiscoverRun: discover_section,
    SwapRun: swap_section,
    TrainRun: train_section,
    ExperimentRun: experiment_section,
    ExplainRun: explain_section,
}


def build_section(loaded: LoadedRun, index: int, options: ReportOptions | None = None) -> Section:
    """The report section of one loaded run (see :func:`masterkey.report.runs.load_run`)."""
    options = options or ReportOptions()
    section = _BUILDERS[type(loaded)](loaded, index, options)  # type: ignore[operator]
    section.notes = list(dict.fromkeys(loaded.run.notes))
    return section


#: Rough cost of a section by kind: the heaviest are started first when sections are drawn side by side.
_COST = {FitRun: 8, DiscoverRun: 3, ExperimentRun: 2}
#: The kinds whose sections compute with torch (a fit's random reference, an explain run's reconstruction summary).
_TORCH_KINDS = (FitRun, ExplainRun)


def build_sections(runs: Sequence[LoadedRun], options: ReportOptions | None = None) -> list[Section]:
    """The sections of ``runs``, in their order. With ``options.jobs`` > 1 they are drawn in that many forked
    processes (where the platform forks), the costliest kinds first; the sections are the same either way."""
    options = options or ReportOptions()
    jobs = min(options.jobs, len(runs))
    if jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [build_section(run, i + 1, options) for i, run in enumerate(runs)]
    if any(isinstance(run, _TORCH_KINDS) for run in runs):
        importlib.import_module("torch")  # once, before the fork: shared by the children instead of loaded by each
    order = sorted(range(len(runs)), key=lambda i: _COST.get(type(runs[i]), 1), reverse=True)
    context = multiprocessing.get_context("fork")  # the children inherit the imports (seconds of start-up each)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_one_thread) as pool:
        futures = {i: pool.submit(build_section, runs[i], i + 1, options) for i in order}
        return [futures[i].result() for i in range(len(runs))]


def _one_thread() -> None:
    """Each drawing process computes on one thread: the processes already share the cores. (Torch, where a section
    needs it, loaded before the fork; ``OMP_NUM_THREADS`` sets the threads of a later load.)"""
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
