"""Evaluate a policy in the real env: fixed seeds, per-episode CSV, mean and std, video.

The policy is the run's trained controller (``controller/best.safetensors``) or a
uniform random policy, so both are scored on the same episodes.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.rollouts import RolloutWorker, describe_returns
from worldmodels.checkpoint import load_weights, write_json_atomic
from worldmodels.pictures import recon_grid

SB3_POLICIES = ("ppo", "a2c", "sac", "td3")


def _write(out: Path, policy: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    with open(out / f"{policy}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomic(out / f"{policy}.json", summary)


def _evaluate_sb3(run_dir: Path, algo: str, seeds: list[int]) -> dict[str, Any]:
    """An SB3 policy trained by ``train_controller.py --algo`` on the same seeds."""
    from agents.sb3 import play_sb3

    started = time.perf_counter()
    results = play_sb3(run_dir, algo, seeds)
    rows = [{"episode": i, "seed": s, "return": r, "steps": n}
            for i, (s, (r, n)) in enumerate(zip(seeds, results, strict=True))]
    summary = {"policy": algo, **describe_returns(np.array([r for r, _ in results])),
               "seconds": time.perf_counter() - started}
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    _write(out, algo, rows, summary)
    return summary


def evaluation_seeds(seed: int, episodes: int) -> list[int]:
    rng = np.random.default_rng([seed, 424242])
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=episodes)]


def evaluate(run_dir: Path, episodes: int = 100, policy: str = "controller", seed: int = 0,
             video_episodes: int = 0, engine: str = "process", workers: int = 0,
             ray_address: str = "", progress: bool = True,
             key: dict[str, Any] | None = None, weights: str = "best",
             env_overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Play ``episodes`` episodes on the evaluator's workers.

    ``env_overrides`` (``env.<key>=<value>``) play the agent in another variant of the
    run's env, e.g. ``env.direct_render=false`` for Gymnasium's renderer; the summary
    records them.

    Writes ``eval/<policy>.csv`` (episode, seed, return, steps) and ``eval/<policy>.json``
    (mean, std, min, max, and ``key`` if given: what the caller checks to reuse it); for
    the controller, GIFs of the first ``video_episodes``. ``weights``: the controller's
    ``best`` candidate, or CMA-ES's ``mean`` (files ``eval/controller_mean.*``).
    """
    from agents.cmaes import ProcessEvaluator, controller_paths

    if policy not in ("controller", "random", *SB3_POLICIES):
        raise ValueError(f"policy must be controller, random or one of {SB3_POLICIES}, "
                         f"not '{policy}'")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if policy in SB3_POLICIES:
        return _evaluate_sb3(Path(run_dir), policy, evaluation_seeds(seed, episodes))
    if weights not in ("best", "mean"):
        raise ValueError(f"weights must be best or mean, not '{weights}'")
    params = None
    if policy == "controller":  # (the random policy needs no V, M or env in this process)
        worker = RolloutWorker(run_dir, env_overrides=tuple(env_overrides))
        load_weights(controller_paths(run_dir)[weights], worker.controller)
        params = worker.controller.get_flat().numpy()
    out = Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    seeds = evaluation_seeds(seed, episodes)
    started = time.perf_counter()
    if progress:
        print(f"evaluate {policy}: {episodes} episodes on {engine} workers")
    evaluator = ProcessEvaluator(run_dir, engine, workers, ray_address,
                                 env_overrides=tuple(env_overrides))
    try:
        returns, steps = evaluator.returns([params], seeds)
    finally:
        evaluator.close()
    rows = [{"episode": i, "seed": s, "return": float(returns[0, i]), "steps": int(steps[0, i])}
            for i, s in enumerate(seeds)]
    for i in range(min(video_episodes, episodes) if policy == "controller" else 0):
        frames: list = []
        worker.play(params, seeds[i], frames=frames)
        save_video(worker, np.stack(frames), out / f"{policy}_episode{i}.gif")
    if policy == "controller" and weights == "mean":
        policy = "controller_mean"
    if env_overrides:  # e.g. controller_direct_render-false: the run's own stays as it is
        policy += "_" + "_".join(o.removeprefix("env.").replace("=", "-") for o in env_overrides)
    summary = {"policy": policy, **describe_returns(returns[0]),
               "seconds": time.perf_counter() - started, **({"key": key} if key else {}),
               **({"env_overrides": list(env_overrides)} if env_overrides else {})}
    _write(out, policy, rows, summary)
    return summary


@torch.no_grad()
def save_video(worker: RolloutWorker, frames: np.ndarray, path: Path, fps: int = 30) -> None:
    """Real frames (left) beside V's reconstructions (right), as a GIF."""
    import imageio.v3 as iio

    vae = worker.agent.vae
    pictures = []
    for i in range(0, len(frames), 256):
        chunk = frames[i : i + 256]
        mu, _ = vae.encode(torch.from_numpy(chunk).to(worker.agent.device))
        recon = (vae.decode(mu).clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).cpu().numpy()
        for real, fake in zip(chunk, recon, strict=True):
            pictures.append(recon_grid(real[None], fake[None], scale=2))
    iio.imwrite(path, np.stack(pictures), duration=1000 / fps, loop=0)
