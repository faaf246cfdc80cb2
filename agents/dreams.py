"""A run's dream at work: the CMA-ES evaluator that scores a whole generation in one
batched dream, the controller's virtual score, and dream GIFs beside the real env.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.rollouts import describe_returns
from agents.sb3 import SB3_ALGORITHMS, sb3_controller
from agents.seeds import REPORT_EPISODES_MAX
from envs.dream_env import dream_cap, ensemble_settings, load_batched_dream, load_dream
from envs.factory import make_env_from_config
from worldmodels.atomic import check_writable
from worldmodels.checkpoint import load_weights, write_bytes_atomic, write_json_atomic
from worldmodels.config import ConfigError, ExperimentConfig
from worldmodels.dream import dream_returns, dream_seed, start_indices
from worldmodels.errors import InputError
from worldmodels.pictures import frame_grid
from worldmodels.run_dir import RunDir

#: what ``record_dream`` can play: the CMA-ES controller, random actions, an SB3 policy
DREAM_POLICIES = ("controller", "random", *SB3_ALGORITHMS)


class DreamEvaluator:
    """CMA-ES fitness inside the dream: population x rollouts dreams in one batch.

    Rollout j of a generation starts every candidate from the same real start latent,
    and the generation's noise comes from one generator seeded by its rollout seeds, so
    a rerun gives the same fitness (the replay that resumes CMA-ES relies on it).
    """

    def __init__(self, run: RunDir, cfg: ExperimentConfig | None = None,
                 temperature: float | None = None):
        cfg = cfg if cfg is not None else run.load_config()
        self.dream, self.action_space = load_batched_dream(run, cfg, temperature)
        self.controller = run.new_controller(cfg, self.action_space, self.dream.memory)

    def __call__(self, candidates: np.ndarray, seeds: list[int]) -> np.ndarray:
        return self.returns(candidates, seeds)[0].mean(axis=1)

    def returns(self, candidates: np.ndarray, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(returns, steps), each (P, R): dream episodes of every candidate from every start."""
        self.dream.generator.manual_seed(dream_seed(list(seeds)))
        starts = start_indices(list(seeds), len(self.dream.mu0))
        params = torch.as_tensor(np.asarray(candidates), dtype=torch.float32)
        return dream_returns(self.dream, self.controller, params, starts)


def dream_score_seeds(seed: int, episodes: int) -> list[int]:
    """The dream seeds (start and noise) of a virtual score of ``episodes`` dreams."""
    return [int(s) for s in np.random.default_rng([seed, 31337]).integers(
        0, 2**31 - 1, size=episodes)]


def dream_score(run: RunDir, cfg: ExperimentConfig | None = None, weights: str = "best",
                episodes: int = 100, seed: int = 0, out_dir: Path | None = None,
                policy: str = "controller") -> dict[str, Any]:
    """The policy's virtual score: mean and spread of its return over ``episodes``
    dreams at ``cfg.dream``'s settings (the paper's "virtual score"), written to
    ``<policy>_dream_tau<T>.json`` in ``out_dir`` (default: the run's ``eval/``; other
    ``dream.done*``/``max_steps`` settings and a seed not the run's own add suffixes).
    ``policy``: the CMA-ES controller (its ``weights``) or an SB3 algorithm's policy."""
    if episodes > REPORT_EPISODES_MAX:  # (all dreams run in one batch)
        raise ConfigError(f"{episodes} dream episodes: at most {REPORT_EPISODES_MAX}")
    if policy not in ("controller", *SB3_ALGORITHMS):
        raise ConfigError(f"a dream score needs a trained policy: controller or one of "
                          f"{', '.join(SB3_ALGORITHMS)}, not '{policy}'")
    cfg = cfg if cfg is not None else run.load_config()
    out = Path(out_dir) if out_dir is not None else run.eval_dir
    check_writable(out)  # before the dreams, not after
    evaluator = DreamEvaluator(run, cfg)
    if policy == "controller":
        load_weights(run.trained_controller(weights), evaluator.controller)
        params = evaluator.controller.get_flat()[None].numpy()
        name = "controller" + ("" if weights == "best" else f"_{weights}")
        label = f"controller ({weights}) in the dream"
    else:
        evaluator.controller = sb3_controller(run, cfg, policy, cfg.controller.environment)
        params, name, label = np.zeros((1, 1), np.float32), policy, f"{policy} in the dream"
    returns, steps = evaluator.returns(params, dream_score_seeds(seed, episodes))
    tau = evaluator.dream.temperature
    if not np.isfinite(returns).all():  # (no score file holds a NaN)
        raise InputError(f"{label} at temperature {tau:g}: a non-finite return in the dream "
                         "(check M's weights and dream.*); nothing written")
    # other dream settings and another seed name their own file (as real evaluations'
    # do), so that one score never overwrites another's
    saved = run.load_config()
    played, own = dream_score_settings(cfg), dream_score_settings(saved)
    suffix = "".join(f"_{key}-{value}" for key, value in played.items() if value != own[key])
    dream = {"temperature": cfg.dream.temperature, **played}
    if cfg.dream.ensemble:  # other Ms beside the run's: their own file, by their digests
        dream["ensemble"] = ensemble_settings(cfg)
        suffix += "_ensemble-" + hashlib.sha256(
            json.dumps(dream["ensemble"], sort_keys=True).encode()).hexdigest()[:8]
    suffix += "" if seed == saved.seed else f"_seed{seed}"
    summary = {"policy": label, "temperature": tau,
               **describe_returns(returns[0]), "mean_steps": float(steps.mean()),
               "seed": seed, "dream": dream}
    # one of another size or agent under that name is kept aside, as evaluations' are
    from agents.evaluation import keep_replaced  # (evaluation imports this module's users)

    stem = f"{name}_dream_tau{tau:g}{suffix}"
    keep_replaced(out, stem, summary)
    write_json_atomic(out / f"{stem}.json", summary)
    return summary


def dream_score_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """What changes a dream score besides the temperature: ``dream.done``,
    ``dream.done_threshold`` and the dream's length cap as played (``max_steps``:
    ``dream.max_steps``, else the env's step cap, so ``env.max_episode_steps=N`` names
    its own score too)."""
    return {"done": cfg.dream.done, "done_threshold": cfg.dream.done_threshold,
            "max_steps": dream_cap(cfg)}


@torch.no_grad()
def record_dream(run: RunDir, out: Path, cfg: ExperimentConfig | None = None,
                 policy: str = "controller", seed: int = 0, max_steps: int = 0,
                 beside_real: bool = True, fps: int = 30) -> dict[str, Any]:
    """A GIF of one dream, decoded by V; with ``beside_real``, the dream (top) starts
    from the real env's first frame (seed ``seed``) and the real env (bottom) is driven
    by the same actions. ``policy``: the run's trained controller, ``random``, or the
    run's SB3 policy of that algorithm (trained in ``cfg.controller.environment``).
    ``cfg``: the run's config with any ``dream.*`` / ``env.*`` overrides (default: its own).

    Returns the dream's and the real episode's steps and returns, and the GIF's path.
    """
    import imageio.v3 as iio

    if policy not in DREAM_POLICIES:
        raise ConfigError(f"policy must be one of {', '.join(DREAM_POLICIES)}, not '{policy}'")
    cfg = cfg if cfg is not None else run.load_config()
    check_writable(Path(out).parent)  # before the dream, not after
    dream, action_space = load_dream(run, cfg, seed=seed)
    if max_steps > dream.max_steps:  # the dream would end itself there, short of it
        raise ConfigError(f"--steps {max_steps} is beyond the dream's cap of "
                          f"{dream.max_steps} steps: add dream.max_steps={max_steps}")
    vae = run.load_vae(cfg.vae.z_dim)
    controller: Any = None
    if policy == "controller":
        controller = run.load_controller(cfg, action_space, dream.memory)
    elif policy in SB3_ALGORITHMS:
        controller = sb3_controller(run, cfg, policy, cfg.controller.environment)
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
        if controller is not None:
            action = controller(dream.features(z, controller.use_cell))
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
    write_bytes_atomic(out, iio.imwrite("<bytes>", np.stack(pictures), extension=".gif",
                                        duration=1000 / fps, loop=0))
    return {**result, "gif": str(out)}


def _held(frames: Any, i: int) -> np.ndarray:
    """Frame i, or the last frame dimmed once the episode has ended."""
    return frames[i] if i < len(frames) else frames[-1] // 2
