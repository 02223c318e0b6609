"""A key file that does not exist: swap and train say "no such file: PATH" before decoding a single image (the
main job writes k3/ k5/ k7/keys.safetensors, so a docs path to discover/keys.safetensors is a likely mistake)."""

from __future__ import annotations

from pathlib import Path

import pytest

from masterkey.cli import main


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any image opened fails the test: the key check must come first."""
    import PIL.Image

    def refuse(*args, **kwargs):
        raise AssertionError(f"an image was decoded before the keys were checked: {args[:1]}")

    monkeypatch.setattr(PIL.Image, "open", refuse)


def test_swap_and_train_name_the_missing_key_file_before_reading_images(
    shared: Path, tmp_path: Path, capsys, no_decoding
) -> None:
    missing = tmp_path / "masterkey-runs" / "discover" / "keys.safetensors"
    weights = shared / "models" / "cifar10-convnext" / "convnext_atto_s0_e20.safetensors"
    swap = ["swap", "--weights", str(weights), "--keys", str(missing), "--data", str(shared / "data/cifar10/test")]
    train = ["train", "--model", "convnext_atto", "--model-kwargs", "num_classes=10,patch_size=1"]
    train += ["--data", str(shared / "data/cifar10"), "--mode", "frozen", "--keys", str(missing), "--epochs", "1"]
    for args in (swap, [*train, "-o", str(tmp_path / "run")]):
        assert main(args) == 2, args[0]
        err = capsys.readouterr().err
        assert f"no such file: {missing}" in err, err
        assert "Traceback" not in err and "neither a key file" not in err
    assert not (tmp_path / "run").exists()
    # A bare word is still taken for a misspelt built-in.
    assert main([*swap[:4], "paper9", *swap[5:]]) == 2
    assert "neither a key file nor a built-in" in capsys.readouterr().err
