"""Stage 3: train C on [z, h] from the run's V and M, in the real env or inside M's dream
(controller.environment=dream): CMA-ES (default) or a Stable-Baselines3 algorithm.

    python train_controller.py --config carracing --preset quick
    python train_controller.py controller.engine=ray controller.ray_address=HOST:6379
    python train_controller.py --algo ppo controller.sb3_timesteps=20000
    python train_controller.py --config doom_takecover --preset dream   # C in M's dream
    python train_controller.py controller.environment=dream dream.temperature=1.15
    python train_controller.py --run runs/VizdoomTakeCover-v1/dream controller.generations=200

A CMA-ES rerun resumes from controller/cmaes_history.npz. A shipped agent
(tools/export_pretrained.py) is refused: it is only read.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from agents.cmaes import train_cmaes
from agents.sb3 import train_sb3
from worldmodels.config import cli_parser, parse_cli
from worldmodels.errors import run_cli
from worldmodels.run_dir import run_from_args


def main(argv: list[str] | None = None) -> dict:
    parser = cli_parser(__doc__.splitlines()[0])
    parser.add_argument("--algo", default=None,
                        help="cmaes | ppo | a2c | sac | td3 (same as controller.algo=...)")
    args = parse_cli(parser, argv)
    if args.algo:
        args.overrides = [*args.overrides, f"controller.algo={args.algo}"]
    cfg, run = run_from_args(args)
    if cfg.controller.algo == "cmaes":
        summary = asdict(train_cmaes(cfg, run))
        if run.controller.best.exists():
            print(f"best controller: {run.controller.best}")
    else:
        _, summary = train_sb3(run, cfg)
    print(json.dumps(summary, indent=2))
    return summary



def cli() -> None:
    """The command ``worldmodels-train-controller``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
