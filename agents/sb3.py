"""Stable-Baselines3 on [z, h]: a wrapper that gives any real pixel env observations
made by frozen V and M, and a training route that saves without pickle.

SB3's own ``.zip`` holds cloudpickled objects that ``load`` would execute, so the policy
is saved as ``controller/sb3_<algo>.safetensors`` (its state dict; trained in the dream:
``sb3_<algo>_dream.safetensors``) with a JSON sidecar, and rebuilt by constructing the
same algorithm and loading the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from envs.dream_env import dream_env
from envs.factory import make_env_from_config
from worldmodels.checkpoint import CheckpointError, write_bytes_atomic, write_text_atomic
from worldmodels.config import ConfigError, ExperimentConfig
from worldmodels.controller import controller_features, feature_size
from worldmodels.frmdn import FRMDN
from worldmodels.run_dir import RunDir
from worldmodels.vae import ConvVAE


class LatentObservation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Observations ``[z_t, h_t]`` float32 (z_dim + hidden,) from a frozen V and M
    (``[z_t, c_t, h_t]`` with ``use_cell``, as :class:`envs.dream_env.DreamEnv` gives).

    z_t is V's mean for the frame; h_t is M's hidden state after reading
    (z_{t-1}, a_{t-1}); ``reset`` starts M from zeros. Actions pass through unchanged.

    V and M are given, or loaded from ``run_dir`` when they are not. ``env.spec`` records
    the run directory rather than the models, so ``env.spec.make()`` rebuilds the env
    (and the spec stays plain data); given models without a ``run_dir`` are recorded
    by reference instead.
    """

    def __init__(self, env: gym.Env, vae: ConvVAE | None = None, memory: FRMDN | None = None,
                 device: str = "cpu", use_cell: bool = False,
                 run_dir: str | Path | None = None):
        if run_dir is not None:
            run_dir = str(Path(run_dir).absolute())  # the spec may be made elsewhere
            gym.utils.RecordConstructorArgs.__init__(
                self, device=str(device), use_cell=use_cell, run_dir=run_dir)
        elif vae is None or memory is None:
            raise ValueError("LatentObservation needs V and M, or the run_dir to load them")
        else:
            gym.utils.RecordConstructorArgs.__init__(
                self, _disable_deepcopy=True, vae=vae, memory=memory, device=str(device),
                use_cell=use_cell)
        gym.Wrapper.__init__(self, env)
        if vae is None or memory is None:
            run = RunDir(run_dir)
            vae = run.load_vae(run.load_config().vae.z_dim, device) if vae is None else vae
            memory = run.load_memory(device) if memory is None else memory
        self.vae, self.memory = vae.eval(), memory.eval()
        self.device = torch.device(device)
        self.use_cell = use_cell
        size = feature_size(vae.z_dim, memory.hidden_size, use_cell)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self._z: torch.Tensor | None = None
        self._state: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def _encode(self, frame: np.ndarray) -> torch.Tensor:
        return self.vae.encode(torch.from_numpy(frame[None]).to(self.device))[0]

    def _observation(self) -> np.ndarray:
        assert self._z is not None and self._state is not None
        h, c = self._state[0][0, 0], self._state[1][0, 0]
        return controller_features(self._z[0], h, c, self.use_cell).cpu().numpy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        frame, info = self.env.reset(seed=seed, options=options)
        self._state = self.memory.initial_state(1, self.device)
        self._z = self._encode(frame)
        return self._observation(), info

    @torch.no_grad()
    def step(self, action: Any):
        a = torch.as_tensor(np.asarray(action)[None], device=self.device)
        if not self.memory.discrete_actions:
            a = a.float().reshape(1, -1)
        _, self._state = self.memory.step(self._z, a, self._state)
        frame, reward, terminated, truncated, info = self.env.step(action)
        self._z = self._encode(frame)
        return self._observation(), reward, terminated, truncated, info


def make_latent_env(run_dir: str | Path | RunDir, device: str = "cpu",
                    overrides: tuple[str, ...] = ()) -> LatentObservation:
    """The real env of the trained run at ``run_dir``, wrapped with the run's V and M.
    ``overrides``: ``env.*`` keys (another variant of its env; see RunDir.load_config)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    return latent_env(run, run.load_config(overrides), device)


def latent_env(run: RunDir, cfg: ExperimentConfig, device: str = "cpu") -> LatentObservation:
    """The env of ``cfg.env`` wrapped with the run's V and M."""
    torch.set_num_threads(1)
    vae = run.load_vae(cfg.vae.z_dim, device)
    memory = run.load_memory(device)
    return LatentObservation(make_env_from_config(cfg.env), vae, memory, device,
                             cfg.controller.use_cell, run_dir=run.path)


#: ``controller.algo`` -> the name of its Stable-Baselines3 class
SB3_ALGORITHMS = {"ppo": "PPO", "a2c": "A2C", "sac": "SAC", "td3": "TD3"}


def algorithm_class(name: str) -> Any:
    import stable_baselines3 as sb3

    if name not in SB3_ALGORITHMS:
        raise ConfigError(f"unknown SB3 algorithm '{name}' (known: {', '.join(SB3_ALGORITHMS)})")
    return getattr(sb3, SB3_ALGORITHMS[name])


def training_env(run: RunDir, cfg: ExperimentConfig) -> gym.Env:
    """Where an SB3 policy trains: the run's real env on [z, h], or its dream
    (``controller.environment``)."""
    if cfg.controller.environment == "dream":
        return dream_env(run, cfg, seed=cfg.seed)
    return latent_env(run, cfg)


def train_sb3(run: RunDir, cfg: ExperimentConfig, progress: bool = True,
              kwargs: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train ``controller.algo`` for ``controller.sb3_timesteps`` steps on the [z, h] env,
    or inside the run's dream (``controller.environment=dream``, same observations);
    returns the model and how it was saved. Either way the saved policy plays the real
    env (:func:`load_sb3`); the two are saved apart."""
    c = cfg.controller
    algo, environment = c.algo, c.environment
    kwargs = dict(kwargs or {})
    meta = {"algo": algo, "kwargs": kwargs, "timesteps": c.sb3_timesteps, "seed": cfg.seed,
            "environment": environment}
    try:
        meta_text = json.dumps(meta, indent=2)  # fail before training, not after
    except TypeError as err:
        raise ConfigError(f"SB3 kwargs must be JSON values to be saved: {err}") from err
    env = training_env(run, cfg)
    run.write_config(cfg, outputs=(run.controller.dir,))  # inputs accepted
    model = algorithm_class(algo)("MlpPolicy", env, seed=cfg.seed, verbose=0,
                                  tensorboard_log=str(run.tensorboard()), **kwargs)
    model.learn(total_timesteps=c.sb3_timesteps, progress_bar=False,
                tb_log_name=f"sb3_{algo}_{environment}")
    weights, meta_path = run.controller.sb3(algo, environment)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.policy.state_dict().items()}
    write_bytes_atomic(weights, save_safetensors(tensors))
    write_text_atomic(meta_path, meta_text)
    return model, {"weights": str(weights), **meta}


def load_sb3(run: RunDir, cfg: ExperimentConfig, algo: str = "ppo",
             environment: str = "real") -> tuple[Any, LatentObservation]:
    """Rebuild the trained SB3 model (weights only, no pickle) and the real env of
    ``cfg.env`` it plays."""
    weights, meta_path = run.controller.sb3(algo, environment)
    if not meta_path.exists() or not weights.exists():
        raise CheckpointError(f"{weights}: no {algo} policy trained in the {environment} env "
                              f"(run train_controller.py --algo {algo} for {run.path})")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{meta_path}: unreadable SB3 policy description ({err})") \
            from None
    if not (isinstance(meta, dict) and isinstance(meta.get("seed"), int)
            and isinstance(meta.get("kwargs"), dict)):
        raise CheckpointError(f"{meta_path}: an SB3 policy description needs 'seed' (an "
                              "integer) and 'kwargs' (a mapping)")
    try:
        tensors = load_file(str(weights))
    except (ValueError, OSError, SafetensorError) as err:
        raise CheckpointError(f"{weights}: unreadable SB3 policy ({err})") from None
    env = latent_env(run, cfg)
    try:
        model = algorithm_class(algo)("MlpPolicy", env, seed=meta["seed"], verbose=0,
                                      **meta["kwargs"])
    except TypeError as err:
        raise CheckpointError(f"{meta_path}: kwargs that {algo} does not take ({err})") \
            from None
    try:
        model.policy.load_state_dict(tensors)
    except RuntimeError as err:
        why = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{weights}: does not fit this run's policy ({why})") from None
    return model, env


def play_sb3(run: RunDir, cfg: ExperimentConfig, algo: str, seeds: list[int],
             environment: str = "real") -> list[tuple[float, int]]:
    """(return, steps) of one deterministic real episode per seed."""
    model, env = load_sb3(run, cfg, algo, environment)
    results = []
    for s in seeds:
        obs, _ = env.reset(seed=s)
        total, steps, done = 0.0, 0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            steps += 1
            done = terminated or truncated
        results.append((total, steps))
    return results
