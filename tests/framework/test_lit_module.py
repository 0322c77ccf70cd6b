"""RosaLitModule: loss masking, optimizer groups per stage, the LR schedule."""
import math

import hydra
import pytest
import torch
import torch.nn.functional as F

from rosa_lightning.lit_module import parameter_groups, warmup_cosine
from rosa_lightning.modeling import is_rosa_parameter
from rosa_lightning.modeling.losses import shifted_cross_entropy


def test_shifted_cross_entropy_ignores_masked_labels():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, 2] = labels[1, 4] = -100
    loss, n = shifted_cross_entropy(logits, labels)
    keep = labels[:, 1:] != -100
    manual = F.cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep])
    assert int(n) == 6 and torch.allclose(loss, manual)
    with pytest.raises(ValueError, match="scored"):
        shifted_cross_entropy(logits, torch.full_like(labels, -100))


@pytest.mark.parametrize("stage", ["A", "B"])
def test_stage_freezing_and_groups(stage, make_cfg):
    module = hydra.utils.instantiate(make_cfg(f"train.stage={stage}").model)
    named = dict(module.model.named_parameters())
    backbone_trainable = [n for n, p in named.items() if not is_rosa_parameter(n) and p.requires_grad]
    assert bool(backbone_trainable) == (stage == "B")
    groups = {g["name"]: g for g in parameter_groups(module.model, module.lr[stage], 0.01, stage)}
    expected = {"rosa", "rosa_no_decay"} | ({"backbone", "backbone_no_decay"} if stage == "B" else set())
    assert set(groups) == expected
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    e0 = next(p for n, p in named.items() if n.endswith("rosa.e0"))
    out = next(p for n, p in named.items() if n.endswith("rosa.out_proj.weight"))
    assert id(e0) in ids["rosa_no_decay"] and id(out) in ids["rosa"]
    assert groups["rosa_no_decay"]["weight_decay"] == 0.0 and groups["rosa"]["weight_decay"] == 0.01
    if stage == "B":
        norm = next(p for n, p in named.items() if n.endswith("input_layernorm.weight"))
        assert id(norm) in ids["backbone_no_decay"]
        assert groups["backbone"]["lr"] == module.lr["B"]["backbone"]


def test_warmup_cosine_goes_min_to_base_to_min():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "lr": 1e-3, "min_lr": 1e-4}])
    sched = warmup_cosine(opt, total_steps=100, warmup_steps=20)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert math.isclose(lrs[0], 1e-4) and math.isclose(lrs[20], 1e-3)
    assert all(a <= b for a, b in zip(lrs[:20], lrs[1:21])) and lrs[-1] < 1.1e-4
