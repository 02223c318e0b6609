"""``masterkey keys show --png``: the figure file and the output rule."""

from __future__ import annotations

import io
import re
from pathlib import Path

from masterkey.cli import main
from masterkey.files import output_kind


def test_show_png_draws_the_keys_and_follows_the_output_rule(discover_run: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    png = tmp_path / "figs" / "keys.png"
    assert main(["keys", "show", str(discover_run), "--kernel-size", "3", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("discovered4-3x3: 4 keys, 3x3\n") and "also holds" not in out  # a size was asked for
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


def test_show_says_which_other_kernel_sizes_a_run_holds(discover_run: Path, capsys) -> None:
    """A run with keys at 3x3 and 7x7: ``keys show RUN`` shows the 7x7 keys and says how to show the 3x3 ones."""
    assert main(["keys", "show", str(discover_run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("discovered4-7x7: 4 keys, 7x7\n")
    assert out.rstrip().endswith(f"{discover_run} also holds 3x3 keys: show them with --kernel-size 3")
    assert main(["keys", "show", str(discover_run), "--kernel-size", "3"]) == 0
    assert "discovered4-3x3: 4 keys, 3x3" in capsys.readouterr().out


def test_provenance_is_printed_for_people_not_as_a_python_dict(capsys) -> None:
    """scalespace8's provenance holds NaN (gamma of the keys without one): printed as '-', never as 'nan', and no
    Python dict or quotes."""
    assert main(["keys", "show", "scalespace8"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[:3] == ["scalespace8: 8 keys, 7x7", "provenance:", "  source: scalespace"]
    assert "    - key=1, label=1 shift-down, family=dy-, sigma_x=0.4166, sigma_y=0.6097, gamma=-, sign=-1," in out
    provenance = out.split("key 1 shift-down:")[0]
    assert not re.search(r"\bnan\b", provenance, re.I) and "{'" not in provenance and "': " not in provenance
