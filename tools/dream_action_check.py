"""Does the dream get the actions' effects right? Mean episode length under each fixed
action and under uniform random actions, in M's dream and in the real env.

    python tools/dream_action_check.py runs/VizdoomTakeCover-v1/dream2_frmdn 1.15

For Discrete action spaces. A dream whose ranking of the fixed actions disagrees with
the real env's will train controllers that fail there (docs/results.md, issue 5).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from agents.dreams import load_dream
from agents.rollouts import load_run_config
from envs.factory import make_env_from_config


def dream_lengths(run: Path, tau: float, action: int | None, dreams: int = 256) -> np.ndarray:
    dream, _, space = load_dream(run, temperature=tau, seed=0)
    z = dream.reset(dreams)
    alive, steps = torch.arange(dreams), torch.zeros(dreams)
    gen = torch.Generator().manual_seed(0)
    while len(alive):
        a = torch.randint(int(space.n), (len(alive),), generator=gen) if action is None \
            else torch.full((len(alive),), action)
        out = dream.step(z, a)
        steps[alive] += 1
        live = ~(out.done | out.truncated)
        z, alive = out.z[live], alive[live]
        dream.keep(live)
    return steps.numpy()


def real_lengths(env, action: int | None, episodes: int = 30) -> np.ndarray:
    rng, lengths = np.random.default_rng(0), []
    for ep in range(episodes):
        env.reset(seed=ep)
        n = 0
        while True:
            a = int(rng.integers(env.action_space.n)) if action is None else action
            *_, terminated, truncated, _ = env.step(a)
            n += 1
            if terminated or truncated:
                break
        lengths.append(n)
    return np.array(lengths)


def main() -> None:
    run, tau = Path(sys.argv[1]), float(sys.argv[2])
    torch.set_num_threads(1)
    env = make_env_from_config(load_run_config(run).env)
    print("| policy | real (30 episodes) | dream (256 dreams) |\n|---|---|---|")
    for action in [*range(int(env.action_space.n)), None]:
        real, dreamt = real_lengths(env, action), dream_lengths(run, tau, action)
        name = "uniform random" if action is None else f"always action {action}"
        print(f"| {name} | {real.mean():.0f} ± {real.std():.0f} | "
              f"{dreamt.mean():.0f} ± {dreamt.std():.0f} |", flush=True)


if __name__ == "__main__":
    main()
