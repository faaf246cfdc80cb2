"""Benchmark (a): FastCarRacing and DirectCarRacing steps/s against Gymnasium's
CarRacing-v3, side by side.

    python benchmarks/car_racing.py --seconds 60

The raw envs (96x96 frames, no preprocessing) get the same seeded random actions and
the same track seeds. They step in alternating blocks of ``--block`` steps so that
load from other processes on the machine hits them alike; only ``step`` is timed
(track generation in ``reset`` is not). Frames are compared as they go: the exact
env's must equal Gymnasium's, so its speed-up is for identical output; the direct
env's differ slightly, and their mean absolute difference is printed. Rewards and
episode ends must be equal for both.

A fourth env, ``physics``, is the direct env with its drawing replaced by a constant
frame: Box2D, the car, rewards and episode ends only. Its ms/step is the floor of any
CarRacing step, however it is drawn (benchmark (f)'s bound in docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import envs  # noqa: E402,F401  (registers CarRacingFast-v3)
from worldmodels.config import doc_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="stepping time of both envs together")
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    names = ("gymnasium", "fast", "direct", "physics")
    env_by = {"gymnasium": gym.make("CarRacing-v3", disable_env_checker=True),
              "fast": gym.make("CarRacingFast-v3", disable_env_checker=True),
              "direct": gym.make("CarRacingDirect-v3", disable_env_checker=True),
              "physics": gym.make("CarRacingDirect-v3", disable_env_checker=True)}
    blank = np.zeros((96, 96, 3), np.uint8)
    env_by["physics"].unwrapped._draw_state = lambda: blank  # what is left: Box2D and rules
    rng = np.random.default_rng(args.seed)
    seed = args.seed
    for env in env_by.values():
        env.reset(seed=seed)
    seconds = dict.fromkeys(names, 0.0)
    steps = 0
    block_ratios: dict[str, list[float]] = {"fast": [], "direct": [], "physics": []}
    abs_diff, far = [], []  # direct vs Gymnasium: per frame mean |difference|, far pixels
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        actions = rng.uniform([-1, 0, 0], [1, 1, 1], size=(args.block, 3)).astype(np.float32)
        out = {}
        block = {}
        for name in names:
            env, frames, ends = env_by[name], [], []
            t0 = time.perf_counter()
            for action in actions:
                obs, reward, terminated, truncated, _ = env.step(action)
                frames.append(obs)
                ends.append((reward, terminated, truncated))
                if terminated or truncated:
                    break
            block[name] = time.perf_counter() - t0
            seconds[name] += block[name]
            out[name] = (frames, ends)
        reference = np.stack(out["gymnasium"][0])
        if not (np.array_equal(np.stack(out["fast"][0]), reference)
                and out["fast"][1] == out["gymnasium"][1]):
            raise SystemExit(f"frames or rewards differ near step {steps} (seed {seed})")
        for name in ("direct", "physics"):
            if out[name][1] != out["gymnasium"][1]:
                raise SystemExit(f"{name} env: rewards differ near step {steps} (seed {seed})")
        diff = np.abs(np.stack(out["direct"][0]).astype(np.int16) - reference)
        abs_diff += diff.mean(axis=(1, 2, 3)).tolist()
        far += (diff > 32).any(axis=-1).mean(axis=(1, 2)).tolist()
        n = len(out["fast"][0])
        steps += n
        for name in block_ratios:
            block_ratios[name].append(block["gymnasium"] / block[name])
        if out["fast"][1][-1][1] or out["fast"][1][-1][2]:
            seed += 1
            for env in env_by.values():
                env.reset(seed=seed)
    wall = time.perf_counter() - start
    sps = {name: steps / seconds[name] for name in names}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} (shared)")
    print(f"{steps} steps each, {seed - args.seed + 1} tracks, {wall:.1f} s wall; rewards and "
          "ends identical; fast frames identical to Gymnasium's")
    for name in names:
        print(f"{name:10s} {sps[name]:8.1f} steps/s  ({seconds[name] / steps * 1e3:.3f} ms/step)")
    for name, ratios in block_ratios.items():
        print(f"ratio {name}: {sps[name] / sps['gymnasium']:.2f}x "
              f"(median over {len(ratios)} blocks: {statistics.median(ratios):.2f}x)")
    print(f"direct frames vs Gymnasium's: mean absolute difference {np.mean(abs_diff):.3f} "
          f"levels (worst frame {np.max(abs_diff):.2f}); pixels more than 32 levels off "
          f"{100 * np.mean(far):.2f}% (worst frame {100 * np.max(far):.2f}%)")


if __name__ == "__main__":
    main()
