"""Benchmark (a): FastCarRacing steps/s against Gymnasium's CarRacing-v3, side by side.

    python benchmarks/car_racing.py --seconds 60

Both raw envs (96x96 frames, no preprocessing) get the same seeded random actions and
the same track seeds. They step in alternating blocks of ``--block`` steps so that
load from other processes on the machine hits both alike; only ``step`` is timed
(track generation in ``reset`` is not). The frames are compared as they go, so the
speed-up is for identical output.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import envs  # noqa: E402,F401  (registers CarRacingFast-v3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="stepping time of both envs together")
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    names = ("gymnasium", "fast")
    env_by = {"gymnasium": gym.make("CarRacing-v3", disable_env_checker=True),
              "fast": gym.make("CarRacingFast-v3", disable_env_checker=True)}
    rng = np.random.default_rng(args.seed)
    seed = args.seed
    for env in env_by.values():
        env.reset(seed=seed)
    seconds = dict.fromkeys(names, 0.0)
    steps = 0
    block_ratios = []
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
        if not (np.array_equal(np.stack(out["fast"][0]), np.stack(out["gymnasium"][0]))
                and out["fast"][1] == out["gymnasium"][1]):
            raise SystemExit(f"frames or rewards differ near step {steps} (seed {seed})")
        n = len(out["fast"][0])
        steps += n
        block_ratios.append(block["gymnasium"] / block["fast"])
        if out["fast"][1][-1][1] or out["fast"][1][-1][2]:
            seed += 1
            for env in env_by.values():
                env.reset(seed=seed)
    wall = time.perf_counter() - start
    sps = {name: steps / seconds[name] for name in names}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} (shared)")
    print(f"{steps} steps each, {seed - args.seed + 1} tracks, identical frames and rewards, "
          f"{wall:.1f} s wall")
    for name in names:
        print(f"{name:10s} {sps[name]:7.1f} steps/s  ({seconds[name] / steps * 1e3:.2f} ms/step)")
    print(f"ratio: {sps['fast'] / sps['gymnasium']:.2f}x "
          f"(median over {len(block_ratios)} blocks: {statistics.median(block_ratios):.2f}x)")


if __name__ == "__main__":
    main()
