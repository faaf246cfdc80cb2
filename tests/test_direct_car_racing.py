"""DirectCarRacing: Gymnasium's physics, rewards and ends; frames close to Gymnasium's."""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pygame  # noqa: E402
import pytest  # noqa: E402

import envs  # noqa: E402,F401  (registers CarRacingDirect-v3)
from envs import make_env  # noqa: E402
from envs.direct_car_racing import DirectCarRacing, smoothscale_levels  # noqa: E402
from envs.factory import make_env_from_config  # noqa: E402
from envs.fast_car_racing import FastCarRacing  # noqa: E402
from worldmodels.config import EnvConfig  # noqa: E402


def _drive(seed: int, steps: int, **kwargs) -> tuple[list[float], list[float]]:
    """Step the exact env (identical to Gymnasium's, tests/test_fast_car_racing.py) and the
    direct env side by side; returns each frame's mean absolute difference and the
    fraction of pixels more than 32 levels apart."""
    exact, direct = FastCarRacing(**kwargs), DirectCarRacing(**kwargs)
    rng = np.random.default_rng(seed)
    a, _ = exact.reset(seed=seed)
    b, _ = direct.reset(seed=seed)
    mad, far = [], []
    for t in range(steps):
        diff = np.abs(a.astype(np.int16) - b)
        mad.append(float(diff.mean()))
        far.append(float((diff > 32).any(axis=-1).mean()))
        # mostly gas with some steering, so that the car drives over tiles and off road
        action = np.array([np.sin(t / 15.0 + seed), 0.6, 0.0], dtype=np.float32)
        action[0] += rng.normal(0, 0.3)
        a, ra, ta, ua, _ = exact.step(action)
        b, rb, tb, ub, _ = direct.step(action)
        assert (ra, ta, ub) == (rb, tb, ub), f"step {t}: rewards or ends differ"
        if ta:
            break
    exact.close()
    direct.close()
    return mad, far


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_rewards_and_ends_and_close_frames(seed):
    mad, far = _drive(seed, 300)
    # the zoom-in of the first second (the field's edges on screen) is included
    assert np.mean(mad) < 1.5, np.mean(mad)
    assert max(mad) < 4.0, max(mad)
    assert max(far) < 0.04, max(far)  # no misplaced shape: few pixels far apart


@pytest.mark.slow
def test_domain_randomized_colours_stay_close():
    mad, far = _drive(5, 120, domain_randomize=True)
    assert np.mean(mad) < 2.0, np.mean(mad)
    assert max(far) < 0.04, max(far)


def test_tile_colours_stay_shared_with_the_contact_listener():
    env = DirectCarRacing()
    env.reset(seed=3)
    tile = env.road[7]
    rows = env._road_color_rows
    assert np.shares_memory(tile.color, rows)
    row = next(i for i, (_, c) in enumerate(env.road_poly) if c is tile.color)
    tile.color[:] = (1.0, 2.0, 3.0)  # what the contact listener does
    np.testing.assert_array_equal(rows[row], (1.0, 2.0, 3.0))
    env.close()


def test_rgb_array_render_is_the_exact_renderer():
    exact = FastCarRacing(render_mode="rgb_array")
    direct = DirectCarRacing(render_mode="rgb_array")
    exact.reset(seed=4)
    direct.reset(seed=4)
    for _ in range(60):
        exact.step(np.array([0.2, 0.5, 0.0]))
        direct.step(np.array([0.2, 0.5, 0.0]))
    np.testing.assert_array_equal(exact.render(), direct.render())


def test_smoothscale_levels_are_pygames_flat_colours():
    levels = smoothscale_levels()
    big = pygame.Surface((1000, 800))
    for v in (0, 37, 102, 204, 255):
        big.fill((v, v, v))
        small = pygame.transform.smoothscale(big, (96, 96))
        assert (pygame.surfarray.array3d(small) == levels[v]).all()
    assert levels[204] < 204  # pygame's fixed-point shrink rounds down


def test_supersample_must_be_positive():
    with pytest.raises(ValueError, match="supersample"):
        DirectCarRacing(supersample=0)


def test_make_env_and_config_choose_the_direct_renderer():
    env = make_env("CarRacing-v3", direct_render=True)
    assert isinstance(env.unwrapped, DirectCarRacing)
    assert env.reset(seed=0)[0].shape == (64, 64, 3)
    env.close()
    cfg = EnvConfig(direct_render=True)
    env = make_env_from_config(cfg)
    assert isinstance(env.unwrapped, DirectCarRacing)
    env.close()
    env = make_env_from_config(EnvConfig())  # the default stays the exact renderer
    assert type(env.unwrapped) is FastCarRacing
    env.close()
    raw = gym.make("CarRacingDirect-v3", supersample=3)
    assert raw.unwrapped.supersample == 3
    assert raw.reset(seed=0)[0].shape == (96, 96, 3)
    raw.close()
