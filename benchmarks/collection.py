"""Benchmark (b): parallel collection vs one plain env, measured side by side in one run.

    python benchmarks/collection.py --config carracing --workers 2
    python benchmarks/collection.py --config doom_takecover --workers 2

"Plain" is ``gymnasium.make(<env id>)`` as registered (for CarRacing-v3 the same
renderer as the workers: ``CarRacingFast-v3`` unless ``env.fast_render=false``), stepped
with uniform random actions in this process, no preprocessing, nothing written. "Collection" is
``agents.collect.collect`` with W worker processes, each preprocessing frames and
writing compressed shards; its wall time includes starting the workers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402

from agents.collect import collect  # noqa: E402
from envs.factory import ensure_registered, renderer_id  # noqa: E402
from worldmodels.config import doc_summary, load_config  # noqa: E402


def plain_env_steps_per_s(env_id: str, seconds: float, seed: int = 0) -> tuple[float, int]:
    ensure_registered(env_id)
    env = gym.make(env_id)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        *_, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--config", default="carracing")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=0,
                        help="episodes to collect (0: about 30 s of collection)")
    parser.add_argument("--plain-seconds", type=float, default=20.0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = load_config(args.config, [], args.overrides)
    plain_id = renderer_id(cfg.env.id, cfg.env.fast_render, cfg.env.direct_render)
    plain_sps, plain_steps = plain_env_steps_per_s(plain_id, args.plain_seconds)
    episodes = args.episodes
    if not episodes:  # about 30 s of collection at a 1.7x rate (start-up included)
        cap = cfg.env.max_episode_steps if cfg.env.max_episode_steps > 0 else 1000
        typical = min(cap, 220) if "Vizdoom" in cfg.env.id else cap  # random TakeCover: ~210
        episodes = max(4, int(30 * plain_sps * 1.7 / typical))
    cfg.collect.episodes = episodes
    cfg.collect.workers = args.workers
    cfg.collect.engine = "process"
    with tempfile.TemporaryDirectory() as tmp:
        report = collect(cfg, out_dir=Path(tmp), progress=False)
    ratio = report.steps_per_second / plain_sps
    # steady state: from the moment every worker has finished its first episode
    # (process start-up, imports and env creation are then behind us)
    skip = min(args.workers, len(report.timeline) - 1)
    t0 = report.timeline[skip - 1][0] if skip else 0.0
    steady_steps = sum(n for _, n in report.timeline[skip:])
    steady_sps = steady_steps / (report.timeline[-1][0] - t0)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"plain {plain_id}: {plain_sps:.0f} steps/s ({plain_steps} steps)")
    print(f"collection, {args.workers} workers, policy {cfg.collect.policy}: "
          f"{report.steps_per_second:.0f} steps/s ({report.steps_new} steps, "
          f"{episodes} episodes, {report.seconds:.1f} s wall)")
    print(f"ratio: {ratio:.2f}x one plain env (wall time from before worker start-up)")
    print(f"steady state, after each worker's first episode: {steady_sps:.0f} steps/s, "
          f"{steady_sps / plain_sps:.2f}x")


if __name__ == "__main__":
    main()
