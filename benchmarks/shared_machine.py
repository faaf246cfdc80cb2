"""Benchmark (g): a multi-threaded dream beside another job, with and without OpenMP's
passive wait, side by side in one run.

    python benchmarks/shared_machine.py                      # TakeCover's solve preset
    python benchmarks/shared_machine.py --config carracing --preset quick --seconds 10

Two jobs often share this project's machines: a C search in the dream on all cores
(``dream.threads=0``) and a second run on one thread. With PyTorch's OpenMP threads
spinning while they wait (the default), the multi-threaded job can lose most of its
speed to the other job. Each case runs in fresh processes, since OpenMP reads
``OMP_WAIT_POLICY`` once, when torch loads:

* the dream of one dream CMA-ES generation (``controller.population x
  controller.rollouts`` dreams of the config's untrained M) on all cores, alone;
* the same beside a one-thread job (the same dream on one thread), both timed;
* the dream on one thread beside the same one-thread job (two one-thread runs).

Each under the default wait policy and under ``OMP_WAIT_POLICY=PASSIVE``. The last line
is ``slowdown beside a 1-thread job: default <x>x, PASSIVE <y>x`` (all cores alone over
all cores beside the other job).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worldmodels.config import doc_summary

SCRIPT = Path(__file__).resolve()
POLICIES = ("default", "PASSIVE")


def child(config: str, presets: list[str] | None, threads: int, seconds: float) -> None:
    """Step the generation's dream on ``threads`` threads for ``seconds``; print its
    dream steps/s as JSON (the parent reads the last line)."""
    import numpy as np
    import torch

    from benchmarks.dream import dream_generation
    from envs.factory import make_env_from_config
    from worldmodels.config import load_config
    from worldmodels.dream import dream_returns

    cfg = load_config(config, presets, [])
    env = make_env_from_config(cfg.env)
    space = env.action_space
    env.close()
    torch.set_num_threads(threads)
    _, controller, dream, params, starts = dream_generation(cfg, space)
    dream_returns(dream, controller, params, starts)  # warm-up: first calls allocate
    steps, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        steps += float(np.sum(dream_returns(dream, controller, params, starts)[1]))
    print(json.dumps({"steps_per_s": steps / (time.perf_counter() - start),
                      "threads": torch.get_num_threads()}))


def spawn(args: argparse.Namespace, policy: str, threads: int, seconds: float,
          ) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("OMP_NUM_THREADS", None)  # the child sets its own thread count
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    presets = [a for p in (args.preset or []) for a in ("--preset", p)]
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--child", "--config", args.config, *presets,
         "--threads", str(threads), "--seconds", str(seconds)],
        env=env, stdout=subprocess.PIPE, text=True)


def rate(process: subprocess.Popen) -> float:
    out, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"a benchmark process failed (exit {process.returncode})")
    return float(json.loads(out.strip().splitlines()[-1])["steps_per_s"])


def beside(args: argparse.Namespace, policy: str, threads: int) -> tuple[float, float]:
    """(the dream on ``threads`` threads, the one-thread job) steps/s, run together;
    the one-thread job starts first and runs longer, so it spans the whole measurement."""
    other = spawn(args, policy, 1, args.seconds + 2 * args.startup)
    time.sleep(args.startup)
    measured = spawn(args, policy, threads, args.seconds)
    return rate(measured), rate(other)


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--config", default="doom_takecover")
    parser.add_argument("--preset", action="append", default=None)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed span of a case")
    parser.add_argument("--startup", type=float, default=8.0,
                        help="seconds the one-thread job gets to start before the other")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.preset is None and args.config == "doom_takecover":
        args.preset = ["solve"]
    if args.child:
        child(args.config, args.preset, args.threads, args.seconds)
        return

    print(f"machine: {platform.platform()}, {os.cpu_count()} cores; load before: "
          f"{os.getloadavg()[0]:.2f}; {args.config} {args.preset or ''}, "
          f"{args.seconds:.0f} s a case")
    print(f"| OMP_WAIT_POLICY | dream, {args.threads} threads, alone | dream, {args.threads} "
          "threads / 1-thread job, together | dream, 1 thread / 1-thread job, together |")
    print("|---|---|---|---|")
    slowdown = {}
    for policy in POLICIES:
        alone = rate(spawn(args, policy, args.threads, args.seconds))
        many, other_many = beside(args, policy, args.threads)
        one, other_one = beside(args, policy, 1)
        slowdown[policy] = alone / many
        print(f"| {policy} | {alone:,.0f} | {many:,.0f} / {other_many:,.0f} "
              f"(sum {many + other_many:,.0f}) | {one:,.0f} / {other_one:,.0f} "
              f"(sum {one + other_one:,.0f}) |", flush=True)
    print("slowdown beside a 1-thread job: "
          + ", ".join(f"{p} {slowdown[p]:.2f}x" for p in POLICIES))


if __name__ == "__main__":
    main()
