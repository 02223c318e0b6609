"""Shared fixtures. Tests use the real weights and images in ../shared (CI has a copy beside the checkout) and
never touch the network.

The suite runs in parallel (``python -m pytest -n auto``, pytest-xdist, with work stealing: ``--dist worksteal`` in
pyproject.toml): ``auto`` is one worker per core (:func:`pytest_xdist_auto_num_workers`); every worker
uses one torch thread, and so do the processes its tests start; what several tests only read is built once
per session for all workers (:func:`built_once`); the temporary files of a passing session are removed
(``tmp_path_retention_policy``), those of the processes its tests start included (:func:`pytest_configure`).
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MASTERKEY_SHARED", REPO.parent / "shared"))
#: The pytest-xdist worker this process is ("gw0", "gw1", ...), or None in a serial run.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")

# Parallel workers share the cores: a second torch thread per worker would only fight the other workers for them.
torch.set_num_threads(1 if WORKER else min(2, os.cpu_count() or 1))
if WORKER:
    # ... and so would the processes a test starts (masterkey commands, examples, torchrun), which inherit this
    # environment: with two OpenMP threads each on cores the other worker also uses, they spin waiting for each
    # other (a swap test: 32 s of CPU with two threads, 24 s with one, on 2 busy cores).
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def _glibc() -> object | None:
    """glibc, on Linux (None elsewhere)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None or sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


#: In a parallel worker, glibc keeps freed blocks of up to 1 GiB for reuse within a test module, rather than unmap
#: them (its default above 32 MiB) and fault fresh pages in for the next batch's activations: MobileNetV2 over 1,000
#: ImageNet samples took 15 s of user and 20 s of system time, 6 s of system time with this. What is kept goes
#: back to the system after each module (:func:`_release_freed_memory`). Only in this process: the processes tests
#: start, some of which measure their peak memory, keep glibc's defaults.
LIBC = _glibc() if WORKER else None
if LIBC is not None:
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
    LIBC.mallopt(M_MMAP_THRESHOLD, 1 << 30)  # type: ignore[attr-defined]
    LIBC.mallopt(M_TRIM_THRESHOLD, 1 << 30)  # type: ignore[attr-defined]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per core the process may run on (xdist's own guess counts physical cores when
    psutil is installed: one on a 2-vCPU machine). Not one more: the suite is CPU-bound since most tests stopped
    waiting on processes they start, and a third worker on 2 cores costs its collection and contention (2 cores:
    0.93x the wall time of 3 workers, the median of four alternated pairs, bench/results/tests-workers.md).
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still decides when it is set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@pytest.fixture(scope="module", autouse=True)
def _release_freed_memory() -> object:
    yield
    if LIBC is not None:
        LIBC.malloc_trim(0)  # type: ignore[attr-defined]


def session_root(factory: pytest.TempPathFactory) -> Path:
    """The temporary directory every worker of this session shares (a serial run's own base directory). It lies
    under pytest's base directory, so a passing session removes it with everything else."""
    base = factory.getbasetemp()
    return base.parent if WORKER else base  # a worker's base is <session base>/popen-gwN


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The directory ``name`` (``a/b``: ``b`` inside ``a``) that ``build(path)`` writes, built once per test session
    however many workers ask for it: the first builds it under a file lock, the others wait for it and reuse it. Its
    users only read it (a test that changes it copies it first). A build that failed is tried again by the next
    user."""
    root = session_root(factory)
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = name.replace("/", "--")
    # Not .NAME.lock: that is the name of masterkey's own lock of an output NAME.
    with open(root / f".{stem}.build-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (root / f".{stem}.done").exists():
            if path.exists():
                shutil.rmtree(path)  # what a failed build left
            build(path)
            (root / f".{stem}.done").touch()
    return path


#: The temporary directory of the processes this session starts (set in the main process, inherited by the rest).
TEMP_ROOT = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Offline, and a temporary directory of the session's own for every process it starts: the main process points
    ``TMPDIR`` at a fresh folder, which the workers, the processes tests start and their children inherit, so that
    what they leave there (inductor's compile cache of ``torch.compile``, ~150 MB; torchrun's agent folders;
    Chromium's profile) is removed with it when the session ends (:func:`pytest_unconfigure`). pytest's own
    folders stay where they were (the main process keeps its temporary directory), so that a failing test's
    ``tmp_path`` is kept for a look, as ``tmp_path_retention_policy`` says."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if WORKER is None:
        tempfile.tempdir = tempfile.gettempdir()  # this process keeps its own, pytest's base directory in it
        root = Path(tempfile.mkdtemp(prefix="masterkey-tests-"))
        os.environ["TMPDIR"] = str(root)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "torchinductor"))  # torch.compile in this process
        config.stash[TEMP_ROOT] = root


def pytest_unconfigure(config: pytest.Config) -> None:
    root = config.stash.get(TEMP_ROOT, None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


#: Markers of the longest tests: their files start first, so that parallel workers finish together (the longest
#: jobs first). Whole files move, in their order, so that module-scoped fixtures are still made once.
LONG = ("slow", "kill", "torchrun")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    long_files = {item.path for item in items if any(item.get_closest_marker(name) for name in LONG)}
    items.sort(key=lambda item: item.path not in long_files)  # a stable sort: the order within is kept


@pytest.fixture(scope="session")
def build_once(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Callable[[Path], object]], Path]:
    """``build_once(name, build)``: :func:`built_once` for this session, for the fixtures of every sub-folder."""
    return functools.partial(built_once, tmp_path_factory)


@pytest.fixture
def one_thread() -> object:
    """Small models run fastest on one thread, and far faster than on two when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only ../shared folder (models, data, keys)."""
    if not (SHARED / "models").is_dir():
        pytest.fail(f"{SHARED} is missing: tests need ../shared (or MASTERKEY_SHARED) with models and data")
    return SHARED


@pytest.fixture(scope="session")
def models_dir(shared: Path) -> Path:
    return shared / "models"


@pytest.fixture(scope="session")
def cifar_convnexts(models_dir: Path) -> list[Path]:
    return sorted((models_dir / "cifar10-convnext").glob("*.safetensors"))


@pytest.fixture(scope="session", autouse=True)
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decoded-image cache for the whole session and all its workers (cache files are written atomically, so
    workers may fill it side by side), outside the repository; ``MASTERKEY_TEST_CACHE`` keeps one across sessions."""
    given = os.environ.get("MASTERKEY_TEST_CACHE")
    path = Path(given) if given else built_once(tmp_path_factory, "image-cache", lambda p: p.mkdir())
    os.environ["MASTERKEY_CACHE"] = str(path)
    return path


@pytest.fixture
def small_tree():
    """``small_tree(root, source, classes, per_class)``: an ImageFolder tree at ``root`` holding the first
    ``per_class`` real images of the first ``classes`` classes of the ImageFolder ``source``."""
    import shutil

    def make(root: Path, source: Path, classes: int = 3, per_class: int = 4) -> Path:
        for cls in sorted(p.name for p in source.iterdir())[:classes]:
            (root / cls).mkdir(parents=True)
            for img in sorted((source / cls).iterdir())[:per_class]:
                shutil.copy(img, root / cls / img.name)
        return root

    return make
