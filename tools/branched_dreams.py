"""Short dreams branched from real states: does M's dream rank controllers as the real
env does once the start state and long-dream drift are taken out?

    python tools/branched_dreams.py --runs /work/runs/tc9/s16,/work/runs/tc13/real-s29 \\
        --source pretrained/takecover --source-episodes 60 --random-episodes 60 \\
        --every 50 dream.max_steps=100 seed=0

Branch points come from real episodes that none of the scored controllers plays: the
``--source`` run's C (on the same V and M) plays ``--source-episodes`` real episodes on
the report seeds of ``seed=S`` (default 0), and ``--random-episodes`` more are played
by random linear controllers of the runs' kind (weights N(0, 0.5^2), one per episode).
At every ``--every``-th step t > 0 of each, M's state after the real steps before t
and the real z_t start a dream (:func:`worldmodels.teacher_forcing.branch_points`).

Every controller of the runs (each finalist of a run's second selection stage, or its
selected C; all on one world model) then dreams from every branch point with the first
run's ``dream.*`` settings (the command's ``dream.*`` overrides on top; set
``dream.max_steps`` to the branches' length), on the same noise. Per controller: the
share of its branches that end in death (M's end rule before the cap) and their mean
length, beside its real score read from its report files of ``--real-seeds`` (as in
tools/dream_vs_real.py). Last: Spearman's rank correlation of the real score with the
share of branches survived.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
from typing import Any

import numpy as np
import torch

from agents.batched import Episode
from agents.finalists import (
    distinct_runs,
    scored_controllers,
    spearman,
    tool_overrides,
    world_model_key,
)
from agents.rollouts import RolloutWorker
from agents.seeds import evaluation_seeds
from envs.dream_env import load_batched_dream
from worldmodels.checkpoint import load_weights
from worldmodels.config import ConfigError, cli_parser, comma_seeds, doc_summary, parse_cli
from worldmodels.dream import dream_returns
from worldmodels.errors import run_cli
from worldmodels.run_dir import as_run
from worldmodels.teacher_forcing import branch_points


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = cli_parser(doc_summary(__doc__))
    parser.add_argument("--runs", required=True, help="comma-separated run directories")
    parser.add_argument("--source", required=True,
                        help="the run whose C plays the source episodes (same V and M)")
    parser.add_argument("--source-episodes", type=int, default=60)
    parser.add_argument("--random-episodes", type=int, default=60)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--real-seeds", default="0,1")
    args: argparse.Namespace = parse_cli(parser, argv)
    real_seeds = comma_seeds(args.real_seeds, "--real-seeds")
    runs = [as_run(p) for p in args.runs.split(",") if p]
    source = as_run(args.source)
    if len(runs) < 2:
        raise ConfigError("--runs needs at least two runs")
    distinct_runs(runs)
    if min(args.source_episodes, args.random_episodes) < 0 or \
            args.source_episodes + args.random_episodes < 1 or args.every < 1:
        raise ConfigError("--source-episodes and --random-episodes must be >= 0, one of "
                          "them > 0, and --every >= 1")
    if len({world_model_key(r) for r in [source, *runs]}) != 1:
        raise ConfigError(f"{args.source} and {args.runs}: their V or M differ; one world "
                          "model must judge them all")
    dream_overrides, seed = tool_overrides(runs[0], args.overrides, ("dream.",),
                                           "seed= and dream.* overrides")
    cfg = runs[0].load_config(dream_overrides)
    # every controller and real score is found before the real episodes are played
    scored = scored_controllers(runs, runs[0].new_controller(
        cfg, runs[0].action_space(), runs[0].load_memory()), real_seeds)

    worker = RolloutWorker(source, batch=source.load_config().controller.batch_envs)
    try:
        load_weights(source.trained_controller(), worker.controller)
        flat = worker.controller.get_flat().numpy()
        rng = np.random.default_rng([seed, 2024])
        plays = [Episode(s, flat, trace=True)
                 for s in evaluation_seeds(seed, args.source_episodes)]
        plays += [Episode(s, rng.normal(0, 0.5, flat.size).astype(np.float32), trace=True)
                  for s in evaluation_seeds(seed + 1, args.random_episodes)]
        played = worker.play(plays)
    finally:
        worker.actor.close()
    latents = [(np.stack(r.latents), np.stack(r.actions)) for r in played]
    z_dim = latents[0][0].shape[-1]
    dream, action_space = load_batched_dream(  # (start latents unused: every dream branches)
        runs[0], cfg, starts=(torch.zeros(1, z_dim), torch.zeros(1, z_dim)))
    # the dream's M gives the branches' states (with dream.ensemble: every M's)
    branches = branch_points(dream.memory, latents, args.every)
    n = len(branches[0])
    controller = runs[0].new_controller(cfg, action_space, dream.memory)
    print(f"{n} branch points from {len(played)} real episodes (mean length "
          f"{np.mean([r.steps for r in played]):.0f}); dreams of up to {dream.max_steps} "
          f"steps at tau {dream.temperature}")
    rows: list[dict[str, Any]] = []
    print("| run | controller | real | branches survived | mean length |\n|---|---|---|---|---|")
    for run, name, params, real in scored:
        dream.generator.manual_seed(seed)  # the same noise for every controller
        _, steps = dream_returns(dream, controller, torch.as_tensor(params)[None],
                                 torch.arange(n), branches)
        row = {"run": str(run.home), "controller": name, "real": real,
               "survived": float(np.mean(steps[0] >= dream.max_steps)),
               "length": float(np.mean(steps[0]))}
        rows.append(row)
        print(f"| {run.home.name} | {name} | {row['real']:.1f} | {row['survived']:.3f} | "
              f"{row['length']:.1f} |", flush=True)
    rho = spearman([r["real"] for r in rows], [r["survived"] for r in rows])
    print(f"Spearman rank correlation of real scores and branches survived over "
          f"{len(rows)} controllers: {rho:.3f}")
    return rows


if __name__ == "__main__":
    run_cli(main)
