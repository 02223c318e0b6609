import pytest
import torch

from masterkey.errors import MasterkeyError
from masterkey.networks.models import create_model, read_state_dict, resolve_model_name


def test_create_from_safetensors_metadata(cifar_convnexts):
    model = create_model(weights=cifar_convnexts[0])
    assert model.num_classes == 10
    assert not model.training
    out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_resolution_prefers_explicit_prefixes():
    assert resolve_model_name("convnext_atto") == ("timm", "convnext_atto")
    assert resolve_model_name("mobilenet_v2") == ("torchvision", "mobilenet_v2")
    assert resolve_model_name("torchvision:efficientnet_b0") == ("torchvision", "efficientnet_b0")
    with pytest.raises(MasterkeyError, match="unknown library"):
        resolve_model_name("keras:resnet")
    with pytest.raises(MasterkeyError, match="timm has no model"):
        resolve_model_name("timm:nothing_like_this")


def test_no_weights_and_no_hub_is_an_error():
    with pytest.raises(MasterkeyError, match="no weights"):
        create_model("convnext_atto")


def test_read_state_dict_unwraps(tmp_path):
    torch.save({"model_ema": {"module.w": torch.ones(2)}, "step": 3}, tmp_path / "c.pt")
    state, meta = read_state_dict(tmp_path / "c.pt")
    assert list(state) == ["w"] and meta == {}
    torch.save({"step": 3}, tmp_path / "empty.pt")
    with pytest.raises(MasterkeyError, match="holds no tensors"):
        read_state_dict(tmp_path / "empty.pt")


def test_model_kwargs_one_grammar_for_every_command():
    """harvest, swap and train read --model-kwargs through one parser: K=V pairs or a JSON object."""
    import pytest

    from masterkey.errors import MasterkeyError
    from masterkey.networks.models import parse_model_kwargs

    assert parse_model_kwargs("num_classes=10,patch_size=1,pretrained=false,act=gelu") == {
        "num_classes": 10,
        "patch_size": 1,
        "pretrained": False,
        "act": "gelu",
    }
    assert parse_model_kwargs(' {"num_classes": 10, "drop": 0.5} ') == {"num_classes": 10, "drop": 0.5}
    assert parse_model_kwargs(None) == parse_model_kwargs("") == {}
    with pytest.raises(MasterkeyError, match=r"^model_kwargs: expected key=value pairs .* got 'oops'"):
        parse_model_kwargs("a=1,oops")
    with pytest.raises(MasterkeyError, match=r"^model_kwargs: not a JSON object"):
        parse_model_kwargs("{oops")


def test_the_parameter_bound_holds_for_every_build_though_each_count_is_measured_once(monkeypatch) -> None:
    """The count of a (name, keyword arguments) pair is measured once per process (on the meta device) and
    refuses the network every time it is asked for; other arguments are counted anew."""
    from masterkey.networks import models

    built: list[bool] = []
    real = models.resolve_model_name
    monkeypatch.setattr(models, "_PARAMETER_COUNTS", {})
    monkeypatch.setattr(models, "resolve_model_name", lambda name: (built.append(True), real(name))[1])
    for _ in range(2):
        with pytest.raises(MasterkeyError, match="would have 2,250,374,520 parameters, more than 2,000,000,000"):
            models.build_architecture("convnext_atto", num_classes=7_000_000)
    assert list(models._PARAMETER_COUNTS.values()) == [2_250_374_520] and len(built) == 2
    small = models.build_architecture("convnext_atto", num_classes=10)
    counted = models._PARAMETER_COUNTS[repr(("convnext_atto", [("num_classes", 10)]))]
    assert sum(p.numel() for p in small.parameters()) == counted
    assert len(models._PARAMETER_COUNTS) == 2
