"""Start-up: help, ``bank info`` and ``keys show`` answer without importing torch, pandas, timm or matplotlib (the
libraries that take seconds to import), with the same output and the library's own defaults. Behaviour only: the
times are measured in bench/bench_startup.py."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
import torch

import masterkey
from masterkey.bank import _arrow_to_numpy, open_bank
from masterkey.cli import _commands, build_parser
from masterkey.errors import MasterkeyError
from masterkey.keys import KeySet, KeyValues, load_key_values, load_keys

HEAVY = ("torch", "torchvision", "timm", "pandas", "matplotlib")


def _in_fresh_interpreter(script: str) -> dict:
    """Run ``script`` in a new interpreter (this one has torch loaded) and return the JSON it prints last."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_bank_info_and_keys_show_leave_heavy_libraries_unloaded(tmp_path):
    key_file = tmp_path / "mine.safetensors"
    load_keys("random:3:1", kernel_size=5).save(key_file)
    run_dir = tmp_path / "discover-run"
    (run_dir / "k7").mkdir(parents=True)
    load_keys("paper8").save(run_dir / "k7" / "keys.safetensors")
    commands = [["--help"], *([name, "--help"] for name in _commands())]
    commands += [["bank", "info", "--help"], ["keys", "show", "--help"], ["keys", "list"]]
    commands += [["bank", "info", "default"], ["bank", "info", "default", "--json"]]
    commands += [["keys", "show", "paper8"], ["keys", "show", "paper8", "--json"], ["keys", "show", "impulse"]]
    commands += [["keys", "show", "scalespace8", "--kernel-size", "5"], ["keys", "show", str(key_file), "--json"]]
    commands += [["keys", "show", "paper8", "--kernel-size", "3", "--resize-keys"]]
    # --device is parsed (checked) before --help answers: cpu and auto need no torch to check
    commands += [["fit", "--device", "cpu", "--help"], ["swap", "--device", "auto", "--help"]]
    report = _in_fresh_interpreter(
        f"""
        import contextlib, io, json, sys
        from masterkey.cli import main
        from masterkey.keys import load_key_values, resolve_key_spec
        heavy = lambda: [m for m in {HEAVY!r} if m in sys.modules]
        runs = []
        for argv in {commands!r}:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main(argv)
            runs.append({{"argv": argv, "code": code, "out": out.getvalue(), "heavy": heavy()}})
        per_size = resolve_key_spec({str(run_dir)!r})
        shown = load_key_values(per_size[7])
        runs.append({{"argv": ["run dir"], "code": 0, "out": repr(shown), "heavy": heavy()}})
        print(json.dumps(runs))
        """
    )
    for run in report:
        assert run["code"] == 0, run
        assert run["heavy"] == [], f"{run['argv']} imported {run['heavy']}"
    by_argv = {" ".join(run["argv"]): run["out"] for run in report}
    assert "7,136" in by_argv["bank info default"] and "excluded from fits" in by_argv["bank info default"]
    assert json.loads(by_argv["bank info default --json"]) == open_bank(None).info()
    shown = json.loads(by_argv["keys show paper8 --json"])
    assert np.array_equal(np.array(shown["keys"], dtype=np.float32), load_keys("paper8").keys.numpy())
    assert shown["labels"][6] == "7 centre-surround"
    assert json.loads(by_argv[f"keys show {key_file} --json"])["kernel_size"] == 5
    assert "paper8@3x3" in by_argv["keys show paper8 --kernel-size 3 --resize-keys"]
    assert by_argv["run dir"] == "KeySet('paper8', 8 keys, 7x7)"


def test_keys_show_png_draws_without_torch_or_pandas(tmp_path):
    """The figure needs matplotlib and numpy only: the key values are read without torch and the report's readers
    (pandas) stay unloaded."""
    png = tmp_path / "paper8.png"
    report = _in_fresh_interpreter(
        f"""
        import contextlib, io, json, sys
        from masterkey.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["keys", "show", "paper8", "--png", {str(png)!r}])
        print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
        """
    )
    assert report == {"code": 0, "heavy": ["matplotlib"]}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_import_masterkey_is_light_and_every_public_name_resolves():
    report = _in_fresh_interpreter(
        f"""
        import json, sys
        import masterkey
        light = [m for m in {HEAVY!r} if m in sys.modules]
        from masterkey import *
        names = {{n: getattr(getattr(masterkey, n), "__module__", n) for n in masterkey.__all__ if n != "__version__"}}
        print(json.dumps({{"light": light, "names": names, "version": masterkey.__version__}}))
        """
    )
    assert report["light"] == []
    assert report["names"]["FilterBank"] == "masterkey.bank" and report["names"]["fit_bank"] == "masterkey.fit.bank_fit"
    assert set(report["names"]) == set(masterkey.__all__) - {"__version__"}
    assert report["version"] == masterkey.__version__
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        masterkey.nonexistent  # noqa: B018


def test_help_shows_the_library_defaults():
    """The defaults in --help come from the modules that use them (moved to light modules, never copied)."""
    from masterkey.discover.autoencoder import AutoencoderConfig
    from masterkey.discover.baselines import BASELINES, KMEANS_SAMPLE
    from masterkey.nn.modes import MODES, SIGMA_SCOPES

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    discover = sub["discover"].format_help()
    assert f"(default {KMEANS_SAMPLE})" in discover and f"default {','.join(BASELINES)}" in discover
    assert f"(default {AutoencoderConfig().steps})" in " ".join(discover.split())
    defaults = sub["discover"].parse_args(["-o", "x"])
    assert defaults.kmeans_sample == KMEANS_SAMPLE and defaults.ae_steps == AutoencoderConfig().steps
    train = " ".join(sub["train"].format_help().split())
    assert all(mode in train for mode in MODES) and "{" + ",".join(SIGMA_SCOPES) + "}" in train


def test_bank_info_from_arrow_columns_equals_info_from_pandas():
    bank = open_bank(None)
    from_arrow = bank.info()
    assert bank._metadata is None  # info() made no pandas frame
    bank.metadata  # noqa: B018 (makes the pandas frame; info() now reads it)
    assert bank.info() == from_arrow
    view = bank.query("kernel_size == 5")
    assert view.info()["counts_by_kernel"] == {"5": 6336} and len(view) == 6336


def test_arrow_columns_with_missing_values_are_refused(tmp_path):
    column = pa.chunked_array([pa.array([3, None, 7], type=pa.int16())])
    with pytest.raises(MasterkeyError, match="column kernel_size has 1 missing values"):
        _arrow_to_numpy(column, tmp_path / "metadata.parquet", "kernel_size")
    strings = pa.chunked_array([pa.array(["a", "b"]), pa.array(["a"])])
    assert _arrow_to_numpy(strings, tmp_path, "source").tolist() == ["a", "b", "a"]
    sliced = pa.chunked_array([pa.array([1, 2, 3, 4], type=pa.int64()).slice(1, 2)])
    assert _arrow_to_numpy(sliced, tmp_path, "index").tolist() == [2, 3]


@pytest.mark.parametrize("spec", ["paper8", "scalespace8", "impulse", "random:4:2"])
def test_key_values_are_the_key_set(spec):
    values, keyset = load_key_values(spec, kernel_size=5, resize=True), load_keys(spec, kernel_size=5, resize=True)
    assert np.array_equal(values.keys, keyset.keys.numpy()) and values.keys.dtype == np.float32
    assert (values.name, values.provenance, values.key_labels()) == (
        keyset.name,
        keyset.provenance,
        keyset.key_labels(),
    )
    assert repr(values) == repr(keyset)


def test_key_values_normalise_as_torch_does():
    raw = torch.randn(6, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 5 + 2
    flat = raw.reshape(6, -1)
    centred = flat - flat.mean(1, keepdim=True)
    expected = (centred / torch.linalg.vector_norm(centred, dim=1, keepdim=True)).reshape(6, 7, 7).float()
    assert torch.allclose(KeySet("x", raw).keys, expected, atol=1e-7, rtol=0)
    np.testing.assert_allclose(KeyValues("x", raw.numpy()).keys, expected.numpy(), atol=1e-7, rtol=0)
    with pytest.raises(MasterkeyError, match=r"key 2 \(of 2\) is unusable \{'constant': 1\}"):
        KeyValues("x", np.stack([raw[0].numpy(), np.full((7, 7), 3.0)]))


def test_bfloat16_key_files_are_read_through_torch(tmp_path):
    from safetensors.torch import save_file

    keys = load_keys("paper8").keys
    save_file({"keys": keys.to(torch.bfloat16)}, str(tmp_path / "bf16.safetensors"))
    values = load_key_values(tmp_path / "bf16.safetensors")
    np.testing.assert_allclose(values.keys, keys.numpy(), atol=1e-2)
    assert load_keys(tmp_path / "bf16.safetensors").keys.dtype == torch.float32


def test_the_stage_packages_and_the_mode_registry_import_lazily():
    report = _in_fresh_interpreter(
        f"""
        import json, sys
        import masterkey, masterkey.nn, masterkey.swap, masterkey.train, masterkey.discover
        from masterkey.nn.modes import MODES
        print(json.dumps({{"heavy": [m for m in {HEAVY!r} if m in sys.modules], "modes": list(MODES)}}))
        """
    )
    assert report["heavy"] == [] and "frozen" in report["modes"]
