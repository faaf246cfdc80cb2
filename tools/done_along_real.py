"""Does M recognise death in real episodes? M's done head, teacher forced along real
episodes of each held action and of uniform random actions.

    python tools/done_along_real.py runs/VizdoomTakeCover-v1/dream4L_frmdn

For each policy it plays ``--episodes`` real episodes (seeds 0, 1, ...), encodes their
frames with V and runs M along V's means and the actions taken. Printed: the real
length; the length M's per-step P(done) implies up to the real end, E[min(L, T)] when
done is sampled as in a dream; and P(done) at the real last step. If these match the
real episodes while the dream still overrates a held action
(``tools/dream_action_check.py``), the fault is in the dream's free-running latents,
not in the done head (docs/results.md, issue 5). For Discrete action spaces.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from agents.dream_check import discrete_actions, held_action_episodes
from envs.factory import make_env_from_config
from worldmodels.config import ConfigError, command_parser
from worldmodels.errors import run_cli
from worldmodels.run_dir import RunDir
from worldmodels.teacher_forcing import dream_rule_length, teacher_forced
from worldmodels.vae import to_float_frames


def main(argv: list[str]) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--episodes", type=int, default=15)
    args = parser.parse_args(argv)
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    torch.set_num_threads(1)
    run = RunDir(args.run)
    cfg = run.load_config()
    vae, memory = run.load_vae(cfg.vae.z_dim), run.load_memory()
    pos_weight = run.done_pos_weight()
    env = make_env_from_config(cfg.env)
    n = discrete_actions(env)
    print("| policy | real | implied by M's P(done) | P(done) at the real last step |\n"
          "|---|---|---|---|")
    for action in [*range(n), None]:
        real, implied, last = [], [], []
        for frames, actions in held_action_episodes(env, action, args.episodes, frames=True):
            with torch.no_grad():  # frames 0..T-1 and actions 0..T-1 -> P(done) at steps 1..T
                mu, _ = vae.encode(to_float_frames(torch.as_tensor(np.stack(frames[:-1]))))
            p = teacher_forced(memory, mu.numpy(), np.asarray(actions), pos_weight).p_done
            if p is None:
                raise ConfigError(f"{run.memory.model}: M has no done head to ask")
            real.append(len(actions))
            implied.append(dream_rule_length(p, "sample", 0.5))
            last.append(p[-1])
        name = "uniform random" if action is None else f"always action {action}"
        print(f"| {name} | {np.mean(real):.0f} ± {np.std(real):.0f} | "
              f"{np.mean(implied):.0f} ± {np.std(implied):.0f} | {np.mean(last):.3f} |", flush=True)


if __name__ == "__main__":
    run_cli(main)
