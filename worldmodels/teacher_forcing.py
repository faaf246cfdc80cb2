"""M on a real episode: what it predicts when fed the real latents and actions.

A dream feeds M its own samples; here M reads the real z_t and a_t of an episode
(teacher forcing), so its errors are measured one step at a time, before they compound:

* ``nll`` (T-1,): -log p(z_{t+1} | h_{t+1}) per latent dimension, in nats, where h_{t+1} =
  LSTM(z_t, a_t, h_t) is the state a dream step predicts from;
* ``p_done`` (T,): M's calibrated P(done) after each step (the real episode's terminal
  step, when it died, is the last), or None when M has no done head.

:func:`dream_rule_length` reads off how long the dream's end rule would let the real
episode live, and :func:`dream_rule_early` the chance that it ends it too soon: a
controller that M's done head kills early on its real trajectories is one the dream
scores below its real worth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from worldmodels.memory import Memory, State, done_probability


@dataclass(frozen=True)
class ForcedEpisode:
    nll: np.ndarray  # (T-1,) nats per latent dimension
    p_done: np.ndarray | None  # (T,) calibrated P(done) after each step


@torch.no_grad()
def teacher_forced(memory: Memory, latents: np.ndarray, actions: np.ndarray,
                   done_pos_weight: float = 1.0) -> ForcedEpisode:
    """M over one real episode: latents (T, d) float, actions (T, A) float or (T,) int
    (Discrete) -> per-step NLL and P(done). ``done_pos_weight``: the weight M's done head
    was trained with (its checkpoint's meta), undone to calibrate P(done)."""
    if memory.training:  # type: ignore[attr-defined]
        raise ValueError("teacher forcing is for a trained M: call memory.eval() first")
    device = next(memory.parameters()).device  # type: ignore[attr-defined]
    z = torch.as_tensor(np.asarray(latents, np.float32), device=device)
    if z.ndim != 2 or len(z) < 1 or len(actions) != len(z):
        raise ValueError(f"latents (T, d) and actions (T, ...) of one episode, got "
                         f"{tuple(z.shape)} and {np.shape(actions)}")
    a = torch.as_tensor(np.asarray(actions), device=device)
    if not torch.is_floating_point(a):
        a = a.long()
    h, _ = memory(z[None], a[None])  # (1, T, hidden): h_{t+1} after (z_t, a_t)
    h = h[0]
    nll = -memory.log_prob(z[1:], h[:-1]) / z.shape[1]
    logit = memory.done_logit(h)
    p_done = None if logit is None else done_probability(logit, done_pos_weight).cpu().numpy()
    return ForcedEpisode(nll.cpu().numpy().astype(np.float64), p_done)


def dream_rule_length(p_done: np.ndarray, mode: str, threshold: float) -> float:
    """Steps the dream's end rule gives an episode of these per-step P(done) (T,), capped
    at T: with ``threshold``, up to and including the first step above it; with
    ``sample``, the expected length E[min(L, T)], sum over t of P(alive before step t) (a
    dream always plays its first step)."""
    p = np.asarray(p_done, np.float64)
    if mode == "threshold":
        above = np.flatnonzero(p > threshold)
        return float(above[0] + 1) if len(above) else float(len(p))
    if mode == "sample":
        alive = np.concatenate([[1.0], np.cumprod(1.0 - p)[:-1]])
        return float(alive.sum())
    raise ValueError(f"mode must be threshold or sample, not {mode!r}")


def dream_rule_early(p_done: np.ndarray, mode: str, threshold: float) -> float:
    """The chance that the dream's end rule ends an episode of these per-step P(done)
    (T,) before its last step: 0 or 1 with ``threshold``, 1 - prod over t < T-1 of
    (1 - p_t) with ``sample``."""
    p = np.asarray(p_done, np.float64)
    if mode == "threshold":
        return float(bool(np.any(p[:-1] > threshold)))
    if mode == "sample":
        return float(1.0 - np.prod(1.0 - p[:-1]))
    raise ValueError(f"mode must be threshold or sample, not {mode!r}")


@torch.no_grad()
def branch_points(memory: Memory, episodes: list[tuple[np.ndarray, np.ndarray]], every: int,
                  ) -> tuple[torch.Tensor, State]:
    """Where dreams can branch from real episodes: at every ``every``-th step t > 0 of
    each episode (latents (T, d), actions (T, ...)), its real z_t and M's state after
    reading the real (z_0, a_0) ... (z_{t-1}, a_{t-1}). Returns z (N, d) and M's state
    with N rows (each tensor (layers, N, hidden)), in episode then step order."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    device = next(memory.parameters()).device
    zs: list[torch.Tensor] = []
    states: list[State] = []
    for latents, actions in episodes:
        z = torch.as_tensor(np.asarray(latents, np.float32), device=device)
        a = torch.as_tensor(np.asarray(actions), device=device)
        if not torch.is_floating_point(a):
            a = a.long()
        state = memory.initial_state(1, device)
        for t in range(len(z)):
            if t and t % every == 0:
                zs.append(z[t])
                states.append(state)
            _, state = memory.step(z[t:t + 1], a[t:t + 1], state)
    if not zs:
        raise ValueError(f"no episode is longer than every={every} steps")
    return torch.stack(zs), tuple(torch.cat(parts, dim=1) for parts in zip(*states, strict=True))
