"""How random is a dream step? M's samples of z_{t+1} along real episodes, per temperature.

    R=runs/VizdoomTakeCover-v1
    python tools/dream_spread.py $R/dream5_frmdn $R/dream5_rmdn

Each run's M reads the same real episodes (V's means and the actions taken, from the
first run's ``latents/``) and, at every step, draws ``--samples`` z_{t+1} at each τ.
Printed per run and τ, averaged over steps and latent dimensions: the samples' standard
deviation, their mean squared error to the real next latent, and that of their mean.
Two Ms with the same spread give CMA-ES equally noisy dreams (docs/results.md, issue 5).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from worldmodels.config import ConfigError, command_parser
from worldmodels.datasets import read_latents
from worldmodels.errors import InputError, run_cli
from worldmodels.memory import Memory
from worldmodels.run_dir import RunDir
from worldmodels.shards import list_shards


def spread(memory: Memory, mu: torch.Tensor, action: torch.Tensor, tau: float,
           samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mu (T+1, d) and action (T,) of one episode -> per step (T,): sample std, sample
    MSE to the real next mu, and the sample mean's MSE to it."""
    steps = len(action)
    with torch.no_grad():
        h, _ = memory(mu[None, :steps], action[None])  # (1, T, hidden)
        y = memory.sample(h.expand(samples, -1, -1), tau=tau)  # (K, T, d)
    target = mu[1:steps + 1]
    return (y.std(0).mean(-1), ((y - target) ** 2).mean(-1).mean(0),
            ((y.mean(0) - target) ** 2).mean(-1))


def main(argv: list[str]) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=80,
                        help="the first half and the last half of the first run's latents")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--taus", type=float, nargs="+", default=[1.0, 1.15, 1.3])
    args = parser.parse_args(argv)
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    if args.samples < 2:  # (a spread needs two samples)
        raise ConfigError(f"--samples must be >= 2, got {args.samples}")
    if not all(math.isfinite(tau) and tau > 0 for tau in args.taus):
        raise ConfigError(f"--taus must all be > 0, got {args.taus}")

    runs = [RunDir(r) for r in args.runs]
    paths = list_shards(runs[0].latents)
    if not paths:
        raise InputError(f"{runs[0].latents}: no encoded episodes (run encode.py)")
    half = args.episodes // 2
    paths = paths[:half] + paths[-(args.episodes - half):] if len(paths) > args.episodes else paths
    episodes = [(torch.from_numpy(data["mu"]), torch.from_numpy(data["action"]))
                for data in map(read_latents, paths)]
    torch.manual_seed(0)
    print(f"{len(episodes)} episodes from {runs[0].latents}, "
          f"{args.samples} samples a step")
    print("| run | τ | sample std | sample MSE to real | sample mean's MSE |")
    print("|---|---|---|---|---|")
    for run in runs:
        memory = run.load_memory()
        z, action = episodes[0]  # actions: (T,) indices (Discrete) or (T, action_dim)
        indices = action.ndim == 1 and not action.is_floating_point()
        held = (f"action indices up to {int(action.max())}" if indices
                else f"actions of shape {tuple(action.shape[1:])}")
        if memory.discrete_actions:  # (M one-hots the index)
            fits = indices and int(action.max()) < memory.action_dim
            takes = f"{memory.action_dim} discrete actions"
        else:
            fits = action.ndim == 2 and action.shape[-1] == memory.action_dim
            takes = f"actions of {memory.action_dim}"
        if z.shape[-1] != memory.z_dim or not fits:
            raise InputError(f"{run.path}: its M takes z of {memory.z_dim} and {takes}, "
                             f"{runs[0].path}'s latents hold z of {z.shape[-1]} and "
                             f"{held}: give runs of one V and env")
        for tau in args.taus:
            parts = [spread(memory, mu, action, tau, args.samples) for mu, action in episodes]
            std, mse, mean_mse = (torch.cat(p).mean().item() for p in zip(*parts, strict=True))
            print(f"| {run.path.name} | {tau:.2f} | {std:.4f} | {mse:.4f} | {mean_mse:.4f} |")


if __name__ == "__main__":
    run_cli(main)
