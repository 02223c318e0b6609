"""The network a run starts from: a pretrained encoder (init_from) with a fresh classifier at the head init scale,
FCMAE sparse kernels made dense as ConvNeXt-V2 lays them out, and the CUDA RNG warning on resume."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from masterkey.data.augment import derive_seed
from masterkey.errors import MasterkeyError
from masterkey.train import TrainConfig
from masterkey.train.model import build_model, fcmae_to_dense
from masterkey.train.state import rng_state, set_rng_state


def _build(config: TrainConfig) -> torch.nn.Module:
    torch.manual_seed(derive_seed(config.seed, "init"))
    return build_model(config.validated())[0]


@pytest.fixture
def encoder(shared: Path) -> Path:
    """Real trained ConvNeXt-V2-Atto weights (CIFAR-10, patch 1), standing in for an FCMAE encoder."""
    return shared / "models" / "cifar10-convnext" / "convnextv2_atto_s0_e20.safetensors"


def test_init_from_loads_every_encoder_weight_and_starts_a_small_fresh_head(encoder: Path) -> None:
    config = TrainConfig(
        data="d", model="convnextv2_atto", model_kwargs={"num_classes": 10, "patch_size": 1}, init_from=str(encoder)
    )
    saved = load_file(encoder)
    scaled = _build(config.replace(head_init_scale=0.001)).state_dict()
    for name, tensor in saved.items():
        if not name.startswith("head.fc."):
            assert torch.equal(scaled[name], tensor), name
    w = scaled["head.fc.weight"]
    assert not torch.equal(w, saved["head.fc.weight"]) and torch.equal(scaled["head.fc.bias"], torch.zeros(10))
    assert 0.8 * 2e-5 < float(w.std()) < 1.2 * 2e-5 and abs(float(w.mean())) < 3e-6  # normal(0, .02) x 1e-3
    plain = _build(config).state_dict()["head.fc.weight"]  # no scale: timm's own init of the new classifier
    assert float(plain.std()) > 100 * float(w.std())
    with pytest.raises(MasterkeyError, match="init_from=.*weights do not fit the model.*only the classifier"):
        _build(config.replace(model_kwargs={"num_classes": 10, "patch_size": 2}))
    with pytest.raises(MasterkeyError, match="init_from=.*: expected none when weights are given"):
        config.replace(weights=str(encoder))


def test_an_fcmae_checkpoint_is_made_dense_in_the_official_naming(encoder: Path, tmp_path: Path) -> None:
    """facebookresearch/ConvNeXt-V2 utils.py remap_checkpoint_keys: a depthwise kernel (k*k, C) becomes
    (C, 1, k, k) with dense[c, 0, h, w] = sparse[w * k + h, c]; a convolution kernel (k*k, in, out) becomes
    (out, in, k, k) with dense[o, i, h, w] = sparse[w * k + h, i, o]; 'encoder.' and the ln / linear wrapper
    names go, biases are flattened, GRN gamma (1, C) becomes (1, 1, 1, C); main_finetune.py drops decoder,
    mask_token, proj and pred entries."""
    k, c = 3, 2
    dw = torch.arange(k * k * c, dtype=torch.float32).reshape(k * k, c)
    conv = torch.arange(4 * 2 * 3, dtype=torch.float32).reshape(4, 2, 3)
    sparse = {
        "encoder.stages.0.0.dwconv.kernel": dw,
        "encoder.stages.0.0.dwconv.bias": torch.ones(1, c),
        "encoder.downsample_layers.1.1.kernel": conv,
        "encoder.stages.0.0.pwconv1.linear.weight": torch.ones(8, c),
        "encoder.stages.0.0.norm.ln.weight": torch.ones(c),
        "encoder.stages.0.0.grn.gamma": torch.ones(1, 8),
        "decoder.0.weight": torch.ones(1),
        "mask_token": torch.ones(1),
        "proj.weight": torch.ones(1),
        "pred.bias": torch.ones(1),
    }
    dense = fcmae_to_dense(sparse, "test")
    assert set(dense) == {
        "stages.0.0.dwconv.weight", "stages.0.0.dwconv.bias", "downsample_layers.1.1.weight",
        "stages.0.0.pwconv1.weight", "stages.0.0.norm.weight", "stages.0.0.grn.gamma",
    }  # fmt: skip
    w = dense["stages.0.0.dwconv.weight"]
    assert w.shape == (c, 1, k, k)
    assert all(w[ch, 0, h, x] == dw[x * k + h, ch] for ch in range(c) for h in range(k) for x in range(k))
    v = dense["downsample_layers.1.1.weight"]
    assert v.shape == (3, 2, 2, 2)
    assert all(
        v[o, i, h, x] == conv[x * 2 + h, i, o] for o in range(3) for i in range(2) for h in range(2) for x in range(2)
    )
    assert dense["stages.0.0.dwconv.bias"].shape == (c,) and dense["stages.0.0.grn.gamma"].shape == (1, 1, 1, 8)
    plain = load_file(encoder)  # a timm-named state dict passes unchanged
    assert fcmae_to_dense(plain, "x") is plain
    with pytest.raises(MasterkeyError, match="not a square sparse kernel"):
        fcmae_to_dense({"encoder.a.kernel": torch.ones(5, 2)}, "f")
    # An FCMAE-style file of the real encoder: the dense official naming under 'encoder.', plus pre-training parts.
    path = tmp_path / "fcmae.safetensors"
    save_file({**{f"encoder.{n}": t for n, t in plain.items()}, "mask_token": torch.zeros(1, 320)}, str(path))
    config = TrainConfig(
        data="d", model="convnextv2_atto", model_kwargs={"num_classes": 10, "patch_size": 1}, init_from=str(path)
    )
    model = _build(config).state_dict()
    assert all(torch.equal(model[n], t) for n, t in plain.items() if not n.startswith("head.fc."))


def test_a_cuda_rng_state_for_other_devices_is_named_in_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    state = rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 2  # saved on 2 GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="masterkey"):
        set_rng_state(state)
    assert "holds the CUDA random state of 2 device(s), this process sees 0: the CUDA RNG is not restored" in (
        caplog.text
    )
    caplog.clear()
    set_rng_state(rng_state())  # nothing saved for CUDA: nothing to say
    assert "CUDA" not in caplog.text
