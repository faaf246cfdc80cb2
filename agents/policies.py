"""Data-collection policies: uniform random, random actions held for a few steps, brownian,
Ha's random linear controller, and the run's own trained V-M-C agent (for Ha's iterative
training).

Each policy owns its random generator so an episode is reproducible from its seed.
"""

from __future__ import annotations

from typing import Any

import cv2
import gymnasium as gym
import numpy as np

from worldmodels.config import ConfigError


class DataPolicy:
    """``act(frame) -> action`` for one episode; ``frame`` is uint8 (64, 64, 3)."""

    def __init__(self, action_space: gym.Space, rng: np.random.Generator):
        self.action_space = action_space
        self.rng = rng

    def act(self, frame: np.ndarray) -> np.ndarray | int:
        raise NotImplementedError

    def _uniform(self) -> np.ndarray | int:
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            return int(space.start + self.rng.integers(space.n))
        if isinstance(space, gym.spaces.Box):
            return self.rng.uniform(space.low, space.high).astype(np.float32)
        raise ConfigError(f"data policies support Box and Discrete actions, not {space}")


class RandomPolicy(DataPolicy):
    """Independent uniform actions every step."""

    def act(self, frame: np.ndarray) -> np.ndarray | int:
        return self._uniform()


class HeldPolicy(DataPolicy):
    """A uniform random action held for k ~ U{1, ..., ``hold_max``} steps, then another
    with a new k: Ha & Schmidhuber's Doom data policy ("more diverse random policy, works
    slightly better" than a random linear controller, with ``hold_max`` = 10). Unlike
    actions drawn anew every step, it runs into walls and stays in corners, as trained
    controllers do."""

    def __init__(self, action_space: gym.Space, rng: np.random.Generator, hold_max: int):
        if hold_max < 1:
            raise ConfigError(f"collect.hold_max must be >= 1, got {hold_max}")
        super().__init__(action_space, rng)
        self.hold_max = hold_max
        self.left = 0
        self.action: np.ndarray | int = 0

    def act(self, frame: np.ndarray) -> np.ndarray | int:
        if self.left == 0:
            self.action = self._uniform()
            self.left = int(self.rng.integers(1, self.hold_max + 1))
        self.left -= 1
        return self.action.copy() if isinstance(self.action, np.ndarray) else self.action


class BrownianPolicy(DataPolicy):
    """a_{t+1} = clip(a_t + sqrt(dt) N(0, I), low, high): smooth, exploring actions."""

    def __init__(self, action_space: gym.Space, rng: np.random.Generator, dt: float):
        if not isinstance(action_space, gym.spaces.Box):
            raise ConfigError(
                f"collect.policy=brownian needs a Box action space, not {action_space}; "
                "use random or linear"
            )
        super().__init__(action_space, rng)
        self.dt = dt
        self.action = np.asarray(self._uniform(), dtype=np.float32)

    def act(self, frame: np.ndarray) -> np.ndarray:
        space = self.action_space
        step = np.sqrt(self.dt) * self.rng.standard_normal(space.shape)
        self.action = np.clip(self.action + step, space.low, space.high).astype(np.float32)
        return self.action.copy()


class LinearPolicy(DataPolicy):
    """Ha's randomly initialised linear controller, acting on a fixed view of the frame.

    Before V and M exist there is no [z, h]; the controller sees the frame as an 8x8
    greyscale picture standardised to zero mean and unit variance (64 features). Its
    weights are N(0, s^2) with s ~ U(0, std) drawn per episode, so episodes range from
    near-constant to jittery behaviour. Box actions are squashed with tanh into bounds,
    Discrete actions take the argmax.
    """

    def __init__(self, action_space: gym.Space, rng: np.random.Generator, std: float):
        super().__init__(action_space, rng)
        if isinstance(action_space, gym.spaces.Discrete):
            out = int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box):
            out = int(np.prod(action_space.shape))
        else:
            raise ConfigError(f"data policies support Box and Discrete actions, not {action_space}")
        scale = rng.uniform(0.0, std)
        self.weight = rng.normal(0.0, scale, size=(out, 64)).astype(np.float32)
        self.bias = rng.normal(0.0, scale, size=out).astype(np.float32)

    def act(self, frame: np.ndarray) -> np.ndarray | int:
        grey = cv2.resize(frame.mean(axis=-1).astype(np.float32), (8, 8),
                          interpolation=cv2.INTER_AREA).ravel()
        features = (grey - grey.mean()) / (grey.std() + 1e-6)
        logits = self.weight @ features + self.bias
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            return int(space.start + np.argmax(logits))
        unit = (np.tanh(logits).reshape(space.shape) + 1.0) / 2.0
        return (space.low + unit * (space.high - space.low)).astype(np.float32)


class ControllerPolicy(DataPolicy):
    """The run's trained V-M-C agent, with a uniform random action instead at each step
    with probability ``epsilon`` (so that the data also shows what the agent avoids).

    Ha & Schmidhuber's iterative training collects such episodes, so that M learns
    about the states the controller reaches, including those its dream got wrong.
    """

    def __init__(self, action_space: gym.Space, rng: np.random.Generator, agent: Any,
                 epsilon: float):
        super().__init__(action_space, rng)
        self.agent, self.epsilon = agent, epsilon
        agent.reset(1)

    def act(self, frame: np.ndarray) -> np.ndarray | int:
        def explore(chosen: np.ndarray) -> np.ndarray:  # (1, ...) -> what the env gets
            if self.rng.random() < self.epsilon:
                return np.asarray(self._uniform())[None]
            return chosen

        # M reads the action played, random or not, so C's next choice sees what happened
        action = self.agent.act(frame[None], explore)[0]
        if isinstance(self.action_space, gym.spaces.Discrete):
            return int(action)
        return np.asarray(action, dtype=np.float32)


def make_policy(
    name: str, action_space: gym.Space, rng: np.random.Generator,
    brownian_dt: float = 0.02, linear_std: float = 0.5, agent: Any = None,
    epsilon: float = 0.0, hold_max: int = 10,
) -> DataPolicy:
    """``agent``: a :class:`agents.vmc.VMCAgent` for the ``controller`` policy."""
    if name == "random":
        return RandomPolicy(action_space, rng)
    if name == "held":
        return HeldPolicy(action_space, rng, hold_max)
    if name == "brownian":
        return BrownianPolicy(action_space, rng, brownian_dt)
    if name == "linear":
        return LinearPolicy(action_space, rng, linear_std)
    if name == "controller":
        if agent is None:
            raise ConfigError("collect.policy=controller needs the run's trained agent")
        return ControllerPolicy(action_space, rng, agent, epsilon)
    raise ConfigError(f"collect.policy: unknown data policy '{name}' "
                      "(random, held, brownian, linear, controller)")
