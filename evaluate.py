"""Evaluate a trained run's controller (or a random or SB3 policy) in the real env.

    python evaluate.py --run runs/CarRacing-v3/quick --episodes 100
    python evaluate.py --config carracing --preset quick --episodes 100 --policy random
    python evaluate.py --config carracing --preset quick --episodes 100 --video 1
    python evaluate.py --config doom_takecover --preset dream --in-dream   # virtual score
    python evaluate.py --run DIR env.direct_render=false    # another variant of its env
    python evaluate.py --run DIR --out /tmp/eval             # results outside the run

Writes <run>/eval/<policy>.csv (one row per episode) and <policy>.json (mean, std, ...),
or the same under --out. A trained run's own config is used; overrides may change only
env.*, dream.* and how to run (seed, controller.engine, controller.workers, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

from agents.dreams import dream_score
from agents.evaluation import EVAL_POLICIES, default_policy, evaluate, play_overrides
from worldmodels.config import ConfigError, cli_parser, doc_summary, parse_cli
from worldmodels.errors import run_cli
from worldmodels.run_dir import CONTROLLER_WEIGHTS, refuse_output_in_shipped, run_from_args


def main(argv: list[str] | None = None) -> dict:
    parser = cli_parser(doc_summary(__doc__))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--policy", choices=EVAL_POLICIES, default=None,
                        help="the CMA-ES controller, uniform random actions, or an SB3 policy "
                             "trained by train_controller.py --algo (default: a shipped "
                             "agent's own policy, else the controller, else the SB3 policy "
                             "the run has)")
    parser.add_argument("--weights", choices=list(CONTROLLER_WEIGHTS), default=None,
                        help="the controller: CMA-ES's selected one (the default when it "
                             "exists, else best), its best candidate or its search mean")
    parser.add_argument("--video", type=int, default=0,
                        help="GIFs of the first N episodes: real frames beside V's reconstruction")
    parser.add_argument("--video-stride", type=int, default=1, metavar="K",
                        help="keep every K-th frame in the GIFs (smaller files for long episodes)")
    parser.add_argument("--in-dream", action="store_true",
                        help="score the controller inside M's dream at dream.temperature "
                             "(the virtual score) instead of the real env")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write results here instead of the run's eval/")
    args = parse_cli(parser, argv)
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    if args.video < 0:
        raise ConfigError(f"--video must be >= 0, got {args.video}")
    if args.video_stride < 1:
        raise ConfigError(f"--video-stride must be >= 1, got {args.video_stride}")
    if args.in_dream and args.video:
        raise ConfigError("--video films real episodes; a dream's video is dream.py's "
                          "(python dream.py --run RUN)")
    cfg, run = run_from_args(args, trained=True)
    policy = args.policy or default_policy(run)
    if args.weights and policy != "controller":
        raise ConfigError(f"--weights {args.weights} chooses among CMA-ES's controllers, but "
                          f"the policy played is {policy} (give --policy controller)")
    if args.video and policy == "random":
        raise ConfigError("--video films the agent's episodes (real frames beside V's "
                          "reconstructions); the random policy's are not recorded")
    out = Path(args.out) if args.out else None
    refuse_output_in_shipped(out)
    if args.in_dream:
        summary = dream_score(run, cfg, args.weights or run.controller.default_weights(),
                              args.episodes, cfg.seed, out, policy)
        print(json.dumps(summary, indent=2))
        print(f"mean return {summary['mean']:.1f} ± {summary['std']:.1f} "
              f"over {summary['episodes']} episodes in the dream")
        return summary
    # overrides of the trained run's config that reach its workers (env.*, dream.*,
    # controller.agent_precision)
    overrides = play_overrides(args.overrides)
    c = cfg.controller
    summary = evaluate(run, args.episodes, policy, cfg.seed, args.video,
                       engine=c.engine, workers=c.workers, ray_address=c.ray_address,
                       weights=args.weights, overrides=overrides, out_dir=out,
                       sb3_environment=c.environment, video_stride=args.video_stride)
    print(json.dumps(summary, indent=2))
    print(f"mean return {summary['mean']:.1f} ± {summary['std']:.1f} "
          f"over {summary['episodes']} episodes")
    return summary



def cli() -> None:
    """The command ``worldmodels-evaluate``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
