"""param_groups: weight decay for conv and linear weights only, never for offsets, scales, σ or biases."""

from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay

from masterkey.nn import convert_to_keys, key_layers, param_groups

from .conftest import tiny_convnext


def _ids(groups: list[dict]) -> list[tuple[set[int], float]]:
    return [({id(p) for p in g["params"]}, g["weight_decay"]) for g in groups]


def test_offsets_scales_and_sigmas_get_no_decay_and_adamw_leaves_them_alone() -> None:
    for mode, keys, extra in [("frozen", "paper8", {"learn_scale": True}), ("scalespace", "scalespace8", {})]:
        model = tiny_convnext()
        convert_to_keys(model, keys, mode, "uniform", **extra)
        groups = param_groups(model, 0.05)
        undecayed, decayed = ({id(p) for p in g["params"]} for g in groups)
        assert [g["weight_decay"] for g in groups] == [0.0, 0.05]
        kernel_params = [p for _, k in key_layers(model) for p in k.parameters()]
        assert kernel_params and all(id(p) in undecayed for p in kernel_params)
        assert id(model.stem[0].weight) in decayed and id(model.head.fc.weight) in decayed
        # Behaviour: one AdamW step with zero gradients moves only decayed weights (decoupled decay).
        with torch.no_grad():
            for _, k in key_layers(model):
                for p in k.parameters():
                    p.add_(0.3)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.AdamW(groups, lr=0.1)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        for name, p in model.named_parameters():
            moved = not torch.equal(p, before[name])
            assert moved == (id(p) in decayed and bool(before[name].abs().sum() > 0)), name


def test_the_groups_are_timms_and_frozen_or_listed_parameters_are_handled() -> None:
    model = tiny_convnext()
    convert_to_keys(model, "paper8", "span", "uniform")
    assert _ids(param_groups(model, 0.05)) == _ids(param_groups_weight_decay(model, 0.05))
    alphas = {id(k.alpha) for _, k in key_layers(model)}
    assert alphas <= _ids(param_groups(model, 0.05))[1][0]  # the mixing weights decay like conv weights
    assert len(param_groups(model, 0.0)) == 1 and param_groups(model, 0.0)[0]["weight_decay"] == 0.0
    model.head.fc.weight.requires_grad_(False)
    listed = param_groups(model, 0.05, no_decay=["stem.0.weight"])
    everything = {id(p) for g in listed for p in g["params"]}
    assert id(model.head.fc.weight) not in everything
    assert id(model.stem[0].weight) in _ids(listed)[0][0]
