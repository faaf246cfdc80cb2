import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers worldmodels/* ids)
from envs import make_env, preprocess_frame
from envs.factory import MissingPackageError, ensure_registered

try:
    import vizdoom  # noqa: F401

    HAVE_DOOM = True
except ImportError:
    HAVE_DOOM = False


@pytest.mark.parametrize("shape, dtype", [
    ((96, 96, 3), np.uint8), ((240, 320, 3), np.uint8), ((210, 160), np.uint8),
    ((50, 60, 1), np.uint8), ((100, 100, 4), np.uint8), ((64, 64, 3), np.float32),
])
def test_preprocess_gives_64x64x3_uint8(shape, dtype):
    frame = (np.random.default_rng(0).random(shape) * 255).astype(dtype)
    out = preprocess_frame(frame, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_preprocess_crops_bottom_then_area_resizes():
    frame = np.zeros((96, 96, 3), np.uint8)
    frame[84:] = 255  # the dashboard
    assert preprocess_frame(frame, 64, crop_bottom=12).max() == 0
    assert preprocess_frame(frame, 64).max() > 0
    # area interpolation averages: a uniform picture stays uniform
    flat = np.full((240, 320, 3), 77, np.uint8)
    assert (preprocess_frame(flat) == 77).all()


def test_carracing_registered_and_checked():
    env = gym.make("worldmodels/CarRacing-v3")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    check_env(env, skip_render_check=True)
    obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert obs.shape == (64, 64, 3)
    env.close()


def test_episode_cap_is_applied():
    env = make_env("CarRacing-v3", max_episode_steps=5)
    env.reset(seed=0)
    for _ in range(5):
        *_, terminated, truncated, _ = env.step(np.zeros(3, np.float32))
    assert truncated or terminated
    env.close()


@pytest.mark.skipif(not HAVE_DOOM, reason="vizdoom not installed")
def test_takecover_registered_and_checked():
    env = gym.make("worldmodels/VizdoomTakeCover-v1")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert isinstance(env.action_space, gym.spaces.Discrete) and env.action_space.n == 3
    check_env(env, skip_render_check=True)
    env.close()


def test_any_pixel_env_by_id_without_code_change():
    # CartPole's observation is not a picture: its rendering is used instead
    env = make_env("CartPole-v1")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and obs.std() > 0
    env.close()


def test_unknown_env_id_is_a_clear_error():
    with pytest.raises(gym.error.Error, match="NoSuchEnv-v0"):
        make_env("NoSuchEnv-v0")


def test_missing_optional_package_gives_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_vizdoom(name, *args, **kwargs):
        if name.startswith("vizdoom"):
            raise ImportError("No module named 'vizdoom'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vizdoom)
    monkeypatch.setattr("importlib.import_module", lambda name: no_vizdoom(name))
    with pytest.raises(MissingPackageError, match=r"worldmodels\[doom\]"):
        ensure_registered("VizdoomTakeCover-v1")


def test_two_stage_resize_stays_close_to_single_area_resize():
    import cv2

    rng = np.random.default_rng(0)
    # a smooth picture with edges, the size of ViZDoom's screen
    y, x = np.mgrid[0:240, 0:320]
    frame = np.stack([(x * 0.8) % 256, (y * 1.1) % 256, ((x + y) // 40 % 2) * 200], -1)
    frame = (frame + rng.integers(0, 20, frame.shape)).clip(0, 255).astype(np.uint8)
    fast = preprocess_frame(frame, 64).astype(float)
    exact = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(fast - exact).mean() < 2.0


def test_an_ale_game_by_id_without_code_change():
    pytest.importorskip("ale_py")
    env = make_env("ALE/Pong-v5")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert isinstance(env.action_space, gym.spaces.Discrete)
    obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == (64, 64, 3) and obs.std() > 0
    env.close()


def test_a_crop_taller_than_a_rendered_frame_is_refused_at_every_reset(tmp_path):
    """A classic-control env's picture is its rendering, whose height is known at the
    first frame: the refusal repeats (a kept env must not go on cropping with a wrapped
    index), and collection refuses before it writes anything."""
    from worldmodels.config import ConfigError

    env = make_env("CartPole-v1", crop_bottom=500)
    for _ in range(2):
        with pytest.raises(ConfigError, match="'env.crop_bottom' is 500.*400 rows"):
            env.reset(seed=0)
    env.close()
    import collect as collect_script

    with pytest.raises(ConfigError, match="env.crop_bottom"):
        collect_script.main(["--preset", "quick", f"root={tmp_path}", "env.id=CartPole-v1",
                             "env.crop_bottom=500", "collect.policy=random",
                             "collect.episodes=2", "env.max_episode_steps=5"])
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no config, no shard


def test_direct_render_is_refused_for_an_env_without_a_direct_renderer():
    from worldmodels.config import ConfigError

    with pytest.raises(ConfigError, match="'env.direct_render' is true, but CartPole-v1"):
        make_env("CartPole-v1", direct_render=True)


def test_other_packages_ids_module_colon_id_and_ids_ale_py_registers():
    """Gymnasium's module:Id form imports the module; an id that ale-py registers without
    the ALE/ prefix (PongNoFrameskip-v4) is found in the installed providers."""
    pytest.importorskip("ale_py")
    for env_id in ("PongNoFrameskip-v4", "ale_py:Pong-v4"):
        env = make_env(env_id, max_episode_steps=3)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (64, 64, 3) and env.unwrapped.spec.id == env_id.split(":")[-1]
        env.close()
    with pytest.raises(MissingPackageError, match="'no_such_module' does not import"):
        make_env("no_such_module:Thing-v0")


def test_a_rendered_env_on_a_machine_without_a_screen_prints_no_sdl_error():
    """Without DISPLAY, make_env asks SDL for its dummy video driver: SDL's default one
    printed 'error: XDG_RUNTIME_DIR is invalid ...' once per process, like our errors."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items()
           if k not in ("SDL_VIDEODRIVER", "SDL_AUDIODRIVER", "DISPLAY", "WAYLAND_DISPLAY",
                        "XDG_RUNTIME_DIR")}
    code = ("from envs import make_env\n"
            "e = make_env('CartPole-v1'); e.reset(seed=0); e.step(0); print('played')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0 and "played" in done.stdout, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr
