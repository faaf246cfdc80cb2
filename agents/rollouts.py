"""Real-env rollouts of a V-M-C agent, for CMA-ES fitness and for evaluation.

A worker process loads V, M and the env once (from the run directory) and then plays
any number of candidate controllers; tasks carry only the run's directory, the flat
parameters and a seed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agents.vmc import VMCAgent
from envs.factory import make_env_from_config
from worldmodels.run_dir import RunDir


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
    overrides: tuple[str, ...] = ()  # env.* / dream.* for the trained run (RunDir.load_config)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


class RolloutWorker:
    """V, M, the env and a controller template of a trained run, made once per process."""

    def __init__(self, run: RunDir, device: str = "cpu", overrides: tuple[str, ...] = ()):
        self.cfg = run.load_config(overrides)
        self.env = make_env_from_config(self.cfg.env)
        self.agent = VMCAgent.from_run(run, self.cfg, self.env.action_space, device=device)
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
    """Worker entry point: (return, steps) of one episode of one candidate.

    One torch thread: one frame per step, so intra-op threads only contend (measured on
    2 cores with the other core busy: 1.3 ms per V+M+C step with 1 thread, 106 ms with
    2). The caller's thread count is restored, for the serial engine's sake.
    """
    with torch_threads(1):
        key = (task.run_dir, task.overrides)
        if key not in _WORKERS:
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
            _WORKERS[key] = RolloutWorker(RunDir(task.run_dir), overrides=task.overrides)
        worker = _WORKERS[key]
        if task.params is None:
            return worker.play_random(task.seed, task.max_steps)
        return worker.play(np.asarray(task.params, np.float32), task.seed, task.max_steps,
                           stall_steps=task.stall_steps)


def describe_returns(returns: np.ndarray) -> dict[str, Any]:
    return {"mean": float(np.mean(returns)), "std": float(np.std(returns)),
            "min": float(np.min(returns)), "max": float(np.max(returns)),
            "episodes": int(len(returns))}
