"""Does the dream rank controllers as the real env does? Virtual against real scores.

    python tools/dream_vs_real.py --runs /work/runs/tc9/s16,/work/runs/tc9/s17 \\
        --dreams 1000 --real-seeds 0,1 dream.temperature=1.15

For every run (all on one world model, so that their dreams are the same): each finalist
of its second selection stage (agents/finalists.py), or its selected controller when it
has none. Its real score is read from the run's report files of the seed sets in
``--real-seeds`` (``eval/finalist_<search>_<source>_<generation>_seed<s>.json`` from
tools/score_finalists.py, ``eval/controller_selected_seed<s>.json`` from evaluate.py;
a missing file is named), pooled over the sets. Its virtual score is its mean return
over ``--dreams`` dreams of the first run's M at the first run's ``dream.*`` settings
(with the command's ``dream.*`` overrides; other keys are refused), every controller on
the same starts and noise: those evaluate.py --in-dream plays for ``seed=S`` (default 0).
Every report file and controller is found before any dream is played. Prints a markdown
table and, last, Spearman's rank correlation of the two scores.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
from typing import Any

from agents.dreams import DreamEvaluator, dream_score_seeds
from agents.finalists import distinct_runs, scored_controllers, spearman, tool_overrides
from worldmodels.checkpoint import file_digest
from worldmodels.config import ConfigError, cli_parser, comma_seeds, doc_summary, parse_cli
from worldmodels.errors import run_cli
from worldmodels.run_dir import as_run


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = cli_parser(doc_summary(__doc__))
    parser.add_argument("--runs", required=True, help="comma-separated run directories")
    parser.add_argument("--dreams", type=int, default=1000)
    parser.add_argument("--real-seeds", default="0,1")
    args: argparse.Namespace = parse_cli(parser, argv)
    if args.dreams < 1:
        raise ConfigError(f"--dreams must be >= 1, got {args.dreams}")
    seeds = comma_seeds(args.real_seeds, "--real-seeds")
    runs = [as_run(p) for p in args.runs.split(",") if p]
    if len(runs) < 2:
        raise ConfigError("--runs needs at least two runs")
    distinct_runs(runs)
    models = {file_digest(r.memory.model) for r in runs}
    if len(models) != 1:
        raise ConfigError(f"{args.runs}: the runs' Ms differ; their dreams cannot be compared")
    dream_overrides, seed = tool_overrides(runs[0], args.overrides, ("dream.",),
                                           "seed= and dream.* overrides")
    evaluator = DreamEvaluator(runs[0], runs[0].load_config(dream_overrides))
    starts = dream_score_seeds(seed, args.dreams)  # (evaluate.py --in-dream's of seed=S)
    rows: list[dict[str, Any]] = []
    print("| run | controller | real | dream |\n|---|---|---|---|")
    for run, name, flat, real in scored_controllers(runs, evaluator.controller, seeds):
        dream = float(evaluator(flat[None], starts)[0])
        rows.append({"run": str(run.home), "controller": name, "real": real, "dream": dream})
        print(f"| {run.home.name} | {name} | {real:.1f} | {dream:.1f} |")
    rho = spearman([r["real"] for r in rows], [r["dream"] for r in rows])
    print(f"Spearman rank correlation of real and dream scores over {len(rows)} "
          f"controllers: {rho:.3f}")
    return rows


if __name__ == "__main__":
    run_cli(main)
