"""A run whose controller is the mean of several runs' controllers.

    R=runs/VizdoomTakeCover-v1
    python tools/average_controllers.py $R/dream4L_frmdn_ens $R/dream4L_frmdn_cma0 \\
        $R/dream4L_frmdn_cma1 $R/dream4L_frmdn_cma2 $R/dream4L_frmdn_cma3

The members must share V and M (CMA-ES runs in one dream, say). The new run links the
first member's ``latents/``, ``vae/`` and ``memory/``, copies its config under the new
name, and writes ``controller/{best,mean}.safetensors`` as the mean of the members'
weights. For a linear C that is the mean of their logits: with an argmax over Discrete
actions, a vote weighted by each member's confidence. ``evaluate.py`` then scores it.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch

import worldmodels.controller  # noqa: F401  (registers the Controller checkpoint kind)
from agents.rollouts import load_run_config
from worldmodels.checkpoint import file_digest, load_model, save_model
from worldmodels.config import save_config
from worldmodels.errors import InputError, run_cli
from worldmodels.frmdn_training import memory_paths


def average(out: Path, members: list[Path]) -> None:
    digests = {file_digest(memory_paths(m / "memory")["model"]) for m in members}
    if len(digests) != 1:
        raise InputError(f"{', '.join(map(str, members))}: their Ms differ; average "
                         "controllers trained on one M")
    out.mkdir(parents=True, exist_ok=True)
    for d in ("latents", "vae", "memory"):
        if not (out / d).exists():
            shutil.copytree(members[0] / d, out / d, copy_function=os.link)
    cfg = load_run_config(members[0])
    cfg.name = out.name
    save_config(cfg, out / "config.yaml")
    for weights in ("mean", "best"):
        models = [load_model(m / "controller" / f"{weights}.safetensors") for m in members]
        flats = torch.stack([m.get_flat() for m in models])
        models[0].set_flat(flats.mean(0))
        save_model(out / "controller" / f"{weights}.safetensors", models[0],
                   meta={"average_of": [str(m) for m in members]})
        norms = ", ".join(f"{float(v):.2f}" for v in flats.norm(dim=1))
        print(f"{weights}: weight norms {norms}; their mean's {float(flats.mean(0).norm()):.2f}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("members", type=Path, nargs="+")
    args = parser.parse_args(argv)
    average(args.out, args.members)


if __name__ == "__main__":
    run_cli(main)
