"""Gymnasium side of worldmodels: preprocessing wrappers, the env factory, registration.

Importing this package registers ``worldmodels/<id>`` for the paper's envs, so
``gymnasium.make("worldmodels/CarRacing-v3")`` gives 64x64x3 uint8 frames, and
``worldmodels/Dream-v0`` (``run_dir=...``) a trained run's dream (``envs.dream_env``), and
``CarRacingFast-v3``: CarRacing-v3 with the same 96x96 frames, rendered faster
(:mod:`envs.fast_car_racing`), and ``CarRacingDirect-v3``, drawn straight at 96x96
(:mod:`envs.direct_car_racing`; not pixel-identical).
"""

from __future__ import annotations

import gymnasium as gym

from envs.factory import KNOWN_ENVS, MissingPackageError, make_env, make_env_from_config
from envs.preprocess import PixelObservation, preprocess_frame

__all__ = [
    "KNOWN_ENVS",
    "MissingPackageError",
    "PixelObservation",
    "make_env",
    "make_env_from_config",
    "preprocess_frame",
    "register_envs",
]


def register_envs() -> None:
    """Register ``CarRacingFast-v3``, ``CarRacingDirect-v3`` and ``worldmodels/<id>``
    for every env in :data:`KNOWN_ENVS` (idempotent)."""
    # the cap and threshold of Gymnasium's CarRacing-v3, whose drop-ins they are
    reference = gym.spec("CarRacing-v3")
    for env_id, entry_point in (("CarRacingFast-v3", "envs.fast_car_racing:FastCarRacing"),
                                ("CarRacingDirect-v3",
                                 "envs.direct_car_racing:DirectCarRacing")):
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point,
                         max_episode_steps=reference.max_episode_steps,
                         reward_threshold=reference.reward_threshold)
    for env_id in KNOWN_ENVS:
        wrapped = f"worldmodels/{env_id}"
        if wrapped not in gym.registry:
            gym.register(id=wrapped, entry_point="envs.factory:make_env",
                         kwargs={"env_id": env_id}, disable_env_checker=True)
    if "worldmodels/Dream-v0" not in gym.registry:  # needs run_dir=...
        gym.register(id="worldmodels/Dream-v0", entry_point="envs.dream_env:make_dream_env")


register_envs()
