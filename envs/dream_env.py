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

from envs.factory import episode_cap
from worldmodels.config import ExperimentConfig
from worldmodels.dream import Dream, start_latents
from worldmodels.frmdn_training import latent_split
from worldmodels.run_dir import RunDir
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
        size = dream.memory.feature_size(use_cell)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self._z: torch.Tensor | None = None

    def _observation(self) -> np.ndarray:
        assert self._z is not None
        return self.dream.features(self._z, self.use_cell)[0].numpy()

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


def dream_cap(cfg: ExperimentConfig) -> int:
    """Dream length cap: ``dream.max_steps``, else the env's cap, else 1,000."""
    return cfg.dream.max_steps or episode_cap(cfg.env) or 1000


def load_dream(run: RunDir, cfg: ExperimentConfig | None = None,
               temperature: float | None = None, seed: int = 0) -> tuple[Dream, gym.Space]:
    """(dream, action space) of a trained run: its M, dreaming from the first frames of
    its training episodes, with ``cfg.dream``'s settings (default: the run's config);
    the temperature is ``dream.temperature`` unless given."""
    cfg = cfg if cfg is not None else run.load_config()
    train, _, _ = latent_split(cfg, run)
    memory = run.load_memory()
    mu0, logvar0 = start_latents(train)
    dream = Dream(
        memory, mu0, logvar0,
        temperature=cfg.dream.temperature if temperature is None else temperature,
        done_mode=cfg.dream.done, done_threshold=cfg.dream.done_threshold,
        done_pos_weight=float(run.memory_meta()["done_pos_weight"]),
        max_steps=dream_cap(cfg), generator=torch.Generator().manual_seed(seed),
    )
    return dream, run.action_space()


def make_dream_env(run_dir: str | Path, temperature: float | None = None,
                   render_mode: str | None = None, seed: int = 0,
                   overrides: tuple[str, ...] = ()) -> DreamEnv:
    """The dream of the trained run at ``run_dir`` (its M, start latents and action
    space; V to render). ``overrides``: ``dream.*`` keys (see :meth:`RunDir.load_config`)."""
    run = RunDir(run_dir)
    return dream_env(run, run.load_config(overrides), temperature, render_mode, seed)


def dream_env(run: RunDir, cfg: ExperimentConfig, temperature: float | None = None,
              render_mode: str | None = None, seed: int = 0) -> DreamEnv:
    """The run's dream with ``cfg.dream``'s settings."""
    torch.set_num_threads(1)  # one dream steps one row: threads only contend
    dream, action_space = load_dream(run, cfg, temperature, seed)
    vae = run.load_vae(cfg.vae.z_dim) if render_mode else None
    return DreamEnv(dream, action_space, vae, cfg.controller.use_cell, render_mode)
