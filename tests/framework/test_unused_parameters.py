"""Parameters no forward reads get no gradient and no optimizer slot; older checkpoints that had them still load."""
import pytest
import torch

from rosa_lightning.lit_module import RosaLitModule, drop_unused_from_optimizer_state, parameter_groups
from rosa_lightning.modeling import RosaConfig, unused_parameters

BACKBONE = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16}


def _module(stage, **inputs):
    rosa = RosaConfig(window=8, bits=4, inputs=inputs)
    return RosaLitModule(BACKBONE, rosa, optimizer=torch.optim.AdamW, stage=stage)


@pytest.mark.parametrize("stage", ["A", "B"])
def test_qk_tied_k_proj_gets_no_gradient_and_no_group(stage):
    module = _module(stage, kv_shift=True, qk_tied=True)
    unused = dict(unused_parameters(module.model))
    assert sorted(unused) == [f"model.layers.{i}.rosa.k_proj.weight" for i in (1, 2)]
    assert not any(p.requires_grad for p in unused.values())
    grouped = {id(p) for g in parameter_groups(module.model, module.lr[stage], 0.01, stage) for p in g["params"]}
    assert not grouped & {id(p) for p in unused.values()}
    assert unused_parameters(_module(stage).model) == []  # the published branch reads all of its parameters


def test_disabled_branches_are_all_unused():
    module = RosaLitModule(BACKBONE, RosaConfig(window=8, runtime=dict(enabled=False)),
                           optimizer=torch.optim.AdamW, stage="B")
    names = [n for n, _ in unused_parameters(module.model)]
    assert names and all(".rosa." in n for n in names)
    assert all(not p.requires_grad for n, p in module.model.named_parameters() if n in names)


def test_an_older_checkpoints_optimizer_state_loads():
    """Optimizer state written when k_proj was still in the ROSA group: converted, then loaded and stepped."""
    module = _module("B", kv_shift=True, qk_tied=True)
    unused = {n for n, _ in unused_parameters(module.model)}
    names = [n for n, _ in module.model.named_parameters()]
    old_groups = {g: [] for g in ("rosa", "rosa_no_decay", "backbone", "backbone_no_decay")}  # parameter_groups' order
    for name, p in module.model.named_parameters():
        part = "rosa" if ".rosa." in name else "backbone"
        old_groups[part if p.ndim >= 2 else f"{part}_no_decay"].append(name)
    ids = {n: i for i, n in enumerate(names)}
    saved = {"optimizer_states": [{"state": {ids[n]: {"step": torch.tensor(3.0)} for n in names if n not in unused},
                                   "param_groups": [{"name": g, "params": [ids[n] for n in ns], "lr": 1e-3}
                                                    for g, ns in old_groups.items()]}]}
    drop_unused_from_optimizer_state(saved, module.model, "B")
    groups = parameter_groups(module.model, module.lr["B"], 0.01, "B")
    opt = torch.optim.AdamW(groups)
    kept = saved["optimizer_states"][0]
    assert [len(g["params"]) for g in kept["param_groups"]] == [len(g["params"]) for g in opt.param_groups]
    opt.load_state_dict(kept)  # would raise on a group of another size
    drop_unused_from_optimizer_state(saved, module.model, "B")  # converting twice changes nothing
    assert [len(g["params"]) for g in saved["optimizer_states"][0]["param_groups"]] == \
        [len(g["params"]) for g in opt.param_groups]
