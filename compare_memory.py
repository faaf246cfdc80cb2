"""Train (or load) several M configurations on the same latents and print one table:
held-out NLL in nats per latent dimension, reward MSE, done accuracy, seconds per epoch.

    python compare_memory.py --config carracing --preset quick --seeds 0,1
    python compare_memory.py --variants rmdn_diag,frmdn_square --seeds 0 memory.epochs=5
"""

from __future__ import annotations

import argparse

from worldmodels.config import ConfigError, cli_parser, parse_cli
from worldmodels.errors import run_cli
from worldmodels.memory_compare import VARIANTS, compare, write_results
from worldmodels.run_dir import run_from_args


def main(argv: list[str] | None = None) -> str:
    parser = cli_parser(__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1", help="comma-separated model seeds")
    args: argparse.Namespace = parse_cli(parser, argv)
    cfg, run = run_from_args(args)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, not '{args.seeds}'") \
            from None
    rows = compare(cfg, run, [v for v in args.variants.split(",") if v], seeds)
    text = write_results(run, rows)
    print(text)
    return text



def cli() -> None:
    """The command ``worldmodels-compare-memory``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
