"""Networks with keys back to plain form: state_dicts the plain architecture loads strictly, materialised convs,
weights files, torch.compile and ONNX."""

from __future__ import annotations

import pytest
import timm
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

from .conftest import TINY, plain_convnext, tiny_convnext


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


@pytest.mark.slow
def test_a_converted_model_under_torch_compile_computes_what_it_does_eagerly() -> None:
    model = tiny_convnext()
    convert_to_keys(model, "paper8", "frozen", learn_scale=True)
    _perturb(model)
    model.eval()
    compiled = torch.compile(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        eager = model(x)
        torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)
    # Training steps through the compiled model reach the offsets, as eager ones do.
    compiled.train()
    compiled(x).square().mean().backward()
    assert all(k.offset.grad is not None and bool(k.offset.grad.abs().sum() > 0) for _, k in key_layers(model))
    # The wrapper is looked through by type: the export is the plain model's.
    assert list(export_state_dict(compiled)) == list(plain_convnext().state_dict())


@pytest.mark.slow
def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = tiny_convnext()
    convert_to_keys(model, "paper8", "span")
    _perturb(model)
    model.eval()
    path = tmp_path / "model.onnx"
    save_onnx(model, path, torch.randn(2, 3, 32, 32))
    assert output_kind(path) == "onnx"
    assert kernel_of(model.stages[0].blocks[0].conv_dw) is not None  # the export materialised a copy only
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # any batch size
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == expected.shape
        assert float(abs(got - expected).max()) < 1e-5
    timm_model = timm.create_model("convnext_atto", **TINY)
    assert len(timm_model.state_dict()) > 0
