"""Does the dream get the actions' effects right? Mean episode length under each fixed
action and under uniform random actions, in M's dream and in the real env.

    python tools/dream_action_check.py runs/VizdoomTakeCover-v1/dream2_frmdn 1.15

For Discrete action spaces. A dream whose ranking of the fixed actions disagrees with
the real env's, or that lets a held action live much longer than reality does, will
train controllers that fail there (docs/results.md, issue 5). ``run.py`` runs the same
check before C trains in the dream (``agents/dream_check.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from agents.dream_check import held_action_check, markdown_table
from agents.dreams import load_dream
from agents.rollouts import load_run_config
from envs.factory import make_env_from_config


def main() -> None:
    run, tau = Path(sys.argv[1]), float(sys.argv[2])
    torch.set_num_threads(1)
    dream, _, _ = load_dream(run, temperature=tau, seed=0)
    env = make_env_from_config(load_run_config(run).env)
    print(markdown_table(held_action_check(dream, env), tau))


if __name__ == "__main__":
    main()
