"""Evaluate the run's controller (or a random policy) in the real env.

    python evaluate.py --config carracing --preset quick --episodes 100 --policy random
    python evaluate.py --config carracing --preset quick --episodes 100 --video 1
    python evaluate.py --config doom_takecover --preset dream --in-dream   # virtual score
    python evaluate.py --config carracing name=direct env.direct_render=false  # another renderer

Writes <run>/eval/<policy>.csv (one row per episode) and <policy>.json (mean, std, ...).
"""

from __future__ import annotations

import json

from agents.evaluation import evaluate
from worldmodels.config import cli_parser, config_from_args, parse_cli
from worldmodels.errors import run_cli


def main(argv: list[str] | None = None) -> dict:
    parser = cli_parser(__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--policy", choices=["controller", "random", "ppo", "a2c", "sac", "td3"],
                        default="controller",
                        help="the CMA-ES controller, uniform random actions, or an SB3 policy "
                             "trained by train_controller.py --algo")
    parser.add_argument("--weights", choices=["best", "mean"], default="best",
                        help="the controller: CMA-ES's best candidate or its search mean")
    parser.add_argument("--video", type=int, default=0,
                        help="GIFs of the first N episodes: real frames beside V's reconstruction")
    parser.add_argument("--in-dream", action="store_true",
                        help="score the controller inside M's dream at dream.temperature "
                             "(the virtual score) instead of the real env")
    args = parse_cli(parser, argv)
    cfg = config_from_args(args)
    if args.in_dream:
        from agents.dreams import dream_score

        summary = dream_score(cfg.run_dir, args.weights, args.episodes,
                              cfg.dream.temperature, cfg.seed)
        print(json.dumps(summary, indent=2))
        return summary
    # env.* overrides change the env the trained agent plays (its own config is kept)
    env_overrides = tuple(o for o in args.overrides if o.startswith("env."))
    summary = evaluate(cfg.run_dir, args.episodes, args.policy, cfg.seed, args.video,
                       engine=cfg.controller.engine, workers=cfg.controller.workers,
                       ray_address=cfg.controller.ray_address, weights=args.weights,
                       env_overrides=env_overrides)
    print(json.dumps(summary, indent=2))
    print(f"mean return {summary['mean']:.1f} ± {summary['std']:.1f} "
          f"over {summary['episodes']} episodes")
    return summary



def cli() -> None:
    """The command ``worldmodels-evaluate``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
