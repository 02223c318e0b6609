import json
import subprocess
import sys

import pytest

from masterkey.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_harvest_and_bank_info_json(tmp_path, capsys, models_dir):
    bank = tmp_path / "mnv2"
    code, out, _ = run(capsys, "harvest", str(models_dir / "mobilenet_v2_imagenet.pth"), "-o", str(bank))
    assert code == 0 and "7,136 filters in 17 layers" in out
    code, out, _ = run(capsys, "bank", "info", str(bank), "--json")
    info = json.loads(out)
    assert info["counts_by_kernel"] == {"3": 7136} and info["n_layers"] == 17


def test_fit_json_and_run_directory(tmp_path, capsys):
    out_dir = tmp_path / "fit"
    code, out, _ = run(
        capsys, "fit", "default", "--keys", "paper8", "--query", "kernel_size == 7", "--json", "-o", str(out_dir)
    )
    assert code == 0
    report = json.loads(out)
    assert report["n_fitted"] == 9568
    assert report["overall"]["mean_cos2"] > report["overall"]["ref_mean_cos2"]
    assert {r["source"] for r in report["by_source"]} >= {"convnext_atto_s0_e20", "convnext_femto_s0_e20"}
    for name in ("fits.parquet", "summary.json", "summary.md", "keys_k7.safetensors", "run.json"):
        assert (out_dir / name).is_file()
    assert json.loads((out_dir / "run.json").read_text())["kind"] == "fit"


def test_fit_text_output_mentions_crops(capsys):
    code, out, _ = run(capsys, "fit", "--keys", "paper8", "--resize-keys", "--query", "kernel_size != 7")
    assert code == 0 and "paper8@3x3" in out and "by source" in out and "random:8:0" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "default", "--keys", "paper8", "--query", "kernel_size == 3"], "kernel-size mismatch"),
        (["harvest", "nonexistent/model.pth", "-o", "X"], "no such file"),
        (["bank", "info", "/nonexistent/bank"], "no such bank directory"),
        (["fit", "--keys", "random:x"], "must be a whole number"),
        (["fit", "--chunk-size", "0"], "argument --chunk-size: expected an integer from 1"),
        (["keys", "show"], "the following arguments are required: KEYS"),
    ],
)
def test_errors_are_one_line_and_exit_2(capsys, argv, message):
    code, _out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("masterkey: error:") and message in lines[0]


def test_bad_bank_leaves_no_partial_output(tmp_path, capsys):
    (tmp_path / "junk.pth").write_text("not a model")
    code, _, err = run(capsys, "harvest", str(tmp_path / "junk.pth"), "-o", str(tmp_path / "bank"))
    assert code == 2 and "junk.pth" in err
    assert [p.name for p in tmp_path.iterdir()] == ["junk.pth"]  # hidden leftovers included


def test_outputs_leave_no_lock_files_and_refuse_to_replace_user_data(tmp_path, capsys):
    code, _, _ = run(capsys, "keys", "convert", "paper8", "-o", str(tmp_path / "k.safetensors"))
    assert code == 0
    code, _, _ = run(capsys, "keys", "convert", "paper8", "-o", str(tmp_path / "k.safetensors"), "--overwrite")
    assert code == 0
    (tmp_path / "weights.safetensors").write_bytes(b"a model the user cares about")
    code, _, err = run(capsys, "keys", "convert", "paper8", "-o", str(tmp_path / "weights.safetensors"))
    assert code == 2 and "already exists (pass --overwrite" in err
    code, _, err = run(capsys, "keys", "convert", "paper8", "-o", str(tmp_path / "weights.safetensors"), "--overwrite")
    assert code == 2 and "is not a masterkey output" in err
    assert (tmp_path / "weights.safetensors").read_bytes() == b"a model the user cares about"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.safetensors", "weights.safetensors"]


def test_help_and_version_exit_zero(capsys):
    assert main(["--version"]) == 0 and "masterkey" in capsys.readouterr().out
    assert main(["keys", "--help"]) == 0 and "convert" in capsys.readouterr().out


def test_console_script_entry_point():
    proc = subprocess.run([sys.executable, "-m", "masterkey", "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "harvest" in proc.stdout and "fit" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "masterkey", "keys", "list"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "paper8" in proc.stdout


@pytest.mark.parametrize(
    ("spec", "gpus", "message"),
    [
        ("cuda", 0, "CUDA is not available on this machine"),
        ("cuda:7", 1, "this machine has 1 CUDA device(s), cuda:0 .. cuda:0"),
        ("tpu", 1, "expected cpu, cuda, cuda:N or auto"),
        ("cpu:0", 1, "expected cpu, cuda, cuda:N or auto"),
    ],
)
def test_devices_are_checked_against_the_machine(monkeypatch, spec, gpus, message):
    import argparse

    import torch

    from masterkey.commands._common import device_arg

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(argparse.ArgumentTypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        device_arg(spec)
    assert device_arg("CPU") == "cpu" and device_arg("auto") == "auto"
    if gpus:
        assert device_arg("cuda:0") == "cuda:0"
