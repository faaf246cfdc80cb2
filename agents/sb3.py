"""Stable-Baselines3 on [z, h]: a wrapper that gives any real pixel env observations
made by frozen V and M, and a training route that saves without pickle.

SB3's own ``.zip`` holds cloudpickled objects that ``load`` would execute, so the policy
is saved as ``controller/sb3_<algo>.safetensors`` (its state dict) with a JSON sidecar,
and rebuilt by constructing the same algorithm and loading the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from agents.rollouts import load_run_config
from envs.factory import make_env_from_config
from worldmodels.checkpoint import CheckpointError, write_json_atomic
from worldmodels.controller import controller_features, feature_size
from worldmodels.frmdn import FRMDN
from worldmodels.frmdn_training import load_memory
from worldmodels.vae import ConvVAE
from worldmodels.vae_training import load_vae


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
            cfg = load_run_config(run_dir)
            vae = load_vae(run_dir, cfg.vae.z_dim, device) if vae is None else vae
            memory = load_memory(Path(run_dir) / "memory", device) if memory is None else memory
        self.vae, self.memory = vae.eval(), memory.eval()
        self.device = torch.device(device)
        self.use_cell = use_cell
        size = feature_size(vae.z_dim, memory.lstm.hidden_size, use_cell)
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


def make_latent_env(run_dir: Path, device: str = "cpu") -> LatentObservation:
    """The run's real env, wrapped with the run's V and M."""
    torch.set_num_threads(1)
    cfg = load_run_config(run_dir)
    vae = load_vae(run_dir, cfg.vae.z_dim, device)
    memory = load_memory(Path(run_dir) / "memory", device)
    return LatentObservation(make_env_from_config(cfg.env), vae, memory, device,
                             cfg.controller.use_cell, run_dir=run_dir)


def algorithm_class(name: str) -> Any:
    import stable_baselines3 as sb3

    classes = {"ppo": sb3.PPO, "a2c": sb3.A2C, "sac": sb3.SAC, "td3": sb3.TD3}
    if name not in classes:
        raise ValueError(f"unknown SB3 algorithm '{name}' (known: {sorted(classes)})")
    return classes[name]


def sb3_paths(run_dir: Path, algo: str) -> dict[str, Path]:
    d = Path(run_dir) / "controller"
    return {"weights": d / f"sb3_{algo}.safetensors", "meta": d / f"sb3_{algo}.json"}


def train_sb3(run_dir: Path, algo: str = "ppo", timesteps: int = 100_000, seed: int = 0,
              kwargs: dict[str, Any] | None = None, environment: str = "real",
              ) -> tuple[Any, dict[str, Any]]:
    """Train an SB3 algorithm on the [z, h] env, or inside the run's dream
    (``environment="dream"``, same observations); returns the model and how it was saved.
    Either way the saved policy plays the real env (``load_sb3``)."""
    if environment == "dream":
        from envs.dream_env import make_dream_env

        env: gym.Env = make_dream_env(run_dir, seed=seed)
    else:
        env = make_latent_env(run_dir)
    kwargs = dict(kwargs or {})
    meta = {"algo": algo, "kwargs": kwargs, "timesteps": timesteps, "seed": seed,
            "environment": environment}
    try:
        meta_text = json.dumps(meta, indent=2)  # fail before training, not after
    except TypeError as err:
        raise ValueError(f"SB3 kwargs must be JSON values to be saved: {err}") from err
    model = algorithm_class(algo)("MlpPolicy", env, seed=seed, verbose=0,
                                  tensorboard_log=str(Path(run_dir) / "tensorboard"), **kwargs)
    model.learn(total_timesteps=timesteps, progress_bar=False, tb_log_name=f"sb3_{algo}")
    files = sb3_paths(run_dir, algo)
    files["weights"].parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.policy.state_dict().items()}
    save_file(tensors, str(files["weights"]))
    write_json_atomic(files["meta"], json.loads(meta_text))
    return model, {"weights": str(files["weights"]), **meta}


def load_sb3(run_dir: Path, algo: str = "ppo") -> tuple[Any, LatentObservation]:
    """Rebuild the trained SB3 model (weights only, no pickle) and its env."""
    files = sb3_paths(run_dir, algo)
    if not files["meta"].exists() or not files["weights"].exists():
        raise CheckpointError(f"{files['weights']}: no trained {algo} policy "
                              f"(run train_controller.py --algo {algo} with the same config)")
    meta = json.loads(files["meta"].read_text())
    env = make_latent_env(run_dir)
    model = algorithm_class(algo)("MlpPolicy", env, seed=meta["seed"], verbose=0,
                                  **meta["kwargs"])
    model.policy.load_state_dict(load_file(str(files["weights"])))
    return model, env


def play_sb3(run_dir: Path, algo: str, seeds: list[int]) -> list[tuple[float, int]]:
    """(return, steps) of one deterministic episode per seed."""
    model, env = load_sb3(run_dir, algo)
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
