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
from tqdm import tqdm

from agents.rollouts import RolloutWorker, describe_returns
from worldmodels.checkpoint import load_weights, write_json_atomic
from worldmodels.pictures import recon_grid


def evaluation_seeds(seed: int, episodes: int) -> list[int]:
    rng = np.random.default_rng([seed, 424242])
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=episodes)]


def play_random(worker: RolloutWorker, seed: int) -> tuple[float, int]:
    env = worker.env
    env.action_space.seed(seed)
    env.reset(seed=seed)
    total, steps = 0.0, 0
    while True:
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        total += float(reward)
        steps += 1
        if terminated or truncated:
            return total, steps


def evaluate(run_dir: Path, episodes: int = 100, policy: str = "controller", seed: int = 0,
             video_episodes: int = 0, progress: bool = True) -> dict[str, Any]:
    """Play ``episodes`` episodes; writes ``eval/<policy>.csv`` and ``eval/<policy>.json``."""
    worker = RolloutWorker(run_dir)
    if policy == "controller":
        load_weights(Path(run_dir) / "controller" / "best.safetensors", worker.controller)
    elif policy != "random":
        raise ValueError(f"policy must be controller or random, not '{policy}'")
    out = Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.perf_counter()
    for i, s in enumerate(tqdm(evaluation_seeds(seed, episodes), desc=f"evaluate {policy}",
                               unit="ep", disable=not progress)):
        frames: list | None = [] if i < video_episodes and policy == "controller" else None
        ret, steps = (play_random(worker, s) if policy == "random"
                      else worker.play(None, s, frames=frames))
        rows.append({"episode": i, "seed": s, "return": ret, "steps": steps})
        if frames:
            save_video(worker, np.stack(frames), out / f"{policy}_episode{i}.gif")
    with open(out / f"{policy}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {"policy": policy, **describe_returns(np.array([r["return"] for r in rows])),
               "seconds": time.perf_counter() - started}
    write_json_atomic(out / f"{policy}.json", summary)
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
            pictures.append(recon_grid(real[None], fake[None], scale=2)[:, :, :])
    iio.imwrite(path, np.stack(pictures), duration=1000 / fps, loop=0)
