"""``masterkey keys show --png``: the figure file and the output rule."""

from __future__ import annotations

import io
from pathlib import Path

from masterkey.cli import main
from masterkey.files import output_kind


def test_show_png_draws_the_keys_and_follows_the_output_rule(discover_run: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    png = tmp_path / "figs" / "keys.png"
    assert main(["keys", "show", str(discover_run), "--kernel-size", "3", "--png", str(png)]) == 0
    assert "KeySet('discovered4-3x3', 4 keys, 3x3)" in capsys.readouterr().out
    image = Image.open(io.BytesIO(png.read_bytes()))
    assert image.format == "PNG" and 500 < image.width < 1600 and 150 < image.height < image.width
    assert image.info.get("Software") == "masterkey keys show" and output_kind(png) == "figure"
    assert not [p.name for p in png.parent.iterdir() if p.name != "keys.png"]  # no temporary file left

    assert main(["keys", "show", "paper8", "--png", str(png)]) == 2
    assert "already exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert main(["keys", "show", "paper8", "--png", str(png), "--overwrite"]) == 0
    assert output_kind(png) == "figure"

    photo = tmp_path / "holiday.png"
    Image.new("RGB", (4, 4)).save(photo)
    assert main(["keys", "show", "paper8", "--png", str(photo), "--overwrite"]) == 2
    assert "is not a masterkey output" in capsys.readouterr().err
    assert main(["keys", "show", "paper8", "--png", str(tmp_path / "keys.jpg")]) == 2
    assert "--png " in capsys.readouterr().err and not (tmp_path / "keys.jpg").exists()
    key_file = tmp_path / "k.png"
    assert main(["keys", "convert", "paper8", "-o", str(key_file)]) == 0
    assert main(["keys", "show", str(key_file), "--png", str(key_file), "--overwrite"]) == 2
    assert "is an input of this command" in capsys.readouterr().err
