"""Real-env rollouts of a V-M-C agent, for CMA-ES fitness and for evaluation.

A worker process loads V, M and the env once (from the run directory) and then plays
any number of candidate controllers; tasks carry only the flat parameters and a seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.vmc import VMCAgent
from envs.factory import make_env_from_config
from worldmodels.checkpoint import load_weights
from worldmodels.config import ConfigError, ExperimentConfig, load_config
from worldmodels.controller import Controller
from worldmodels.frmdn_training import load_memory
from worldmodels.vae_training import load_vae


@dataclass(frozen=True)
class RolloutTask:
    """One episode of candidate ``candidate`` with env seed ``seed``; ``params`` None plays
    uniform random actions instead of a controller."""

    run_dir: str
    candidate: int
    params: tuple[float, ...] | None
    seed: int
    max_steps: int = 0
    stall_steps: int = 0
    column: int = 0  # which of the candidate's episodes this is
    env_overrides: tuple[str, ...] = ()  # "env.key=value" applied to the run's config


def load_run_config(run_dir: Path, env_overrides: tuple[str, ...] = (),
                    sections: tuple[str, ...] = ("env",)) -> ExperimentConfig:
    """The resolved config saved at the root of a run directory (checked like any other),
    with ``env_overrides`` (``env.<key>=<value>``: play the agent in another variant of
    its env, e.g. ``env.direct_render=false``) applied. ``sections`` names the config
    sections such overrides may change (a diagnostic may allow ``dream``, say); the
    trained stages' own sections are fixed by their outputs."""
    for item in env_overrides:
        if item.split(".", 1)[0] not in sections or "." not in item.split("=", 1)[0]:
            allowed = ", ".join(f"{s}.*" for s in sections)
            raise ConfigError(f"only {allowed} keys can be changed for a trained run, "
                             f"not '{item}'")
    return load_config(str(Path(run_dir) / "config.yaml"), [], list(env_overrides))


def build_controller(cfg: ExperimentConfig, action_space: gym.Space, h_dim: int) -> Controller:
    c = cfg.controller
    if isinstance(action_space, gym.spaces.Discrete):
        n = int(action_space.n)
        order = None
        if c.discrete_head == "ordinal":
            order = list(c.action_order) or list(range(n))
            if sorted(order) != list(range(n)):
                raise ConfigError(f"config key 'controller.action_order' must list each of "
                                  f"the {n} actions 0..{n - 1} once, got {order}")
        return Controller(z_dim=cfg.vae.z_dim, h_dim=h_dim, action_dim=n, discrete=True,
                          hidden=c.hidden, use_cell=c.use_cell, order=order)
    if isinstance(action_space, gym.spaces.Box):
        if not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
            raise ValueError(f"the controller squashes actions into bounds; {action_space} "
                             "is unbounded")
        return Controller(z_dim=cfg.vae.z_dim, h_dim=h_dim,
                          action_dim=int(np.prod(action_space.shape)),
                          low=action_space.low.tolist(), high=action_space.high.tolist(),
                          hidden=c.hidden, use_cell=c.use_cell, order=None)
    raise ValueError(f"controllers support Box and Discrete actions, not {action_space}")


def load_agent(run_dir: Path, action_space: gym.Space, weights: str = "", device: str = "cpu",
               cfg: ExperimentConfig | None = None) -> VMCAgent:
    """The run's V and M with a controller for ``action_space``: the run's trained
    ``controller/<weights>.safetensors`` (``best`` or ``mean``), or untrained for ''."""
    cfg = cfg if cfg is not None else load_run_config(run_dir)
    vae = load_vae(run_dir, cfg.vae.z_dim, device)
    memory = load_memory(Path(run_dir) / "memory", device)
    controller = build_controller(cfg, action_space, memory.lstm.hidden_size)
    if weights:
        from agents.cmaes import controller_paths  # (agents.cmaes imports this module)

        load_weights(controller_paths(run_dir)[weights], controller)
    return VMCAgent(vae, memory, controller, device)


class RolloutWorker:
    """V, M, the env and a controller template, made once per process."""

    def __init__(self, run_dir: Path, device: str = "cpu", env_overrides: tuple[str, ...] = ()):
        # one frame per step: intra-op threads only contend (measured on 2 cores with the
        # other core busy: 1.3 ms per V+M+C step with 1 thread, 106 ms with 2)
        torch.set_num_threads(1)
        self.cfg = load_run_config(run_dir, env_overrides)
        self.env = make_env_from_config(self.cfg.env)
        self.agent = load_agent(run_dir, self.env.action_space, device=device, cfg=self.cfg)
        self.controller = self.agent.controller

    def play_random(self, seed: int, max_steps: int = 0) -> tuple[float, int]:
        """One episode of uniform random actions; returns (return, steps)."""
        self.env.action_space.seed(seed)
        self.env.reset(seed=seed)
        total, steps = 0.0, 0
        while True:
            _, reward, terminated, truncated, _ = self.env.step(self.env.action_space.sample())
            total += float(reward)
            steps += 1
            if terminated or truncated or (max_steps and steps >= max_steps):
                return total, steps

    def play(self, params: np.ndarray | None, seed: int, max_steps: int = 0,
             frames: list | None = None, stall_steps: int = 0) -> tuple[float, int]:
        """One episode; returns (return, steps). ``frames`` collects the real frames.

        ``stall_steps`` > 0 ends the episode after that many steps in a row without a
        positive reward (a CarRacing car off the track), to save training time.
        """
        if params is not None:
            self.controller.set_flat(torch.as_tensor(np.asarray(params), dtype=torch.float32))
        obs, _ = self.env.reset(seed=seed)
        self.agent.reset(1)
        total, steps, stalled = 0.0, 0, 0
        while True:
            if frames is not None:
                frames.append(obs)
            action = self.agent.act(obs[None])[0]
            obs, reward, terminated, truncated, _ = self.env.step(action)
            total += float(reward)
            steps += 1
            stalled = 0 if reward > 0 else stalled + 1
            if terminated or truncated or (max_steps and steps >= max_steps) \
                    or (stall_steps and stalled >= stall_steps):
                return total, steps


_WORKERS: dict[tuple[str, tuple[str, ...]], RolloutWorker] = {}


def play_task(task: RolloutTask) -> tuple[float, int]:
    """Worker entry point: (return, steps) of one episode of one candidate."""
    key = (task.run_dir, task.env_overrides)
    if key not in _WORKERS:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        _WORKERS[key] = RolloutWorker(Path(task.run_dir), env_overrides=task.env_overrides)
    worker = _WORKERS[key]
    if task.params is None:
        return worker.play_random(task.seed, task.max_steps)
    return worker.play(np.asarray(task.params, np.float32), task.seed, task.max_steps,
                       stall_steps=task.stall_steps)


def describe_returns(returns: np.ndarray) -> dict[str, Any]:
    return {"mean": float(np.mean(returns)), "std": float(np.std(returns)),
            "min": float(np.min(returns)), "max": float(np.max(returns)),
            "episodes": int(len(returns))}
