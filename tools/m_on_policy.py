"""M's fit on the states a policy reaches: M's NLL of the next z, per dim, on real episodes.

    python tools/m_on_policy.py pretrained/carracing --episodes 10 env.direct_render=true
    python tools/m_on_policy.py RUN --policy controller --baseline brownian --episodes 10

Plays ``--episodes`` real episodes with the run's policy (``ppo`` or another SB3
algorithm by its mean action, or ``controller``: CMA-ES's C as evaluate.py picks it), and
as many with a data policy (``--baseline``, default ``brownian``: what V and M were trained
on), on the same env seeds (``--first-seed`` onwards). At each step V encodes the frame
(z = V's mean) and M scores it: -log p(z_{t+1} | h_t) / z_dim in nats, averaged per
episode. A policy whose own episodes M scores much worse than the data policy's reaches
states (or speeds) that M's training data did not show it: the case for another round of
Ha's iterative training. Writes nothing.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym
import numpy as np
import torch

from agents.policies import make_policy
from agents.vmc import VMCAgent
from envs.factory import make_env_from_config
from worldmodels.config import DATA_POLICIES, ExperimentConfig, command_parser
from worldmodels.errors import run_cli
from worldmodels.run_dir import RunDir

POLICIES = ("ppo", "a2c", "sac", "td3", "controller")


def episode_nll(agent: VMCAgent, env: gym.Env, seed: int, data_policy: str | None,
                cfg: ExperimentConfig) -> tuple[float, float, int]:
    """(M's mean NLL per dim of each next z, return, steps) of one episode on env seed
    ``seed``, played by ``agent``'s controller, or by ``data_policy`` with M following."""
    memory, z_dim = agent.memory, cfg.vae.z_dim
    policy = None if data_policy is None else make_policy(
        data_policy, env.action_space, np.random.default_rng(seed), cfg.collect.brownian_dt,
        cfg.collect.linear_std, hold_max=cfg.collect.hold_max)
    obs, _ = env.reset(seed=seed)
    state = memory.initial_state(1)
    h = None
    nlls, total, steps = [], 0.0, 0
    with torch.no_grad():
        while True:
            z = agent.encode(torch.from_numpy(np.ascontiguousarray(obs[None])))
            if h is not None:
                nlls.append(float(-memory.log_prob(z, h)[0]) / z_dim)
            if policy is None:
                action = agent.controller(memory.features(z, state, agent.controller.use_cell))
            else:
                picked = np.asarray(policy.act(obs))
                action = torch.as_tensor(picked.astype(np.float32) if picked.dtype.kind == "f"
                                         else picked)[None]
            h, state = memory.step(z, action, state)
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            total += float(reward)
            steps += 1
            if terminated or truncated:
                break
    return float(np.mean(nlls)), total, steps


def main(argv: list[str] | None = None) -> str:
    parser = command_parser(__doc__)
    parser.add_argument("run", help="a trained run (or a shipped agent under pretrained/)")
    parser.add_argument("--policy", choices=POLICIES, default="ppo",
                        help="the run's policy whose episodes M scores (default ppo)")
    parser.add_argument("--baseline", default="brownian",
                        choices=[p for p in DATA_POLICIES if p != "controller"],
                        help="the data policy played on the same seeds (default brownian)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=10_000,
                        help="env seed of the first episode (the others follow)")
    parser.add_argument("overrides", nargs="*", help="env.* overrides, e.g. "
                        "env.direct_render=true (the env M's data came from)")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    torch.set_num_threads(1)
    run = RunDir(args.run)
    cfg = run.load_config(args.overrides)
    env = make_env_from_config(cfg.env)
    if args.policy == "controller":
        agent = VMCAgent.from_run(run, cfg, env.action_space, run.controller.default_weights())
    else:
        from agents.sb3 import sb3_controller  # SB3 loads only when played

        policy = sb3_controller(run, cfg, args.policy, cfg.controller.environment)
        policy.deterministic = True  # its mean action
        agent = VMCAgent.from_run(run, cfg, env.action_space, controller=policy)
    seeds = range(args.first_seed, args.first_seed + args.episodes)
    lines = [f"M's NLL of the next z (nats/dim, z = V's mean) on {run.path}, "
             f"{args.episodes} episodes, env seeds {seeds.start}-{seeds.stop - 1}",
             "| policy | M's NLL / dim (± s.e.) | per episode min-max | return | steps | s |",
             "|---|---|---|---|---|---|"]
    means = {}
    try:
        for name, data_policy in ((args.policy, None), (args.baseline, args.baseline)):
            started = time.perf_counter()
            rows = [episode_nll(agent, env, s, data_policy, cfg) for s in seeds]
            nll = np.array([r[0] for r in rows])
            means[name] = nll.mean()
            se = nll.std(ddof=1) / math.sqrt(len(nll)) if len(nll) > 1 else float("nan")
            lines.append(f"| {name} | {nll.mean():.4f} ± {se:.4f} | {nll.min():.4f}-"
                         f"{nll.max():.4f} | {np.mean([r[1] for r in rows]):.1f} | "
                         f"{np.mean([r[2] for r in rows]):.0f} | "
                         f"{time.perf_counter() - started:.0f} |")
    finally:
        env.close()
    lines.append(f"difference ({args.policy} - {args.baseline}): "
                 f"{means[args.policy] - means[args.baseline]:+.4f} nats/dim")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    run_cli(main)
