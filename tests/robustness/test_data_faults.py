"""Hostile and careless image data (issue 25): FIFOs and decompression bombs as image files, 1x1 images, an edited
decoded-image cache entry, a cache folder shared with the user's own files, absurd worker counts, a model trained by
masterkey evaluated at the wrong size, foreign classes in discover's accuracy objective, an unknown augmentation
policy. Each case checks the exit status, one error line, no traceback, inputs and foreign files byte-identical,
nothing left behind and, for the silently-wrong ones, the right number."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from .conftest import assert_clean_failure, run_cli, snapshot

pytestmark = pytest.mark.timeout(600)  # a FIFO opened by mistake would block forever: fail instead
TINY_TRAIN = [
    *["--model", "convnext_atto", "--model-kwargs", "num_classes=10,patch_size=2"],
    *["--epochs", "1", "--batch-size", "10", "--eval-batch-size", "20", "--threads", "1", "--no-progress"],
]


@pytest.fixture(scope="module")
def hostile(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Image trees built from the workspace's real CIFAR-10 images: one with a FIFO as an image, one with a
    decompression bomb, one of 1x1 images (train / test), one with 4 foreign classes."""
    root = tmp_path_factory.mktemp("hostile")
    fifo = root / "fifo" / "test"
    shutil.copytree(workspace / "data" / "test", fifo)
    victim = sorted((fifo / "cat").iterdir())[0]
    victim.unlink()
    os.mkfifo(victim)
    bomb = root / "bomb" / "test"
    shutil.copytree(workspace / "data" / "test", bomb)
    # 12,000 x 12,000 one-bit pixels: a few kB of PNG, 144 M pixels decoded (PIL's limit is 89 M).
    Image.new("1", (12_000, 12_000)).save(bomb / "dog" / "bomb.png")
    for split in ("train", "test"):
        for cls in sorted(p.name for p in (workspace / "data" / split).iterdir()):
            folder = root / "tiny" / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (1, 1), (40 * i, 90, 200)).save(folder / f"{i}.png")
    for cls in ("ant", "bee", "cow", "elk"):  # classes the CIFAR model was never trained on
        folder = root / "foreign" / "train4" / cls
        folder.mkdir(parents=True)
        for image in sorted((workspace / "data" / "train" / "cat").iterdir()):
            shutil.copy(image, folder / image.name)
    return root


def _snapshot(root: Path) -> dict[str, str]:
    """:func:`snapshot` that records FIFOs by kind (reading one would block)."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_fifo():
            state[rel] = "fifo"
        elif path.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def _guarded(workspace: Path, hostile: Path):
    before = (snapshot(workspace), _snapshot(hostile))
    return lambda: (snapshot(workspace), _snapshot(hostile)) == before


def test_a_fifo_named_like_an_image_is_refused_not_opened(workspace: Path, hostile: Path, tmp_path: Path, capsys):
    unchanged = _guarded(workspace, hostile)
    model = str(workspace / "model.safetensors")
    data = str(hostile / "fifo" / "test")
    for mode in ("memory", "stream"):
        argv = ["swap", "--weights", model, "--keys", "paper8", "--data", data, "--data-mode", mode, "-o"]
        outcome = run_cli(capsys, [*argv, str(tmp_path / f"swap-{mode}")])
        assert_clean_failure(outcome, "a FIFO, not an image file (images must be regular files)")
        assert not (tmp_path / f"swap-{mode}").exists()
    fifo = next(p for p in (hostile / "fifo" / "test" / "cat").iterdir() if p.is_fifo())
    outcome = run_cli(capsys, ["explain", "paper8", "--images", str(fifo), "-o", str(tmp_path / "explain")])
    assert_clean_failure(outcome, f"{fifo}: a FIFO, not an image file")
    assert not (tmp_path / "explain").exists() and unchanged()


def test_a_decompression_bomb_is_a_clean_error(workspace: Path, hostile: Path, tmp_path: Path, capsys) -> None:
    unchanged = _guarded(workspace, hostile)
    data = hostile / "bomb" / "test"
    argv = ["swap", "--weights", str(workspace / "model.safetensors"), "--keys", "paper8", "--data", str(data)]
    outcome = run_cli(capsys, [*argv, "--preprocessing", "imagenet", "-o", str(tmp_path / "swap")])
    assert_clean_failure(outcome, "bomb.png: image too large to decode safely")
    assert "144000000 pixels" in outcome.err
    bomb = data / "dog" / "bomb.png"
    outcome = run_cli(capsys, ["explain", "paper8", "--images", str(bomb), "-o", str(tmp_path / "explain")])
    assert_clean_failure(outcome, "bomb.png: image too large to decode safely")
    assert not (tmp_path / "swap").exists() and not (tmp_path / "explain").exists() and unchanged()


def test_1x1_images_never_reach_the_model_as_a_traceback(
    workspace: Path, hostile: Path, tmp_path: Path, capsys
) -> None:
    unchanged = _guarded(workspace, hostile)
    model = str(workspace / "model.safetensors")
    outcome = run_cli(
        capsys, ["swap", "--weights", model, "--keys", "paper8", "--data", str(hostile / "tiny" / "test")]
    )
    assert_clean_failure(outcome, "the model cannot take images of 1x1 pixels")
    out = tmp_path / "train"
    outcome = run_cli(capsys, ["train", *TINY_TRAIN, "--data", str(hostile / "tiny"), "-o", str(out)])
    assert_clean_failure(outcome, "the model cannot take images of 1x1 pixels")
    assert not out.exists() and not out.with_name("train.partial").exists() and unchanged()


def test_an_edited_cache_entry_is_rebuilt_not_used(
    workspace: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's case: the entry's pixels overwritten in place (its header intact) took top-1 from 76.7% to 3.3%.
    Now the checksum catches it: a warning names the entry, the images are decoded again, the number is right."""
    monkeypatch.setenv("MASTERKEY_CACHE", str(tmp_path / "cache"))
    argv = ["swap", "--weights", str(workspace / "model.safetensors"), "--keys", "paper8", "--json"]
    argv += ["--data", str(workspace / "data" / "test"), "--data-mode", "memory"]
    first = run_cli(capsys, argv)
    assert first.code == 0
    (entry,) = (tmp_path / "cache" / "images").iterdir()
    blob = bytearray(entry.read_bytes())
    header = 8 + int.from_bytes(blob[:8], "little")
    blob[header:] = bytes(len(blob) - header)  # every pixel black, every label 0: a well-formed file
    entry.write_bytes(bytes(blob))
    second = run_cli(capsys, argv)
    assert second.code == 0 and "Traceback" not in second.err
    assert f"warning: cache entry {entry} does not match its checksum (changed on disk); rebuilding it" in second.err
    rows = [json.loads(o.out)["results"] for o in (first, second)]
    assert [r["top1"] for r in rows[0]] == [r["top1"] for r in rows[1]]
    assert rows[0][0]["top1"] > 20  # the unswapped model on real images, not on black ones
    third = run_cli(capsys, argv)  # the rebuilt entry is used again, silently
    assert "warning" not in third.err
    assert [r["top1"] for r in json.loads(third.out)["results"]] == [r["top1"] for r in rows[1]]


def test_cache_clear_deletes_only_what_masterkey_wrote(
    workspace: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MASTERKEY_CACHE pointed at a project folder: its own safetensors files (even in images/, even with a cache-like
    name) survive `cache clear` byte for byte; masterkey's entry goes; `cache info` says which data set it held."""
    project = tmp_path / "project"
    (project / "images").mkdir(parents=True)
    shutil.copy(workspace / "model.safetensors", project / "images" / "weights.safetensors")
    shutil.copy(workspace / "model.safetensors", project / "images" / ("0" * 24 + ".safetensors"))
    shutil.copy(workspace / "written_keys.safetensors", project / "keys.safetensors")
    (project / "images" / "notes.txt").write_text("mine")
    monkeypatch.setenv("MASTERKEY_CACHE", str(project))
    from masterkey.data.memory import load_image_folder

    theirs = snapshot(project)
    load_image_folder(workspace / "data" / "test", max_per_class=1)
    info = run_cli(capsys, ["cache", "info"])
    assert info.code == 0
    assert f"{workspace / 'data' / 'test'} (10 classes, first 1 a class, as decoded)" in info.out
    assert "1 entries" in info.out and "3 other files" in info.out
    cleared = run_cli(capsys, ["cache", "clear", "--json"])
    assert cleared.code == 0 and json.loads(cleared.out)["removed"] == 1
    assert snapshot(project) == theirs


@pytest.mark.parametrize(
    "argv",
    [
        ["swap", "--weights", "{ws}/model.safetensors", "--keys", "paper8", "--data", "{ws}/data/test"],
        ["train", *TINY_TRAIN, "--data", "{ws}/data", "-o", "{out}"],
    ],
    ids=["swap", "train"],
)
def test_absurd_worker_counts_are_refused_before_any_work(
    argv: list[str], workspace: Path, tmp_path: Path, capsys
) -> None:
    unchanged = snapshot(workspace)
    argv = [a.format(ws=workspace, out=tmp_path / "out") for a in argv]
    outcome = run_cli(capsys, [*argv, "--data-mode", "stream", "--workers", "10000"])
    assert_clean_failure(outcome, "argument --workers: expected an integer from 0 to 64, got 10,000")
    from masterkey.data.stream import image_batches
    from masterkey.errors import MasterkeyError

    with pytest.raises(MasterkeyError, match="workers=10000: expected a number of worker processes from 0 to 64"):
        next(image_batches(object(), [[0]], workers=10000))  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists() and snapshot(workspace) == unchanged


def test_a_model_trained_by_masterkey_is_swapped_at_its_own_size(workspace: Path, tmp_path: Path, capsys) -> None:
    """The issue's case: trained on 32 px CIFAR-10, scored at 224 px by swap's automatic preprocessing (76.7% ->
    13.3%). The weights now record the test preprocessing; swap's unswapped top-1 is the training run's own test
    top-1, on the same images."""
    out = tmp_path / "train"
    trained = run_cli(capsys, ["train", *TINY_TRAIN, "--data", str(workspace / "data"), "--json", "-o", str(out)])
    assert trained.code == 0, trained.err
    test_top1 = json.loads((out / "summary.json").read_text())["test_top1"]
    argv = ["swap", "--weights", str(out / "model.safetensors"), "--keys", "paper8", "--json"]
    swapped = run_cli(capsys, [*argv, "--data", str(workspace / "data" / "test")])
    assert swapped.code == 0, swapped.err
    result = json.loads(swapped.out)
    prep = result["info"]["preprocessing"]
    assert (prep["resize"], prep["crop"]) == (None, None)  # 32 px as trained, not resized to 224
    assert prep["mean"] == pytest.approx([0.485, 0.456, 0.406])  # the folder is not named cifar: ImageNet statistics
    assert result["results"][0]["top1"] == pytest.approx(test_top1, abs=1e-9)


def test_discovers_accuracy_objective_refuses_foreign_classes_as_swap_does(
    workspace: Path, hostile: Path, tmp_path: Path, capsys
) -> None:
    unchanged = _guarded(workspace, hostile)
    data = hostile / "foreign" / "train4"
    model = str(workspace / "model.safetensors")
    expected = "class-count mismatch: the data has 4 classes, the model predicts 10"
    swap = run_cli(capsys, ["swap", "--weights", model, "--keys", "paper8", "--data", str(data)])
    assert_clean_failure(swap, expected)
    argv = ["discover", str(workspace / "bank"), "--objective", "accuracy", "--weights", model, "--data", str(data)]
    discover = run_cli(capsys, [*argv, "-k", "2", "--no-progress", "-o", str(tmp_path / "disc")])
    assert_clean_failure(discover, expected)
    assert not (tmp_path / "disc").exists() and unchanged()


def test_an_unknown_augmentation_policy_is_one_line(workspace: Path, tmp_path: Path, capsys) -> None:
    unchanged = snapshot(workspace)
    out = tmp_path / "train"
    argv = ["train", *TINY_TRAIN, "--data", str(workspace / "data"), "--auto-augment", "bogus", "-o", str(out)]
    outcome = run_cli(capsys, argv)
    assert_clean_failure(outcome, "--auto-augment bogus: not a timm augmentation policy (Unknown AA policy bogus)")
    assert not out.exists() and not out.with_name("train.partial").exists() and snapshot(workspace) == unchanged
