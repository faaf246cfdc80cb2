"""A run's dream, ready to play: M, start latents and a controller template from a run
directory, and the CMA-ES evaluator that scores a whole generation in one batched dream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.collect import action_space_from_meta
from agents.rollouts import build_controller, load_run_config
from envs.factory import episode_cap
from worldmodels.checkpoint import read_header
from worldmodels.config import ExperimentConfig
from worldmodels.controller import Controller
from worldmodels.dream import Dream, dream_returns, dream_seed, start_indices, start_latents
from worldmodels.frmdn_training import latent_split, load_memory, memory_paths
from worldmodels.shards import ShardError, read_meta


def dream_cap(cfg: ExperimentConfig) -> int:
    """Dream length cap: ``dream.max_steps``, else the env's cap, else 1,000."""
    return cfg.dream.max_steps or episode_cap(cfg.env) or 1000


def run_action_space(path: Path) -> gym.Space:
    """The env's action space, from a latent (or rollout) shard's metadata."""
    info = read_meta(path).get("action_space")
    if not info:
        raise ShardError(f"{path}: meta has no action_space (recollect with this version)")
    return action_space_from_meta(info)


def done_pos_weight(memory_dir: Path, cfg: ExperimentConfig) -> float:
    """The weight M's done head was trained with (kept in its checkpoint's meta; older
    checkpoints: ``memory.done_pos_weight``), which its P(done) must take off again."""
    meta = read_header(memory_paths(Path(memory_dir))["model"]).get("meta", {})
    return float(meta.get("done_pos_weight", cfg.memory.done_pos_weight))


def load_dream(run_dir: Path, cfg: ExperimentConfig | None = None,
               temperature: float | None = None, seed: int = 0,
               ) -> tuple[Dream, Controller, gym.Space]:
    """(dream, controller template, action space) for a trained run.

    Dreams start from the first frames of the training episodes; the temperature is
    ``dream.temperature`` unless given.
    """
    cfg = cfg or load_run_config(run_dir)
    train, _, _ = latent_split(cfg)
    action_space = run_action_space(train[0])
    directory = Path(run_dir) / "memory"
    memory = load_memory(directory)
    mu0, logvar0 = start_latents(train)
    dream = Dream(
        memory, mu0, logvar0,
        temperature=cfg.dream.temperature if temperature is None else temperature,
        done_mode=cfg.dream.done, done_threshold=cfg.dream.done_threshold,
        done_pos_weight=done_pos_weight(directory, cfg),
        max_steps=dream_cap(cfg), generator=torch.Generator().manual_seed(seed),
    )
    return dream, build_controller(cfg, action_space, memory.lstm.hidden_size), action_space


class DreamEvaluator:
    """CMA-ES fitness inside the dream: population x rollouts dreams in one batch.

    Rollout j of a generation starts every candidate from the same real start latent,
    and the generation's noise comes from one generator seeded by its rollout seeds, so
    a rerun gives the same fitness (the replay that resumes CMA-ES relies on it).
    """

    def __init__(self, run_dir: Path, cfg: ExperimentConfig | None = None,
                 temperature: float | None = None):
        cfg = cfg or load_run_config(run_dir)
        if cfg.dream.threads:
            torch.set_num_threads(cfg.dream.threads)
        self.dream, self.controller, self.action_space = load_dream(run_dir, cfg, temperature)

    def __call__(self, candidates: np.ndarray, seeds: list[int]) -> np.ndarray:
        return self.returns(candidates, seeds)[0].mean(axis=1)

    def returns(self, candidates: np.ndarray, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(returns, steps), each (P, R): dream episodes of every candidate from every start."""
        self.dream.generator.manual_seed(dream_seed(list(seeds)))
        starts = start_indices(list(seeds), len(self.dream.mu0))
        params = torch.as_tensor(np.asarray(candidates), dtype=torch.float32)
        return dream_returns(self.dream, self.controller, params, starts)


def dream_score(run_dir: Path, weights: str = "best", episodes: int = 100,
                temperature: float | None = None, seed: int = 0) -> dict[str, Any]:
    """The controller's virtual score: mean and spread of its return over ``episodes``
    dreams (the paper's "virtual score"), written to ``eval/controller_dream_tau<T>.json``."""
    from agents.rollouts import describe_returns
    from worldmodels.checkpoint import load_weights, write_json_atomic

    cfg = load_run_config(run_dir)
    evaluator = DreamEvaluator(run_dir, cfg, temperature)
    load_weights(Path(run_dir) / "controller" / f"{weights}.safetensors", evaluator.controller)
    seeds = [int(s) for s in np.random.default_rng([seed, 31337]).integers(0, 2**31 - 1,
                                                                          size=episodes)]
    returns, steps = evaluator.returns(evaluator.controller.get_flat()[None].numpy(), seeds)
    tau = evaluator.dream.temperature
    summary = {"policy": f"controller ({weights}) in the dream", "temperature": tau,
               **describe_returns(returns[0]), "mean_steps": float(steps.mean())}
    out = Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if weights == "best" else f"_{weights}"
    write_json_atomic(out / f"controller{suffix}_dream_tau{tau:g}.json", summary)
    return summary


@torch.no_grad()
def record_dream(run_dir: Path, out: Path, policy: str = "controller", seed: int = 0,
                 max_steps: int = 0, beside_real: bool = True,
                 temperature: float | None = None, fps: int = 30) -> dict[str, Any]:
    """A GIF of one dream, decoded by V; with ``beside_real``, the dream (top) starts
    from the real env's first frame (seed ``seed``) and the real env (bottom) is driven
    by the same actions. ``policy``: the run's trained controller, or ``random``.

    Returns the dream's and the real episode's steps and returns, and the GIF's path.
    """
    import imageio.v3 as iio

    from envs.factory import make_env_from_config
    from worldmodels.checkpoint import load_weights
    from worldmodels.pictures import frame_grid
    from worldmodels.vae_training import load_vae

    if policy not in ("controller", "random"):
        raise ValueError(f"policy must be controller or random, not '{policy}'")
    cfg = load_run_config(run_dir)
    dream, controller, action_space = load_dream(run_dir, cfg, temperature, seed)
    vae = load_vae(run_dir, cfg.vae.z_dim)
    if policy == "controller":
        load_weights(Path(run_dir) / "controller" / "best.safetensors", controller)
    action_space.seed(seed)
    env = make_env_from_config(cfg.env) if beside_real else None
    if env is not None:
        frame, _ = env.reset(seed=seed)
        z = dream.reset(1, z0=vae.encode(torch.from_numpy(frame[None]))[0])
    else:
        z = dream.reset(1)
    cap = max_steps or dream.max_steps
    latents, actions, dream_return = [z], [], 0.0
    for _ in range(cap):
        if policy == "controller":
            action = controller(z, dream.h, dream.c)
        else:
            action = torch.as_tensor(np.asarray(action_space.sample())[None])
        step = dream.step(z, action)
        z = step.z
        latents.append(z)
        actions.append(action[0].numpy())
        dream_return += float(step.reward[0])
        if bool(step.done[0] | step.truncated[0]):
            break
    dreamt = (vae.decode(torch.cat(latents)).clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).numpy()
    result: dict[str, Any] = {"dream_steps": len(actions), "dream_return": dream_return}
    if env is None:
        pictures = [frame_grid(f[None], scale=3) for f in dreamt]
    else:
        real, real_return = [frame], 0.0
        for action in actions:
            frame, reward, terminated, truncated, _ = env.step(
                int(action) if isinstance(action_space, gym.spaces.Discrete) else action)
            real.append(frame)
            real_return += float(reward)
            if terminated or truncated:
                break
        env.close()
        result.update(real_steps=len(real) - 1, real_return=real_return)
        pictures = [frame_grid(_held(dreamt, i)[None], _held(real, i)[None], scale=3)
                    for i in range(max(len(dreamt), len(real)))]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out, np.stack(pictures), duration=1000 / fps, loop=0)
    return {**result, "gif": str(out)}


def _held(frames: Any, i: int) -> np.ndarray:
    """Frame i, or the last frame dimmed once the episode has ended."""
    return frames[i] if i < len(frames) else frames[-1] // 2
