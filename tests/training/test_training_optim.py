import math

import pytest
import torch

from stamo_vla.training.optim import OptimizerConfig, build_optimizer, build_scheduler, lr_factor


def test_warmup_then_cosine_to_floor():
    cfg = OptimizerConfig(lr=1.0, warmup_steps=4, decay="cosine", min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg, total_steps=14) for s in range(14)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and math.isclose(factors[-1], 0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))  # monotone decay after warm-up


def test_step_decay_and_constant():
    step = OptimizerConfig(decay="step", decay_step_size=3, decay_gamma=0.5)
    assert [lr_factor(s, step, 10) for s in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    assert lr_factor(999, OptimizerConfig(), 10) == 1.0


def test_scheduler_applies_factors_and_decay_skips_biases():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    cfg = OptimizerConfig(lr=0.1, warmup_steps=2, weight_decay=0.05)
    opt = build_optimizer(model.parameters(), cfg)
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model[0].weight)] == 0.05
    assert decays[id(model[0].bias)] == 0.0 and decays[id(model[1].weight)] == 0.0
    sched = build_scheduler(opt, cfg, total_steps=5)
    seen = []
    for _ in range(3):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.05, 0.1, 0.1])


def test_errors_name_the_field():
    with pytest.raises(
        ValueError, match=r"optim.decay='linear' is not valid; allowed: \['constant', 'cosine', 'step'\]"
    ):
        OptimizerConfig(decay="linear")
    with pytest.raises(ValueError, match="optim.max_grad_norm=0"):
        OptimizerConfig(max_grad_norm=0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2), requires_grad=False)], OptimizerConfig())
