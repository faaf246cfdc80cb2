"""Frame preprocessing: any pixel observation -> ``uint8 (size, size, 3)``."""

from __future__ import annotations

from typing import Any

import cv2
import gymnasium as gym
import numpy as np

from worldmodels.config import ConfigError

#: keys under which Dict observation spaces keep their picture (ViZDoom: ``screen``)
PIXEL_KEYS = ("screen", "pixels", "image", "rgb")


def preprocess_frame(frame: np.ndarray, size: int = 64, crop_bottom: int = 0) -> np.ndarray:
    """Crop ``crop_bottom`` rows off the bottom, then area-resize to ``(size, size, 3)`` uint8.

    ``frame``: uint8 (H, W, 3) or (H, W) / (H, W, 1) greyscale (repeated to 3 channels).
    Area interpolation averages the source pixels, which keeps thin lines (road edges,
    fireballs) that nearest-neighbour resizing would drop. Frames at least twice the
    target size are first box-averaged by whole factors (ViZDoom 240x320 -> 80x64).
    """
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3:
        raise ValueError(f"expected an (H, W, C) frame, got shape {frame.shape}")
    if crop_bottom:
        frame = frame[: frame.shape[0] - crop_bottom]
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    elif frame.shape[-1] == 4:
        frame = frame[..., :3]
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    h, w = frame.shape[:2]
    fy, fx = h // size, w // size
    if fy >= 2 and fx >= 2:
        # a k x l box average first: OpenCV's integer-factor path is several times faster
        # than one non-integer area resize of a large frame (ViZDoom's 320x240: 3.75 x 5)
        frame = cv2.resize(frame[: h - h % fy, : w - w % fx], (w // fx, h // fy),
                           interpolation=cv2.INTER_AREA)
    if frame.shape[:2] != (size, size):
        frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame)


def pixel_source(env: gym.Env) -> str | None:
    """How to get a picture from ``env``: a Dict key, '' for a Box image, None for render()."""
    space = env.observation_space
    if isinstance(space, gym.spaces.Dict):
        for key in PIXEL_KEYS:
            if key in space.spaces:
                return key
        return None
    if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) in (2, 3):
        return ""
    return None


class PixelObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Turns a pixel env's observation into a ``uint8 (size, size, 3)`` frame.

    The picture is the Box observation itself, the ``screen``/``pixels`` entry of a Dict
    observation, or (for envs whose observation is not a picture) ``env.render()`` with
    ``render_mode='rgb_array'``. Its arguments are recorded in ``env.spec``, so
    ``env.spec.make()`` rebuilds the wrapped env.
    """

    def __init__(self, env: gym.Env, size: int = 64, crop_bottom: int = 0):
        gym.utils.RecordConstructorArgs.__init__(self, size=size, crop_bottom=crop_bottom)
        gym.ObservationWrapper.__init__(self, env)
        self.size = size
        self.crop_bottom = crop_bottom
        self._source = pixel_source(env)
        if self._source is None and env.render_mode != "rgb_array":
            raise ValueError(
                f"{env.spec.id if env.spec else env}: observation space "
                f"{env.observation_space} holds no picture; make it with render_mode='rgb_array'"
            )
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self._checked_height = False
        space = env.observation_space
        picture = space if self._source == "" else (
            space.spaces[self._source] if self._source else None)
        if picture is not None and picture.shape:
            self._check_crop(int(picture.shape[0]))
        if self._source is None:  # the picture is render()'s: no other render mode works
            self.metadata = {**env.metadata, "render_modes": ["rgb_array"]}

    def _check_crop(self, height: int) -> None:
        """``crop_bottom`` must leave rows of the env's frame (else numpy's negative
        index would wrap round and keep a few rows, or none). Checked again until it
        passes: an env kept after a refused frame must not go on with it."""
        if self.crop_bottom >= height:
            name = self.env.spec.id if self.env.spec else type(self.env.unwrapped).__name__
            raise ConfigError(f"config key 'env.crop_bottom' is {self.crop_bottom}, but "
                              f"{name}'s frames are {height} rows high: it must be < {height}")
        self._checked_height = True

    def observation(self, observation: Any) -> np.ndarray:
        if self._source == "":
            frame = observation
        elif self._source is not None:
            frame = observation[self._source]
        else:
            frame = self.env.render()
        frame = np.asarray(frame)
        if not self._checked_height:  # a rendered picture: its height is known only now
            self._check_crop(int(frame.shape[0]))
        return preprocess_frame(frame, self.size, self.crop_bottom)
