r"""Does the dream get the actions' effects right? Mean episode length under each fixed
action and under uniform random actions, in M's dream and in the real env.

    python tools/dream_action_check.py runs/VizdoomTakeCover-v1/dream2_frmdn 1.15
    python tools/dream_action_check.py runs/VizdoomTakeCover-v1/dream4L_frmdn 1.15 \
        dream.done=threshold dream.done_threshold=0.0909   # another rule for ending a dream

``dream.*`` overrides change how the dream is stepped, not the trained V or M.

For Discrete action spaces. A dream whose ranking of the fixed actions disagrees with
the real env's, or that lets a held action live much longer than reality does, will
train controllers that fail there (docs/results.md, issue 5). ``run.py`` runs the same
check before C trains in the dream (``agents/dream_check.py``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from agents.dream_check import held_action_check, markdown_table
from envs.dream_env import load_dream
from envs.factory import make_env_from_config
from worldmodels.config import ConfigError, command_parser
from worldmodels.errors import run_cli
from worldmodels.run_dir import RunDir


def main(argv: list[str]) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("temperature", type=float)
    parser.add_argument("overrides", nargs="*", help="dream.<key>=<value>")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ConfigError(f"temperature must be > 0, got {args.temperature}")
    torch.set_num_threads(1)
    run = RunDir(args.run)
    cfg = run.load_config(tuple(args.overrides))
    dream, _ = load_dream(run, cfg, temperature=args.temperature, seed=0)
    env = make_env_from_config(cfg.env)
    print(markdown_table(held_action_check(dream, env), args.temperature))


if __name__ == "__main__":
    run_cli(main)
