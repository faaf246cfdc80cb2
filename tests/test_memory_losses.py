"""M's reward and done losses and the done metrics, on values worked out by hand: the
positive weight of the done BCE is taken off again by ``done_probability`` (a fitted done
head is calibrated), rates and MSE count only unmasked steps, and the metrics follow."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from worldmodels.memory import done_metrics, done_probability, sequence_loss


class HeadsOnly(nn.Module):
    """A stand-in M whose heads are given per step: h is the step index, the density a
    unit Gaussian, the reward and done logit looked up (or one learned constant)."""

    z_dim = 1

    def __init__(self, reward: Tensor | None = None, done_logit: Tensor | None = None):
        super().__init__()
        self.given_reward, self.given_logit = reward, done_logit
        self.constant = nn.Parameter(torch.zeros(()))

    def forward(self, z: Tensor, action: Tensor):
        b, steps = z.shape[:2]
        return torch.arange(steps).expand(b, steps), None

    def log_prob(self, z: Tensor, h: Tensor) -> Tensor:
        return -0.5 * (z.squeeze(-1) ** 2 + math.log(2 * math.pi))

    def reward(self, h: Tensor) -> Tensor | None:
        return None if self.given_reward is None else self.given_reward

    def done_logit(self, h: Tensor) -> Tensor:
        if self.given_logit is None:
            return self.constant.expand(h.shape)
        return self.given_logit


def batch(done: Tensor, mask: Tensor):
    b, steps = done.shape
    return torch.zeros(b, steps + 1, 1), torch.zeros(b, steps, 1), torch.zeros(b, steps), done, mask


@pytest.mark.parametrize("pos_weight", [1.0, 10.0])
def test_fitted_done_head_is_calibrated_by_done_probability(pos_weight):
    rate = 0.05
    done = (torch.rand(1, 2_000, generator=torch.Generator().manual_seed(0)) < rate).float()
    model = HeadsOnly()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = sequence_loss(model, *batch(done, torch.ones_like(done)),
                             done_pos_weight=pos_weight)["loss"]
        loss.backward()
        return loss

    opt.step(closure)
    logit = model.constant.detach()
    # the weighted BCE's optimum is odds * pos_weight; done_probability takes it off again
    seen = done.mean().item()
    assert done_probability(logit, pos_weight).item() == pytest.approx(seen, abs=1e-4)
    expected_raw = pos_weight * seen / (1 - seen + pos_weight * seen)
    assert torch.sigmoid(logit).item() == pytest.approx(expected_raw, abs=1e-4)


def test_rates_reward_mse_and_metrics_count_only_unmasked_steps():
    # calibrated P(done) = sigmoid(logit - log 10): predicted where logit > log 10
    w = 10.0
    logit = torch.tensor([[5.0, 0.0, 5.0], [0.0, 5.0, 5.0]])
    done = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the last step is padding
    reward_pred = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 100.0]])
    reward = torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, -100.0]])
    model = HeadsOnly(reward=reward_pred, done_logit=logit)
    z, a, _, _, _ = batch(done, mask)
    out = sequence_loss(model, z, a, reward, done, mask, done_pos_weight=w)
    n = 5
    # unmasked steps: (pred, done) = (1,1), (0,1), (1,0), (0,0), (1,0)
    assert out["done_true"].item() == pytest.approx(2 / n)
    assert out["done_pred"].item() == pytest.approx(3 / n)
    assert out["done_tp"].item() == pytest.approx(1 / n)
    assert out["done_acc"].item() == pytest.approx(2 / n)
    assert out["reward_mse"].item() == pytest.approx((1 + 0 + 4 + 1 + 0) / n)
    calibrated = logit - math.log(w)
    bce = F.binary_cross_entropy_with_logits(calibrated, done, reduction="none")
    assert out["done_bce"].item() == pytest.approx((bce * mask).sum().item() / n, rel=1e-6)
    weighted = -(w * done * F.logsigmoid(logit) + (1 - done) * F.logsigmoid(-logit))
    nll = 0.5 * math.log(2 * math.pi)
    expected_loss = nll + out["reward_mse"].item() + (weighted * mask).sum().item() / n
    assert out["loss"].item() == pytest.approx(expected_loss, rel=1e-6)

    rates = {k: out[k].item() for k in ("done_true", "done_pred", "done_tp", "done_bce")}
    metrics = done_metrics(rates)
    assert metrics["done_recall"] == pytest.approx(1 / 2)
    assert metrics["done_precision"] == pytest.approx(1 / 3)
    p = 2 / n
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert metrics["done_skill"] == pytest.approx(1 - rates["done_bce"] / entropy)


def test_done_metrics_without_terminal_steps_are_nan_not_an_error():
    metrics = done_metrics({"done_true": 0.0, "done_pred": 0.0, "done_tp": 0.0, "done_bce": 0.1})
    assert all(math.isnan(v) for v in metrics.values())
    assert done_metrics({}) == {}
