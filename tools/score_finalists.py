"""Every finalist of a run's second selection stage on report episodes: did the stage rank
them right?

    python tools/score_finalists.py --run /work/runs/tc9/s16 --episodes 100 seed=0

A run trained with ``controller.final_candidates`` > 0 lists its finalists in its
selected controller's meta (agents/finalists.py). Each is rebuilt by replaying its
search's CMA-ES history and plays the report seeds of ``seed`` (as evaluate.py's; those
the selection played are refused), all finalists on the same episodes. Writes
``eval/finalist_<search>_<source>_<generation>[_seed<s>].csv`` and ``.json`` per finalist
(the files evaluate.py writes, so tools/runs_summary.py pools them with ``--result``),
prints a markdown table (first stage, second stage, both, report) and last the
finalist the stage picked and its report mean.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from typing import Any

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


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = cli_parser(doc_summary(__doc__))
    parser.add_argument("--episodes", type=int, default=100)
    args = parse_cli(parser, argv)
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    cfg, run = run_from_args(args, trained=True)
    meta = dict(read_header(run.controller.selected).get("meta", {}))
    points = finalists_of(meta, run.controller.selected)
    seeds = evaluation_seeds(cfg.seed, args.episodes)
    check_report_seeds(seeds, selection_of(meta), "the finalists")
    check_writable(run.eval_dir)
    saved = run.load_config()  # the searches' settings (a dream.* override only plays)
    params = rebuild(saved, run, points, saved.seed)  # the run's seed, not seed=S
    c = cfg.controller
    started = time.perf_counter()
    overrides = play_overrides(args.overrides)  # env.* / dream.*: played, and in the names
    evaluator = ProcessEvaluator(run, c.engine, c.workers, c.ray_address,
                                 overrides=overrides, batch=c.batch_envs)
    try:
        returns, steps = evaluator.returns([params[p.key] for p in points], seeds)
    finally:
        evaluator.close()
    seconds = time.perf_counter() - started
    rows, seed = [], other_seed(run, cfg.seed)
    print("| finalist | first stage | second stage | both | report |\n|---|---|---|---|---|")
    for i, (p, info) in enumerate(zip(points, meta["final"]["finalists"], strict=True)):
        name = result_name(f"finalist_{p.search}_{p.source}_{p.generation}",
                           overrides=overrides, seed=seed)
        # (the finalists play together: each gets an equal share of the wall time)
        summary = {"policy": name, **describe_returns(returns[i]),
                   "seconds": seconds / len(points),
                   "weights": weights_key(params[p.key]), "finalist": info}
        write_evaluation(run.eval_dir, name,
                         [{"episode": j, "seed": s, "return": float(returns[i, j]),
                           "steps": int(steps[i, j])} for j, s in enumerate(seeds)], summary)
        rows.append(summary)
        print(f"| search {p.search}, {p.source} of generation {p.generation} | "
              f"{info['first_stage']['mean']:.1f} | {info['final']['mean']:.1f} | "
              f"{info['overall']['mean']:.1f} | {summary['mean']:.1f} ± {summary['std']:.1f} |")
    picked = next(r for r, p in zip(rows, points, strict=True)
                  if (p.search, p.source, p.generation)
                  == (meta["search"], meta["source"], meta["generation"]))
    print(f"picked: search {meta['search']}, {meta['source']} of generation "
          f"{meta['generation']}: {picked['mean']:.1f} over {picked['episodes']} report "
          f"episodes (seed={cfg.seed})")
    return rows


if __name__ == "__main__":
    run_cli(main)
