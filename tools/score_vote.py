"""A vote of a run's finalists on report episodes: does voting beat the run's C?

    python tools/score_vote.py --run /work/runs/tc9/s16 --episodes 100 seed=0

A run trained with ``controller.final_candidates`` > 0 lists its finalists in its
selected controller's meta (agents/finalists.py). Each is rebuilt by replaying its
search's CMA-ES history; the vote (:class:`worldmodels.controller_vote.VoteController`)
ranks them as the second stage did, by their mean over all its selection episodes, so
its first member is the run's C and a tie goes to the best ranked. ``--members K``
keeps the first K (default: all). The vote plays the report seeds of ``seed`` (as
evaluate.py's; those the selection played are refused) and writes
``eval/vote_<K>[_seed<s>].csv`` and ``.json`` (the files evaluate.py writes, so
tools/runs_summary.py pools them with ``--result``). The last line is
``mean return M ± S over N episodes``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from typing import Any

import numpy as np

from agents.cmaes import ProcessEvaluator
from agents.evaluation import other_seed, play_overrides, result_name, write_evaluation
from agents.finalists import finalists_of, rebuild, weights_key
from agents.rollouts import describe_returns
from agents.seeds import check_report_seeds, evaluation_seeds, selection_of
from worldmodels.atomic import check_writable
from worldmodels.checkpoint import read_header
from worldmodels.config import ConfigError, cli_parser, doc_summary, parse_cli
from worldmodels.errors import run_cli
from worldmodels.run_dir import run_from_args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = cli_parser(doc_summary(__doc__))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--members", type=int, default=0,
                        help="the K best ranked finalists vote (default: all)")
    args = parse_cli(parser, argv)
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    if args.members < 0:
        raise ConfigError(f"--members must be >= 1 (or 0 for all), got {args.members}")
    cfg, run = run_from_args(args, trained=True)
    meta = dict(read_header(run.controller.selected).get("meta", {}))
    points = finalists_of(meta, run.controller.selected)
    rows = meta["final"]["finalists"]
    # the second stage's ranking: the mean over all its episodes, the first stage's
    # order on ties (so the run's C, the stage's pick, is the first member)
    order = sorted(range(len(points)), key=lambda i: -float(rows[i]["overall"]["mean"]))
    k = args.members or len(points)
    if k > len(points):
        raise ConfigError(f"--members {k}: the run has {len(points)} finalists")
    members = [points[i] for i in order[:k]]
    seeds = evaluation_seeds(cfg.seed, args.episodes)
    check_report_seeds(seeds, selection_of(meta), "the vote")
    check_writable(run.eval_dir)
    params = rebuild(cfg, run, points, run.load_config().seed)  # the run's, not seed=S
    flat = np.concatenate([params[p.key] for p in members])
    c = cfg.controller
    started = time.perf_counter()
    overrides = play_overrides(args.overrides)  # env.* / dream.*: played, and in the names
    evaluator = ProcessEvaluator(run, c.engine, c.workers, c.ray_address,
                                 overrides=overrides, batch=c.batch_envs, vote=k)
    try:
        returns, steps = evaluator.returns([flat], seeds, whole_episodes=True)
    finally:
        evaluator.close()
    seed = other_seed(run, cfg.seed)
    name = result_name(f"vote_{k}", overrides=overrides, seed=seed)
    summary = {"policy": name, **describe_returns(returns[0]),
               "seconds": time.perf_counter() - started, "weights": weights_key(flat),
               "members": [{"search": p.search, "source": p.source,
                            "generation": p.generation,
                            "overall": rows[points.index(p)]["overall"]} for p in members]}
    write_evaluation(run.eval_dir, name,
                     [{"episode": j, "seed": s, "return": float(returns[0, j]),
                       "steps": int(steps[0, j])} for j, s in enumerate(seeds)], summary)
    for i, p in enumerate(members):
        print(f"member {i + 1}: search {p.search}, {p.source} of generation "
              f"{p.generation} ({rows[points.index(p)]['overall']['mean']:.1f} over the "
              "selection episodes)")
    print(f"mean return {summary['mean']:.1f} ± {summary['std']:.1f} over "
          f"{summary['episodes']} episodes")
    return summary


if __name__ == "__main__":
    run_cli(main)
