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
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper

from envs.dream_env import action_batch, dream_vec_env
from envs.factory import make_env_from_config
from worldmodels.checkpoint import CheckpointError, write_bytes_atomic, write_text_atomic
from worldmodels.config import ConfigError, ExperimentConfig
from worldmodels.memory import Memory, State, zero_rows
from worldmodels.run_dir import RunDir
from worldmodels.vae import ConvVAE


class LatentObservation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Observations: M's features ``[z_t, h_t]`` float32 (``memory.feature_size()``,) from
    a frozen V and M (``[z_t, c_t, h_t]`` with ``use_cell``, as
    :class:`envs.dream_env.DreamEnv` gives).

    z_t is V's mean for the frame; h_t is M's hidden state after reading
    (z_{t-1}, a_{t-1}); ``reset`` starts M from zeros. Actions pass through unchanged.

    V and M are given, or loaded from ``run_dir`` when they are not. ``env.spec`` records
    the run directory rather than the models, so ``env.spec.make()`` rebuilds the env
    (and the spec stays plain data); given models without a ``run_dir`` are recorded
    by reference instead.
    """

    def __init__(self, env: gym.Env, vae: ConvVAE | None = None, memory: Memory | None = None,
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
        size = memory.feature_size(use_cell)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self._z: torch.Tensor | None = None
        self._state: State | None = None

    @torch.no_grad()
    def _encode(self, frame: np.ndarray) -> torch.Tensor:
        return self.vae.encode(torch.from_numpy(frame[None]).to(self.device))[0]

    def _observation(self) -> np.ndarray:
        assert self._z is not None and self._state is not None
        return self.memory.features(self._z, self._state, self.use_cell)[0].cpu().numpy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        frame, info = self.env.reset(seed=seed, options=options)
        self._state = self.memory.initial_state(1, self.device)
        self._z = self._encode(frame)
        return self._observation(), info

    @torch.no_grad()
    def step(self, action: Any):
        a = action_batch([action], self.action_space).to(self.device)
        _, self._state = self.memory.step(self._z, a, self._state)
        frame, reward, terminated, truncated, info = self.env.step(action)
        self._z = self._encode(frame)
        return self._observation(), reward, terminated, truncated, info


class LatentVecEnv(VecEnvWrapper):
    """N real envs with observations M's features [z, h] ([z, c, h] with ``use_cell``),
    as :class:`LatentObservation` gives for one, V and M batched: each step V encodes
    the N frames in one call and M steps the N states in one call.

    ``venv`` holds the pixel envs (e.g. SB3's ``DummyVecEnv``, which resets an ended
    env at once); an env that starts anew starts M from zeros, and its last observation
    is in ``info["terminal_observation"]`` as features too.
    """

    def __init__(self, venv: VecEnv, vae: ConvVAE, memory: Memory, device: str = "cpu",
                 use_cell: bool = False):
        size = memory.feature_size(use_cell)
        super().__init__(venv, gym.spaces.Box(-np.inf, np.inf, (size,), np.float32))
        self.vae, self.memory = vae.eval(), memory.eval()
        self.device, self.use_cell = torch.device(device), use_cell
        self._z: torch.Tensor | None = None
        self._state: State | None = None
        self._actions: Any = None

    @torch.no_grad()
    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        return self.vae.encode(torch.from_numpy(np.ascontiguousarray(frames)).to(self.device))[0]

    def _features(self, z: torch.Tensor, state: State) -> np.ndarray:
        return self.memory.features(z, state, self.use_cell).cpu().numpy()

    @torch.no_grad()
    def reset(self) -> np.ndarray:
        frames = self.venv.reset()
        self._state = self.memory.initial_state(self.num_envs, self.device)
        self._z = self._encode(frames)
        return self._features(self._z, self._state)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions
        self.venv.step_async(actions)

    @torch.no_grad()
    def step_wait(self):
        assert self._z is not None and self._state is not None, "reset first"
        a = action_batch(self._actions, self.action_space).to(self.device)
        _, state = self.memory.step(self._z, a, self._state)
        frames, rewards, dones, infos = self.venv.step_wait()
        for i in np.flatnonzero(dones):  # the ended episode's last frame, before M restarts
            if "terminal_observation" in infos[i]:
                last = self._encode(infos[i]["terminal_observation"][None])
                row = tuple(s[:, i : i + 1] for s in state)
                infos[i]["terminal_observation"] = self._features(last, row)[0]
        self._state = zero_rows(state, torch.as_tensor(dones, device=self.device))
        self._z = self._encode(frames)
        return self._features(self._z, self._state), rewards, dones, infos


def latent_vec_env(run: RunDir, cfg: ExperimentConfig, n: int,
                   device: str = "cpu") -> LatentVecEnv:
    """``n`` envs of ``cfg.env`` in one process, with the run's V and M batched."""
    torch.set_num_threads(1)
    venv = DummyVecEnv([lambda: make_env_from_config(cfg.env)] * n)
    return LatentVecEnv(venv, run.load_vae(cfg.vae.z_dim, device), run.load_memory(device),
                        device, cfg.controller.use_cell)


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


def training_env(run: RunDir, cfg: ExperimentConfig) -> VecEnv:
    """Where an SB3 policy trains: ``controller.sb3_envs`` of the run's real envs on
    [z, h], or as many of its dreams in one batch (``controller.environment``)."""
    n = cfg.controller.sb3_envs
    if cfg.controller.environment == "dream":
        venv: VecEnv = dream_vec_env(run, cfg, n, seed=cfg.seed)
    else:
        venv = latent_vec_env(run, cfg, n)
    venv.seed(cfg.seed)
    return venv


def train_sb3(run: RunDir, cfg: ExperimentConfig, progress: bool = True,
              kwargs: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train ``controller.algo`` for ``controller.sb3_timesteps`` steps on the [z, h] env,
    or inside the run's dream (``controller.environment=dream``, same observations);
    returns the model and how it was saved. Either way the saved policy plays the real
    env (:func:`load_sb3`); the two are saved apart."""
    c = cfg.controller
    algo, environment = c.algo, c.environment
    kwargs = {**c.sb3_kwargs, **(kwargs or {})}
    meta = {"algo": algo, "kwargs": kwargs, "timesteps": c.sb3_timesteps, "seed": cfg.seed,
            "environment": environment}
    try:
        meta_text = json.dumps(meta, indent=2)  # fail before training, not after
    except TypeError as err:
        raise ConfigError(f"SB3 kwargs must be JSON values to be saved: {err}") from err
    env = training_env(run, cfg)
    try:
        model = algorithm_class(algo)("MlpPolicy", env, seed=cfg.seed, verbose=0,
                                      tensorboard_log=str(run.tensorboard()), **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"config key 'controller.sb3_kwargs' {kwargs} does not suit "
                          f"{SB3_ALGORITHMS[algo]}: {str(err).splitlines()[0]}") from None
    run.write_config(cfg, outputs=(run.controller.dir,))  # inputs accepted
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
