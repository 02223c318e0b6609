"""The optimiser: layer-wise lr decay as ConvNeXt-V2 defines it (ids checked against tables worked out by hand from
its optim_factory.py), applied to each parameter's AdamW step; micro-batches add up to the whole batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
from safetensors.torch import load_file

from masterkey.errors import MasterkeyError
from masterkey.train import TrainConfig, train
from masterkey.train.distributed import Distributed
from masterkey.train.epoch import _accumulate
from masterkey.train.optim import layer_decay_groups, layer_id, layer_scales, make_optimizer

# facebookresearch/ConvNeXt-V2 optim_factory.py, get_num_layer_for_convnext_single(var_name, depths), for
# ConvNeXt-V2-Atto (depths 2, 2, 6, 2), official names -> ids (timm name in brackets):
#   downsample_layers.0 [stem] 1; stages.0.0 1, stages.0.1 2; downsample_layers.1 [stages.1.downsample] 3;
#   stages.1.0 3, stages.1.1 4; downsample_layers.2 5; stages.2.j 5 + j; downsample_layers.3 11;
#   stages.3.0 11, stages.3.1 12; anything else (norm, head) sum(depths) + 1 = 13.
SINGLE_ATTO = {
    "stem.0.weight": 1, "stem.1.bias": 1, "stages.0.blocks.0.conv_dw.weight": 1, "stages.0.blocks.1.mlp.fc1.weight": 2,
    "stages.1.downsample.1.weight": 3, "stages.1.blocks.0.norm.weight": 3, "stages.1.blocks.1.gamma": 4,
    "stages.2.downsample.0.weight": 5, "stages.2.blocks.0.mlp.grn.weight": 5, "stages.2.blocks.5.conv_dw.bias": 10,
    "stages.3.downsample.1.bias": 11, "stages.3.blocks.0.conv_dw.weight": 11, "stages.3.blocks.1.mlp.fc2.weight": 12,
    "head.norm.weight": 13, "head.fc.weight": 13,
}  # fmt: skip
# get_num_layer_for_convnext(var_name) ('group', ConvNeXt-V2-Base depths 3, 3, 27, 3): downsample_layers.0 0,
# .1 2, .2 3, .3 12; stages.0.* 1, stages.1.* 2, stages.2.j 3 + j // 3, stages.3.* 12; anything else 13.
GROUP_BASE = {
    "stem.0.weight": 0, "stages.0.blocks.2.conv_dw.weight": 1, "stages.1.downsample.1.weight": 2,
    "stages.1.blocks.0.mlp.fc1.weight": 2, "stages.2.downsample.1.weight": 3, "stages.2.blocks.2.norm.weight": 3,
    "stages.2.blocks.3.norm.weight": 4, "stages.2.blocks.26.conv_dw.weight": 11, "stages.3.downsample.0.bias": 12,
    "stages.3.blocks.2.gamma": 12, "head.fc.bias": 13,
}  # fmt: skip
# main_finetune.py: values = [layer_decay ** (num_layers + 1 - i) for i in range(num_layers + 2)], num_layers =
# sum(depths) ('single') or 12 ('group').


def test_layer_ids_are_those_of_convnext_v2() -> None:
    assert {n: layer_id(n, [2, 2, 6, 2], "single") for n in SINGLE_ATTO} == SINGLE_ATTO
    assert {n: layer_id(n, [3, 3, 27, 3], "group") for n in GROUP_BASE} == GROUP_BASE
    assert layer_scales([2, 2, 6, 2], 0.9) == pytest.approx([0.9 ** (13 - i) for i in range(14)])
    assert layer_scales([3, 3, 27, 3], 0.6, "group") == pytest.approx([0.6 ** (13 - i) for i in range(14)])


def test_each_parameter_steps_with_its_layers_lr() -> None:
    """After one AdamW step from zero moments the change of every parameter (no weight decay) is its group's lr:
    lr x 0.9 ** (13 - layer id); frozen parameters are in no group."""
    torch.manual_seed(0)
    model = timm.create_model("convnextv2_atto", num_classes=10, dims=[8, 16, 24, 32])
    model.stages[0].blocks[0].conv_dw.weight.requires_grad_(False)
    config = TrainConfig(data="d", lr=1e-2, weight_decay=0.0, layer_decay=0.9).validated()
    optimizer = make_optimizer(model, config, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    depths = [2, 2, 6, 2]
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in grouped and torch.equal(p, before[name])
            continue
        expected = 1e-2 * 0.9 ** (13 - layer_id(name, depths))
        torch.testing.assert_close((before[name] - p.detach()).abs(), torch.full_like(p, expected), rtol=1e-5, atol=0)
    decays = {g["weight_decay"] for g in layer_decay_groups(model, 0.05, 0.9, "single")}
    assert decays == {0.0, 0.05}


def test_layer_decay_needs_convnext_stages() -> None:
    model = timm.create_model("mobilenetv2_050", num_classes=10)
    with pytest.raises(MasterkeyError, match="layer_decay: defined for ConvNeXt-style networks"):
        make_optimizer(model, TrainConfig(data="d", layer_decay=0.9).validated(), torch.device("cpu"))


def test_micro_batches_add_up_to_the_whole_batch(tiny: TrainConfig, tmp_path) -> None:
    """The gradients of a step in 3 uneven micro-batches (7 + 7 + 6 images) are those of the whole batch (each
    micro-batch's loss weighted by its share), and so is the loss; end to end, update_freq 4 trains the weights
    of update_freq 1 up to float rounding (no random draws per micro-batch: no mixup, no drop-path)."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", **tiny.model_kwargs)
    state = SimpleNamespace(net=model, amp_dtype=None)
    x, y = torch.randn(20, 3, 32, 32), torch.arange(20) % 10
    grads, losses = [], []
    for pieces in (1, 3):
        model.zero_grad()
        config = tiny.replace(update_freq=pieces)
        loss, correct = _accumulate(state, x, y, config, Distributed(), torch.device("cpu"), 0, 0, 10)
        grads.append([p.grad.clone() for p in model.parameters()])
        losses.append((float(loss), int(correct)))
    for g1, g3 in zip(*grads, strict=True):
        # float32 sums in another order (micro-batches, threads): tolerate rounding at 1e-5 of the largest gradient
        # of the tensor; a wrong weighting of the micro-batches (7/20 vs 1/3) is off by percents
        torch.testing.assert_close(g3, g1, rtol=1e-4, atol=1e-5 * float(g1.abs().max()))
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-6) and losses[1][1] == losses[0][1]

    one = train(tiny.replace(epochs=1), tmp_path / "one")
    four = train(tiny.replace(epochs=1, update_freq=4), tmp_path / "four")
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "four" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=2e-4)  # Adam amplifies rounding on tiny gradients
    assert one.summary["train_loss"] == pytest.approx(four.summary["train_loss"], rel=1e-5)
    with pytest.raises(MasterkeyError, match="update_freq=64: more micro-batches than the 20 images"):
        train(tiny.replace(update_freq=64))
