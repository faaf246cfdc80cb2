"""Stage 3: train C on [z, h] from the run's V and M, in the real env or inside M's dream
(controller.environment=dream): CMA-ES (default) or a Stable-Baselines3 algorithm.

    python train_controller.py --config carracing --preset quick
    python train_controller.py controller.engine=ray controller.ray_address=HOST:6379
    python train_controller.py --algo ppo controller.sb3_timesteps=20000
    python train_controller.py --config doom_takecover --preset dream   # C in M's dream
    python train_controller.py controller.environment=dream dream.temperature=1.15
    python train_controller.py --run runs/VizdoomTakeCover-v1/dream controller.generations=200
    python train_controller.py --world-model pretrained/carracing --run runs/carracing-ppo \
        --preset ppo env.direct_render=true          # a new C on a shipped agent's V and M

``--preset`` with ``--run`` or ``--world-model`` takes the preset from ``--config``'s file,
else from the file of the run's env (configs/doom_takecover.yaml for a TakeCover run).
A CMA-ES rerun resumes from controller/cmaes_history.npz (with controller.restarts=K,
from each search's controller/searches/<k>/cmaes_history.npz). A shipped agent
(tools/export_pretrained.py) is refused: it is only read. ``--world-model DIR`` trains C
in the new run ``--run`` on DIR's V and M (a trained run or a shipped agent), which are
named there (world_model.json), not copied; evaluate.py and dream.py then play that run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from agents.sb3 import train_sb3
from agents.searches import train_searches
from worldmodels.config import (
    RUN_CONFIG,
    ConfigError,
    cli_parser,
    doc_summary,
    parse_cli,
    preset_names,
    preset_overrides,
)
from worldmodels.errors import run_cli
from worldmodels.run_dir import RunDir, borrow_world_model, run_from_args, sb3_search_settings_off


def main(argv: list[str] | None = None) -> dict:
    parser = cli_parser(doc_summary(__doc__))
    parser.add_argument("--algo", default=None,
                        help="cmaes | ppo | a2c | sac | td3 (same as controller.algo=...)")
    parser.add_argument("--world-model", default=None, metavar="DIR",
                        help="train in the new run --run on the V and M of the trained run "
                             "or shipped agent at DIR (nothing is copied)")
    args = parse_cli(parser, argv)
    if args.algo:
        args.overrides = [*args.overrides, f"controller.algo={args.algo}"]
    if args.world_model:
        if not args.run:
            raise ConfigError("--world-model DIR needs --run: the new run's directory")
        presets = preset_names(args)
        overrides = preset_overrides(args.config, presets, Path(args.world_model) / RUN_CONFIG
                                     ) if presets else []
        cfg, run = borrow_world_model(args.world_model, args.run,
                                      [*overrides, *args.overrides])
    else:
        said = ""
        if args.run:  # SB3 on a run's V and M: its CMA-ES searches turned off, as above
            presets = preset_names(args)
            given = [*(preset_overrides(args.config, presets, Path(args.run) / RUN_CONFIG)
                       if presets else []), *args.overrides]
            off, said = sb3_search_settings_off(RunDir(args.run), given)
            args.overrides = [*off, *args.overrides]
        cfg, run = run_from_args(args, borrowed_ok=True)
        if said:  # (once the command is accepted)
            print(said, file=sys.stderr)
    if cfg.controller.algo == "cmaes":
        summary = asdict(train_searches(cfg, run))
        if run.controller.selected.exists():  # what evaluation plays and export ships
            print(f"selected controller: {run.controller.selected}")
    else:
        _, summary = train_sb3(run, cfg)
    print(json.dumps(summary, indent=2))
    return summary



def cli() -> None:
    """The command ``worldmodels-train-controller``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
