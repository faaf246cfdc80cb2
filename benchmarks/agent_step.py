"""Benchmark (c): the agent's V+M+C step against the env step, side by side in one run.

    python benchmarks/agent_step.py --config carracing
    python benchmarks/agent_step.py --config doom_takecover

The agent is ``agents.vmc.VMCAgent`` with freshly initialised V, M and C of the
config's default sizes (the cost of a step does not depend on the weights' values),
one env (B=1) and one torch thread, as ``agents.rollouts.RolloutWorker`` runs it. Each
loop iteration times ``agent.act(frame)`` and ``env.step(action)`` separately. The env
is the preprocessed one the agent plays (64x64 frames); for CarRacing both the fast
renderer and Gymnasium's are measured, in alternating blocks.
"""

from __future__ import annotations

import argparse
import os
import platform
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
from envs.factory import FAST_RENDERERS, make_env_from_config  # noqa: E402
from worldmodels.config import doc_summary, load_config  # noqa: E402
from worldmodels.controller import build_controller  # noqa: E402
from worldmodels.frmdn_training import build_memory  # noqa: E402
from worldmodels.vae import ConvVAE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--config", default="carracing")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    cfg = load_config(args.config, [], args.overrides)
    renderers = ["fast", "gymnasium"] if cfg.env.id in FAST_RENDERERS else ["default"]
    env_by = {}
    for name in renderers:
        cfg.env.fast_render = name != "gymnasium"
        env_by[name] = make_env_from_config(cfg.env)
    space = env_by[renderers[0]].action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    action_dim = int(space.n) if discrete else int(np.prod(space.shape))
    memory = build_memory(cfg, action_dim, discrete)
    controller = build_controller(cfg.controller, memory.feature_size(cfg.controller.use_cell),
                                  space)
    agent_by = {name: VMCAgent(ConvVAE(z_dim=cfg.vae.z_dim), memory, controller)
                for name in renderers}
    obs_by = {name: env.reset(seed=0)[0] for name, env in env_by.items()}
    for agent in agent_by.values():
        agent.reset(1)

    act_s = dict.fromkeys(renderers, 0.0)
    env_s = dict.fromkeys(renderers, 0.0)
    steps = dict.fromkeys(renderers, 0)
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        for name in renderers:
            env, agent, obs = env_by[name], agent_by[name], obs_by[name]
            for _ in range(args.block):
                t0 = time.perf_counter()
                action = agent.act(obs[None])[0]
                t1 = time.perf_counter()
                obs, _, terminated, truncated, _ = env.step(action)
                t2 = time.perf_counter()
                act_s[name] += t1 - t0
                env_s[name] += t2 - t1
                steps[name] += 1
                if terminated or truncated:
                    obs, _ = env.reset()
                    agent.reset(1)
            obs_by[name] = obs
    wall = time.perf_counter() - start

    vae = agent_by[renderers[0]].vae
    params = sum(p.numel() for m in (vae, memory, controller) for p in m.parameters())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread, load average {os.getloadavg()[0]:.2f} (shared)")
    print(f"{cfg.env.id}: V z={cfg.vae.z_dim}, M hidden {cfg.memory.hidden} x "
          f"{cfg.memory.mixtures} mixtures ({cfg.memory.precision}, flow {cfg.memory.flow}), "
          f"C {'linear' if not cfg.controller.hidden else cfg.controller.hidden}; "
          f"{params:,} parameters; {wall:.1f} s wall")
    for name in renderers:
        n = steps[name]
        agent_ms, env_ms = act_s[name] / n * 1e3, env_s[name] / n * 1e3
        print(f"env {name:9s} {env_ms:6.2f} ms/step   agent V+M+C {agent_ms:6.2f} ms/step   "
              f"ratio agent/env {agent_ms / env_ms:.2f}  ({n} steps)")


if __name__ == "__main__":
    main()
