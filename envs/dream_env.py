"""The learned model as a Gymnasium env: one dream of M (:class:`worldmodels.dream.Dream`).

Observations are the controller's features, float32 ``[z, h]`` (``[z, c, h]`` with
``use_cell``), the same layout as :class:`agents.sb3.LatentObservation` gives in the
real env, so a policy trained here acts there unchanged. Actions are the real env's.
``render()`` decodes z with V into a 64x64x3 uint8 frame.

    env = gymnasium.make("worldmodels/Dream-v0", run_dir="runs/VizdoomTakeCover-v1/dream")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from worldmodels.controller import controller_features, feature_size
from worldmodels.dream import Dream
from worldmodels.vae import ConvVAE


class DreamEnv(gym.Env):
    """A single dream; ``reset(seed=s)`` makes its start and noise reproducible.

    ``options={"start": i}`` starts from the i-th start latent (default: a random one).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, dream: Dream, action_space: gym.Space, vae: ConvVAE | None = None,
                 use_cell: bool = False, render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', not '{render_mode}'")
        if render_mode and vae is None:
            raise ValueError("rendering a dream decodes its latents: pass the run's V")
        self.dream, self.vae, self.use_cell = dream, vae, use_cell
        self.render_mode = render_mode
        self.action_space = action_space
        size = feature_size(dream.memory.z_dim, dream.memory.lstm.hidden_size, use_cell)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self._z: torch.Tensor | None = None

    def _observation(self) -> np.ndarray:
        assert self._z is not None
        return controller_features(self._z[0], self.dream.h[0], self.dream.c[0],
                                   self.use_cell).numpy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.dream.generator.manual_seed(seed)
        start = (options or {}).get("start")
        starts = None if start is None else torch.tensor([int(start)])
        self._z = self.dream.reset(1, starts)
        return self._observation(), {}

    def step(self, action: Any):
        if self._z is None:
            raise RuntimeError("call reset() before step()")
        if isinstance(self.action_space, gym.spaces.Discrete):
            a = torch.tensor([int(np.asarray(action)) - int(self.action_space.start)])
        else:
            a = torch.as_tensor(np.asarray(action, np.float32)).reshape(1, -1)
        out = self.dream.step(self._z, a)
        self._z = out.z
        return (self._observation(), float(out.reward[0]), bool(out.done[0]),
                bool(out.truncated[0]), {})

    @torch.no_grad()
    def decode(self) -> np.ndarray:
        """The current latent as V sees it: uint8 (64, 64, 3)."""
        assert self.vae is not None and self._z is not None
        frame = self.vae.decode(self._z).clamp(0, 1)[0]
        return (frame * 255).byte().permute(1, 2, 0).numpy()

    def render(self) -> np.ndarray | None:
        return self.decode() if self.render_mode == "rgb_array" else None


def make_dream_env(run_dir: str | Path, temperature: float | None = None,
                   render_mode: str | None = None, seed: int = 0) -> DreamEnv:
    """The dream of a trained run (its M, start latents and action space; V to render)."""
    from agents.dreams import load_dream
    from agents.rollouts import load_run_config
    from worldmodels.vae_training import load_vae

    torch.set_num_threads(1)  # one dream steps one row: threads only contend
    cfg = load_run_config(Path(run_dir))
    dream, _, action_space = load_dream(Path(run_dir), cfg, temperature, seed)
    vae = load_vae(Path(run_dir), cfg.vae.z_dim) if render_mode else None
    return DreamEnv(dream, action_space, vae, cfg.controller.use_cell, render_mode)
