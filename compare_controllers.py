"""The population experiment: C trained by CMA-ES in the dreams of several Ms at several
population sizes, each run's selected C scored in the real env; one table and one plot.

    python compare_controllers.py --run runs/VizdoomTakeCover-v1/dream \\
        --memories rmdn_diag,frmdn_square_conditional --populations 4,8,16,32,64 \\
        --seeds 0,1,2 --dream-episodes 16384 controller.rollouts=16 controller.eval_every=8

Every run plays ``--dream-episodes`` dream episodes: generations = dream episodes /
(population x ``controller.rollouts``), which must divide exactly. Each M is
``memory_compare/<memory>__s<--memory-seed>/`` of the run (trained by compare_memory.py's
code when absent). Selection: every ``controller.eval_every`` generations (or
``--selections K`` times a run, evenly spaced) on ``controller.select_episodes`` real
episodes. Score: the selected C on ``--report-episodes`` real episodes of the report
seeds. Writes ``<run>/controller_compare/`` (one directory per run, ``results.md``,
``results.json``, ``population.png``); a rerun skips finished runs and resumes the rest.
Overrides may change ``controller.*``, ``dream.*`` and ``device`` only. ``--shard K/N``
splits the runs between N processes (started with K = 0 .. N-1, e.g. one per core); each
trains a missing M under a lock, and each one's table covers every run finished so far.
The same command started twice shares the runs the same way (a lock per run).
``--report-only`` runs nothing and writes the table and plot of the runs finished so far.
"""

from __future__ import annotations

import argparse

from agents.population import Plan, population_experiment, write_results
from worldmodels.config import (
    MIN_POPULATION,
    ConfigError,
    check_seed,
    cli_parser,
    comma_integers,
    comma_names,
    comma_seeds,
    doc_summary,
    parse_cli,
)
from worldmodels.errors import run_cli
from worldmodels.run_dir import run_from_args


def shard_of(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N)."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"--shard must be K/N with whole numbers (e.g. 0/2), not '{text}'")
    return int(parts[0]), int(parts[1])


def main(argv: list[str] | None = None) -> str:
    parser = cli_parser(doc_summary(__doc__))
    parser.add_argument("--memories", default="rmdn_diag,frmdn_square_conditional",
                        help="comma-separated M variants (compare_memory.py's names)")
    parser.add_argument("--memory-seed", type=int, default=0,
                        help="the seed of each variant's M in memory_compare/")
    parser.add_argument("--populations", default="4,8,16,32,64", help="comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated CMA-ES seeds")
    parser.add_argument("--dream-episodes", type=int, required=True,
                        help="dream episodes every run plays (its budget)")
    parser.add_argument("--selections", type=int, default=0,
                        help="select K times a run, evenly spaced in its budget, instead "
                             "of every controller.eval_every generations")
    parser.add_argument("--report-episodes", type=int, default=100,
                        help="real episodes that score each run's selected C")
    parser.add_argument("--report-seed", type=int, default=0,
                        help="the report seeds' stream (the same for every run)")
    parser.add_argument("--shard", default="0/1", metavar="K/N",
                        help="run every N-th run from the K-th (0-based), so that N "
                             "processes, e.g. one per core, share the plan")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the table and plot of the runs finished "
                             "so far (e.g. while the experiment runs elsewhere)")
    args: argparse.Namespace = parse_cli(parser, argv)
    if not args.run:
        raise ConfigError("give --run DIR: the trained run whose V and data the Ms share")
    shard, shards = shard_of(args.shard)
    cfg, run = run_from_args(args)
    plan = Plan(variants=tuple(comma_names(args.memories, "--memories")),
                populations=tuple(comma_integers(args.populations, "--populations",
                                                 low=MIN_POPULATION, required=True)),
                seeds=tuple(comma_seeds(args.seeds)),
                dream_episodes=args.dream_episodes,
                memory_seed=check_seed(args.memory_seed, "--memory-seed"),
                selections=args.selections, report_episodes=args.report_episodes,
                report_seed=check_seed(args.report_seed, "--report-seed"),
                shard=shard, shards=shards)
    rows = population_experiment(cfg, run, plan, report_only=args.report_only)
    if not rows:
        raise ConfigError(f"{run.controller_compare.plot.parent}: no run of this plan has "
                          "finished yet")
    text = write_results(run, rows)
    text += f"\n\nplot: {run.controller_compare.plot}"
    print(text)
    return text


def cli() -> None:
    """The command ``worldmodels-compare-controllers``: main() through run_cli."""
    run_cli(main)


if __name__ == "__main__":
    cli()
