"""The learned model as a Gymnasium env: one dream of M (:class:`worldmodels.dream.Dream`).

Observations are the controller's features, float32 ``[z, h]`` (``[z, c, h]`` with
``use_cell``), the same layout as :class:`agents.sb3.LatentObservation` gives in the
real env, so a policy trained here acts there unchanged. Actions are the real env's.
``render()`` decodes z with V into a 64x64x3 uint8 frame.

    env = gymnasium.make("envs:worldmodels/Dream-v0", run_dir="runs/VizdoomTakeCover-v1/dream")
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from safetensors.torch import load_file
from stable_baselines3.common.vec_env import VecEnv

from envs.factory import episode_cap
from worldmodels.checkpoint import CheckpointError, file_digest
from worldmodels.config import ConfigError, ExperimentConfig
from worldmodels.dream import Dream, read_start_latents, start_latents
from worldmodels.dream_ensemble import MemoryEnsemble
from worldmodels.frmdn_training import latent_split
from worldmodels.memory import Memory
from worldmodels.run_dir import RunDir, as_run
from worldmodels.shards import ShardError
from worldmodels.vae import ConvVAE


def action_batch(actions: Any, space: gym.Space) -> torch.Tensor:
    """Actions of B envs as M reads them: (B,) int64 from 0 for Discrete (its ``start``
    taken off), (B, A) float32 for a Box."""
    if isinstance(space, gym.spaces.Discrete):
        return torch.as_tensor(np.asarray(actions), dtype=torch.long).reshape(-1) \
            - int(space.start)
    a = torch.as_tensor(np.asarray(actions, np.float32))
    return a.reshape(a.shape[0] if a.ndim > 1 else 1, -1)


def start_option(options: dict[str, Any] | None, count: int) -> int | None:
    """The start latent a reset's ``options={"start": i}`` asks for, of ``count`` (None:
    a random one); an index that is not one is a ``ValueError``."""
    start = (options or {}).get("start")
    if start is not None and not (isinstance(start, (int, np.integer))
                                  and 0 <= int(start) < count):
        raise ValueError(f"reset option 'start' is {start!r}: the index of one of the "
                         f"dream's {count} start latents, from 0 to {count - 1}")
    return None if start is None else int(start)


class DreamEnv(gym.Env):
    """A single dream; ``reset(seed=s)`` makes its start and noise reproducible.

    Unseeded, it follows Gymnasium's envs: the first ``reset()`` without a seed draws
    the dream's noise from fresh entropy (``np_random``), so envs made side by side
    (``gym.make_vec``, SB3's ``make_vec_env`` without a seed) dream apart; ``seeded``:
    the dream's generator was seeded on purpose (``make_dream_env(seed=s)``), and an
    unseeded first reset keeps it.

    ``options={"start": i}`` starts from the i-th start latent (default: a random one).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, dream: Dream, action_space: gym.Space, vae: ConvVAE | None = None,
                 use_cell: bool = False, render_mode: str | None = None,
                 seeded: bool = False):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', not '{render_mode}'")
        if render_mode and vae is None:
            raise ValueError("rendering a dream decodes its latents: pass the run's V")
        self.dream, self.vae, self.use_cell = dream, vae, use_cell
        self.render_mode = render_mode
        self._seeded = seeded
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
        elif not self._seeded:  # (np_random: from entropy, unless seeded on purpose)
            self.dream.generator.manual_seed(int(self.np_random.integers(2**63 - 1)))
        self._seeded = True
        start = start_option(options, len(self.dream.mu0))
        self._z = self.dream.reset(1, None if start is None else torch.tensor([start]))
        return self._observation(), {}

    def step(self, action: Any):
        if self._z is None:
            raise RuntimeError("call reset() before step()")
        space = self.action_space
        given = np.asarray(action)
        if (given.shape != space.shape if isinstance(space, gym.spaces.Box)
                else not space.contains(action)):  # (a Box action may leave its bounds)
            raise ValueError(f"action {action!r} is not in the dream's action space {space}")
        out = self.dream.step(self._z, action_batch([action], space))
        self._z = out.z
        return (self._observation(), float(out.reward[0]), bool(out.done[0]),
                bool(out.truncated[0]), {})

    @torch.no_grad()
    def decode(self) -> np.ndarray:
        """The current latent as V sees it: uint8 (64, 64, 3)."""
        if self.vae is None:
            raise RuntimeError("decoding a dream needs the run's V (make the env with "
                               "render_mode='rgb_array')")
        if self._z is None:
            raise RuntimeError("call reset() before render()")
        frame = self.vae.decode(self._z).clamp(0, 1)[0]
        return (frame * 255).byte().permute(1, 2, 0).numpy()

    def render(self) -> np.ndarray | None:
        return self.decode() if self.render_mode == "rgb_array" else None


def dream_cap(cfg: ExperimentConfig) -> int:
    """Dream length cap: ``dream.max_steps``, else the env's cap, else 1,000."""
    return cfg.dream.max_steps or episode_cap(cfg.env) or 1000


def load_dream(run: RunDir, cfg: ExperimentConfig | None = None,
               temperature: float | None = None, seed: int = 0,
               starts: tuple[torch.Tensor, torch.Tensor] | None = None,
               memory: torch.nn.Module | None = None) -> tuple[Dream, gym.Space]:
    """(dream, action space) of a trained run: its M (or ``memory``, an M in training,
    with ``cfg.memory.done_pos_weight``), dreaming from the first frames of its training
    episodes (or from ``starts``, start latents (mu, logvar) (N, d) each), with
    ``cfg.dream``'s settings (default: the run's config); the temperature is
    ``dream.temperature`` unless given."""
    cfg = cfg if cfg is not None else run.load_config()
    if memory is None:
        memory = run.load_memory()  # first: it names a run without M
        pos_weight = run.done_pos_weight()
    else:
        pos_weight = cfg.memory.done_pos_weight
    if starts is not None:
        mu0, logvar0 = starts
    elif run.dream_starts.exists():  # a shipped agent: the start latents, without the shards
        mu0, logvar0 = read_start_latents(run.dream_starts, cfg.vae.z_dim)
    elif run.world_model_shipped:  # a shipped agent, or a run on its V and M
        raise ShardError(f"{run.dream_starts}: missing; this shipped agent has no dream start "
                         "latents, so it plays the real env only (export it again from its "
                         "run to dream)")
    else:
        mu0, logvar0 = start_latents(latent_split(cfg, run)[0])
    if cfg.dream.ensemble:
        memory = ensemble_memory(run, cfg, memory, pos_weight)
    dream = Dream(
        memory, mu0, logvar0,
        temperature=cfg.dream.temperature if temperature is None else temperature,
        done_mode=cfg.dream.done, done_threshold=cfg.dream.done_threshold,
        done_pos_weight=pos_weight,
        max_steps=dream_cap(cfg), generator=torch.Generator().manual_seed(seed),
    )
    return dream, run.action_space()


def ensemble_memory(run: RunDir, cfg: ExperimentConfig, memory: Memory,
                    pos_weight: float) -> MemoryEnsemble:
    """The run's M (``memory``, trained with done weight ``pos_weight``) with the Ms of
    the runs or shipped agents in ``dream.ensemble``, as one
    :class:`worldmodels.dream_ensemble.MemoryEnsemble`. Each must have been trained on
    latents of the same V weights as the run's (compared tensor by tensor); a
    :class:`ConfigError` naming the key and the directory otherwise."""
    own = _vae_tensors(run)
    members, weights = [memory], [pos_weight]
    seen = {run.memory.weights().resolve(): str(run.path)}
    for path, other in ensemble_runs(cfg):
        if not other.memory.weights().exists():
            raise ConfigError(f"config key 'dream.ensemble': {other.memory.weights()}: no "
                              f"trained M in '{path}'")
        where = other.memory.weights().resolve()
        if where in seen:  # (with z from a random member, one M twice has double weight)
            raise ConfigError(f"config key 'dream.ensemble': '{path}' names the M of "
                              f"'{seen[where]}' again; each M may dream once")
        seen[where] = path
        theirs = _vae_tensors(other)
        if theirs.keys() != own.keys() or not all(  # (an fp16 export: its V in float32)
                torch.equal(own[k].float(), theirs[k].float()) for k in own):
            raise ConfigError(f"config key 'dream.ensemble': '{path}' has other V weights "
                              f"than {run.path}; an ensemble's Ms must read the latents of "
                              "one V")
        members.append(other.load_memory())
        weights.append(other.done_pos_weight())
    try:
        return MemoryEnsemble(members, weights, cfg.dream.ensemble_z)
    except ValueError as err:
        raise ConfigError(f"config key 'dream.ensemble' ({cfg.dream.ensemble}): {err}") \
            from None


#: the settings key of the dream's other Ms (:func:`ensemble_settings`), recorded only
#: when the dream has other Ms, so settings without it are one M's
ENSEMBLE_KEY = "dream_ensemble"


def dream_training_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a controller trained in the dream learns from besides V and M: the
    temperature, the done rule, the dream's cap and any other Ms beside the run's
    (:data:`ENSEMBLE_KEY`). Recorded with a CMA-ES history and an SB3 checkpoint, so
    training goes on only in the dream it began in."""
    settings: dict[str, Any] = {
        "temperature": cfg.dream.temperature, "done": cfg.dream.done,
        "done_threshold": cfg.dream.done_threshold, "dream_max_steps": cfg.dream.max_steps}
    if cfg.dream.ensemble:
        settings[ENSEMBLE_KEY] = ensemble_settings(cfg)
    return settings


def ensemble_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """The digests of the Ms in ``dream.ensemble`` (whatever paths name them) and
    ``dream.ensemble_z``: what another M beside the run's changes (a CMA-ES history's
    fitness, a dream score's file)."""
    members = []
    for path, other in ensemble_runs(cfg):
        model = other.memory.weights()  # what load_memory loads
        members.append(file_digest(model) if model.exists() else f"missing: {path}")
    return {"members": members, "z_from": cfg.dream.ensemble_z}


def without_ensemble(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``dream.ensemble`` cleared: the run's M dreams alone."""
    return dataclasses.replace(cfg, dream=dataclasses.replace(cfg.dream, ensemble=""))


def ensemble_runs(cfg: ExperimentConfig) -> list[tuple[str, RunDir]]:
    """(path as given, run) of each directory in ``dream.ensemble``."""
    return [(p, as_run(p)) for p in (x.strip() for x in cfg.dream.ensemble.split(",")) if p]


def _vae_tensors(run: RunDir) -> dict[str, torch.Tensor]:
    """The tensors of the run's V file (to compare Vs whatever their file metadata)."""
    path = run.vae.model
    if not path.exists():
        raise CheckpointError(f"{path}: no trained V (config key 'dream.ensemble' compares "
                              "the runs' Vs)")
    return load_file(str(path))


def make_dream_env(run_dir: str | Path, temperature: float | None = None,
                   render_mode: str | None = None, seed: int | None = None,
                   overrides: tuple[str, ...] | list[str] = ()) -> DreamEnv:
    """The dream of the trained run at ``run_dir`` (its M, start latents and action
    space; V to render). ``overrides``: ``dream.*`` keys (see :meth:`RunDir.load_config`).
    ``seed``: the dream's noise before any seeded reset (None: fresh entropy at the
    first reset, as Gymnasium's envs)."""
    if isinstance(overrides, str):  # (a string would be read one character a key)
        raise TypeError("overrides is a sequence of 'key=value' strings, not one string")
    run = RunDir(run_dir)
    return dream_env(run, run.load_config(overrides), temperature, render_mode, seed)


def dream_env(run: RunDir, cfg: ExperimentConfig, temperature: float | None = None,
              render_mode: str | None = None, seed: int | None = None) -> DreamEnv:
    """The run's dream with ``cfg.dream``'s settings (``seed`` as
    :func:`make_dream_env`'s).

    Sets torch to one thread for the whole process (one dream steps one row: more
    threads only contend); a caller that needs more afterwards sets them back."""
    torch.set_num_threads(1)
    dream, action_space = load_dream(run, cfg, temperature, seed or 0)
    vae = run.load_vae(cfg.vae.z_dim) if render_mode else None
    return DreamEnv(dream, action_space, vae, cfg.controller.use_cell, render_mode,
                    seeded=seed is not None)


class DreamVecEnv(VecEnv):
    """N dreams of one M in one batch, as a Stable-Baselines3 ``VecEnv``: the same
    observations (M's features) and actions as :class:`DreamEnv` and the real env's
    [z, h] wrappers, so a policy trained here plays the real env unchanged.

    A dream that ends is started anew at once from a random start latent (SB3's
    auto-reset); its last observation is in ``info["terminal_observation"]``.
    ``seed(s)`` then ``reset()`` makes the dreams reproducible; ``set_options`` with
    ``{"start": i}`` (for all dreams, or a list, one a dream) starts the next ``reset()``'s
    dreams from those start latents, as :class:`DreamEnv`'s option does.
    """

    render_mode = None  # (SB3 asks its envs)

    def __init__(self, dream: Dream, action_space: gym.Space, n: int, use_cell: bool = False):
        size = dream.memory.feature_size(use_cell)
        super().__init__(n, gym.spaces.Box(-np.inf, np.inf, (size,), np.float32), action_space)
        self.dream, self.use_cell = dream, use_cell
        self._z: torch.Tensor | None = None
        self._actions: Any = None

    def reset(self) -> np.ndarray:
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        if seed is not None:
            self.dream.generator.manual_seed(seed)
        self._reset_seeds()
        count = len(self.dream.mu0)
        asked = [start_option(o, count) for o in self._options]
        self._reset_options()
        starts = None
        if any(a is not None for a in asked):  # (the draw a reset makes anyway, then those)
            starts = torch.randint(count, (self.num_envs,), generator=self.dream.generator)
            for i, a in enumerate(asked):
                if a is not None:
                    starts[i] = a
        self._z = self.dream.reset(self.num_envs, starts)
        return self.dream.features(self._z, self.use_cell).numpy()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        if self._z is None:
            raise RuntimeError("call reset() before step()")
        out = self.dream.step(self._z, action_batch(self._actions, self.action_space))
        ended = out.done | out.truncated
        infos: list[dict] = [{} for _ in range(self.num_envs)]
        if bool(ended.any()):
            last = self.dream.features(out.z, self.use_cell).numpy()
            for i in np.flatnonzero(ended.numpy()):
                infos[i]["terminal_observation"] = last[i]
                infos[i]["TimeLimit.truncated"] = bool(out.truncated[i])
        self._z = self.dream.restart(ended, out.z)
        return (self.dream.features(self._z, self.use_cell).numpy(),
                out.reward.numpy().astype(np.float32), ended.numpy(), infos)

    def close(self) -> None:
        self._z = None

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: Any = None,
                   **kwargs: Any) -> list[Any]:
        raise NotImplementedError(f"DreamVecEnv's dreams have no method '{method_name}'")

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False] * len(self._get_indices(indices))


def load_batched_dream(run: RunDir, cfg: ExperimentConfig, temperature: float | None = None,
                       seed: int = 0, starts: tuple[torch.Tensor, torch.Tensor] | None = None,
                       ) -> tuple[Dream, gym.Space]:
    """:func:`load_dream` for many dreams in one batch (CMA-ES's fitness, SB3's
    :class:`DreamVecEnv`), run on ``dream.threads`` torch threads (0: torch's default;
    1 for runs side by side, which would otherwise contend). The count is set for the
    whole process, as torch's thread count is."""
    if cfg.dream.threads:
        torch.set_num_threads(cfg.dream.threads)
    return load_dream(run, cfg, temperature, seed, starts)


def dream_vec_env(run: RunDir, cfg: ExperimentConfig, n: int, seed: int = 0) -> DreamVecEnv:
    """``n`` dreams of the run in one batch, with ``cfg.dream``'s settings."""
    dream, action_space = load_batched_dream(run, cfg, seed=seed)
    return DreamVecEnv(dream, action_space, n, cfg.controller.use_cell)
