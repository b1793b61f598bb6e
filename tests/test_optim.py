"""ScaledAdam: steps relative to each weight's scale; it trains what AdamW trains."""

import pytest
import torch

from mvq_kd.config import OptimConfig
from mvq_kd.optim import ScaledAdam, build_optimizer


def _one_step(scale: float) -> float:
    torch.manual_seed(0)
    w, x = torch.randn(8, 4), torch.randn(32, 8)
    p = torch.nn.Parameter(w * scale)
    opt = ScaledAdam([p], lr=0.01)
    (x @ (p / scale)).pow(2).mean().backward()
    before = p.detach().clone()
    opt.step()
    return (p.detach() - before).norm().item() / before.norm().item()


def test_weight_steps_are_relative_to_the_weight_scale():
    # The same problem with the weight 10x smaller: the same relative change.
    assert _one_step(1.0) == pytest.approx(_one_step(0.1), rel=1e-4)
    assert 0.005 < _one_step(1.0) < 0.02  # ~lr


def test_fits_a_regression_and_builds_from_config():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(256, 6)
    y = x[:, :1] * 2 - x[:, 1:2]
    opt = build_optimizer(model.parameters(), OptimConfig(optimizer="scaled_adam", base_lr=0.03))
    assert isinstance(opt, ScaledAdam)
    first = None
    for _ in range(300):
        loss = (model(x) - y).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02 * first
    state = opt.state_dict()  # resumable like any torch optimizer
    again = build_optimizer(model.parameters(), OptimConfig(optimizer="scaled_adam"))
    again.load_state_dict(state)
    with pytest.raises(ValueError, match="adamw or scaled_adam"):
        build_optimizer(model.parameters(), OptimConfig(optimizer="sgd"))
