"""Every command the documentation shows is run: each ``masterkey ...`` line of README.md's and docs/*.md's code
blocks, and each example of every command's ``--help``, in the order shown, in one folder per document (so later
commands read what earlier ones wrote, as a reader's would), on small data.

What is changed to make them small, or to give them the inputs a reader is assumed to have, is listed here and
nowhere else:

* :data:`REPLACE`: placeholder inputs (``W.safetensors``, ``DIR``, ``a.pth`` ...) -> real files of ../shared or
  files an earlier command (or :data:`SETUP`) wrote; ``--device cuda`` -> ``cpu``.
* :func:`smaller`: options appended so that each command runs in seconds (fewer autoencoder steps and images,
  one epoch on 40 images, ...): the code paths are those of the full command.
* :data:`SETUP`: commands run first in a document's folder for the inputs its text presumes.
* :data:`NOT_RUN`: commands that cannot run here, each with the reason (GPUs, ImageNet, elided options ``...``,
  synopses with placeholders). A command in neither list fails :func:`test_every_documented_command_is_accounted_for`,
  and so does a :data:`NOT_RUN` entry the documents no longer show.

A wrong path or flag in a document fails here. The documents with long commands (discover, train, swap) are
marked ``slow``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from masterkey.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
HELP_COMMANDS = ["cache", "harvest", "bank", "keys", "fit", "discover", "swap", "train", "explain", "report"]

M = "../shared/models"
#: Placeholder words of the documents -> what the test gives instead (whole shell words only).
REPLACE = {
    "W.safetensors": f"{M}/cifar10-convnext/convnext_atto_s2_e55.safetensors",
    "DIR": "../shared/data/cifar10/test",
    "a.pth": f"{M}/mobilenet_v2_imagenet.pth",
    "b.safetensors": f"{M}/cifar10-convnext/convnext_atto_s1_e20.safetensors",
    "convnext_atto@convnext_atto_s0_e20.safetensors": (
        f"convnext_atto@{M}/cifar10-convnext/convnext_atto_s0_e20.safetensors"
    ),
    "runs/train-c10": "runs/frozen",  # train's first example writes it
    "runs/explain": "runs/explain-ss8",  # explain's second example writes it
    "model.onnx": "runs/atto-paper8.onnx",  # written by help:harvest's SETUP
    "cuda": "cpu",  # --device cuda: no GPU here
}

#: Commands run first in a document's folder: the inputs its examples presume (a bank, key files, a discover run).
_DISCOVER_RUN = "masterkey discover -o runs/discover"
_CONVNEXTS = " ".join(
    f"{M}/cifar10-convnext/{name}.safetensors" for name in ("convnext_atto_s0_e20", "convnext_atto_s1_e20")
)
SETUP = {
    "docs/discover.md": [f"masterkey harvest {_CONVNEXTS} -o banks/mine"],
    "docs/swap.md": [_DISCOVER_RUN],
    "docs/train.md": ["masterkey"],  # the main job: masterkey-runs/discover, which a command there uses
    "help:keys": [_DISCOVER_RUN, "masterkey keys convert paper8 -o my_keys.txt"],
    "help:fit": [
        "masterkey harvest ../shared/models/mobilenet_v2_imagenet.pth -o banks/mnv2",
        f"masterkey harvest {M}/cifar10-convnext/convnext_atto_s0_e20.safetensors "
        f"{M}/cifar10-convnext/convnext_atto_s1_e20.safetensors -o banks/convnexts",
        "masterkey keys convert paper8 -o keys.safetensors",
    ],
    "help:bank": [
        f"masterkey harvest {M}/cifar10-convnext/convnext_atto_s0_e20.safetensors -o banks/a",
        f"masterkey harvest {M}/cifar10-convnext/convnext_atto_s1_e20.safetensors -o banks/b",
    ],
    "help:harvest": [  # swap's (and docs/swap.md's) last example: model.onnx
        f"masterkey swap --weights {M}/cifar10-convnext/convnext_atto_s2_e55.safetensors --keys paper8 "
        "--data ../shared/data/cifar10/test --save-weights runs/atto-paper8.safetensors --onnx runs/atto-paper8.onnx",
    ],
    "help:discover": [f"masterkey harvest {_CONVNEXTS} -o banks/convnexts"],
    "help:swap": [_DISCOVER_RUN],
    "help:explain": ["masterkey keys convert paper8 -o keys.safetensors"],
    "help:report": [
        _DISCOVER_RUN,
        "masterkey explain scalespace8 -o runs/explain-ss8",  # explain's second example: run once for both
        "masterkey train --model convnext_atto --model-kwargs num_classes=10,patch_size=1 "  # train's first example
        "--data ../shared/data/cifar10 --mode frozen --keys paper8 --epochs 20 --batch-size 512 -o runs/frozen",
    ],
}

_GPU = "needs GPUs and ImageNet (/data/imagenet) and the FCMAE checkpoint: the paper's ImageNet training"
_ELIDED = "elided: '...' stands for the options of the run it continues"
#: Commands shown but not run here, and why.
NOT_RUN = {
    "torchrun --standalone --nproc_per_node=8 -m masterkey train --recipe imagenet --mode $mode": _GPU,
    "torchrun --standalone --nproc_per_node=8 -m masterkey train --recipe imagenet --mode frozen": _GPU,
    "torchrun --nnodes=2 --nproc_per_node=8": _GPU + " on two nodes",
    "torchrun --nproc_per_node=8 -m masterkey train --recipe imagenet": _GPU,
    "torchrun --standalone --nproc_per_node=2 -m masterkey train ...": _ELIDED + " (DDP on CPU: tests/train)",
    "masterkey train ... -o runs/frozen --resume": _ELIDED + " (resume: tests/train/test_resume*)",
    "MASTERKEY_CACHE=/scratch/mk masterkey train ...": _ELIDED,
    "masterkey explain [KEYS]": "a synopsis (brackets mark options), not a command",
    "masterkey report RUN_DIR... -o OUT": "a synopsis (placeholders), not a command",
    "masterkey train --experiment bench/train_cifar_gpu.toml": "the GPU benchmark: 20 epochs x 3 seeds x 8 arms",
    "masterkey train --experiment bench/table3_cifar_gpu.toml": "the GPU benchmark: 60 runs of 20 epochs",
    "masterkey train --collect runs/gpu-call-1": "joins the runs of several GPU calls (tests/train/test_collect*)",
    "masterkey train --experiment bench/train_cifar_cpu.toml -o runs/bench": "the whole CPU matrix: hours",
    "masterkey discover --protocol paper --objective accuracy": "30 minutes of accuracy evaluations (measured "
    "once, quoted in the text); its shorter sibling below runs",
}

#: Documents whose commands take long: marked slow.
SLOW = {"docs/discover.md", "docs/swap.md", "docs/train.md", "help:discover", "help:swap", "help:train"}
SLOW |= {"help:explain", "help:report", "help:keys", "docs/explain.md"}


def _code_blocks(text: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S) if m.group(1) in ("", "bash", "sh")]


def _words(text: str) -> list[str]:
    """Shell words without the trailing comment (a comment may hold an apostrophe: "the paper's")."""
    try:
        return shlex.split(text, comments=True)
    except ValueError:
        return shlex.split(re.split(r"(?:^|\s)#", text, maxsplit=1)[0])


def _commands(block: str) -> list[str]:
    """The masterkey / torchrun commands of a shell block: continuations joined, comments dropped, output lines
    (``masterkey: ...``) and other programs left out; ``a && b`` gives both."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            if not re.match(r"\s*(\w+=\S+\s+)*(masterkey|torchrun)(\s|$)", part):
                continue
            words = _words(part)
            text = " ".join(shlex.quote(w) if " " in w else w for w in words)
            text = re.sub(r"\s+", " ", text).strip()
            first = next((w for w in words if "=" not in w or w.startswith("-")), "")
            if first in ("masterkey", "torchrun") and not text.startswith("masterkey:"):
                out.append(text)
    return out


def document_commands(name: str) -> list[str]:
    if name.startswith("help:"):
        return help_examples(name.removeprefix("help:"))
    return [c for block in _code_blocks((ROOT / name).read_text()) for c in _commands(block)]


def help_examples(command: str) -> list[str]:
    from masterkey.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    text = (sub.description or "") + "\n" + (sub.epilog or "")
    examples = text.split("examples:", 1)[1] if "examples:" in text else ""
    return _commands(examples)


def reason_not_run(command: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)


def smaller(argv: list[str]) -> list[str]:
    """The options appended so that a command runs in seconds (the last value of an option wins)."""
    argv = ["discover"] if not argv else list(argv)  # bare `masterkey` is the main job
    cmd = argv[0]
    if cmd == "discover":
        argv += ["--ae-steps", "100", "--ae-hidden", "32", "--candidates", "16", "--rounds", "1", "-k", "4"]
        argv += ["--compare-k", "2,4", "--random-seeds", "2", "--no-progress"]
        if "--universality" in argv:  # autoencoders on each leave-one-out subset: fewer distinct candidates
            argv += ["-k", "2", "--compare-k", "2"]
        if "accuracy" in argv:
            argv += ["--max-per-class", "3", "--held-out", "20", "--candidates", "5", "--baselines", "paper8"]
    elif cmd == "swap":
        argv += ["--max-images", "10"] + (["--recalibrate", "10"] if "--recalibrate" in argv else [])
    elif cmd == "train":
        argv += ["--epochs", "1", "--max-test-images", "20", "--batch-size", "20"]
        argv += [] if "--train-sizes" in argv else ["--max-train-images", "40"]  # a sweep sets it per size
        argv += ["--threads", "1", "--warmup-epochs", "0"]
        if "--seeds" in argv or "--experiment" in argv:
            argv += ["--seeds", "0,1"]
        if "--train-sizes" in argv:
            argv += ["--train-sizes", "20,40"]
    elif cmd == "explain":
        argv += ["--components", "8", "--stride", "4", "--seeds", "2", "--max-images", "3"]
    return argv


def _argv(command: str) -> list[str]:
    words = [REPLACE.get(w, w) for w in shlex.split(command)]
    assert words[0] == "masterkey", command
    return smaller(words[1:])


def _groups() -> list[str]:
    return [*DOCUMENTS, *(f"help:{c}" for c in HELP_COMMANDS)]


def test_every_documented_command_is_accounted_for() -> None:
    """Each command is run by :func:`test_documented_commands_run` or listed in :data:`NOT_RUN` with a reason; every
    :data:`NOT_RUN` entry still matches a command the documents show."""
    shown = [c for group in _groups() for c in document_commands(group)]
    assert len(shown) > 60
    for command in shown:
        assert command.startswith("masterkey") or reason_not_run(command), f"run how? {command}"
    for start in NOT_RUN:
        assert any(c.startswith(start) for c in shown), f"NOT_RUN entry no document shows any more: {start}"


def _workspace(root: Path, shared: Path) -> Path:
    """``root/work``, where a document's commands run: ``../shared`` and ``bench/`` as the documents presume."""
    work = root / "work"
    work.mkdir(parents=True)
    (root / "shared").symlink_to(shared)  # the documents' ../shared
    (work / "bench").symlink_to(ROOT / "bench")  # experiment files: bench/*.toml
    return work


def _run(group: str, command: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(argv)
    _, err = capsys.readouterr()
    assert code == 0, f"{group}: {command}\n  ran as: masterkey {' '.join(argv)}\n{err[-2000:]}"
    assert "Traceback" not in err


def _reads_only_shared(argv: list[str], work: Path) -> bool:
    """Whether a command's result depends on nothing in ``work``: it names no file there (inputs come from
    ../shared, bench/ or masterkey's built-ins) and is not a ``cache`` command (which acts on the cache)."""
    if argv[0] == "cache":
        return False
    names = [part for word in argv for part in re.split(r"[@:,=]", word) if part and not part.startswith("-")]
    return not any((work / name).exists() for name in names if not name.startswith(("../shared", "bench")))


def _outputs(root: Path) -> dict[Path, list[Path]]:
    """What a command wrote in its folder ``root``, by the output it made (a file at the top or one level down:
    ``model.onnx``, ``runs/a.onnx``; a folder one level down: ``runs/fit``, ``masterkey-runs/discover``), each with
    its files, relative to ``root``."""
    out: dict[Path, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] != "bench" and not path.is_dir():
            out.setdefault(Path(*rel.parts[:2]), []).append(rel)
    return out


def _copy_outputs(done: Path, work: Path) -> bool:
    """Copy into ``work`` what a command wrote in its folder ``done``; nothing when ``work`` already holds one of
    those outputs (the command then runs in place). Whether it copied."""
    wrote = _outputs(done)
    if any((work / top).exists() for top in wrote):
        return False
    for rel in (rel for files in wrote.values() for rel in files):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(done / rel, work / rel)
    return True


@pytest.mark.parametrize("group", [pytest.param(g, marks=pytest.mark.slow) if g in SLOW else g for g in _groups()])
def test_documented_commands_run(
    group: str, shared: Path, tmp_path: Path, monkeypatch, capsys, build_once: Callable[..., Path]
) -> None:
    """Each group's commands in order, in one folder. Several documents show the same command (the README and
    docs/discover.md the same discover, docs/swap.md and ``swap --help`` the same swaps): a command that reads
    nothing of its folder runs once per session, in a folder of its own, and what it wrote is copied into every
    group that shows it (a group whose folder already holds one of the outputs it made runs it in place instead)."""
    work = _workspace(tmp_path, shared)
    monkeypatch.chdir(work)
    if group == "help:cache":
        monkeypatch.setenv("MASTERKEY_CACHE", str(tmp_path / "cache"))  # `cache clear` clears only this one
    ran = 0
    for command in [*SETUP.get(group, []), *document_commands(group)]:
        if reason_not_run(command):
            continue
        argv = _argv(command)
        if _reads_only_shared(argv, work):

            def build(root: Path, argv: list[str] = argv, command: str = command) -> None:
                monkeypatch.chdir(_workspace(root, shared))
                try:
                    _run(group, command, argv, capsys)
                finally:
                    monkeypatch.chdir(work)

            key = hashlib.sha256(shlex.join(argv).encode()).hexdigest()[:16]
            if _copy_outputs(build_once(f"docs-commands/{key}", build) / "work", work):
                ran += 1
                continue
        _run(group, command, argv, capsys)
        ran += 1
    assert ran or group == "README.md" or not document_commands(group), group
    assert os.getcwd() == str(work)
