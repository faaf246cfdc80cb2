"""Does the dream get the actions' effects right? Mean episode length under each held
action and under uniform random actions, in M's dream and in the real env, and a gate
that stops before CMA-ES trains in a dream that overrates holding an action.

CMA-ES finds such a hole: in VizdoomTakeCover-v1, a dream where holding one action
survived 2.7x longer than in the real game gave controllers that scored 580-600 in the
dream and 320-400 in reality (docs/results.md, issue 5). For Discrete action spaces.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.dream_env import ensemble_settings, load_dream, without_ensemble
from envs.factory import make_env_from_config
from worldmodels.checkpoint import file_digest, read_json, write_json_atomic
from worldmodels.config import ConfigError, ExperimentConfig
from worldmodels.dream import Dream, start_latents
from worldmodels.errors import InputError
from worldmodels.frmdn_training import EpochCheck, MemoryReport, latent_split, train_memory
from worldmodels.run_dir import RunDir


@dataclass
class HeldActionRow:
    """One policy's episode lengths: ``action`` held every step (None: uniform random)."""

    action: int | None
    real_mean: float
    real_std: float
    dream_mean: float
    dream_std: float

    @property
    def policy(self) -> str:
        return "uniform random" if self.action is None else f"always action {self.action}"

    @property
    def ratio(self) -> float:
        """Dream length / real length: > 1 where the dream is kinder than reality."""
        return self.dream_mean / max(self.real_mean, 1e-9)


@torch.no_grad()
def dream_lengths(dream: Dream, n_actions: int, action: int | None, dreams: int = 256,
                  seed: int = 0) -> np.ndarray:
    """Steps until each of ``dreams`` dreams ends, (dreams,), holding ``action`` (None:
    uniform random actions). The dream's own generator is reseeded with ``seed``."""
    dream.generator.manual_seed(seed)
    z = dream.reset(dreams)
    alive, steps = torch.arange(dreams), torch.zeros(dreams)
    # its own stream: seeded like the dream's generator, its first draws would repeat the
    # start latents' (randint over N starts and over n actions, N a multiple of n)
    pick = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
    while len(alive):
        a = (torch.randint(n_actions, (len(alive),), generator=pick) if action is None
             else torch.full((len(alive),), action))
        out = dream.step(z, a)
        steps[alive] += 1
        live = ~(out.done | out.truncated)
        z, alive = out.z[live], alive[live]
        dream.keep(live)
    return steps.numpy()


def discrete_actions(env: gym.Env) -> int:
    """The number of actions of ``env``; an InputError unless its actions are Discrete (the
    held-action checks hold each action in turn)."""
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise InputError(f"the held-action check needs a Discrete action space, "
                         f"not {env.action_space}")
    return int(env.action_space.n)


def held_action_episodes(env: gym.Env, action: int | None, episodes: int = 30,
                         seed: int = 0, frames: bool = False,
                         ) -> Iterator[tuple[list[np.ndarray], list[int]]]:
    """Real episodes (seeds seed, seed+1, ...) holding ``action`` (None: uniform random
    actions from one generator seeded ``seed``): per episode, its observations 0..T if
    ``frames`` (else an empty list) and its T actions."""
    rng = np.random.default_rng(seed)
    n_actions = discrete_actions(env)
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        observed, actions, ended = [obs] if frames else [], [], False
        while not ended:
            a = int(rng.integers(n_actions)) if action is None else action
            obs, _, terminated, truncated, _ = env.step(a)
            if frames:
                observed.append(obs)
            actions.append(a)
            ended = terminated or truncated
        yield observed, actions


def real_lengths(env: gym.Env, action: int | None, episodes: int = 30,
                 seed: int = 0) -> np.ndarray:
    """Steps of ``episodes`` real episodes (seeds seed, seed+1, ...), (episodes,), holding
    ``action`` (None: uniform random actions)."""
    return np.array([len(actions) for _, actions in
                     held_action_episodes(env, action, episodes, seed)])


def held_action_check(dream: Dream, env: gym.Env, dreams: int = 256, episodes: int = 30,
                      ) -> list[HeldActionRow]:
    """Each action held, then uniform random, in the dream and in the real env."""
    return dreamt_rows(dream, real_rows(env, episodes), dreams)


def real_rows(env: gym.Env, episodes: int = 30) -> dict[int | None, np.ndarray]:
    """The real side of the check: each action held, then uniform random (None), and its
    ``episodes`` real episodes' lengths."""
    return {action: real_lengths(env, action, episodes)
            for action in [*range(discrete_actions(env)), None]}


def dreamt_rows(dream: Dream, reals: dict[int | None, np.ndarray], dreams: int = 256,
                ) -> list[HeldActionRow]:
    """The check's rows: ``reals`` (:func:`real_rows`) beside the same policies in
    ``dream``."""
    n = len(reals) - 1
    rows = []
    for action, real in reals.items():
        dreamt = dream_lengths(dream, n, action, dreams)
        rows.append(HeldActionRow(action, float(real.mean()), float(real.std()),
                                  float(dreamt.mean()), float(dreamt.std())))
    return rows


def epoch_checker(cfg: ExperimentConfig, run: RunDir) -> EpochCheck | None:
    """``train_memory``'s ``epoch_check`` for ``memory.select_max_held`` > 0 (None when
    it is 0): the held-action check of M as it trains, on the run's dream settings and
    start latents (those :func:`~envs.dream_env.load_dream` uses), on a CPU copy of M
    where it trains on another device, returning the worst held action and its dream /
    real ratio (M alone, without ``dream.ensemble``'s other Ms). The real episodes, which
    do not depend on M, are played once, at the first epoch checked. A run the check
    cannot apply to (actions not Discrete, or no reward head for a dream) is refused
    here, before any epoch trains."""
    if cfg.memory.select_max_held <= 0:
        return None
    # M's own dream: the epoch chosen is this M's, whatever other Ms C later dreams with
    cfg = without_ensemble(cfg)
    space = run.action_space()
    if not isinstance(space, gym.spaces.Discrete):
        raise ConfigError(f"memory.select_max_held > 0 holds each action in turn: it needs "
                          f"a Discrete action space, not {space}; set it to 0")
    if not cfg.memory.reward_head:
        raise ConfigError("memory.select_max_held > 0 dreams with M: it needs "
                          "memory.reward_head=true")

    @functools.cache
    def prepared() -> tuple[dict[int | None, np.ndarray], tuple[torch.Tensor, torch.Tensor] | None]:
        """(real lengths, start latents or None where load_dream reads dream_starts.npz),
        made at the first epoch checked."""
        starts = (None if run.dream_starts.exists()
                  else start_latents(latent_split(cfg, run)[0]))
        env = make_env_from_config(cfg.env)
        try:
            return real_rows(env, cfg.dream.check_episodes), starts
        finally:
            env.close()

    def check(memory: torch.nn.Module) -> dict[str, float]:
        reals, starts = prepared()
        if next(memory.parameters()).device.type != "cpu":  # the dream steps on the CPU
            memory = copy.deepcopy(memory).cpu()
        memory.eval()  # (train_memory sets train mode again at every epoch)
        dream, _ = load_dream(run, cfg, starts=starts, memory=memory)
        worst = worst_held(dreamt_rows(dream, reals))
        return {"held_worst_ratio": worst.ratio, "held_worst_action": worst.action}

    return check


def train_memory_checked(cfg: ExperimentConfig, run: RunDir, **kwargs: Any) -> MemoryReport:
    """:func:`train_memory` with :func:`epoch_checker`'s check of every scored epoch when
    ``memory.select_max_held`` > 0 (the one way the stages and scripts train M)."""
    return train_memory(cfg, run, epoch_check=epoch_checker(cfg, run), **kwargs)


def markdown_table(rows: list[HeldActionRow], tau: float) -> str:
    lines = [f"| policy | real | dream (tau {tau:g}) | dream / real |", "|---|---|---|---|"]
    lines += [f"| {r.policy} | {r.real_mean:.0f} ± {r.real_std:.0f} | "
              f"{r.dream_mean:.0f} ± {r.dream_std:.0f} | {r.ratio:.2f} |" for r in rows]
    return "\n".join(lines)


def worst_held(rows: list[HeldActionRow]) -> HeldActionRow:
    """The held action the dream overrates most (uniform random is not a held action)."""
    return max((r for r in rows if r.action is not None), key=lambda r: r.ratio)


def gate(rows: list[HeldActionRow], max_ratio: float, where: Path | str) -> None:
    """Raise :class:`InputError` if a held action lives more than ``max_ratio`` times
    longer in the dream than in the real env (``max_ratio`` <= 0: never)."""
    worst = worst_held(rows)
    if max_ratio > 0 and worst.ratio > max_ratio:
        raise InputError(
            f"{where}: M's dream overrates holding action {worst.action}: "
            f"{worst.dream_mean:.0f} steps in the dream against {worst.real_mean:.0f} "
            f"real ({worst.ratio:.2f}x > dream.max_held_ratio={max_ratio:g}). CMA-ES "
            f"would likely exploit it. Collect episodes with the trained controller "
            f"(collect.policy=controller) and retrain M, or raise dream.max_held_ratio "
            f"(0 turns the gate off).")


def summary(rows: list[HeldActionRow], tau: float) -> dict[str, Any]:
    worst = worst_held(rows)
    return {"temperature": tau, "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
            "worst_action": worst.action, "worst_ratio": worst.ratio}


def check_run(cfg: ExperimentConfig, run: RunDir) -> dict[str, Any]:
    """The main job's stage before C trains in the dream: the held-action check of the
    run's M at ``dream.temperature`` on ``dream.check_episodes`` real episodes per
    policy (0: skipped), kept in ``eval/dream_check.json`` and redone only when M or the
    settings change; then the ``dream.max_held_ratio`` gate."""
    if cfg.controller.environment != "dream":
        return {"skipped": "C trains in the real env"}
    if cfg.dream.check_episodes <= 0:
        return {"skipped": "dream.check_episodes=0"}
    dreams = 256
    key = {"memory": file_digest(run.memory.weights()),
           "temperature": cfg.dream.temperature, "done": cfg.dream.done,
           "done_threshold": cfg.dream.done_threshold, "max_steps": cfg.dream.max_steps,
           "episodes": cfg.dream.check_episodes, "dreams": dreams}
    if cfg.dream.ensemble:  # (only then: the keys of earlier checks stay valid)
        key["ensemble"] = ensemble_settings(cfg)
    out = run.eval_dir / "dream_check.json"
    cached = read_json(out, {})
    if cached.get("key") == key:
        rows = [HeldActionRow(**{k: r[k] for k in ("action", "real_mean", "real_std",
                                                    "dream_mean", "dream_std")})
                for r in cached["rows"]]
        result = {**cached, "cached": True}
    else:
        dream, space = load_dream(run, cfg)
        if not isinstance(space, gym.spaces.Discrete):
            return {"skipped": f"not a Discrete action space ({space})"}
        env = make_env_from_config(cfg.env)
        try:
            rows = held_action_check(dream, env, dreams, cfg.dream.check_episodes)
        finally:
            env.close()
        result = {"key": key, **summary(rows, cfg.dream.temperature)}
        write_json_atomic(out, result)
    gate(rows, cfg.dream.max_held_ratio, run.memory.dir)
    return result
