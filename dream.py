"""Watch a dream: a GIF of M's dream rollout decoded by V, beside the real env driven by
the same actions from the same start (top: dream, bottom: real).

    python dream.py --config doom_takecover --preset dream
    python dream.py --config doom_takecover --preset dream --policy random --seed 3
    python dream.py --preset quick --dream-only dream.temperature=1.3

Writes ``<run>/dreams/<policy>_seed<S>_tau<T>.gif`` and prints both episodes' steps
and returns.
"""

from __future__ import annotations

import json

from agents.dreams import record_dream
from worldmodels.config import cli_parser, config_from_args, parse_cli
from worldmodels.errors import run_cli


def main(argv: list[str] | None = None) -> dict:
    parser = cli_parser(__doc__.splitlines()[0])
    parser.add_argument("--policy", default="controller", help="controller | random")
    parser.add_argument("--seed", type=int, default=0, help="real env seed (and dream noise)")
    parser.add_argument("--steps", type=int, default=0, help="cap (0: the dream's cap)")
    parser.add_argument("--dream-only", action="store_true", help="no real env beside it")
    args = parse_cli(parser, argv)
    cfg = config_from_args(args)
    tau = cfg.dream.temperature
    out = cfg.run_dir / "dreams" / f"{args.policy}_seed{args.seed}_tau{tau:g}.gif"
    result = record_dream(cfg.run_dir, out, args.policy, args.seed, args.steps,
                          beside_real=not args.dream_only, temperature=tau)
    print(json.dumps(result, indent=2))
    return result



def cli() -> None:
    """The command ``worldmodels-dream``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
