"""Benchmark (d): batched dream steps/s against real env steps/s, side by side in one run.

    python benchmarks/dream.py --config doom_takecover --preset dream
    python benchmarks/dream.py --config doom_takecover --preset dream name=dream_frmdn --trained
    python benchmarks/dream.py --config carracing --preset quick

Three rates, each in this one process:

* real env: the preprocessed env (``envs.make_env``) stepped with uniform random actions;
* real env + agent: the same env driven by V+M+C (what a real-env CMA-ES rollout costs);
* batched dream: ``controller.population x controller.rollouts`` dreams of M, each with
  its own controller, stepped together (what a dream CMA-ES generation costs);
* its floor: a bare ``nn.LSTMCell`` of M's size stepped at the same batch (no heads, no
  flow, no sampling, no controller), since an LSTM step is the least a step of M costs.
  The dream's steps/s is printed as a fraction of it.

M has the config's architecture: untrained, or the run's with ``--trained``. Dreams run
to a fixed step count (the done head is ignored) so that every step holds all B dreams.
Rounds interleave the three so load drift on a shared machine hits them alike.
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
import torch  # noqa: E402

from agents.vmc import VMCAgent  # noqa: E402
from envs.factory import make_env_from_config  # noqa: E402
from worldmodels.config import ExperimentConfig, doc_summary, load_config  # noqa: E402
from worldmodels.controller import FlatPolicy, build_controller  # noqa: E402
from worldmodels.dream import Dream, dream_returns  # noqa: E402
from worldmodels.frmdn_training import build_memory  # noqa: E402
from worldmodels.memory import Memory  # noqa: E402
from worldmodels.run_dir import RunDir  # noqa: E402
from worldmodels.vae import ConvVAE  # noqa: E402


@torch.no_grad()
def lstm_cell_rate(inputs: int, hidden: int, batch: int, steps: int) -> float:
    """Dream steps per second of a bare ``nn.LSTMCell`` at ``batch`` rows (each step
    counts ``batch`` dream steps, as the dream's rate does)."""
    cell = torch.nn.LSTMCell(inputs, hidden)
    x, h, c = torch.randn(batch, inputs), torch.zeros(batch, hidden), torch.zeros(batch, hidden)
    start = time.perf_counter()
    for _ in range(steps):
        h, c = cell(x, (h, c))
    return batch * steps / (time.perf_counter() - start)


def env_rate(env, agent: VMCAgent | None, steps: int, seed: int) -> float:
    """Steps per second over ``steps`` steps (episodes restart as they end)."""
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    if agent is not None:
        agent.reset(1)
    start = time.perf_counter()
    for _ in range(steps):
        action = env.action_space.sample() if agent is None else agent.act(obs[None])[0]
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
            if agent is not None:
                agent.reset(1)
    return steps / (time.perf_counter() - start)


def dream_generation(cfg: ExperimentConfig, action_space: gym.Space, trained: bool = False,
                     single: bool = False, dream_steps: int = 50,
                     ) -> tuple[Memory, FlatPolicy, Dream, torch.Tensor, torch.Tensor]:
    """What one dream CMA-ES generation steps, as the config sizes it: M (untrained, or
    the run's with ``trained``), a controller, ``P`` candidates' parameters and the
    ``R`` start indices, and the :class:`Dream` of ``P x R`` dreams (``single``: 1 x 1)
    that run ``dream_steps`` steps (the done head never ends one: threshold 1.0)."""
    torch.manual_seed(0)
    if trained:
        memory = RunDir.for_config(cfg).load_memory()
    else:
        n = getattr(action_space, "n", None)
        memory = build_memory(cfg, int(n) if n is not None else action_space.shape[0],
                              n is not None).eval()
    controller = build_controller(cfg.controller, memory.feature_size(cfg.controller.use_cell),
                                  action_space)
    P, R = (1, 1) if single else (cfg.controller.population, cfg.controller.rollouts)
    d = cfg.vae.z_dim
    dream = Dream(memory, torch.zeros(8, d), torch.zeros(8, d), cfg.dream.temperature,
                  done_mode="threshold", done_threshold=1.0, max_steps=dream_steps)
    params = 0.1 * torch.randn(P, controller.num_parameters())
    return memory, controller, dream, params, torch.arange(R)


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--config", default="doom_takecover")
    parser.add_argument("--preset", action="append", default=None)
    parser.add_argument("--trained", action="store_true", help="use the run's trained M")
    parser.add_argument("--env-steps", type=int, default=1000, help="real steps per round")
    parser.add_argument("--dream-steps", type=int, default=50, help="dream steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single", action="store_true",
                        help="one dream (B = 1, as Dream-v0 steps it) instead of a generation")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = load_config(args.config, args.preset, args.overrides)
    env = make_env_from_config(cfg.env)
    memory, controller, dream, params, starts = dream_generation(
        cfg, env.action_space, args.trained, args.single, args.dream_steps)
    agent = VMCAgent(ConvVAE(z_dim=cfg.vae.z_dim), memory, controller)
    P, R = len(params), len(starts)
    B = P * R

    dream_threads = cfg.dream.threads or torch.get_num_threads()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__} (dream: {dream_threads} threads; agent: 1)")
    m = memory.config()
    print(f"env {cfg.env.id}; M: {cfg.memory.kind}, hidden {m['hidden']}, "
          f"{m.get('precision', 'diag')} precision, flow {m.get('flow', 'none')}"
          f"{' (trained)' if args.trained else ''}; B = {P} x "
          f"{R} = {B} dreams at tau {cfg.dream.temperature}")
    torch.set_num_threads(dream_threads)
    dream_returns(dream, controller, params, starts)  # warm-up: first calls allocate
    rates: dict[str, list[float]] = {"real env": [], "real env + V+M+C": [], "batched dream": [],
                                     "bare LSTMCell": []}
    lstm_inputs = cfg.vae.z_dim + memory.config()["action_dim"]
    for r in range(args.rounds):
        rates["real env"].append(env_rate(env, None, args.env_steps, r))
        torch.set_num_threads(1)  # one frame per step: as RolloutWorker plays it
        rates["real env + V+M+C"].append(env_rate(env, agent, args.env_steps // 2, r))
        torch.set_num_threads(dream_threads)
        start = time.perf_counter()
        _, steps = dream_returns(dream, controller, params, starts)
        rates["batched dream"].append(float(np.sum(steps)) / (time.perf_counter() - start))
        rates["bare LSTMCell"].append(lstm_cell_rate(lstm_inputs, m["hidden"], B,
                                                     args.dream_steps))
    env.close()
    median = {k: statistics.median(v) for k, v in rates.items()}
    for k, v in median.items():
        print(f"{k:>18}: {v:10.0f} steps/s  (rounds: {', '.join(f'{x:.0f}' for x in rates[k])})")
    cores = os.cpu_count() or 1
    ratio = median["batched dream"] / median["real env"]
    print(f"ratio batched dream / real env:            {ratio:.2f}x")
    print(f"ratio batched dream / (real env x {cores} cores): "
          f"{median['batched dream'] / median['real env'] / cores:.2f}x")
    print(f"ratio batched dream / real env + V+M+C:    "
          f"{median['batched dream'] / median['real env + V+M+C']:.2f}x")
    print(f"batched dream / bare LSTMCell at B = {B}:   "
          f"{median['batched dream'] / median['bare LSTMCell']:.0%}")


if __name__ == "__main__":
    main()
