"""Make a preprocessed pixel env from an id: CarRacing-v3, VizdoomTakeCover-v1, or any other."""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any

import gymnasium as gym

from envs.preprocess import PixelObservation, pixel_source
from worldmodels.config import ConfigError
from worldmodels.errors import InputError, MissingPackageError

#: Per-env settings the paper used, applied unless the caller overrides them.
KNOWN_ENVS: dict[str, dict[str, Any]] = {
    # Ha & Schmidhuber crop the 12-row dashboard off CarRacing's 96x96 frame.
    "CarRacing-v3": {"max_episode_steps": 1000, "crop_bottom": 12},
    # The paper caps TakeCover episodes at 2,100 steps.
    "VizdoomTakeCover-v1": {"max_episode_steps": 2100, "crop_bottom": 0},
    # envs/fast_car_racing.py: CarRacing-v3 with pixel-identical frames, rendered faster
    "CarRacingFast-v3": {"max_episode_steps": 1000, "crop_bottom": 12},
    # envs/direct_car_racing.py: CarRacing-v3 drawn straight at 96x96 (not identical)
    "CarRacingDirect-v3": {"max_episode_steps": 1000, "crop_bottom": 12},
}

#: env id -> the id of a drop-in env with identical observations, rewards and episode
#: ends that steps faster; ``make_env(..., fast_render=True)`` substitutes it
FAST_RENDERERS: dict[str, str] = {"CarRacing-v3": "CarRacingFast-v3"}

#: env id -> the id of a drop-in env with the same physics, rewards and episode ends
#: whose frames are drawn directly at their final size: faster still, but the pixels
#: differ slightly; ``make_env(..., direct_render=True)`` substitutes it
DIRECT_RENDERERS: dict[str, str] = {"CarRacing-v3": "CarRacingDirect-v3"}

#: id prefix -> (module that registers those ids, pip extra that provides it)
_PROVIDERS = {
    "Vizdoom": ("vizdoom.gymnasium_wrapper", "pip install 'worldmodels[doom]' (or vizdoom)"),
    "ALE/": ("ale_py", "pip install 'worldmodels[atari]' (or ale-py)"),
}


class UnknownEnvError(InputError, gym.error.UnregisteredEnv):
    """An env id that no installed package registers."""


def ensure_registered(env_id: str) -> str:
    """Import the package that registers ``env_id`` (ViZDoom, ALE), with an install hint;
    ``module:Id`` (Gymnasium's form for another package's env) imports ``module``. Returns
    the id to make (``Id``). An id no prefix names (ale-py's ``PongNoFrameskip-v4``) is
    looked for in the installed providers too."""
    if ":" in env_id:
        module, _, env_id = env_id.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise MissingPackageError(f"env '{module}:{env_id}': the module '{module}' does "
                                      f"not import ({err})") from err
    for prefix, (module, hint) in _PROVIDERS.items():
        if env_id.startswith(prefix):
            try:
                mod = importlib.import_module(module)
            except ImportError as err:
                raise MissingPackageError(
                    f"env '{env_id}' needs the package '{module.split('.')[0]}': {hint}"
                ) from err
            if module == "ale_py":
                gym.register_envs(mod)
    if env_id not in gym.registry:
        for module, _ in _PROVIDERS.values():
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
    return env_id


def renderer_id(env_id: str, fast_render: bool = True, direct_render: bool = False) -> str:
    """The id to make for ``env_id``: its :data:`DIRECT_RENDERERS` substitute if asked
    for and there is one, else its :data:`FAST_RENDERERS` one, else ``env_id``."""
    if direct_render and env_id in DIRECT_RENDERERS:
        return DIRECT_RENDERERS[env_id]
    if fast_render:
        return FAST_RENDERERS.get(env_id, env_id)
    return env_id


def make_env(
    env_id: str,
    frame_size: int = 64,
    max_episode_steps: int | None = None,
    crop_bottom: int | None = None,
    render_mode: str | None = None,
    fast_render: bool = True,
    direct_render: bool = False,
    **kwargs: Any,
) -> gym.Env:
    """A Gymnasium env whose observations are ``uint8 (frame_size, frame_size, 3)`` frames.

    ``max_episode_steps``: None takes the paper's cap for known envs, 0 the env's own.
    ``fast_render``: make the :data:`FAST_RENDERERS` substitute of ``env_id`` if it has
    one (same frames, rewards and episode ends; ``env_id``'s settings still apply).
    ``direct_render``: make the :data:`DIRECT_RENDERERS` substitute instead (same
    rewards and episode ends, slightly different frames); it takes precedence.
    ``kwargs`` go to ``gymnasium.make``.
    """
    env_id = ensure_registered(env_id)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        # no screen: pygame's renderers (classic control's rgb_array, CarRacing) draw
        # off screen, and SDL's default driver would print an 'error:' line per process
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    if direct_render and env_id not in DIRECT_RENDERERS:
        raise ConfigError(f"config key 'env.direct_render' is true, but {env_id} has no direct "
                          f"renderer (only {', '.join(DIRECT_RENDERERS)}): set "
                          "env.direct_render=false")
    known = KNOWN_ENVS.get(env_id, {})
    if max_episode_steps is None:
        max_episode_steps = known.get("max_episode_steps", 0)
    if crop_bottom is None:
        crop_bottom = known.get("crop_bottom", 0)
    if env_id not in gym.registry:
        raise UnknownEnvError(
            f"unknown env id '{env_id}' (not in gymnasium's registry, nor registered by an "
            "installed vizdoom or ale-py; Vizdoom*/ALE/* ids need their packages installed, "
            "and another package's env is env.id=<module>:<id>)"
        )
    # Gymnasium's passive checker re-checks every step's output; the wrapped envs are
    # checked once by tests (check_env), so the per-step hop is skipped
    make_kwargs: dict[str, Any] = {"disable_env_checker": True, **kwargs}
    if render_mode is not None:
        make_kwargs["render_mode"] = render_mode
    if max_episode_steps:
        make_kwargs["max_episode_steps"] = max_episode_steps
    make_id = renderer_id(env_id, fast_render, direct_render)
    try:
        env = gym.make(make_id, **make_kwargs)
    except TypeError as err:
        # an env that does not take a keyword of env.kwargs: name the key and the keyword
        bad = [k for k in kwargs if f"'{k}'" in str(err)]
        if not kwargs or "keyword" not in str(err):
            raise
        raise ConfigError(
            f"config key 'env.kwargs': {env_id} does not take the keyword "
            f"{repr(bad[0]) if bad else 'one of ' + ', '.join(map(repr, kwargs))} "
            f"(env.kwargs={kwargs})") from None
    if pixel_source(env) is None and env.render_mode != "rgb_array":
        # not a pixel observation (e.g. classic control): use its rendered picture
        env.close()
        env = gym.make(make_id, **{**make_kwargs, "render_mode": "rgb_array"})
    return PixelObservation(env, size=frame_size, crop_bottom=crop_bottom)


def episode_cap(cfg: Any) -> int:
    """An :class:`worldmodels.config.EnvConfig`'s step cap: its own, or for -1 the known
    default (0: the env's own cap, whatever that is)."""
    if cfg.max_episode_steps >= 0:
        return int(cfg.max_episode_steps)
    return int(KNOWN_ENVS.get(cfg.id, {}).get("max_episode_steps", 0))


def make_env_from_config(cfg: Any, **overrides: Any) -> gym.Env:
    """``make_env`` from an :class:`worldmodels.config.EnvConfig` (-1 = the known default)."""
    return make_env(
        cfg.id,
        frame_size=cfg.frame_size,
        max_episode_steps=episode_cap(cfg),
        crop_bottom=None if cfg.crop_bottom < 0 else cfg.crop_bottom,
        fast_render=cfg.fast_render,
        direct_render=cfg.direct_render,
        **{**cfg.kwargs, **overrides},
    )
