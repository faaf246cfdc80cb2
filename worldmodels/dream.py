"""Dreams: M stepped as an environment, B dreams at once in torch.

A dream starts where real episodes start: z_0 ~ N(mu, sigma) of the first frame of a
real episode (the distribution M was trained on), and M's initial state. At step t, with
the controller's action a_t = C(features(z_t, state_t))::

    h_{t+1}, state_{t+1} = M.step(z_t, a_t, state_t)     (an LSTM: h and c)
    z_{t+1} ~ p(. | h_{t+1}) at temperature tau          (M.sample)
    r_t     = M's reward head at h_{t+1}
    done_t  ~ Bernoulli(P(done | h_{t+1}))               (or P(done) > threshold)

which is the order the real agent sees (``agents.vmc.VMCAgent``): C reads [z_t, h_t],
M then reads (z_t, a_t). M is any :class:`worldmodels.memory.Memory`. Dreams that end
are dropped from the batch (``keep``), so a batch costs what its live dreams cost.

Common random numbers: dreams given the same noise row (``reset(noise_rows=...)``) draw
the same start noise, mixture choices, Gaussian noise and done draws at every step, so
CMA-ES candidates are compared on the same luck (identical candidates score the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from worldmodels.config import ConfigError
from worldmodels.controller import FlatPolicy
from worldmodels.memory import Memory, State, done_probability, keep_rows, zero_rows
from worldmodels.shards import ShardError, read_npz


@dataclass
class DreamStep:
    """One step of B dreams: z (B, d) float, reward (B,) float, done and truncated (B,) bool."""

    z: Tensor
    reward: Tensor
    done: Tensor
    truncated: Tensor


def start_latents(paths: list[Path]) -> tuple[Tensor, Tensor]:
    """(mu, logvar), float32 (N, d) each: the first frame of each latent shard."""
    if not paths:
        raise ShardError("dream: no latent shards to start dreams from (run encode.py)")
    mus, logvars = [], []
    for path in paths:
        data = read_npz(path, ("mu", "logvar"))
        mu, logvar = data["mu"][0], data["logvar"][0]
        if not (np.isfinite(mu).all() and np.isfinite(logvar).all()):
            # (a NaN start makes every dream from it, and its fitness, NaN)
            raise ShardError(f"{path}: its first latent, where dreams start, has NaN/Inf "
                             "in mu or logvar (encode the run again, or move the shard aside)")
        mus.append(mu)
        logvars.append(logvar)
    return torch.from_numpy(np.stack(mus)), torch.from_numpy(np.stack(logvars))


def read_start_latents(path: Path, z_dim: int) -> tuple[Tensor, Tensor]:
    """(mu, logvar), float32 (N, z_dim) each, from a shipped agent's ``dream_starts.npz``;
    a :class:`ShardError` naming the file unless both are finite floats of that shape
    with N >= 1."""
    data = read_npz(path, ("mu", "logvar"))
    for key, value in data.items():
        if value.dtype.kind != "f" or value.ndim != 2 or value.shape[1:] != (z_dim,) \
                or len(value) == 0:
            raise ShardError(f"{path}: '{key}' is {value.dtype} {value.shape}, expected "
                             f"floats (N, {z_dim}) with N >= 1 (the first latents of M's "
                             "training episodes)")
        if not np.isfinite(value).all():
            raise ShardError(f"{path}: '{key}' holds NaN or infinite values")
    if data["mu"].shape != data["logvar"].shape:
        raise ShardError(f"{path}: 'mu' {data['mu'].shape} and 'logvar' "
                         f"{data['logvar'].shape} differ in shape")
    return torch.from_numpy(data["mu"].astype(np.float32)), \
        torch.from_numpy(data["logvar"].astype(np.float32))


class Dream:
    """B dreams of one M, stepped together.

    ``mu0``, ``logvar0`` (N, d): start latents. ``done_mode``: ``sample`` (Bernoulli of the
    calibrated P(done)) or ``threshold``. ``done_pos_weight``: the weight M's done head
    was trained with (its logit is shifted by log of it). ``max_steps`` > 0 truncates.
    """

    def __init__(self, memory: Memory, mu0: Tensor, logvar0: Tensor, temperature: float = 1.0,
                 done_mode: str = "sample", done_threshold: float = 0.5,
                 done_pos_weight: float = 1.0, max_steps: int = 0,
                 generator: torch.Generator | None = None):
        if not memory.predicts_reward:
            raise ConfigError("config key 'memory.reward_head': dreams need M's reward head "
                              "(train M with memory.reward_head=true)")
        if done_mode not in ("sample", "threshold"):
            raise ValueError(f"done_mode must be sample or threshold, not '{done_mode}'")
        if not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        self.memory = memory.eval()
        self.mu0, self.logvar0 = mu0.float(), logvar0.float()
        self.temperature, self.done_mode = temperature, done_mode
        self.done_threshold, self.done_pos_weight = done_threshold, done_pos_weight
        self.max_steps = max_steps
        self.generator = generator or torch.Generator().manual_seed(0)
        self.state: State | None = None
        self.steps = torch.zeros(0, dtype=torch.long)
        self.rows: Tensor | None = None  # noise row of each live dream (None: its own)
        self._n_rows = 0

    def features(self, z: Tensor, use_cell: bool = False) -> Tensor:
        """What C reads now: z (B, d) -> M's features (B, F), [z, h] ([z, c, h] with
        ``use_cell``)."""
        assert self.state is not None, "reset first"
        return self.memory.features(z, self.state, use_cell)

    def reset(self, batch: int, starts: Tensor | None = None, z0: Tensor | None = None,
              noise_rows: Tensor | None = None, state: State | None = None) -> Tensor:
        """Start ``batch`` dreams; ``starts`` (B,) picks start latents (default: random),
        or ``z0`` (B, d) gives them (a real frame's encoding, say). ``noise_rows`` (B,)
        int: dreams with equal rows share their noise. ``state``: M's state to start
        from, each tensor (layers, B, hidden) (default: M's initial state; with a real
        episode's state at step t and its z_t as ``z0``, a dream branches from step t of
        that episode). Returns z_0 (B, d).
        """
        if state is not None and any(s.shape[1] != batch for s in state):
            raise ValueError(f"a start state for {batch} dreams, got shapes "
                             f"{[tuple(s.shape) for s in state]}")
        self.state = self.memory.initial_state(batch) if state is None else \
            tuple(s.clone() for s in state)
        self.steps = torch.zeros(batch, dtype=torch.long)
        self.rows = None if noise_rows is None else torch.as_tensor(noise_rows, dtype=torch.long)
        self._n_rows = 0 if self.rows is None else int(self.rows.max()) + 1
        if z0 is not None:
            return z0.float().expand(batch, -1).clone()
        return self._start_latents(batch, starts)

    def _start_latents(self, batch: int, starts: Tensor | None = None) -> Tensor:
        """z_0 ~ N(mu, sigma) of the start latents ``starts`` (B,) (default: random)."""
        if starts is None:
            starts = torch.randint(len(self.mu0), (batch,), generator=self.generator)
        starts = torch.as_tensor(starts, dtype=torch.long) % len(self.mu0)
        mu, logvar = self.mu0[starts], self.logvar0[starts]
        return mu + torch.exp(0.5 * logvar) * self._normal(mu.shape)

    def restart(self, mask: Tensor, z: Tensor) -> Tensor:
        """Start the dreams where ``mask`` (B,) is True anew, from random start latents
        and M's zero state, and keep the others as they are (a vector env's auto-reset):
        z (B, d) -> z with those rows replaced. For dreams with their own noise."""
        if self.rows is not None:
            raise ValueError("restart is for dreams with their own noise (no noise_rows)")
        assert self.state is not None, "reset first"
        n = int(mask.sum())
        if n == 0:
            return z
        self.state = zero_rows(self.state, mask)
        self.steps = torch.where(mask, torch.zeros_like(self.steps), self.steps)
        z = z.clone()
        z[mask] = self._start_latents(n)
        return z

    def _normal(self, shape: torch.Size) -> Tensor:
        """Standard normal (B, ...) noise, shared by dreams of one noise row."""
        if self.rows is None:
            return torch.randn(shape, generator=self.generator)
        return torch.randn((self._n_rows, *shape[1:]), generator=self.generator)[self.rows]

    def _uniform(self, batch: int, *shape: int) -> Tensor:
        """Uniform (B, *shape) noise, shared by dreams of one noise row."""
        if self.rows is None:
            return torch.rand((batch, *shape), generator=self.generator)
        return torch.rand((self._n_rows, *shape), generator=self.generator)[self.rows]

    @torch.no_grad()
    def step(self, z: Tensor, action: Tensor) -> DreamStep:
        """z (B, d), action (B, A) float or (B,) int -> the next step of every dream."""
        h, self.state = self.memory.step(z, action, self.state)
        # one component uniform a dream, or one a dimension (a per-dimension mixture)
        shape = getattr(self.memory, "component_noise_shape", ())
        noise = (self._uniform(len(h), *shape), self._normal(z.shape))
        predict = getattr(self.memory, "predict", None)  # MemoryModel's: one pass
        if predict is not None:
            z_next, reward, logit = predict(h, self.temperature, noise=noise)
        else:
            z_next = self.memory.sample(h, self.temperature, noise=noise)
            reward, logit = self.memory.reward(h), self.memory.done_logit(h)
        assert reward is not None
        self.steps = self.steps + 1
        if logit is None:
            done = torch.zeros(len(h), dtype=torch.bool)
        elif self.done_mode == "sample":
            p = done_probability(logit, self.done_pos_weight)
            done = self._uniform(len(h)) < p
        else:
            done = done_probability(logit, self.done_pos_weight) > self.done_threshold
        truncated = ~done & (self.steps >= self.max_steps) if self.max_steps \
            else torch.zeros_like(done)
        return DreamStep(z_next, reward, done, truncated)

    def keep(self, mask: Tensor) -> None:
        """Keep only the dreams where ``mask`` (B,) is True (ended ones are dropped)."""
        assert self.state is not None
        self.state = keep_rows(self.state, mask)
        self.steps = self.steps[mask]
        if self.rows is not None:
            self.rows = self.rows[mask]


@torch.no_grad()
def dream_returns(dream: Dream, controller: FlatPolicy, params: Tensor, starts: Tensor,
                  branches: tuple[Tensor, State] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate from every start: params (P, n), starts (R,) -> returns and steps,
    (P, R) each. All P x R dreams run as one batch until each ends (``dream.max_steps``
    must be > 0 or M must end them). ``branches``: (z (R, d), M's state with R rows)
    to start rollout j from instead of start latent ``starts[j]`` and M's initial state
    (dreams branched from real episodes, :func:`worldmodels.teacher_forcing.branch_points`)."""
    if not dream.max_steps and not dream.memory.predicts_done:
        raise ValueError("these dreams never end: M has no done head and max_steps is 0")
    P, R = len(params), len(starts)
    candidate = torch.arange(P).repeat_interleave(R)
    p = params.float()[candidate]
    # rollout j of every candidate shares start and noise: common random numbers
    if branches is None:
        z = dream.reset(P * R, torch.as_tensor(starts).repeat(P),
                        noise_rows=torch.arange(R).repeat(P))
    else:
        z0, state0 = branches
        if len(z0) != R:
            raise ValueError(f"{len(z0)} branch points for {R} rollouts")
        z = dream.reset(P * R, z0=z0.repeat(P, 1), noise_rows=torch.arange(R).repeat(P),
                        state=tuple(s.repeat(1, P, 1) for s in state0))
    alive = torch.arange(P * R)
    returns = torch.zeros(P * R, dtype=torch.float64)
    steps = torch.zeros(P * R, dtype=torch.long)
    use_cell = controller.use_cell
    grouped = params.float()  # while every dream lives: candidate c's R rollouts together
    while len(alive):
        x = dream.features(z, use_cell)
        if len(alive) == P * R:
            action = controller.batched(grouped, x.view(P, R, -1)).flatten(0, 1)
        else:
            action = controller.batched(p, x)
        out = dream.step(z, action)
        if len(alive) == P * R:
            returns += out.reward.double()
            steps += 1
        else:
            returns[alive] += out.reward.double()
            steps[alive] += 1
        live = ~(out.done | out.truncated)
        z = out.z
        if not bool(live.all()):
            alive, p, z = alive[live], p[live], z[live]
            dream.keep(live)
    return returns.view(P, R).numpy(), steps.view(P, R).numpy()


def start_indices(seeds: list[int], n: int) -> Tensor:
    """Start latent of each rollout seed: the same starts for every candidate."""
    return torch.tensor([s % n for s in seeds], dtype=torch.long)


def dream_seed(seeds: list[int]) -> int:
    """One generator seed from a generation's rollout seeds (common random numbers)."""
    return int(np.random.default_rng(list(seeds)).integers(2**62)) if seeds else 0
