"""The held-action check: dream lengths, real lengths, their ratio and the gate."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.dream_check import (
    HeldActionRow,
    check_run,
    dream_lengths,
    epoch_checker,
    gate,
    held_action_check,
    markdown_table,
    real_lengths,
    train_memory_checked,
    worst_held,
)
from tests.conftest import run_of
from tests.test_dream import Z, memory_with_heads
from worldmodels.checkpoint import CheckpointError
from worldmodels.config import ConfigError
from worldmodels.dream import Dream
from worldmodels.errors import InputError
from worldmodels.run_dir import RunDir


class HoldToDie(gym.Env):
    """Three actions; the episode ends once action k has been taken 5 (k + 1) times."""

    observation_space = gym.spaces.Box(0, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.counts = [0, 0, 0]
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.counts[action] += 1
        ended = self.counts[action] >= 5 * (action + 1)
        return np.zeros(1, np.float32), 0.0, ended, False, {}


def constant_done_dream(p: float) -> Dream:
    """Every step ends a dream with probability p, whatever the action: mean 1 / p."""
    return Dream(memory_with_heads(1.0, math.log(p / (1 - p)), discrete=True), torch.zeros(2, Z),
                 torch.zeros(2, Z), max_steps=10_000)


def test_real_lengths_count_the_steps_of_each_held_action():
    env = HoldToDie()
    for action in range(3):
        assert (real_lengths(env, action, episodes=4) == 5 * (action + 1)).all()
    random = real_lengths(env, None, episodes=50)
    assert random.min() >= 5 and random.max() <= 5 + 9 + 14  # the last of 28 steps ends it


def test_dream_lengths_follow_the_done_head_and_are_reproducible():
    dream = constant_done_dream(0.1)
    steps = dream_lengths(dream, 3, action=1, dreams=3000, seed=0)
    assert abs(steps.mean() - 10.0) < 0.6  # geometric, p = 0.1: std of the mean 0.17
    np.testing.assert_array_equal(steps, dream_lengths(dream, 3, action=1, dreams=3000))


def test_random_actions_of_the_dreams_do_not_repeat_their_start_latents_draws():
    """The random actions have their own stream: seeded like the dream's generator, the
    first action was start % 3 in every dream (600 starts, 3 actions)."""
    dream = Dream(memory_with_heads(1.0, math.log(0.1 / 0.9), discrete=True),
                  torch.zeros(600, Z), torch.zeros(600, Z), max_steps=10_000)
    first: list[torch.Tensor] = []
    step = dream.step
    dream.step = lambda z, a: (first.append(a) if not first else None) or step(z, a)
    dream_lengths(dream, 3, action=None, dreams=600, seed=0)
    starts = torch.randint(600, (600,), generator=torch.Generator().manual_seed(0))
    same = (first[0] == starts % 3).float().mean().item()
    assert same < 0.45  # chance: 1/3 (std 0.02); 1.0 when both streams were one


def test_ratios_find_the_overrated_action_and_the_gate_stops_on_it(tmp_path):
    rows = held_action_check(constant_done_dream(0.1), HoldToDie(), dreams=2000, episodes=3)
    assert [r.action for r in rows] == [0, 1, 2, None]
    assert [r.real_mean for r in rows[:3]] == [5.0, 10.0, 15.0]
    worst = worst_held(rows)
    assert worst.action == 0 and worst.ratio == pytest.approx(2.0, rel=0.1)
    with pytest.raises(InputError, match=r"holding action 0.*max_held_ratio=1.5") as err:
        gate(rows, 1.5, tmp_path / "memory")
    assert str(tmp_path / "memory") in str(err.value)
    gate(rows, 2.5, tmp_path)  # passes
    gate(rows, 0.0, tmp_path)  # off
    assert "| always action 0 | 5 ± 0 |" in markdown_table(rows, 1.15)


def test_uniform_random_is_not_a_held_action():
    rows = [HeldActionRow(0, 100, 1, 110, 1), HeldActionRow(None, 100, 1, 500, 1)]
    assert worst_held(rows).action == 0


def test_main_job_check_is_skipped_where_it_does_not_apply(tiny_cfg):
    assert "real env" in check_run(tiny_cfg, RunDir(run_of(tiny_cfg)))["skipped"]
    tiny_cfg.controller.environment, tiny_cfg.dream.check_episodes = "dream", 0
    assert "check_episodes=0" in check_run(tiny_cfg, RunDir(run_of(tiny_cfg)))["skipped"]


def held_checked_run(cfg, hidden: int, epochs: int, episodes: int, max_steps: int):
    """(cfg, run) of a tiny Discrete-action run whose M trains with the held-action check
    of every epoch (``memory.select_max_held``), its latents written."""
    from tests.test_frmdn_training import write_latents

    for key, value in dict(hidden=hidden, mixtures=2, seq_len=10, batch_size=4,
                           epochs=epochs, flow_hidden=8, shuffle_buffer=8,
                           select_max_held=1.5, eval_draws=1).items():
        setattr(cfg.memory, key, value)
    cfg.vae.z_dim = 4
    cfg.controller.environment, cfg.dream.check_episodes = "dream", episodes
    cfg.dream.max_steps = max_steps
    write_latents(run_of(cfg) / "latents", discrete=True)
    return cfg, RunDir(run_of(cfg))


def test_epoch_checker_agrees_with_the_check_of_the_saved_m(tiny_cfg, monkeypatch):
    """memory.select_max_held trains M with a held-action check of every epoch: the
    figures recorded for the chosen epoch are those of run.py's check of the saved best
    M, and the real episodes are played once."""
    import json

    import agents.dream_check as dream_check

    played = []

    def make_env(cfg_env):
        played.append(1)
        return HoldToDie()

    monkeypatch.setattr(dream_check, "make_env_from_config", make_env)
    cfg, run = held_checked_run(tiny_cfg, hidden=16, epochs=3, episodes=3, max_steps=60)
    report = dream_check.train_memory_checked(cfg, run, progress=False)
    rows = json.loads(run.memory.metrics.read_text())
    assert len(played) == 1 and all("held_worst_ratio" in r for r in rows)
    chosen = next(r for r in rows if r["epoch"] == report.best_epoch)
    saved = check_run(cfg, run)
    assert saved["worst_action"] == chosen["held_worst_action"]
    assert saved["worst_ratio"] == pytest.approx(chosen["held_worst_ratio"], rel=1e-6)
    assert report.held_worst_ratio == chosen["held_worst_ratio"]
    assert run.memory.held_check_png.read_bytes()[:4] == b"\x89PNG"


def test_epoch_checker_refuses_a_run_it_cannot_check_before_m_trains(tiny_cfg):
    from tests.test_frmdn_training import write_latents

    tiny_cfg.vae.z_dim = 4
    tiny_cfg.memory.select_max_held = 1.2
    write_latents(run_of(tiny_cfg) / "latents")  # CarRacing's Box actions
    run = RunDir(run_of(tiny_cfg))
    with pytest.raises(ConfigError, match="Discrete action space"):
        train_memory_checked(tiny_cfg, run, progress=False)
    assert not run.memory.metrics.exists()  # refused before any epoch
    tiny_cfg.memory.select_max_held = 0.0  # off: no check, no held figures
    assert epoch_checker(tiny_cfg, run) is None
    tiny_cfg.memory.epochs, tiny_cfg.memory.hidden = 1, 8
    train_memory_checked(tiny_cfg, run, progress=False)
    assert not any(k.startswith("held") for k in run.memory.metrics.read_text().split('"'))


def test_epoch_checker_dreams_with_the_run_m_alone(tiny_cfg, tmp_path, monkeypatch):
    """The held-action check of M as it trains is M's own: a ``dream.ensemble`` (here
    naming a run that does not exist; a dream with it is refused on this run) is left
    out."""
    import agents.dream_check as dream_check
    from envs.dream_env import load_dream

    monkeypatch.setattr(dream_check, "make_env_from_config", lambda cfg_env: HoldToDie())
    cfg, run = held_checked_run(tiny_cfg, hidden=8, epochs=1, episodes=2, max_steps=30)
    cfg.dream.ensemble = str(tmp_path / "no-such-run")
    report = dream_check.train_memory_checked(cfg, run, progress=False)
    assert report.held_worst_ratio > 0
    with pytest.raises(CheckpointError, match="dream.ensemble"):
        load_dream(run, cfg)
