"""Train (or load) several M configurations on the same latents and print one table:
held-out NLL in nats per latent dimension (mean ± standard error over seeds, and each
variant's gap to the RMDN), reward MSE, done accuracy, seconds per epoch.

    python compare_memory.py --config carracing --preset quick --seeds 0,1,2
    python compare_memory.py --variants rmdn_diag,frmdn_square --seeds 0 memory.epochs=5
    python compare_memory.py --run runs/CarRacing-v3/quick --episodes 10,20,35 \
        --variants rmdn_diag,frmdn_square_conditional      # and the data curve

``--episodes``: the data curve instead, each variant and seed trained on N of the
training episodes for each N (nested subsets fixed by the data seed; the same held-out
episodes; ``--budget steps``: the same gradient steps for every N, ``epochs``: the same
epochs), written to the run's ``memory_compare/curve.md``, ``curve.json`` and
``curve.png``; the table is then the largest N's. ``--budget-episodes M``: the steps are
those of ``memory.epochs`` epochs over M episodes rather than over the largest N.
"""

from __future__ import annotations

import argparse

from worldmodels.config import (
    cli_parser,
    comma_integers,
    comma_names,
    comma_seeds,
    doc_summary,
    parse_cli,
)
from worldmodels.errors import run_cli
from worldmodels.memory_compare import (
    BUDGETS,
    PAPER_VARIANTS,
    VARIANTS,
    compare,
    curve,
    write_curve,
    write_results,
)
from worldmodels.run_dir import run_from_args


def main(argv: list[str] | None = None) -> str:
    parser = cli_parser(doc_summary(__doc__))
    parser.add_argument("--variants", default=",".join(PAPER_VARIANTS),
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated model seeds")
    parser.add_argument("--episodes", default="",
                        help="comma-separated training-set sizes: also the data curve")
    parser.add_argument("--budget", default="steps", choices=BUDGETS,
                        help="data curve: the same gradient steps or the same epochs per size")
    parser.add_argument("--budget-episodes", type=int, default=0,
                        help="data curve, budget steps: the size whose memory.epochs set the "
                             "steps (default: the largest), e.g. to add a size to a finished "
                             "curve")
    args: argparse.Namespace = parse_cli(parser, argv)
    cfg, run = run_from_args(args)
    seeds = comma_seeds(args.seeds)
    sizes = comma_integers(args.episodes, "--episodes", low=1)
    variants = comma_names(args.variants, "--variants")
    if not sizes:
        text = write_results(run, compare(cfg, run, variants, seeds))
    else:  # the table is the curve's largest size: no training beyond the curve's
        points = curve(cfg, run, variants, seeds, sizes, args.budget,
                       budget_episodes=args.budget_episodes)
        text = (f"{max(sizes)} training episodes:\n"
                + write_results(run, [r for r in points if r["train_episodes"] == max(sizes)])
                + "\n\n" + write_curve(run, points, args.budget)
                + f"\n\nplot: {run.memory_compare_dir / 'curve.png'}")
    print(text)
    return text



def cli() -> None:
    """The command ``worldmodels-compare-memory``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
