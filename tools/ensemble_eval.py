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

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import nn

from agents.sb3 import SB3Controller, play_policy_batched, sb3_controller
from agents.seeds import evaluation_seeds
from worldmodels.checkpoint import file_digest
from worldmodels.config import ConfigError
from worldmodels.errors import run_cli
from worldmodels.run_dir import RunDir


class EnsembleController(nn.Module):
    """The mean of several SB3 controllers' actions: features (B, F) -> actions (B, A)."""

    def __init__(self, members: list[SB3Controller]):
        super().__init__()
        self.members = members
        self.use_cell = members[0].use_cell
        self.calls = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.stack([m(x).float() for m in self.members]).mean(0)

    def batched(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            actions = self(x.flatten(0, 1))
            return actions.view(*x.shape[:2], *actions.shape[1:])
        return self(x)

    def num_parameters(self) -> int:
        return len(self.members)


def world_model_digests(run: RunDir) -> tuple[str, str]:
    """SHA-256 (short) of the run's V and M weights."""
    return file_digest(run.vae.model), file_digest(run.memory.model)


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("items", nargs="+", metavar="RUN | KEY=VALUE",
                        help="run directories with an SB3 policy each, then seed=S and "
                             "env.* overrides")
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_intermixed_args(argv)
    overrides = [a for a in args.items if "=" in a]
    runs = [RunDir(a) for a in args.items if "=" not in a]
    first = world_model_digests(runs[0])
    for run in runs[1:]:
        if world_model_digests(run) != first:
            raise ConfigError(f"{run}: its V and M differ from {runs[0]}'s; an ensemble "
                              "plays one world model's [z, h]")
    cfg = runs[0].load_config(overrides)
    members = [sb3_controller(run, run.load_config(overrides), args.algo)
               for run in runs]
    seeds = evaluation_seeds(cfg.seed, args.episodes)
    start = time.time()
    returns = [r for r, _ in play_policy_batched(runs[0], cfg,
                                                 EnsembleController(members),  # type: ignore[arg-type]
                                                 seeds, args.batch)]
    for s, r in zip(seeds, returns, strict=True):
        print(f"seed {s}: {r:.1f}")
    print(f"{len(runs)} policies, {time.time() - start:.0f} s")
    print(f"mean return {np.mean(returns):.1f} ± {np.std(returns):.1f} "
          f"over {len(returns)} episodes")
    return returns


if __name__ == "__main__":
    run_cli(main)
