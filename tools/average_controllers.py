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

import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import worldmodels.controller  # noqa: F401  (registers the Controller checkpoint kind)
from worldmodels.checkpoint import (
    CheckpointError,
    file_digest,
    load_model,
    read_header,
    save_model,
)
from worldmodels.config import command_parser
from worldmodels.errors import InputError, run_cli
from worldmodels.run_dir import CONTROLLER_WEIGHTS, RunDir


def refuse_overwrite(out_dir: Path, member_dirs: list[Path]) -> None:
    """``out_dir`` must be a new directory or an earlier (killed) average's, which the
    same command completes: never a file, a member, or a run with its own controllers."""
    trained = [p for p in (out_dir / "controller" / f"{w}.safetensors"
                           for w in CONTROLLER_WEIGHTS)
               if p.exists() and not _is_average(p)]
    if out_dir.exists() and not out_dir.is_dir():
        why = "is a file"
    elif out_dir.resolve() in {Path(m).resolve() for m in member_dirs}:
        why = "is one of the members"
    elif trained:
        why = f"holds a controller that is not an average ({trained[0].name})"
    else:
        return
    raise InputError(f"{out_dir}: {why}; the average goes into a new run directory "
                     "(nothing is overwritten)")


def _is_average(path: Path) -> bool:
    """Was the controller file at ``path`` written by :func:`average`?"""
    try:
        return "average_of" in read_header(path).get("meta", {})
    except CheckpointError:
        return False


def average(out_dir: Path, member_dirs: list[Path]) -> None:
    refuse_overwrite(out_dir, member_dirs)
    out, members = RunDir(out_dir), [RunDir(m) for m in member_dirs]
    for m in members:
        if not m.memory.model.is_file():
            raise InputError(f"{m.memory.model}: no trained M; is {m.path} a run?")
    digests = {file_digest(m.memory.model) for m in members}
    if len(digests) != 1:
        raise InputError(f"{', '.join(map(str, members))}: their Ms differ; average "
                         "controllers trained on one M")
    copies = ((members[0].latents, out.latents), (members[0].vae.dir, out.vae.dir),
              (members[0].memory.dir, out.memory.dir))
    missing = [src for src, dst in copies if not dst.exists() and not src.is_dir()]
    if missing:
        raise InputError(f"{missing[0]}: no such directory; the average's run takes "
                         f"{members[0].path}'s latents, V and M")
    # every member's controllers are read before anything is written
    loaded = {weights: [load_model(m.controller.weights(weights)) for m in members]
              for weights in ("mean", "best")}
    for weights, models in loaded.items():
        sizes = [model.num_parameters() for model in models]
        if len(set(sizes)) != 1:
            raise InputError(f"{', '.join(map(str, members))}: their {weights} controllers "
                             f"have {sizes} weights; average controllers of one shape")
    cfg = members[0].load_config()
    cfg.name = out.path.name
    out.write_config(cfg)
    for src, dst in copies:
        if not dst.exists():  # linked under a temporary name: a kill leaves no half copy
            partial = dst.with_name(dst.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(src, partial, copy_function=os.link)
            partial.rename(dst)
    for weights, models in loaded.items():
        flats = torch.stack([m.get_flat() for m in models])
        models[0].set_flat(flats.mean(0))
        save_model(out.controller.weights(weights), models[0],
                   meta={"average_of": [str(m) for m in members]})
        norms = ", ".join(f"{float(v):.2f}" for v in flats.norm(dim=1))
        print(f"{weights}: weight norms {norms}; their mean's {float(flats.mean(0).norm()):.2f}")


def main(argv: list[str]) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("members", type=Path, nargs="+")
    args = parser.parse_args(argv)
    average(args.out, args.members)


if __name__ == "__main__":
    run_cli(main)
