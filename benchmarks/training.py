"""Benchmark (e): V and M training throughput and peak memory on synthetic data.

    python benchmarks/training.py
    python benchmarks/training.py --config doom_takecover

Each part runs the library's own training loop (``worldmodels.vae_training.train_vae``,
``worldmodels.frmdn_training.train_memory``) for one epoch in its own subprocess, on
synthetic shards of the real shapes written to a temporary run directory: rollouts of
uint8 (T+1, 64, 64, 3) frames for V; latents of float32 (T+1, z) for M. Model sizes
are the config's defaults; M's windows are 100 steps in batches of 32 (set here: the
paper's 999-step windows would not fit the time budget). Figures:
training frames/s (V), windows ("sequences") of seq_len steps per second (M), both
from the loops' own timers, and the subprocess's peak resident memory (ru_maxrss,
which includes the Python and torch start-up, about 300 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from worldmodels.config import doc_summary

#: part -> config overrides; M variants are those of worldmodels.memory_compare
PARTS: dict[str, list[str]] = {
    "vae": [],
    "frmdn": [],  # the config's M: square precision, conditional MAF flow
    "rmdn": ["memory.flow=none", "memory.precision=diag"],
}


def write_rollouts(directory: Path, episodes: int, steps: int, seed: int = 0) -> None:
    from worldmodels.shards import RolloutShard, shard_name

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(episodes):
        RolloutShard(
            obs=rng.integers(0, 256, (steps + 1, 64, 64, 3), dtype=np.uint8),
            action=rng.uniform(-1, 1, (steps, 3)).astype(np.float32),
            reward=rng.normal(size=steps).astype(np.float32),
            terminated=np.eye(1, steps, steps - 1, dtype=bool)[0],
            truncated=np.zeros(steps, bool),
            meta={"env_id": "synthetic", "index": i,
                  "action_space": {"type": "box", "shape": [3]}},
        ).save(directory / shard_name(i), compress_level=0)


def write_latents(directory: Path, episodes: int, steps: int, z_dim: int, seed: int = 0) -> None:
    from worldmodels.shards import write_npz_atomic

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(episodes):
        mu = np.zeros((steps + 1, z_dim), np.float32)
        for t in range(steps):  # a learnable process, so the losses stay finite
            mu[t + 1] = 0.9 * mu[t] + 0.3 * rng.normal(size=z_dim)
        write_npz_atomic(directory / f"ep_{i:06d}.npz", {
            "mu": mu, "logvar": np.full((steps + 1, z_dim), -6.0, np.float32),
            "action": rng.uniform(-1, 1, (steps, 3)).astype(np.float32),
            "reward": rng.normal(size=steps).astype(np.float32),
            "terminated": np.eye(1, steps, steps - 1, dtype=bool)[0],
            "truncated": np.zeros(steps, bool),
            "meta": np.array(json.dumps({"action_space": {"type": "box", "shape": [3]}}))})


def run_part(part: str, config: str, frames: int, episodes: int) -> dict:
    """One part in this process (called in the subprocess); returns its figures."""
    import torch

    from worldmodels.config import load_config
    from worldmodels.frmdn_training import train_memory
    from worldmodels.monitoring import peak_rss_mib
    from worldmodels.run_dir import RunDir
    from worldmodels.vae_training import train_vae

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [], [
            f"root={tmp}", "vae.epochs=1", "memory.epochs=1", "data.holdout_fraction=0.1",
            "vae.max_holdout_frames=200", "vae.grid_frames=4", "memory.seq_len=100",
            "memory.batch_size=32", *PARTS[part]])
        run = RunDir.for_config(cfg)
        if part == "vae":
            steps = 250
            write_rollouts(run.rollouts, max(2, -(-frames // steps) + 1), steps)
            cfg.vae.max_frames_per_epoch = frames
            train_vae(cfg, progress=False)
            epoch = json.loads((run.vae.metrics).read_text())[-1]
            rate, unit = epoch["frames"] / epoch["train_seconds"], "frames/s"
            seconds = epoch["train_seconds"]
        else:
            write_latents(run.latents, episodes, 1000, cfg.vae.z_dim)
            report = train_memory(cfg, progress=False)
            epoch = json.loads((run.memory.metrics).read_text())[-1]
            seconds = epoch["train_seconds"]
            rate, unit = epoch["batches"] * cfg.memory.batch_size / seconds, "sequences/s"
        return {"part": part, "rate": rate, "unit": unit, "train_seconds": seconds,
                "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads(),
                "params": report.parameters if part != "vae" else None,
                "batch": cfg.vae.batch_size if part == "vae" else cfg.memory.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--config", default="carracing")
    parser.add_argument("--vae-frames", type=int, default=3000, help="V training frames")
    parser.add_argument("--m-episodes", type=int, default=12,
                        help="latent episodes of 1,000 steps for M (held out: 10%%, and at least "
                             "data.holdout_min_episodes, 5 by default)")
    parser.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:  # the subprocess: one part, figures as JSON on the last line
        print(json.dumps(run_part(args.part, args.config, args.vae_frames, args.m_episodes)))
        return

    start = time.perf_counter()
    results = {}
    for part in PARTS:
        out = subprocess.run(
            [sys.executable, __file__, "--part", part, "--config", args.config,
             "--vae-frames", str(args.vae_frames), "--m-episodes", str(args.m_episodes)],
            capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"part {part} failed:\n{out.stderr}")
        results[part] = json.loads(out.stdout.strip().splitlines()[-1])
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, torch {torch.__version__}, "
          f"{results['vae']['threads']} threads, load average {os.getloadavg()[0]:.2f} (shared)")
    for part, r in results.items():
        size = f", {r['params']:,} parameters" if r["params"] else ""
        print(f"{part:6s} {r['rate']:8.1f} {r['unit']:12s} (batch {r['batch']}{size}; "
              f"{r['train_seconds']:.1f} s of training)  peak RSS {r['peak_rss_mib']:.0f} MiB")
    ratio = results["frmdn"]["rate"] / results["rmdn"]["rate"]
    print(f"ratio: FRMDN trains at {ratio:.2f}x the RMDN's sequences/s; "
          f"wall {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
