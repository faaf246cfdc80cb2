"""Watch a dream: a GIF of M's dream rollout decoded by V, beside the real env driven by
the same actions from the same start (top: dream, bottom: real).

    python dream.py --run runs/VizdoomTakeCover-v1/dream
    python dream.py --config doom_takecover --preset dream --policy random --seed 3
    python dream.py --preset quick --dream-only dream.temperature=1.3 dream.done=threshold

Writes ``<run>/dreams/<policy>_seed<S>_tau<T>.gif`` (``..._dream-only.gif`` with
``--dream-only``; or the same under ``--out``) and
prints both episodes' steps and returns. ``dream.*`` and ``env.*`` overrides apply.
"""

from __future__ import annotations

import json
from pathlib import Path

from agents.dreams import DREAM_POLICIES, record_dream
from agents.evaluation import default_policy
from worldmodels.config import ConfigError, check_seed, cli_parser, doc_summary, parse_cli
from worldmodels.errors import run_cli
from worldmodels.run_dir import refuse_output_in_shipped, run_from_args


def main(argv: list[str] | None = None) -> dict:
    parser = cli_parser(doc_summary(__doc__))
    parser.add_argument("--policy", choices=DREAM_POLICIES, default=None,
                        help="what acts in the dream (default: a shipped agent's own policy, "
                             "else the run's controller, else its SB3 policy)")
    parser.add_argument("--seed", type=int, default=None,
                        help="real env seed and dream noise (default: the config's seed, "
                             "which seed=N also sets)")
    parser.add_argument("--steps", type=int, default=0,
                        help="cap (0: the dream's cap, dream.max_steps or the env's)")
    parser.add_argument("--dream-only", action="store_true", help="no real env beside it")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write the GIF here instead of the run's dreams/")
    args = parse_cli(parser, argv)
    if args.steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {args.steps}")
    cfg, run = run_from_args(args, trained=True)
    if args.seed is not None and any(o.startswith("seed=") for o in args.overrides) \
            and args.seed != cfg.seed:
        raise ConfigError(f"--seed {args.seed} and seed={cfg.seed}: give one of them")
    seed = cfg.seed if args.seed is None else check_seed(args.seed, "--seed")
    policy = args.policy or default_policy(run)
    tau = cfg.dream.temperature
    out_dir = Path(args.out) if args.out else None
    refuse_output_in_shipped(out_dir)
    alone = "_dream-only" if args.dream_only else ""  # not the GIF with the real env
    out = (out_dir or run.dreams_dir) / f"{policy}_seed{seed}_tau{tau:g}{alone}.gif"
    result = record_dream(run, out, cfg, policy, seed, args.steps,
                          beside_real=not args.dream_only)
    print(json.dumps(result, indent=2))
    return result



def cli() -> None:
    """The command ``worldmodels-dream``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
