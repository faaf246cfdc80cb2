"""Ha's MDN-RNN (memory.kind=mdn_rnn): a mixture of 1-D Gaussians per dimension of z,
each dimension drawing its own component; alone, and on a tiny run end to end."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from envs.dream_env import make_dream_env
from tests.test_run import dreams_and_acts, tiny_memory_run
from worldmodels.checkpoint import load_model, save_model
from worldmodels.config import ExperimentConfig
from worldmodels.dream import Dream
from worldmodels.frmdn_training import build_memory
from worldmodels.mdn_rnn import MDNRNN
from worldmodels.memory import MEMORY_KINDS, Memory


def mdn(z_dim: int = 2, mixtures: int = 2, hidden: int = 8) -> MDNRNN:
    cfg = ExperimentConfig()
    cfg.vae.z_dim = z_dim
    cfg.memory = dataclasses.replace(cfg.memory, kind="mdn_rnn", hidden=hidden,
                                     mixtures=mixtures)
    model = build_memory(cfg, 3, False)
    assert isinstance(model, MDNRNN) and isinstance(model, Memory)
    assert "mdn_rnn" in MEMORY_KINDS
    return model


def fixed(model: MDNRNN, logits, mu, log_sigma) -> MDNRNN:
    """The mixture head made constant: every dimension's (logits, mu, log sigma) (d, K)."""
    with torch.no_grad():
        model.head.weight.zero_()
        bias = torch.stack([torch.as_tensor(x, dtype=torch.float32)
                            for x in (logits, mu, log_sigma)], dim=1)  # (d, 3, K)
        model.head.bias.copy_(bias.reshape(-1))
    return model


def test_the_density_integrates_to_one_and_is_a_product_over_dimensions():
    torch.manual_seed(0)
    model = mdn(z_dim=2, mixtures=3)
    h = torch.randn(1, 8)
    grid = torch.linspace(-12, 12, 1201)
    step = float(grid[1] - grid[0])
    y = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        p = model.log_prob(y, h.expand(len(y), -1)).exp()
    assert float(p.sum()) * step**2 == pytest.approx(1.0, abs=2e-3)
    # log p(y) = sum_j log p_j(y_j): the marginals integrate to one each
    with torch.no_grad():
        log_pi, mu, log_sigma = model.params(h)
        for j in range(2):
            t = (grid[:, None] - mu[0, j]) / log_sigma[0, j].exp()
            pj = (log_pi[0, j].exp() * torch.exp(-0.5 * t**2) / log_sigma[0, j].exp()
                  / math.sqrt(2 * math.pi)).sum(-1)
            assert float(pj.sum()) * step == pytest.approx(1.0, abs=1e-3)


def test_each_dimension_draws_its_own_component_with_temperature():
    """Two dimensions, each with components at -5 and +5: the signs are independent (a
    joint mixture would tie them); the weights follow softmax(logits / tau) and the
    spread is sigma x sqrt(tau)."""
    model = fixed(mdn(z_dim=2, mixtures=2), logits=[[0.0, 0.0], [math.log(9), 0.0]],
                  mu=[[-5.0, 5.0], [-5.0, 5.0]], log_sigma=[[math.log(0.5)] * 2] * 2)
    h = torch.zeros(20000, 8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        y = model.sample(h, tau=1.0, generator=g)
    neg = (y < 0).float()
    assert float(neg[:, 0].mean()) == pytest.approx(0.5, abs=0.02)
    assert float(neg[:, 1].mean()) == pytest.approx(0.9, abs=0.01)
    assert abs(float(np.corrcoef(neg[:, 0], neg[:, 1])[0, 1])) < 0.03
    with torch.no_grad():
        hot = model.sample(h, tau=2.0, generator=g)
    p = torch.softmax(torch.tensor([math.log(9), 0.0]) / 2.0, dim=0)[0]
    assert float((hot[:, 1] < 0).float().mean()) == pytest.approx(float(p), abs=0.01)
    near = hot[:, 0][hot[:, 0] > 0] - 5.0
    assert float(near.std()) == pytest.approx(0.5 * math.sqrt(2.0), rel=0.05)


def test_the_noise_path_is_the_formula_and_common_noise_gives_common_samples():
    torch.manual_seed(0)
    model = mdn(z_dim=3, mixtures=4).eval()
    h = torch.randn(6, 8)
    u, eps = torch.rand(6, 3), torch.randn(6, 3)
    with torch.no_grad():
        y = model.sample(h, tau=1.3, noise=(u, eps))
        log_pi, mu, log_sigma = model.params(h)
        cdf = torch.softmax(log_pi / 1.3, -1).cumsum(-1)
        k = (u.unsqueeze(-1) * cdf[..., -1:] >= cdf).sum(-1).clamp(max=3)
        want = (mu.gather(-1, k[..., None])[..., 0]
                + log_sigma.gather(-1, k[..., None])[..., 0].exp() * math.sqrt(1.3) * eps)
    torch.testing.assert_close(y, want)
    with pytest.raises(ValueError, match="per dimension"):
        model.sample(h, noise=(torch.rand(6), eps))  # one uniform a row: refused


def test_save_and_load_reproduce_the_density(tmp_path):
    torch.manual_seed(0)
    model = mdn(z_dim=3).eval()
    save_model(tmp_path / "m.safetensors", model)
    again = load_model(tmp_path / "m.safetensors").eval()
    assert isinstance(again, MDNRNN)
    z, a = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    with torch.no_grad():
        h, _ = model(z, a)
        h2, _ = again(z, a)
        torch.testing.assert_close(again.log_prob(z, h2), model.log_prob(z, h))


def test_dreams_with_common_noise_rows_are_identical():
    torch.manual_seed(0)
    model = mdn(z_dim=3).eval()
    dream = Dream(model, torch.zeros(4, 3), torch.zeros(4, 3), temperature=1.15)
    z = dream.reset(4, torch.zeros(4, dtype=torch.long), noise_rows=torch.tensor([0, 1, 0, 1]))
    for _ in range(5):
        out = dream.step(z, torch.zeros(4, 3))
        z = out.z
    torch.testing.assert_close(z[0], z[2])
    assert not torch.equal(z[0], z[1])


def test_an_mdn_rnn_run_trains_dreams_and_acts(tmp_path_factory):
    mdn_run = tiny_memory_run(tmp_path_factory.mktemp("mdn"), "mdn_rnn")
    dreams_and_acts(mdn_run, "mdn_rnn", MDNRNN)
    env = make_dream_env(mdn_run.path)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == env.observation_space.shape
