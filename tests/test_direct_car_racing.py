"""DirectCarRacing: Gymnasium's physics, rewards and ends; frames close to Gymnasium's."""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pygame  # noqa: E402
import pytest  # noqa: E402
from gymnasium.envs.box2d.car_dynamics import WHEEL_WHITE  # noqa: E402

import envs  # noqa: E402,F401  (registers CarRacingDirect-v3)
from envs import make_env  # noqa: E402
from envs.direct_car_racing import DirectCarRacing, smoothscale_levels  # noqa: E402
from envs.factory import make_env_from_config  # noqa: E402
from envs.fast_car_racing import FastCarRacing  # noqa: E402
from worldmodels.config import EnvConfig  # noqa: E402

#: frame regions (rows, columns) of a 96x96 observation: the car, the dashboard band
CAR = (slice(66, 78), slice(44, 53))
DASHBOARD = (slice(84, 96), slice(0, 96))


def _drive(seeds: tuple[int, ...], steps: int, **kwargs) -> dict[str, np.ndarray]:
    """Step the exact env (identical to Gymnasium's, tests/test_fast_car_racing.py) and
    the direct env side by side over ``seeds`` (each env object resets once per seed,
    so later seeds also test a reset after an episode). Returns per frame: the mean
    absolute difference over the frame, the car and the dashboard, and the fraction
    of pixels more than 32 levels apart."""
    exact, direct = FastCarRacing(**kwargs), DirectCarRacing(**kwargs)
    out: dict[str, list[float]] = {"frame": [], "car": [], "dashboard": [], "far": []}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        a, _ = exact.reset(seed=seed)
        b, _ = direct.reset(seed=seed)
        for t in range(steps):
            diff = np.abs(a.astype(np.int16) - b)
            out["frame"].append(float(diff.mean()))
            out["car"].append(float(diff[CAR].mean()))
            out["dashboard"].append(float(diff[DASHBOARD].mean()))
            out["far"].append(float((diff > 32).any(axis=-1).mean()))
            # mostly gas with some steering: the car drives over tiles and off the road
            action = np.array([np.sin(t / 15.0 + seed), 0.6, 0.0], dtype=np.float32)
            action[0] += rng.normal(0, 0.3)
            a, ra, ta, ua, ia = exact.step(action)
            b, rb, tb, ub, ib = direct.step(action)
            assert (ra, ta, ua, ia) == (rb, tb, ub, ib), f"step {t}: rewards or ends differ"
            if ta:
                break
    exact.close()
    direct.close()
    return {k: np.array(v) for k, v in out.items()}


def _assert_close(d: dict[str, np.ndarray]) -> None:
    # measured at supersample 2: frame 0.4-0.6, car 6-8, dashboard ~2, far < 2.5%; the
    # car turned round (car 12), the score text gone (dashboard 4.4) or the world one
    # pixel lower (frame 1.3) fail these
    assert d["frame"].mean() < 1.0, d["frame"].mean()
    assert d["frame"].max() < 3.0, d["frame"].max()
    assert d["car"].mean() < 9.0, d["car"].mean()
    assert d["dashboard"].mean() < 3.0, d["dashboard"].mean()
    assert d["far"].max() < 0.035, d["far"].max()


def test_same_rewards_and_ends_and_close_frames():
    # the zoom-in of the first second (the field's edges on screen) is included
    _assert_close(_drive((0,), 80))


@pytest.mark.slow
def test_same_rewards_and_ends_and_close_frames_over_tracks():
    _assert_close(_drive((1, 2, 3), 300))


@pytest.mark.slow
def test_domain_randomized_colours_stay_close():
    _assert_close(_drive((5, 6), 120, domain_randomize=True))


def test_wheels_show_their_grey_stripes():
    env = DirectCarRacing()
    env.reset(seed=0)
    grey = []
    for _ in range(40):  # the wheels turn: some stripe is in view on most frames
        env.step(np.array([0.0, 0.8, 0.0]))
        grey.append(bool((env._canvas == WHEEL_WHITE).all(axis=-1).any()))
    assert sum(grey) > 10, grey
    env.close()


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
