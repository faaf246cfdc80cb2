"""A second memory model through M's seam: the GRU-MDN (memory.kind=gru_mdn) alone, and
on a tiny run end to end: M trained, C trained by CMA-ES in its dream, C acting in the
real env, and both envs (the [z, h] wrapper, Dream-v0) built on it."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from agents.sb3 import make_latent_env
from envs.dream_env import make_dream_env
from tests.test_run import dreams_and_acts, tiny_memory_run
from worldmodels.checkpoint import load_model, save_model
from worldmodels.config import ConfigError, ExperimentConfig, load_config
from worldmodels.controller import FlatPolicy, build_controller
from worldmodels.dream import Dream, dream_returns
from worldmodels.frmdn import FRMDN
from worldmodels.frmdn_training import build_memory
from worldmodels.gru_mdn import GRUMDN
from worldmodels.memory import MEMORY_KINDS, Memory
from worldmodels.run_dir import RunDir


def gru(z_dim: int = 3, discrete: bool = False, **memory) -> GRUMDN:
    cfg = ExperimentConfig()
    cfg.vae.z_dim = z_dim
    cfg.memory = dataclasses.replace(cfg.memory, **{"kind": "gru_mdn", "hidden": 8,
                                                     "mixtures": 2, **memory})
    model = build_memory(cfg, 3, discrete)
    assert isinstance(model, GRUMDN)
    return model


def test_memory_kind_selects_the_model_by_lookup():
    assert {"frmdn", "gru_mdn"} <= set(MEMORY_KINDS)
    cfg = ExperimentConfig()
    cfg.vae.z_dim, cfg.memory.hidden = 3, 8
    assert isinstance(build_memory(cfg, 3, False), FRMDN)  # the default kind
    model = gru()
    assert isinstance(model, Memory) and isinstance(build_memory(cfg, 3, False), Memory)
    space = gym.spaces.Box(-1, 1, (3,))
    assert isinstance(build_controller(cfg.controller, model.feature_size(), space), FlatPolicy)
    with pytest.raises(ConfigError, match="memory.kind"):
        load_config(None, [], ["memory.kind=transformer"])


def test_steps_follow_the_sequence_path_and_features_are_z_h():
    torch.manual_seed(0)
    model = gru(discrete=True).eval()
    z, a = torch.randn(2, 5, 3), torch.randint(3, (2, 5))
    with torch.no_grad():
        h_seq, _ = model(z, a)
        state = model.initial_state(2)
        for t in range(5):
            h, state = model.step(z[:, t], a[:, t], state)
            torch.testing.assert_close(h, h_seq[:, t])
        x = model.features(z[:, -1], state)
    assert x.shape == (2, model.feature_size()) == (2, 3 + 8)
    torch.testing.assert_close(x[:, 3:], h_seq[:, -1])
    with pytest.raises(ConfigError, match="controller.use_cell"):
        model.feature_size(use_cell=True)
    with pytest.raises(ConfigError, match="no cell"):
        model.features(z[:, -1], state, use_cell=True)


def test_density_is_a_diagonal_mixture_and_samples_share_noise():
    torch.manual_seed(0)
    model = gru(mixtures=1).eval()
    h, y = torch.randn(4, 8), torch.randn(4, 3)
    p = model.mixture.params(h)
    var = torch.exp(-p.log_d[:, 0])
    expected = -0.5 * (((y - p.mu[:, 0]) ** 2 / var).sum(-1) + var.log().sum(-1)
                       + 3 * math.log(2 * math.pi))
    torch.testing.assert_close(model.log_prob(y, h), expected)
    # given noise (u, eps), a sample is mu + sqrt(tau * var) * eps
    noise = (torch.rand(4), torch.randn(4, 3))
    torch.testing.assert_close(model.sample(h, 1.3, noise=noise),
                               p.mu[:, 0] + (1.3 * var).sqrt() * noise[1])


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = gru()
    save_model(tmp_path / "m.safetensors", model)
    loaded = load_model(tmp_path / "m.safetensors")
    assert isinstance(loaded, GRUMDN) and loaded.config() == model.config()
    z, a = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    torch.testing.assert_close(loaded(z, a)[0], model(z, a)[0])


def test_batched_dream_runs_on_the_gru():
    torch.manual_seed(0)
    model = gru()
    dream = Dream(model, torch.zeros(3, 3), torch.zeros(3, 3), max_steps=7)
    cfg = ExperimentConfig()
    ctrl = build_controller(cfg.controller, model.feature_size(),
                            gym.spaces.Box(-1, 1, (3,)))
    params = torch.randn(4, ctrl.num_parameters())
    returns, steps = dream_returns(dream, ctrl, params, torch.arange(3))
    assert returns.shape == (4, 3) and ((steps >= 1) & (steps <= 7)).all()
    # the GRU's reward head over the dream's steps: candidates that act differently
    # dream differently, and a candidate alone plays its row of the batch
    assert len({tuple(r) for r in returns.round(5).tolist()}) > 1
    dream.generator.manual_seed(0)
    alone, _ = dream_returns(dream, ctrl, params[1:2], torch.arange(3))
    dream.generator.manual_seed(0)
    batch, _ = dream_returns(dream, ctrl, params, torch.arange(3))
    np.testing.assert_allclose(alone[0], batch[1], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def gru_run(tmp_path_factory) -> RunDir:
    return tiny_memory_run(tmp_path_factory.mktemp("gru"), "gru_mdn")


def test_a_gru_run_trains_dreams_and_acts(gru_run):
    dreams_and_acts(gru_run, "gru_mdn", GRUMDN)


def test_both_envs_pass_the_checkers_on_a_gru_run(gru_run):
    latent = make_latent_env(gru_run.path)
    assert latent.observation_space.shape == (4 + 8,)
    check_env(latent, skip_render_check=True)
    dream = make_dream_env(gru_run.path)
    assert dream.observation_space.shape == (4 + 8,)
    sb3_check_env(dream)
