"""Benchmark (f): batched acting against batch-1 play, side by side in one run.

    python benchmarks/batched_acting.py                       # CarRacingDirect-v3, one core
    python benchmarks/batched_acting.py --batches 8,16,32 --rounds 3 --sb3-envs 64

Two comparisons, each on one torch thread in this one process:

* real-env acting: agent + env steps/s of ``agents.batched.BatchedActor`` at N = 1
  against N = 8, 16 and 32, and of the loop workers ran before batching
  (``VMCAgent.act`` on one frame), on CarRacing with the direct renderer
  (``env.direct_render=true``);
* SB3 in the dream: ``envs.dream_env.DreamVecEnv`` with N dreams in one batch against
  ``DreamEnv`` (what ``gymnasium.make("worldmodels/Dream-v0")`` gives), steps/s;
* with ``--generation P,R``: the wall time of one real-env CMA-ES generation (P
  candidates x R rollouts, ``--workers`` worker processes, episodes capped at
  ``--generation-steps``) with batch-1 workers against workers that play
  ``--generation-batch`` episodes together, on a run directory of these V and M.

V, M and C have the config's default sizes, freshly initialised (a step's cost does not
depend on the weights' values); every controller episode has its own random
parameters, as CMA-ES candidates do. Episodes are capped at ``--episode-steps`` so
each round plays every setting for a comparable time; rounds interleave the settings
so load drift on a shared machine hits them alike. The last line is
``speed-up: <ratio>x``, the best batched N against N = 1 for real-env acting.
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

from agents.batched import BatchedActor, Episode  # noqa: E402
from agents.vmc import VMCAgent  # noqa: E402
from envs.dream_env import DreamEnv, DreamVecEnv  # noqa: E402
from envs.factory import make_env_from_config  # noqa: E402
from worldmodels.config import doc_summary, load_config  # noqa: E402
from worldmodels.controller import build_controller  # noqa: E402
from worldmodels.dream import Dream  # noqa: E402
from worldmodels.frmdn_training import build_memory  # noqa: E402
from worldmodels.vae import ConvVAE  # noqa: E402


def acting_rate(actor: BatchedActor, n_params: int, episodes: int, steps: int,
                seed: int) -> tuple[float, float, float]:
    """(agent + env steps per second, agent ms per step, env ms per step) over
    ``episodes`` capped episodes."""
    rng = np.random.default_rng(seed)
    todo = [Episode(seed * 1000 + i, rng.normal(0, 0.5, n_params).astype(np.float32), steps)
            for i in range(episodes)]
    before = dict(actor.seconds)
    start = time.perf_counter()
    results = actor.play(todo)
    total = sum(r.steps for r in results)
    agent_ms, env_ms = (1000 * (actor.seconds[k] - before[k]) / total for k in ("agent", "env"))
    return total / (time.perf_counter() - start), agent_ms, env_ms


def act_loop_rate(agent: VMCAgent, env: gym.Env, n_params: int, episodes: int, steps: int,
                  seed: int) -> float:
    """Agent + env steps per second of the batch-1 loop workers ran before batching
    (``VMCAgent.act`` on one frame, C's weights set per episode), same episodes."""
    rng = np.random.default_rng(seed)
    total, start = 0, time.perf_counter()
    for i in range(episodes):
        agent.controller.set_flat(torch.as_tensor(rng.normal(0, 0.5, n_params),
                                                  dtype=torch.float32))
        obs, _ = env.reset(seed=seed * 1000 + i)
        agent.reset(1)
        for _ in range(steps):
            obs, _, terminated, truncated, _ = env.step(agent.act(obs[None])[0])
            total += 1
            if terminated or truncated:
                break
    return total / (time.perf_counter() - start)


def dream_rate(env: DreamEnv | DreamVecEnv, steps: int, seed: int) -> float:
    """Dream steps per second (a VecEnv's step counts its N dreams), random actions."""
    space = env.action_space
    space.seed(seed)
    if isinstance(env, DreamVecEnv):
        env.seed(seed)
        env.reset()
        actions = [np.stack([space.sample() for _ in range(env.num_envs)])
                   for _ in range(steps)]
        start = time.perf_counter()
        for a in actions:
            env.step(a)
        return env.num_envs * steps / (time.perf_counter() - start)
    env.reset(seed=seed)
    actions = [space.sample() for _ in range(steps)]
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def generation_seconds(cfg, vae: ConvVAE, memory, population: int, rollouts: int,
                       workers: int, batches: list[int], steps: int, rounds: int,
                       ) -> dict[int, list[float]]:
    """Seconds per CMA-ES generation (real env, ``workers`` processes) at each batch."""
    import tempfile

    from agents.cmaes import ProcessEvaluator, generation_seeds
    from worldmodels.checkpoint import save_model
    from worldmodels.run_dir import RunDir
    from worldmodels.shards import describe_action_space

    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp)
        run.write_config(cfg)
        save_model(run.vae.model, vae)
        space = make_env_from_config(cfg.env).action_space
        save_model(run.memory.model, memory, meta={"done_pos_weight": 1.0,
                                                   "action_space": describe_action_space(space)})
        controller = build_controller(cfg.controller,
                                      memory.feature_size(cfg.controller.use_cell), space)
        rng = np.random.default_rng(0)
        candidates = rng.normal(0, 0.5, (population, controller.num_parameters()))
        evaluators = {b: ProcessEvaluator(run, "process", workers, max_steps=steps, batch=b)
                      for b in batches}
        seconds: dict[int, list[float]] = {b: [] for b in batches}
        try:
            for evaluator in evaluators.values():  # warm-up: workers load V and M
                evaluator(candidates[:1], [0])
            for r in range(rounds):
                seeds = generation_seeds(0, r, rollouts)
                for b, evaluator in evaluators.items():
                    start = time.perf_counter()
                    evaluator(candidates, seeds)
                    seconds[b].append(time.perf_counter() - start)
        finally:
            for evaluator in evaluators.values():
                evaluator.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--config", default="carracing")
    parser.add_argument("--batches", default="8,16,32", help="batched N to compare with 1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--episode-steps", type=int, default=100)
    parser.add_argument("--batch1-episodes", type=int, default=4,
                        help="episodes of N = 1 per round (batched N plays 2 N)")
    parser.add_argument("--sb3-envs", type=int, default=64)
    parser.add_argument("--dream-steps", type=int, default=200)
    parser.add_argument("--generation", default="", metavar="P,R",
                        help="also time a real-env CMA-ES generation of P x R episodes")
    parser.add_argument("--generation-batch", type=int, default=16)
    parser.add_argument("--generation-steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precisions", default="",
                        help="agent precisions to compare side by side, e.g. "
                             "float32,bfloat16 (default: the config's "
                             "controller.agent_precision); the last line compares with "
                             "N = 1 of the first")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batches = [int(b) for b in args.batches.split(",") if b]

    cfg = load_config(args.config, [], ["env.direct_render=true", *args.overrides])
    probe = make_env_from_config(cfg.env)
    space = probe.action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    action_dim = int(space.n) if discrete else int(np.prod(space.shape))
    memory = build_memory(cfg, action_dim, discrete).eval()
    controller = build_controller(cfg.controller, memory.feature_size(cfg.controller.use_cell),
                                  space)
    precisions = [p for p in args.precisions.split(",") if p] \
        or [cfg.controller.agent_precision]
    vae = ConvVAE(z_dim=cfg.vae.z_dim)
    agents = {p: VMCAgent(vae, memory, controller, precision=p) for p in precisions}
    agent = agents[precisions[0]]
    # one actor per (precision, N), each with its own envs
    actors = {(p, n): BatchedActor(agents[p], lambda: make_env_from_config(cfg.env), n)
              for p in precisions for n in [1, *batches]}
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__},"
          " 1 torch thread")
    m = memory.config()
    print(f"env {cfg.env.id} (direct_render={cfg.env.direct_render}); V z {cfg.vae.z_dim}; "
          f"M {cfg.memory.kind} hidden {m['hidden']}, flow {m.get('flow', 'none')}, "
          f"{m.get('precision', 'diag')}; C {controller.num_parameters()} parameters; "
          f"episodes of {args.episode_steps} steps; agent precision "
          f"{', '.join(precisions)}")
    n_params = controller.num_parameters()
    for (_, n), actor in actors.items():  # warm-up: envs made, first calls allocate
        acting_rate(actor, n_params, n, 5, 99)
    rates: dict[tuple[str, int], list[float]] = {k: [] for k in actors}
    split: dict[tuple[str, int], list[tuple[float, float]]] = {k: [] for k in actors}
    before: list[float] = []
    act_loop_rate(agent, probe, n_params, 1, 5, 99)
    for r in range(args.rounds):
        before.append(act_loop_rate(agent, probe, n_params, args.batch1_episodes,
                                    args.episode_steps, r))
        for (p, n), actor in actors.items():
            episodes = args.batch1_episodes if n == 1 else 2 * n
            rate, agent_ms, env_ms = acting_rate(actor, n_params, episodes,
                                                 args.episode_steps, r)
            rates[p, n].append(rate)
            split[p, n].append((agent_ms, env_ms))
    median = {k: statistics.median(v) for k, v in rates.items()}
    agent_ms = {k: statistics.median(a for a, _ in v) for k, v in split.items()}
    env_ms = {k: statistics.median(e for _, e in v) for k, v in split.items()}
    base = (precisions[0], 1)
    print(f"| acting | agent + env steps/s (median) | rounds | vs N = 1 ({precisions[0]}) "
          "| agent ms/step | env ms/step |")
    print("|---|---|---|---|---|---|")
    print(f"| batch-1 loop before batching (VMCAgent.act, {precisions[0]}) | "
          f"{statistics.median(before):.0f} | {', '.join(f'{x:.0f}' for x in before)} | "
          f"{statistics.median(before) / median[base]:.2f}x | | |")
    for (p, n), v in median.items():
        print(f"| {p}, N = {n} | {v:.0f} | {', '.join(f'{x:.0f}' for x in rates[p, n])} | "
              f"{v / median[base]:.2f}x | {agent_ms[p, n]:.3f} | {env_ms[p, n]:.3f} |")
    for actor in actors.values():
        actor.close()

    d = cfg.vae.z_dim
    start_mu, start_logvar = torch.randn(16, d), torch.full((16, d), -2.0)

    def new_dream() -> Dream:
        # threshold 1.0: the done head never ends a dream; the cap restarts them
        return Dream(memory, start_mu, start_logvar, cfg.dream.temperature,
                     done_mode="threshold", done_threshold=1.0, max_steps=1000)

    single = DreamEnv(new_dream(), space, use_cell=cfg.controller.use_cell)
    vec = DreamVecEnv(new_dream(), space, args.sb3_envs, cfg.controller.use_cell)
    dream_rate(single, 5, 0)
    dream_rate(vec, 2, 0)
    dream_rates: dict[str, list[float]] = {"Dream-v0 (one dream)": [],
                                           f"DreamVecEnv (N = {args.sb3_envs})": []}
    for r in range(args.rounds):
        dream_rates["Dream-v0 (one dream)"].append(dream_rate(single, args.dream_steps, r))
        dream_rates[f"DreamVecEnv (N = {args.sb3_envs})"].append(
            dream_rate(vec, max(1, args.dream_steps // 4), r))
    dm = {k: statistics.median(v) for k, v in dream_rates.items()}
    print("| SB3 in the dream | dream steps/s (median) | rounds |")
    print("|---|---|---|")
    for k, v in dm.items():
        print(f"| {k} | {v:.0f} | {', '.join(f'{x:.0f}' for x in dream_rates[k])} |")
    names = list(dm)
    print(f"dream VecEnv / Dream-v0: {dm[names[1]] / dm[names[0]]:.1f}x")
    if args.generation:
        population, rollouts = (int(x) for x in args.generation.split(","))
        gen = generation_seconds(cfg, agent.vae, memory, population, rollouts, args.workers,
                                 [1, args.generation_batch], args.generation_steps,
                                 args.rounds)
        print(f"| CMA-ES generation, {population} x {rollouts} episodes of <= "
              f"{args.generation_steps} steps, {args.workers} workers | seconds (median) "
              "| rounds |")
        print("|---|---|---|")
        for b, v in gen.items():
            print(f"| batch {b} per worker | {statistics.median(v):.1f} | "
                  f"{', '.join(f'{x:.1f}' for x in v)} |")
        g1, gb = (statistics.median(gen[b]) for b in (1, args.generation_batch))
        print(f"generation time, batched / batch-1: {gb / g1:.2f}")
    for p in precisions:
        one = (p, 1)
        best_n = max(batches, key=lambda n: median[p, n])
        b = (p, best_n)
        print(f"{p}: best batched N = {best_n}, {median[b] / median[one]:.2f}x its own N = 1; "
              f"the agent's share of a step: {agent_ms[one]:.3f} -> {agent_ms[b]:.3f} ms "
              f"({agent_ms[one] / agent_ms[b]:.1f}x), the env's {env_ms[one]:.3f} -> "
              f"{env_ms[b]:.3f} ms; with a free agent the ceiling would be "
              f"{(agent_ms[one] + env_ms[one]) / env_ms[b]:.2f}x")
    best = max(((p, n) for p in precisions for n in batches), key=lambda k: median[k])
    print(f"best batched: {best[0]}, N = {best[1]}; against the batch-1 loop before "
          f"batching: {median[best] / statistics.median(before):.2f}x")
    print(f"speed-up: {median[best] / median[base]:.2f}x")


if __name__ == "__main__":
    main()
