"""Several SB3 policies on the same V and M, played as one: the mean of their actions.

    python tools/ensemble_eval.py RUN [RUN ...] --episodes 100 seed=0 env.direct_render=false

Each run's real-env SB3 policy (``--algo``, default ppo) gives its mean action for the
same [z, h]; the ensemble plays the average of those actions (each already clipped to
the action space). The runs must share V and M (the same files, by SHA-256): a policy on
another world model's features would be fed the wrong [z, h]. Plays the report seeds of
``seed`` (as evaluate.py does) in the first run's env and prints each episode's return
and, last, ``mean return M ± S over N episodes``. Writes nothing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from agents.sb3 import SB3_ALGORITHMS, SB3Controller, play_policy_batched, sb3_controller
from agents.seeds import check_report_seeds, evaluation_seeds, selection_of
from worldmodels.checkpoint import read_json
from worldmodels.config import ConfigError, command_parser
from worldmodels.errors import run_cli
from worldmodels.run_dir import RunDir


class EnsembleController(SB3Controller):
    """The mean of several SB3 controllers' mean actions (Box actions only): features
    (B, F) -> actions (B, A); ``batched`` as :class:`SB3Controller`'s."""

    def __init__(self, members: list[SB3Controller]):
        nn.Module.__init__(self)
        self.members = nn.ModuleList(members)
        self.use_cell, self.deterministic, self.noise_every = members[0].use_cell, True, 0
        self.calls = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.stack([m(x).float() for m in self.members]).mean(0)


def check_members(runs: list[RunDir], algo: str, seeds: list[int]) -> None:
    """Refuse an ensemble whose runs read other V and M, other features (``use_cell``),
    or Discrete actions (a mean of action indices is no action), or that was selected
    on any of the report ``seeds``; each error names the run."""
    first = runs[0]
    space, use_cell = first.action_space(), first.load_config().controller.use_cell
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(f"{first}: an ensemble averages actions, so it needs a Box action "
                          f"space, not {space}")
    world_model = first.world_model_digests()
    for run in runs:
        if run is not first and run.world_model_digests() != world_model:
            raise ConfigError(f"{run}: its V and M differ from {first}'s; an ensemble "
                              "plays one world model's [z, h]")
        if run.load_config().controller.use_cell != use_cell:
            raise ConfigError(f"{run}: controller.use_cell differs from {first}'s")
        meta = run.controller.sb3(algo)[1]
        check_report_seeds(seeds, selection_of(read_json(meta, {})) if meta.exists()
                           else None, f"{run}'s {algo} policy")


def main(argv: list[str] | None = None) -> list[float]:
    parser = command_parser(__doc__)
    parser.add_argument("items", nargs="+", metavar="RUN | KEY=VALUE",
                        help="run directories with an SB3 policy each, then seed=S and "
                             "env.* overrides")
    parser.add_argument("--algo", default="ppo", choices=sorted(SB3_ALGORITHMS))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_intermixed_args(argv)
    if args.episodes < 1 or args.batch < 1:
        raise ConfigError(f"--episodes and --batch must be >= 1, got {args.episodes} and "
                          f"{args.batch}")
    overrides = [a for a in args.items if "=" in a]
    runs = [RunDir(a) for a in args.items if "=" not in a]
    cfg = runs[0].load_config(overrides)
    seeds = evaluation_seeds(cfg.seed, args.episodes)
    check_members(runs, args.algo, seeds)
    members = [sb3_controller(run, run.load_config(overrides), args.algo)
               for run in runs]
    start = time.time()
    returns = [r for r, _ in play_policy_batched(runs[0], cfg,
                                                 EnsembleController(members),
                                                 seeds, args.batch)]
    for s, r in zip(seeds, returns, strict=True):
        print(f"seed {s}: {r:.1f}")
    print(f"{len(runs)} policies, {time.time() - start:.0f} s")
    print(f"mean return {np.mean(returns):.1f} ± {np.std(returns):.1f} "
          f"over {len(returns)} episodes")
    return returns


if __name__ == "__main__":
    run_cli(main)
