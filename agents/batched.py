"""Batched acting: one V-M-C agent steps N real episodes together in one process.

At every step V encodes the N frames in one call, C acts for the N episodes (each with
its own candidate's flat parameters, :meth:`worldmodels.controller.Controller.batched`)
and M steps the N recurrent states in one call; then each env steps. An episode that
ends frees its slot, which the next episode of the queue takes at once, so a long
episode never stalls the others. Per-episode seeds make an episode's return the same
whatever the batch (up to float error), and batch-1 play is this loop with N = 1.

Episodes with no parameters play uniform random actions from their seed's action
space (V and M are skipped when no episode of the batch has a controller).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from agents.vmc import VMCAgent
from worldmodels.memory import State


@dataclass(frozen=True)
class Episode:
    """One episode to play: env seed, the controller's flat parameters (None: uniform
    random actions), and training caps (0: off): ``max_steps`` ends it after that many
    steps, ``stall_steps`` after that many steps in a row without a positive reward."""

    seed: int
    params: np.ndarray | None = None
    max_steps: int = 0
    stall_steps: int = 0
    record: bool = False  # keep its frames (for a video)
    trace: bool = False  # keep V's latent and C's action of every step (M on real episodes)


@dataclass
class EpisodeResult:
    ret: float
    steps: int
    frames: list[np.ndarray] = field(default_factory=list)
    #: with ``Episode.trace``: z_t (z_dim,) and a_t of every step the controller acted
    latents: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)


@dataclass
class _Slot:
    index: int  # into the episodes being played
    episode: Episode
    obs: np.ndarray
    result: EpisodeResult
    stalled: int = 0


class BatchedActor:
    """Plays episodes ``batch`` at a time with one agent; envs are made on first use
    by ``make_env`` and kept for the next call."""

    def __init__(self, agent: VMCAgent, make_env: Callable[[], gym.Env], batch: int):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.agent, self.make_env, self.batch = agent, make_env, batch
        self.envs: list[gym.Env] = []
        #: wall seconds spent so far in V + M + C (one call per step for every episode)
        #: and in the envs (steps and resets), for benchmarks
        self.seconds = {"agent": 0.0, "env": 0.0}
        self._tracing = False  # does the current play() keep any episode's latents

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []

    @torch.no_grad()
    def play(self, episodes: Sequence[Episode]) -> list[EpisodeResult]:
        """Every episode to its end, results in the order given."""
        results: list[EpisodeResult | None] = [None] * len(episodes)
        queue = deque(range(len(episodes)))
        n = min(self.batch, len(episodes))
        while len(self.envs) < n:
            self.envs.append(self.make_env())
        slots: list[_Slot | None] = [None] * n
        agent = self.agent
        state = agent.memory.initial_state(n, agent.device)
        # each slot's controller parameters, set when its episode starts
        params = torch.zeros(n, agent.controller.num_parameters(), device=agent.device)
        clock = time.perf_counter
        self._tracing = any(e.trace for e in episodes)
        while queue or any(slots):
            t0 = clock()
            for i in range(n):  # free slots take the next episodes
                if slots[i] is None and queue:
                    slots[i] = slot = self._start(queue.popleft(), episodes, self.envs[i])
                    for s in state:
                        s[:, i] = 0.0
                    if slot.episode.params is not None:
                        if slot.episode.params.size != params.shape[1]:
                            raise ValueError(
                                f"episode of seed {slot.episode.seed}: "
                                f"{slot.episode.params.size} parameters, but the controller "
                                f"({type(agent.controller).__name__}) takes {params.shape[1]}")
                        params[i] = torch.as_tensor(slot.episode.params, dtype=torch.float32)
            live = [i for i in range(n) if slots[i] is not None]
            t1 = clock()
            actions = self._act([slots[i] for i in live], live, state,  # type: ignore[misc]
                                params)
            t2 = clock()
            for i, action in zip(live, actions, strict=True):
                slot = slots[i]
                assert slot is not None
                if self._step(slot, self.envs[i], action):
                    results[slot.index] = slot.result
                    slots[i] = None
            self.seconds["agent"] += t2 - t1
            self.seconds["env"] += (t1 - t0) + (clock() - t2)
        return results  # type: ignore[return-value]

    def _start(self, index: int, episodes: Sequence[Episode], env: gym.Env) -> _Slot:
        episode = episodes[index]
        obs, _ = env.reset(seed=episode.seed)
        if episode.params is None:
            env.action_space.seed(episode.seed)
        result = EpisodeResult(0.0, 0, [obs] if episode.record else [])
        return _Slot(index, episode, obs, result)

    def _act(self, slots: list[_Slot], live: list[int], state: State,
             params: torch.Tensor) -> list[np.ndarray]:
        """Actions of the live slots; C's rows also advance M's state in place."""
        agent = self.agent
        acting = [j for j, s in enumerate(slots) if s.episode.params is not None]
        out: list[np.ndarray | None] = [None] * len(slots)
        if acting:
            frames = np.stack([slots[j].obs for j in acting])
            z = agent.encode(torch.from_numpy(frames).to(agent.device))
            every_row = len(acting) == len(params)  # the usual case: no gather or scatter
            rows = None if every_row else torch.tensor([live[j] for j in acting],
                                                       device=agent.device)
            rows_state = state if rows is None else tuple(s[:, rows] for s in state)
            x = agent.memory.features(z, rows_state, agent.controller.use_cell)
            action = agent.controller.batched(params if rows is None else params[rows], x)
            _, new_state = agent.memory.step(z, action, rows_state)
            for s, new in zip(state, new_state, strict=True):
                if rows is None:
                    s.copy_(new)
                else:
                    s[:, rows] = new
            actions = action.cpu().numpy()
            for j, a in zip(acting, actions, strict=True):
                out[j] = a
            if self._tracing:
                latents = z.float().cpu().numpy()
                for row, j in enumerate(acting):
                    if slots[j].episode.trace:
                        slots[j].result.latents.append(latents[row].copy())
                        slots[j].result.actions.append(actions[row].copy())
        for j in range(len(slots)):
            if out[j] is None:
                out[j] = np.asarray(self.envs[live[j]].action_space.sample())
        return out  # type: ignore[return-value]

    @staticmethod
    def _step(slot: _Slot, env: gym.Env, action: np.ndarray) -> bool:
        """Step one env; True when its episode has ended."""
        episode, result = slot.episode, slot.result
        if isinstance(env.action_space, gym.spaces.Discrete):
            action = int(action)
        slot.obs, reward, terminated, truncated, _ = env.step(action)
        result.ret += float(reward)
        result.steps += 1
        slot.stalled = 0 if reward > 0 else slot.stalled + 1
        if episode.record:
            result.frames.append(slot.obs)
        return bool(terminated or truncated
                    or (episode.max_steps and result.steps >= episode.max_steps)
                    or (episode.stall_steps and slot.stalled >= episode.stall_steps))
