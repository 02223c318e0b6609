"""Key kernels as parametrizations of any depthwise conv: the math, the module types they accept, unwrapping."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from masterkey.depthwise import find_depthwise
from masterkey.errors import MasterkeyError
from masterkey.nn import (
    KeyKernel,
    SpanKernel,
    attach_kernel,
    convert_to_keys,
    export_state_dict,
    kernel_of,
    key_layers,
    materialize,
    unwrap,
)

from .conftest import tiny_convnext


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
@pytest.mark.parametrize("learn_scale", [False, True])
def test_a_key_kernel_is_a_conv_with_the_materialised_kernel(padding_mode: str, learn_scale: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 12, 5, stride=2, padding=2, groups=6, padding_mode=padding_mode)  # channel multiplier 2
    plain = nn.Conv2d(6, 12, 5, stride=2, padding=2, groups=6, padding_mode=padding_mode)
    keys, scale, offset = torch.randn(12, 5, 5), torch.rand(12) + 0.5, torch.randn(12)
    with torch.no_grad():
        plain.bias.copy_(conv.bias)
    attach_kernel(conv, KeyKernel(keys, offset=offset, scale=scale, learn_scale=learn_scale))
    expected = keys[:, None] * scale[:, None, None, None] + offset[:, None, None, None]
    torch.testing.assert_close(conv.weight, expected)
    with torch.no_grad():
        plain.weight.copy_(expected)
    x = torch.randn(2, 6, 11, 11)
    torch.testing.assert_close(conv(x), plain(x))
    assert isinstance(conv, nn.Conv2d)
    kernel = kernel_of(conv)
    names = {n for n, _ in conv.named_parameters()}
    prefix = "parametrizations.weight.0."
    assert names == {"bias", prefix + "offset", *([prefix + "scale"] if learn_scale else [])}
    assert {n for n, _ in kernel.named_buffers()} == {"key", "key_index"}
    materialize(conv)
    assert type(conv) is nn.Conv2d and isinstance(conv.weight, nn.Parameter) and conv.weight.requires_grad
    torch.testing.assert_close(conv(x), plain(x))


def test_timm_same_padding_and_conv2d_subclasses_keep_their_class_and_forward() -> None:
    from timm.layers import Conv2dSame

    class Mine(nn.Conv2d):
        """A user's subclass whose forward does more than a conv."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    torch.manual_seed(0)
    for conv in (Conv2dSame(4, 4, 3, stride=2, groups=4), Mine(4, 8, 3, padding=1, groups=4)):
        before = type(conv)
        reference = before(4, conv.out_channels, 3, stride=conv.stride, padding=conv.padding, groups=4)
        reference.load_state_dict(conv.state_dict())
        x = torch.randn(1, 4, 9, 10)
        attach_kernel(conv, KeyKernel(conv.weight.detach()[:, 0].clone()))
        assert isinstance(conv, before) and isinstance(conv, nn.Conv2d)
        torch.testing.assert_close(conv(x), reference(x))  # the subclass's own forward still runs
        materialize(conv)
        assert type(conv) is before


def test_a_conv2d_subclass_in_a_network_converts_and_exports() -> None:
    class Scaled(nn.Conv2d):
        pass

    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 1), Scaled(8, 8, 7, padding=3, groups=8), nn.Flatten(), nn.LazyLinear(2))

    model = build()
    x = torch.randn(2, 3, 9, 9)
    model(x)  # materialise the lazy layer
    conversion = convert_to_keys(model, "paper8", "frozen", "uniform")
    assert [layer.name for layer in conversion.layers] == ["1"] and isinstance(model[1], Scaled)
    with torch.no_grad():
        kernel_of(model[1]).offset.add_(0.1)
    plain = build()
    plain(x)
    plain.load_state_dict(export_state_dict(model), strict=True)
    torch.testing.assert_close(plain(x), model(x))


def test_torchvision_wrappers_convert_where_the_depthwise_conv_sits() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    depthwise = [dw.name for dw in find_depthwise(model)]
    conversion = convert_to_keys(model, "paper8", "frozen", resize=True)
    assert [layer.name for layer in conversion.layers] == depthwise and len(depthwise) == 11
    assert {layer.kernel_size for layer in conversion.layers} == {3, 5}
    for name, _ in key_layers(model):  # inside Conv2dNormActivation, still the nn.Conv2d the block calls
        assert isinstance(model.get_submodule(name), nn.Conv2d)
    plain = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    plain.load_state_dict(export_state_dict(model), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x))


def test_the_weight_of_a_key_layer_cannot_be_assigned_or_attached_twice() -> None:
    conv = nn.Conv2d(4, 4, 3, groups=4)
    attach_kernel(conv, KeyKernel(torch.randn(4, 3, 3)))
    with pytest.raises(MasterkeyError, match="cannot be assigned; materialize"):
        conv.weight = torch.zeros(4, 1, 3, 3)
    with pytest.raises(MasterkeyError, match="already holds keys"):
        attach_kernel(conv, KeyKernel(torch.randn(4, 3, 3)))
    with pytest.raises(MasterkeyError, match="not a depthwise"):
        attach_kernel(nn.Conv2d(4, 8, 3), KeyKernel(torch.randn(8, 3, 3)))
    with pytest.raises(MasterkeyError, match=r"shape \(4, 1, 5, 5\)"):
        attach_kernel(nn.Conv2d(4, 4, 3, groups=4), KeyKernel(torch.randn(4, 5, 5)))
    model = tiny_convnext()
    convert_to_keys(model, "paper8")
    with pytest.raises(MasterkeyError, match="already holds keys"):
        convert_to_keys(model, "paper8")


def test_a_span_kernel_is_its_mix_of_keys() -> None:
    torch.manual_seed(0)
    basis, alpha, offset = torch.randn(3, 5, 5), torch.randn(6, 3), torch.randn(6)
    kernel = SpanKernel(basis, alpha, offset)
    expected = torch.einsum("cj,jxy->cxy", alpha, basis)[:, None] + offset[:, None, None, None]
    torch.testing.assert_close(kernel.kernel(), expected)
    with pytest.raises(MasterkeyError, match=r"expected \[K, k, k\]"):
        SpanKernel(torch.randn(5, 5), alpha)


# ---------------------------------------------------------------------- wrappers, by type
class UserModel(nn.Module):
    """A user's model whose feature extractor happens to be called ``module`` (not a DDP wrapper)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.module = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.module(x).mean(dim=(2, 3)))


def test_a_child_named_module_is_not_a_wrapper_export_reloads_strictly() -> None:
    model = UserModel()
    convert_to_keys(model, "paper8", "frozen", "uniform", seed=1)
    with torch.no_grad():
        kernel_of(model.module[1]).offset.add_(torch.linspace(-0.2, 0.2, 8))
    assert unwrap(model) is model
    state = export_state_dict(model)
    assert list(state) == list(UserModel().state_dict())  # the head too, not only the depthwise weights
    plain = UserModel()
    plain.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))


def test_data_parallel_wrappers_are_looked_through() -> None:
    model = UserModel()
    convert_to_keys(model, "paper8", "frozen", "uniform")
    wrapped = nn.DataParallel(model)
    assert unwrap(wrapped) is model
    assert [name for name, _ in key_layers(wrapped)] == ["module.1"]
    assert list(export_state_dict(wrapped)) == list(UserModel().state_dict())


def test_materializing_a_deep_copy_leaves_the_original_key_layer_intact() -> None:
    """Deep copies (EMA models, the ONNX export's copy) share the class torch made for the parametrized conv."""
    import copy

    model = tiny_convnext()
    convert_to_keys(model, "paper8")
    ema = copy.deepcopy(model)
    materialize(ema)
    assert not key_layers(ema) and len(key_layers(model)) == 4
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ema.eval()(x), model.eval()(x))
