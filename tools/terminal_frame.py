r"""What the blank frame after a ViZDoom death costs M: its share of M's NLL, and whether
M's dreams ever step into it.

    python tools/terminal_frame.py pretrained/takecover \
        --latents runs/VizdoomTakeCover-v1/solve/latents

ViZDoom has no frame after a death and returns a black one, which collection stores as
``obs[T]``; M is trained to predict its latent at the terminal step. Printed: the
distance of each episode's last latent and of every other latent to V's latent of a
black frame; M's per-step NLL (nats per dimension, z = V's mean) on the terminal step
against the others, over every ``--every``-th episode of ``--latents`` (latents of the
run's V); and, in ``--dreams`` dreams of the run's controller (the run's dream
settings), how many steps the dream went on from a latent within ``--radius`` of the
black frame's. README, "Data and checkpoints".
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from envs.dream_env import load_dream
from worldmodels.config import ConfigError, command_parser
from worldmodels.datasets import read_latents
from worldmodels.errors import run_cli
from worldmodels.run_dir import RunDir
from worldmodels.shards import list_shards


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = command_parser(__doc__)
    parser.add_argument("run", type=Path, help="a trained run or shipped agent (V, M and C)")
    parser.add_argument("--latents", type=Path, required=True,
                        help="latent shards encoded by the run's V")
    parser.add_argument("--every", type=int, default=50, help="every N-th episode")
    parser.add_argument("--dreams", type=int, default=400)
    parser.add_argument("--radius", type=float, default=2.6,
                        help="'near the black frame' in latent distance")
    args = parser.parse_args(argv)
    if args.every < 1 or args.dreams < 1 or args.radius <= 0:
        raise ConfigError("--every and --dreams must be >= 1 and --radius > 0")
    torch.set_num_threads(1)
    run = RunDir(args.run)
    cfg = run.load_config()
    vae, memory = run.load_vae(cfg.vae.z_dim), run.load_memory()
    paths = list_shards(args.latents)[::args.every]
    if not paths:
        raise ConfigError(f"{args.latents}: no latent shards")
    with torch.no_grad():
        black = vae.encode_mean(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))[0]
        last_dist, other_dist, last_nll, other_nll = [], [], [], []
        for path in paths:
            data = read_latents(path, cfg.vae.z_dim)
            if not data["terminated"][-1]:
                continue
            mu, action = torch.from_numpy(data["mu"]), torch.from_numpy(data["action"])
            dist = (mu - black).norm(dim=1)
            last_dist.append(float(dist[-1]))
            other_dist.append(dist[:-1])
            h, _ = memory(mu[:-1][None], action[None] if action.is_floating_point()
                          else action.long()[None])
            nll = (-memory.log_prob(mu[1:], h[0]) / mu.shape[1]).numpy()
            last_nll.append(float(nll[-1]))
            other_nll.append(nll[:-1])
        if not last_nll:
            raise ConfigError(f"{args.latents}: no terminated episode among {len(paths)}")
        others, rest = torch.cat(other_dist), np.concatenate(other_nll)
        steps = len(rest) + len(last_nll)
        dream, space = load_dream(run, cfg, seed=cfg.seed)
        controller = run.load_controller(cfg, space, dream.memory)
        z, went_on, dreamt, nearest = dream.reset(args.dreams), 0, 0, float("inf")
        while len(z):
            out = dream.step(z, controller(dream.features(z, controller.use_cell)))
            live = ~(out.done | out.truncated)
            dist = (out.z - black).norm(dim=1)
            went_on += int((live & (dist < args.radius)).sum())
            nearest, dreamt = min(nearest, float(dist.min())), dreamt + len(z)
            z = out.z[live]
            dream.keep(live)
    figures = {
        "episodes": len(last_nll), "last_distance_max": max(last_dist),
        "other_distance_min": float(others.min()),
        "terminal_nll": float(np.mean(last_nll)), "other_nll": float(rest.mean()),
        "nll_with_terminal": float((rest.sum() + sum(last_nll)) / steps),
        "terminal_share": len(last_nll) / steps, "dream_steps": dreamt,
        "dream_nearest": nearest, "dream_steps_on_from_black": went_on}
    print(f"{len(last_nll)} terminated episodes of {len(paths)}, {steps} steps: the last "
          f"latent within {max(last_dist):.2f} of the black frame's, the others "
          f">= {others.min():.2f}\nM's NLL (nats/dim): terminal step {np.mean(last_nll):.3f}, "
          f"others {rest.mean():.4f}; mean over all steps {figures['nll_with_terminal']:.4f} "
          f"(terminal steps {len(last_nll) / steps:.2%})\n{args.dreams} dreams, {dreamt} "
          f"steps: nearest latent to the black frame's {nearest:.2f}; steps the dream went on "
          f"from within {args.radius}: {went_on}")
    return figures


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
