"""FastCarRacing against Gymnasium's CarRacing-v3: identical frames, rewards and episode ends.

The main test steps both envs through whole episodes on 5 tracks with the same seeded
random actions: 4,123 steps, three episodes truncated at the 1,000-step cap and two
ended by leaving the playfield (about 35 s on 2 cores, most of it Gymnasium's env).
"""

import math

import gymnasium as gym
import numpy as np
import pygame
import pytest

import envs  # noqa: F401  (registers CarRacingFast-v3)
from envs import make_env
from envs.fast_car_racing import FastCarRacing, rotate_like_pygame

SEEDS = [0, 1, 2, 3, 4]


def random_actions(seed: int, n: int) -> np.ndarray:
    """float32 (n, 3) steer, gas, brake; light braking so the car covers some track."""
    rng = np.random.default_rng(1000 + seed)
    actions = rng.uniform([-1, 0, 0], [1, 1, 1], size=(n, 3))
    actions[:, 2] *= 0.2
    return actions.astype(np.float32)


def assert_same_steps(reference: gym.Env, fast: gym.Env, actions: np.ndarray) -> int:
    """Step both envs until an episode ends; returns the number of steps, 0 if none
    ended within ``actions``."""
    for t, action in enumerate(actions):
        obs_r, reward_r, term_r, trunc_r, info_r = reference.step(action)
        obs_f, reward_f, term_f, trunc_f, info_f = fast.step(action)
        assert np.array_equal(obs_f, obs_r), f"frame {t} differs"
        assert (reward_f, term_f, trunc_f, info_f) == (reward_r, term_r, trunc_r, info_r), t
        if term_r or trunc_r:
            return t + 1
    return 0


@pytest.fixture(scope="module")
def env_pair():
    """Gymnasium's env and the fast one, shared so later seeds reset after a done."""
    reference, fast = gym.make("CarRacing-v3"), gym.make("CarRacingFast-v3")
    assert isinstance(fast.unwrapped, FastCarRacing)
    yield reference, fast
    reference.close()
    fast.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_identical_to_gymnasium_for_a_whole_episode(env_pair, seed):
    reference, fast = env_pair
    obs_r, _ = reference.reset(seed=seed)
    obs_f, _ = fast.reset(seed=seed)
    assert np.array_equal(obs_f, obs_r)
    # the 1,000-step cap truncates both (or the lap/playfield ends them alike)
    steps = assert_same_steps(reference, fast, random_actions(seed, 1000))
    assert 1 <= steps <= 1000  # the episode ended, alike in both


def test_reset_without_seed_continues_the_same_tracks(env_pair):
    reference, fast = env_pair
    for env in env_pair:
        env.reset(seed=10)
    obs_r, _ = reference.reset()
    obs_f, _ = fast.reset()
    assert np.array_equal(obs_f, obs_r)
    assert_same_steps(reference, fast, random_actions(10, 80))


def test_rgb_array_render_is_identical():
    reference = gym.make("CarRacing-v3", render_mode="rgb_array")
    fast = gym.make("CarRacingFast-v3", render_mode="rgb_array")
    for env in (reference, fast):
        env.reset(seed=5)
    # through the first second's zoom-in and past it
    for t, action in enumerate(random_actions(5, 70)):
        reference.step(action)
        fast.step(action)
        if t % 10 == 9:
            frame_r, frame_f = reference.render(), fast.render()
            assert frame_f.shape == (400, 600, 3)
            assert np.array_equal(frame_f, frame_r), f"render after step {t} differs"
    reference.close()
    fast.close()


@pytest.mark.parametrize("kwargs", [{"domain_randomize": True}, {"continuous": False}])
def test_identical_with_options(kwargs):
    reference, fast = gym.make("CarRacing-v3", **kwargs), gym.make("CarRacingFast-v3", **kwargs)
    obs_r, _ = reference.reset(seed=6)
    obs_f, _ = fast.reset(seed=6)
    assert np.array_equal(obs_f, obs_r)
    if kwargs.get("continuous", True):
        actions = random_actions(6, 80)
    else:
        actions = np.random.default_rng(6).choice([0, 3, 3, 1, 2, 4], size=80)
    assert_same_steps(reference, fast, actions)


def test_rotation_matches_pygame_bit_for_bit():
    rng = np.random.default_rng(0)
    quarter = np.arange(-8, 9) * math.pi / 2
    angles = np.concatenate([rng.uniform(-20, 20, 300),
                             quarter + rng.uniform(-3e-6, 3e-6, quarter.size), quarter])
    points = rng.uniform(-500, 500, size=(16, 2))
    for angle in angles.tolist():
        x, y = rotate_like_pygame(points, angle)
        want = np.array([tuple(pygame.math.Vector2(p).rotate_rad(angle)) for p in points.tolist()])
        assert np.array_equal(np.stack([x, y], axis=-1), want), angle


def test_make_env_uses_the_fast_renderer_unless_told_not_to():
    fast = make_env("CarRacing-v3")
    plain = make_env("CarRacing-v3", fast_render=False)
    assert isinstance(fast.unwrapped, FastCarRacing)
    assert not isinstance(plain.unwrapped, FastCarRacing)
    # CarRacing-v3's settings still apply: the 1,000-step cap and the 12-row crop
    assert fast.spec.max_episode_steps == 1000 and fast.crop_bottom == 12
    obs_f, _ = fast.reset(seed=0)
    obs_p, _ = plain.reset(seed=0)
    assert obs_f.shape == (64, 64, 3) and np.array_equal(obs_f, obs_p)
    fast.close()
    plain.close()
