"""Networks with keys back to plain form: state_dicts the plain architecture loads strictly, materialised convs,
weights files, torch.compile and ONNX."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from masterkey.errors import MasterkeyError
from masterkey.files import output_kind
from masterkey.nn import (
    convert_to_keys,
    export_state_dict,
    kernel_of,
    key_layers,
    materialize,
    save_onnx,
    save_weights,
)

from .conftest import plain_convnext, tiny_convnext


def _perturb(model: torch.nn.Module) -> None:
    """Move every learnable kernel parameter away from its start, so that exports mean something."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in key_layers(model):
            for p in layer.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize(
    ("mode", "keys", "extra"),
    [
        ("frozen", "paper8", {}),
        ("frozen", "paper8", {"learn_scale": True}),
        ("span", "paper8", {}),
        ("scalespace", "scalespace8", {"sigma_scope": "key"}),
        ("scalespace", "scalespace8", {"sigma_scope": "channel", "learn_scale": True}),
    ],
)
def test_export_loads_into_plain_timm_with_the_same_logits(mode: str, keys: str, extra: dict) -> None:
    model = tiny_convnext()
    convert_to_keys(model, keys, mode, "hornet-t", **extra)
    _perturb(model)
    state = export_state_dict(model)
    plain = plain_convnext()
    assert list(state) == list(plain.state_dict())  # same names, same order
    plain.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(plain(x), expected)
        materialize(model)
        assert not key_layers(model)
        assert all(type(m) is torch.nn.Conv2d for n, m in model.named_modules() if n.endswith("conv_dw"))
        torch.testing.assert_close(model(x), expected)


def test_saved_weights_carry_metadata_and_follow_the_output_rule(tmp_path) -> None:
    model = tiny_convnext()
    convert_to_keys(model, "paper8")
    _perturb(model)
    path = tmp_path / "swapped.safetensors"
    save_weights(model, path, {"arch": "convnext_atto", "num_classes": 10})
    assert output_kind(path) == "weights"
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["arch"] == "convnext_atto" and f.metadata()["num_classes"] == "10"
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    plain = plain_convnext()
    plain.load_state_dict(state, strict=True)
    before = path.read_bytes()
    with pytest.raises(MasterkeyError, match="already exists"):
        save_weights(model, path)
    save_weights(model, path, {"arch": "convnext_atto", "num_classes": 10}, overwrite=True)
    assert path.read_bytes() == before  # the same model gives the same bytes
    other = tmp_path / "mine.safetensors"
    other.write_bytes(b"not masterkey's")
    with pytest.raises(MasterkeyError, match="not a masterkey output"):
        save_weights(model, other, overwrite=True)
    assert other.read_bytes() == b"not masterkey's"


@pytest.fixture(scope="module")
def isolated() -> Iterator[Callable[..., object]]:
    """``isolated(fn, *args)``: ``fn(*args)`` in a process of its own, spawned once for this module's tests (its
    start-up, imports included, is most of a test's time): torch.compile and torch.export leave autograd unable to
    run in processes forked afterwards (the DDP tests fork), so they never run in the test process itself."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        yield lambda fn, *args: pool.submit(fn, *args).result()


def _compiled_vs_eager() -> tuple[float, bool, list[str]]:
    torch.set_num_threads(1)
    model = tiny_convnext()
    convert_to_keys(model, "paper8", "frozen", learn_scale=True)
    _perturb(model)
    model.eval()
    compiled = torch.compile(model)  # the wrapper a user gets; only its state-dict names are read (below)
    x = torch.randn(4, 3, 32, 32)
    # Inductor (what a user gets) compiles one stage: a downsampling conv, then a block whose depthwise conv holds
    # keys. What masterkey adds is inside every block, and each further stage only adds C++ to build (a fresh
    # machine builds it all: 30 s of CPU for the whole network, 17 s for one stage).
    stage = torch.compile(model.stages[1])
    with torch.no_grad():
        features = model.stages[0](model.stem(x))
        difference = float((stage(features) - model.stages[1](features)).abs().max())
    # Training steps through the compiled model reach the offsets, as eager ones do. Traced by dynamo and AOT
    # autograd into forward and backward graphs as with inductor, then run eagerly ("aot_eager"): inductor's C++
    # build of the training graphs would more than double the test's time and check nothing more of masterkey.
    training = torch.compile(model, backend="aot_eager")
    training.train()
    training(x).square().mean().backward()
    reached = all(k.offset.grad is not None and bool(k.offset.grad.abs().sum() > 0) for _, k in key_layers(model))
    return difference, reached, list(export_state_dict(compiled))  # the wrapper looked through by type


@pytest.mark.slow
def test_a_converted_model_under_torch_compile_computes_what_it_does_eagerly(isolated) -> None:
    difference, reached, names = isolated(_compiled_vs_eager)
    assert difference < 1e-5 and reached
    assert names == list(plain_convnext().state_dict())


def _onnx_vs_pytorch(path: Path) -> dict[str, object]:
    import onnxruntime as ort

    torch.set_num_threads(1)
    model = tiny_convnext()
    convert_to_keys(model, "paper8", "span")
    _perturb(model)
    model.eval()
    save_onnx(model, path, torch.randn(2, 3, 32, 32))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out: dict[str, object] = {"still_keyed": kernel_of(model.stages[0].blocks[0].conv_dw) is not None}
    for batch in (1, 5):  # any batch size
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        out[f"shape{batch}"] = got.shape == expected.shape
        out[f"difference{batch}"] = float(abs(got - expected).max())
    return out


@pytest.mark.slow
def test_onnx_export_matches_pytorch_in_onnxruntime(isolated, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    result = isolated(_onnx_vs_pytorch, path)
    assert output_kind(path) == "onnx"
    assert result["still_keyed"]  # the export materialised a copy only
    for batch in (1, 5):
        assert result[f"shape{batch}"] and result[f"difference{batch}"] < 1e-5, result
