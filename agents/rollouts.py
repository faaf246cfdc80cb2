"""Real-env rollouts of a V-M-C agent, for CMA-ES fitness and for evaluation.

A worker process loads V, M and the env once (from the run directory, or the
:class:`worldmodels.run_dir.RunView` the task carries) and then plays
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

from agents.batched import BatchedActor, Episode, EpisodeResult
from agents.vmc import VMCAgent
from envs.factory import make_env_from_config
from worldmodels.config import ExperimentConfig, to_dict
from worldmodels.controller_vote import VoteController
from worldmodels.run_dir import RunDir, as_run, file_stamp


@dataclass(frozen=True)
class RolloutTask:
    """Episodes one worker plays together (:class:`agents.batched.BatchedActor`, ``batch``
    at a time), each tagged (candidate, column) for the caller."""

    run_dir: str | RunDir  # a run's directory, or a RunView (its paths travel whole)
    episodes: tuple[Episode, ...]
    tags: tuple[tuple[int, int], ...]
    batch: int = 1
    overrides: tuple[str, ...] = ()  # env.* / dream.* for the trained run (RunDir.load_config)
    vote: int = 0  # > 0: each episode's weights are that many members' (VoteController)


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
    """V, M, the envs and a controller template of a trained run, made once per process;
    plays episodes ``batch`` at a time."""

    def __init__(self, run: RunDir, device: str = "cpu", overrides: tuple[str, ...] = (),
                 batch: int = 1, controller: torch.nn.Module | None = None, vote: int = 0):
        """``controller``: what acts on M's features (e.g. an SB3 policy,
        :class:`agents.sb3.SB3Controller`); default: an untrained C of the run's kind,
        whose parameters each episode sets, or with ``vote`` > 0 a
        :class:`~worldmodels.controller_vote.VoteController` of that many such Cs."""
        self.cfg = run.load_config(overrides)
        self.env = make_env_from_config(self.cfg.env)
        if controller is None and not vote:
            self.agent = VMCAgent.from_run(run, self.cfg, self.env.action_space, device=device)
        else:
            memory = run.load_memory(device)
            if vote:
                if controller is not None:
                    raise ValueError("a vote is of the run's own controllers, not of another")
                controller = VoteController(
                    run.new_controller(self.cfg, self.env.action_space, memory), vote)
            self.agent = VMCAgent(run.load_vae(self.cfg.vae.z_dim, device), memory,
                                  controller,  # type: ignore[arg-type]
                                  device, self.cfg.controller.agent_precision)
        self.controller = self.agent.controller
        self.actor = BatchedActor(self.agent, lambda: make_env_from_config(self.cfg.env),
                                  batch)
        self.actor.envs.append(self.env)  # the first slot plays in the env made above

    def play(self, episodes: list[Episode]) -> list[EpisodeResult]:
        return self.actor.play(episodes)

    def close(self) -> None:
        """Close every env it opened (a ViZDoom env is a game process)."""
        self.actor.close()

    def play_one(self, params: np.ndarray | None, seed: int, max_steps: int = 0,
                 stall_steps: int = 0, record: bool = False) -> EpisodeResult:
        """One episode: the batch-1 case of :meth:`play`."""
        episode = Episode(seed, None if params is None else np.asarray(params, np.float32),
                          max_steps, stall_steps, record)
        return BatchedActor(self.agent, lambda: self.env, 1).play([episode])[0]


_WORKERS: dict[tuple[Any, ...], RolloutWorker] = {}


def play_task(task: RolloutTask) -> list[tuple[float, int]]:
    """Worker entry point: (return, steps) of each episode of the task, in its order.

    One torch thread: the batches are small, so intra-op threads only contend (measured
    on 2 cores with the other core busy: 1.3 ms per V+M+C step at batch 1 with 1 thread,
    106 ms with 2). The caller's thread count is restored, for the serial engine's sake.
    """
    with torch_threads(1):
        # the weights' and the config's stamps: a later round of iterative training
        # replaces M, a later command may change env.*, and this process (the serial
        # engine) may have loaded the earlier ones
        run = as_run(task.run_dir)
        key = (task.run_dir, task.overrides, task.batch, task.vote,
               run.models_stamp() + file_stamp(run.config_file))
        if key not in _WORKERS:
            for old in [k for k in _WORKERS if k[:4] == key[:4]]:  # weights since replaced
                del _WORKERS[old]
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
            _WORKERS[key] = RolloutWorker(run, overrides=task.overrides,
                                          batch=task.batch, vote=task.vote)
        return [(r.ret, r.steps) for r in _WORKERS[key].play(list(task.episodes))]


def describe_returns(returns: np.ndarray) -> dict[str, Any]:
    return {"mean": float(np.mean(returns)), "std": float(np.std(returns)),
            "min": float(np.min(returns)), "max": float(np.max(returns)),
            "episodes": int(len(returns))}


def play_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """The ``env.*`` settings (all but ``fast_render``, whose frames are Gymnasium's) and
    ``controller.agent_precision`` a real episode is played with."""
    env = {k: v for k, v in to_dict(cfg)["env"].items() if k != "fast_render"}
    return {"env": env, "agent_precision": cfg.controller.agent_precision}
